"""Octopush `sms-campaign/send` client: campaign model, local validation, idempotent retries.

Every attempt of one campaign carries the same request_id, so a retry after a
lost answer is refused by Octopush with code 120 instead of sending twice; the
client turns that refusal into a success (`SendResult.already_sent`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import phonenumbers

from relay import backoff
from relay.octopush.errors import OctopushError, TemporaryError, ValidationError
from relay.octopush.parts import count_parts

log = logging.getLogger("relay.octopush")

MAX_TEXT = 1224
MAX_RECIPIENTS = 500
TYPES = ("sms_premium", "sms_low_cost")
PURPOSES = ("alert", "wholesale")
SENDER_RE = re.compile(r"[a-zA-Z0-9 ]{3,11}")
# Octopush's documented mention is "STOP au XXXXX"; the seed example writes "STOP to XXXXX".
STOP_MENTIONS = {
    "sms_premium": re.compile(r"\bSTOP\s+(?:au|to)\s+\d+", re.IGNORECASE),
    "sms_low_cost": re.compile(r"\bno\s*PUB\s*=\s*STOP\b", re.IGNORECASE),
}
# Answers worth retrying besides 5xx: too many requests, request timeout.
RETRYABLE_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class Recipient:
    phone_number: str  # E.164 with +
    first_name: str = ""
    last_name: str = ""
    params: tuple[str, ...] = ()  # param1..param5

    def payload(self) -> dict[str, str]:
        body = {"phone_number": self.phone_number}
        if self.first_name:
            body["first_name"] = self.first_name
        if self.last_name:
            body["last_name"] = self.last_name
        for i, value in enumerate(self.params[:5], start=1):
            if value:
                body[f"param{i}"] = value
        return body


@dataclass(frozen=True)
class Campaign:
    text: str
    recipients: tuple[Recipient, ...]
    type: str = "sms_premium"  # or "sms_low_cost"
    purpose: str = "alert"  # or "wholesale"
    sender: str = ""  # "" = omit the field
    send_at: datetime | None = None  # aware datetime; sent as ISO 8601 with offset
    with_replies: bool = True
    simulation_mode: bool = False
    auto_optimize_text: bool = True
    request_id: str | None = None

    def payload(self) -> dict[str, Any]:
        """The exact JSON body: documented field names only, empty optional fields left out."""
        body: dict[str, Any] = {
            "text": self.text,
            "recipients": [r.payload() for r in self.recipients],
            "type": self.type,
            "purpose": self.purpose,
            "with_replies": self.with_replies,
            "auto_optimize_text": self.auto_optimize_text,
        }
        if self.sender:
            body["sender"] = self.sender
        if self.send_at is not None:
            body["send_at"] = self.send_at.replace(microsecond=0).isoformat()
        if self.simulation_mode:
            body["simulation_mode"] = True
        if self.request_id:
            body["request_id"] = self.request_id
        return body


@dataclass(frozen=True)
class SendResult:
    ticket: str | None
    contacts: int
    sms_needed: int
    residual_credit: float | None
    total_cost: float | None
    already_sent: bool = False  # Octopush answered 120: an earlier attempt went through; ticket unknown


def has_stop_mention(text: str, type: str) -> bool:
    """Whether a marketing text carries the opt-out mention Octopush requires for this type."""
    pattern = STOP_MENTIONS.get(type)
    return bool(pattern and pattern.search(text))


def with_stop_mention(text: str, type: str, configured: str) -> str:
    """A marketing text with the opt-out mention its type needs; ValidationError saying why when we cannot add it.

    `configured` is `smtp_in.stop_mention` (empty: add nothing). A premium SMS needs the operator's number
    ("STOP au 30101"), so only a configured mention that has one will do; the low-cost mention is fixed
    wording, so once the operator asks for mentions, "no PUB=STOP" is added whatever they wrote.
    """
    if has_stop_mention(text, type):
        return text
    if configured and has_stop_mention(configured, type):
        return f"{text}\n{configured}"
    if configured and type == "sms_low_cost":
        return f"{text}\nno PUB=STOP"
    if configured:
        raise ValidationError(
            f"a premium marketing SMS must carry 'STOP au <number>' and smtp_in.stop_mention ({configured!r}) "
            "has no number: add the mention to the text, or ask the operator to fix smtp_in.stop_mention",
            "text",
        )
    example = "STOP au 30101" if type == "sms_premium" else "no PUB=STOP"
    raise ValidationError(f"a marketing SMS must carry a STOP mention: add '{example}' to the text", "text")


def validate(c: Campaign, now: datetime | None = None) -> None:
    """Octopush's rules checked locally, so a person gets a precise answer before any call."""
    if not c.text.strip():
        raise ValidationError("the text is empty", "text")
    if len(c.text) > MAX_TEXT:
        raise ValidationError(f"the text is {len(c.text)} characters; the maximum is {MAX_TEXT}", "text")
    if c.type not in TYPES:
        raise ValidationError(f"type {c.type!r} must be one of {', '.join(TYPES)}", "type")
    if c.purpose not in PURPOSES:
        raise ValidationError(f"purpose {c.purpose!r} must be one of {', '.join(PURPOSES)}", "purpose")
    if c.sender and not SENDER_RE.fullmatch(c.sender):
        raise ValidationError(f"sender {c.sender!r} must be 3 to 11 letters, digits or spaces", "sender")
    if c.send_at is not None:
        if c.send_at.tzinfo is None or c.send_at.utcoffset() is None:
            raise ValidationError("send_at must carry a time zone", "send_at")
        now = now or datetime.now(UTC)
        if c.send_at <= now:
            raise ValidationError(f"send_at {c.send_at.isoformat()} is in the past", "send_at")
    if not c.recipients:
        raise ValidationError("there is no recipient", "recipients")
    if len(c.recipients) > MAX_RECIPIENTS:
        raise ValidationError(
            f"{len(c.recipients)} recipients in one call; the maximum is {MAX_RECIPIENTS}", "recipients"
        )
    for r in c.recipients:
        if not is_valid_e164(r.phone_number):
            raise ValidationError(
                f"{r.phone_number!r} is not a valid number in international format (e.g. +33612345678)",
                "recipients",
            )
        if len(r.params) > 5:
            raise ValidationError(f"{r.phone_number}: at most 5 params (param1 to param5)", "recipients")
    if c.purpose == "wholesale" and not has_stop_mention(c.text, c.type):
        mention = "STOP au 30101" if c.type == "sms_premium" else "no PUB=STOP"
        raise ValidationError(f'marketing SMS must contain the mention "{mention}"', "text")


@functools.lru_cache(maxsize=8192)  # a number is checked at intake and again at each send
def is_valid_e164(number: str) -> bool:
    """A `+` number that phonenumbers knows as valid and that is already written in E.164."""
    if not number.startswith("+"):
        return False
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
    )


def split(c: Campaign, size: int = MAX_RECIPIENTS) -> list[Campaign]:
    """Chunks of at most `size` recipients; request_ids get "-1", "-2"... only when there are several."""
    if len(c.recipients) <= size:
        return [c]
    chunks = [c.recipients[i : i + size] for i in range(0, len(c.recipients), size)]
    return [
        replace(c, recipients=chunk, request_id=f"{c.request_id}-{n}" if c.request_id else None)
        for n, chunk in enumerate(chunks, start=1)
    ]


class OctopushClient:
    """One aiohttp session to Octopush; `send()` validates, then retries temporary faults."""

    def __init__(
        self, base_url: str, api_login: str, api_key: str, *, timeout: float = 10.0, retry_for: float = 3600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_login = api_login
        self._api_key = api_key
        self.timeout = timeout
        self.retry_for = retry_for
        self.last_call: dict[str, Any] = {"at": None, "ok": None, "error": None}
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OctopushClient({self.base_url!r}, api_login={self.api_login!r})"

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _note(self, ok: bool, error: str | None = None) -> None:
        self.last_call = {"at": datetime.now(UTC), "ok": ok, "error": error}

    async def send_once(self, c: Campaign) -> SendResult:
        """One POST, no validation and no retry: OctopushError, TemporaryError or a result."""
        if self._session is None:
            raise RuntimeError("OctopushClient.start() was not called")
        url = f"{self.base_url}/sms-campaign/send"
        headers = {"api-key": self._api_key, "api-login": self.api_login, "Content-Type": "application/json"}
        try:
            async with self._session.post(url, data=json.dumps(c.payload()), headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            error = TemporaryError(f"Octopush did not answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            error = TemporaryError(f"cannot reach Octopush: {exc.__class__.__name__}: {exc}".rstrip(": "))
        else:
            try:
                return self._answer(c, status, raw)
            except (OctopushError, TemporaryError) as exc:
                error = exc
        self._note(False, str(error))
        raise error

    def _answer(self, c: Campaign, status: int, raw: bytes) -> SendResult:
        """Turn an HTTP answer into a result; raises for refusals and faults."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status >= 500 or status in RETRYABLE_STATUS:
            raise TemporaryError(f"Octopush answered HTTP {status}", status)
        if 200 <= status < 300:
            if not isinstance(body, dict):
                # Probably sent; the retry with the same request_id will get 120 and tell.
                raise TemporaryError(f"Octopush answered HTTP {status} without a JSON body", status)
            result = SendResult(
                ticket=body.get("sms_ticket"),
                contacts=int(body.get("number_of_contacts") or 0),
                sms_needed=int(body.get("number_of_sms_needed") or 0),
                residual_credit=_float(body.get("residual_credit")),
                total_cost=_float(body.get("total_cost")),
            )
            log.debug("Octopush accepted %s: %d contacts, %d SMS", result.ticket, result.contacts, result.sms_needed)
            self._note(True)
            return result
        code = body.get("code") if isinstance(body, dict) else None
        code = code if isinstance(code, int) else None
        message = str(body.get("message") or "") if isinstance(body, dict) else raw[:200].decode("utf-8", "replace")
        if code == 120:
            # The earlier attempt went through; its ticket is unknown, the SMS count is our estimate.
            log.info("Octopush already has request_id %s (code 120): counted as sent", c.request_id)
            self._note(True)
            return SendResult(
                ticket=None,
                contacts=len(c.recipients),
                sms_needed=count_parts(c.text).parts * len(c.recipients),
                residual_credit=None,
                total_cost=None,
                already_sent=True,
            )
        error = OctopushError(code, message or f"HTTP {status}", status)
        log.warning("%s", error)
        raise error

    async def send(self, c: Campaign, *, deadline: float | None = None) -> SendResult:
        """Validate, then send, retrying temporary faults with backoff until `deadline` (loop time).

        The request_id is fixed before the first attempt so that every retry is
        the same request for Octopush; refusals are never retried.
        """
        validate(c)
        if c.request_id is None:
            c = replace(c, request_id=uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.retry_for
        attempt = 0
        while True:
            try:
                return await self.send_once(c)
            except TemporaryError as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning("giving up on request_id %s after %d attempts: %s", c.request_id, attempt + 1, exc)
                    raise
                attempt += 1
                wait = min(backoff.delay(attempt), remaining)
                log.warning("request_id %s: %s; retry %d in %.1f s", c.request_id, exc, attempt, wait)
                await asyncio.sleep(wait)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


__all__ = [
    "Campaign",
    "OctopushClient",
    "Recipient",
    "STOP_MENTIONS",
    "SendResult",
    "has_stop_mention",
    "with_stop_mention",
    "is_valid_e164",
    "split",
    "validate",
]
