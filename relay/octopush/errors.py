"""Errors of an Octopush send: a local pre-check, a refusal by Octopush, or a retryable fault.

The three are kept apart because the relay reacts differently: a person fixes
a validation error or a refusal (with the advice given here), while a
temporary error is retried with the same request_id.
"""

from __future__ import annotations

from relay.errors import RelayError

# Codes after which the operator must act on the account (credentials, credit, validation, investigation).
ALERT_CODES = frozenset({101, 104, 105, 113, 114})
# Codes that say "not now" rather than "no": the same request is retried with backoff.
TEMPORARY_CODES = frozenset({153})

# How to fix each documented refusal, in words a sender or operator can act on (octopush-api.md's table).
ADVICE: dict[int, str] = {
    101: "Check octopush.api_login (the account e-mail) and octopush.api_key in the configuration.",
    103: "Give at least one recipient.",
    104: "Top up the Octopush account's credit, then send again.",
    105: "Top up the Octopush account's credit (this campaign costs more than what is left), then send again.",
    106: "Use a sender of 3 to 11 letters or digits (no accent, space or punctuation), or leave the sender empty.",
    107: "Write some text: the SMS is empty.",
    108: "Shorten the text (the field 'text'): at most 1224 characters, fewer with accents or emoji.",
    109: "Change the sender (the field 'sender'): 3 to 11 letters or digits, or leave it empty.",
    110: "Give at least one recipient.",
    113: "The Octopush account is not validated yet: finish its validation on octopush.com (documents, "
    "payment), then send again.",
    114: "The Octopush account is blocked while Octopush investigates it for fraud: contact Octopush support.",
    117: "Check the numbers: international format with +, e.g. +33612345678.",
    120: "Nothing to do: an earlier attempt with the same request_id went through.",
    121: 'Add the mention "STOP au" and your short number (e.g. "STOP au 30101", or "STOP au XXXXX" for '
    "Octopush to fill it in), written exactly so, to premium marketing SMS, or set smtp_in.stop_mention.",
    122: 'Add the mention "no PUB=STOP", written exactly so, to low-cost marketing SMS, or set smtp_in.stop_mention.',
    152: "Low-cost SMS cannot go to this country: send it as premium ([premium] in the subject, --type premium, "
    'or octopush.type = "sms_premium").',
    153: "The route is congested: octorelay retries by itself with backoff (octopush.retry_for).",
}


def advice_for(code: int | None, http_status: int) -> str:
    """Advice for a refusal; a generic pointer when Octopush answered an undocumented code."""
    if code in ADVICE:
        return ADVICE[code]
    if http_status in (401, 403):
        return ADVICE[101]
    if http_status == 404:
        return "Check octopush.base_url: Octopush does not know this address."
    if code is not None:
        return f"Octopush's message above is all it said about code {code}; see its return-code table."
    return "See Octopush's answer above; the request was not sent."


class ValidationError(RelayError):
    """A local pre-check failed; the message says what to change."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class OctopushError(RelayError):
    """Octopush refused the campaign; retrying the same request would fail the same way."""

    def __init__(
        self,
        code: int | None,
        message: str,
        http_status: int,
        *,
        permanent: bool = True,
        advice: str | None = None,
        action: str = "the campaign",
    ) -> None:
        self.code = code
        self.action = action
        self.message = message
        self.http_status = http_status
        self.permanent = permanent
        self.advice = advice if advice is not None else advice_for(code, http_status)
        super().__init__(str(self))

    def __str__(self) -> str:
        what = f"code {self.code}" if self.code is not None else f"HTTP {self.http_status}"
        text = f"Octopush refused {self.action} ({what}): {self.message}".rstrip()
        if not text.endswith((".", "!", "?")):
            text += "."
        return f"{text} {self.advice}" if self.advice else text


class TemporaryError(RelayError):
    """A timeout, connection error, 5xx, 429 or code 153: the same request may be retried."""

    def __init__(self, message: str, http_status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
