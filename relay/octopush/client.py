"""Octopush `sms-campaign/send` client: campaign model, local validation, idempotent retries.

Every attempt of one campaign carries the same request_id, so a retry after a
lost answer is refused by Octopush with code 120 instead of sending twice; the
client turns that refusal into a success (`SendResult.already_sent`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from relay import backoff
from relay.numbers import is_valid_e164
from relay.octopush.errors import TEMPORARY_CODES, OctopushError, TemporaryError, ValidationError
from relay.octopush.parts import count_parts
from relay.octopush.rules import (  # noqa: F401 - the rules, also under the client's name
    MAX_RECIPIENTS,
    MAX_TEXT,
    PURPOSES,
    SENDER_RE,
    SENDER_RULE,
    STOP_EXAMPLES,
    STOP_MENTIONS,
    TYPES,
    has_stop_mention,
)
from relay.statuses import Purpose, SmsType

log = logging.getLogger("relay.octopush")

# The account settings that say where Octopush POSTs each kind of callback (PATCH campaign-parameters/edit).
CALLBACK_URL_FIELDS = {
    "reply": "callback_url_for_inbounds",
    "delivery": "callback_url_for_deliveries",
    "stop": "callback_url_for_blacklisted_numbers",
}
# Octopush's personalisation fields: each recipient's value replaces its placeholder (at most 50 characters).
PLACEHOLDERS = ("first_name", "last_name", "param1", "param2", "param3", "param4", "param5")
MAX_PLACEHOLDER_VALUE = 50
PLACEHOLDER_RE = re.compile(r"\{(first_name|last_name|param[1-5])\}")
# Something that looks meant as a placeholder ("{firstname}", "{Param1}", "{param6}"): refused, as a typo
# would reach every recipient as written. The length bound keeps the scan linear.
PLACEHOLDER_LIKE_RE = re.compile(r"\{([A-Za-z][A-Za-z_ ]{0,15}[0-9]?)\}")
# Answers worth retrying besides 5xx: too many requests, request timeout.
RETRYABLE_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class Recipient:
    phone_number: str  # E.164 with +
    first_name: str = ""
    last_name: str = ""
    params: tuple[str, ...] = ()  # param1..param5
    source: str = field(default="", compare=False)  # where it came from, e.g. "groups.team (team.csv) line 4"

    def value(self, placeholder: str) -> str:
        """This recipient's value for one of PLACEHOLDERS ("" when it has none)."""
        if placeholder == "first_name":
            return self.first_name
        if placeholder == "last_name":
            return self.last_name
        index = int(placeholder[len("param") :]) - 1
        return self.params[index] if index < len(self.params) else ""

    def payload(self, used: tuple[str, ...] | list[str] = PLACEHOLDERS) -> dict[str, str]:
        """The recipient object; of its values, only those of the placeholders `used`, and not empty ones."""
        body = {"phone_number": self.phone_number}
        for name in used:
            if self.value(name):
                body[name] = self.value(name)
        return body


@dataclass(frozen=True)
class Campaign:
    text: str
    recipients: tuple[Recipient, ...]
    type: str = SmsType.PREMIUM
    purpose: str = Purpose.ALERT
    sender: str = ""  # "" = omit the field
    send_at: datetime | None = None  # aware datetime; sent as ISO 8601 with offset
    with_replies: bool = True
    simulation_mode: bool = False
    auto_optimize_text: bool = True
    request_id: str | None = None

    def payload(self) -> dict[str, Any]:
        """The exact JSON body: documented field names only, empty optional fields left out."""
        used = placeholders(self.text)
        body: dict[str, Any] = {
            "text": self.text,
            # Only the values the text uses: nothing else of a contact leaves, and a long unused one is no matter.
            "recipients": [r.payload(used) for r in self.recipients],
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


def stored_recipient(row: dict) -> Recipient:
    """A recipient as the `recipients` table keeps it (params as a JSON list)."""
    params = tuple(json.loads(row.get("params") or "[]"))
    return Recipient(row["number"], row.get("first_name") or "", row.get("last_name") or "", params)


def placeholders(text: str) -> list[str]:
    """The personalisation placeholders a text uses, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER_RE.findall(text)))


def personalise(text: str, recipient: Recipient) -> str:
    """The text as this recipient reads it once Octopush has replaced the placeholders."""
    return PLACEHOLDER_RE.sub(lambda m: recipient.value(m.group(1)), text)


def check_placeholders(text: str, recipients: tuple[Recipient, ...] | list[Recipient]) -> None:
    """Refuse a mistyped placeholder, and a value Octopush would not take (over 50 characters)."""
    for match in PLACEHOLDER_LIKE_RE.finditer(text):
        name = match.group(1)
        if name in PLACEHOLDERS:
            continue
        squashed = name.lower().replace("_", "").replace(" ", "")
        known = {p.replace("_", ""): p for p in PLACEHOLDERS}
        if squashed in known:
            raise ValidationError(
                f"{{{name}}} is not a placeholder Octopush knows: write {{{known[squashed]}}}", "text"
            )
        if squashed.startswith("param") and squashed[5:].isdigit():
            raise ValidationError(f"{{{name}}}: Octopush has only {{param1}} to {{param5}}", "text")
    used = placeholders(text)
    for r in recipients if used else ():
        if not any(r.value(name) for name in PLACEHOLDERS):
            raise ValidationError(
                f"the text uses {{{used[0]}}} but {r.phone_number} has no values to fill it in (a number written "
                "directly carries none): send to a group whose file has the column, or write the text out",
                "recipients",
            )
        for name in used:
            value = r.value(name)
            if len(value) > MAX_PLACEHOLDER_VALUE:
                where = r.source or r.phone_number
                raise ValidationError(
                    f"{where}: {name} of {r.phone_number} is {len(value)} characters; Octopush takes at most "
                    f"{MAX_PLACEHOLDER_VALUE} for {{{name}}}: shorten it in the group file",
                    "recipients",
                )


def with_stop_mention(text: str, type: str, configured: str) -> str:
    """A marketing text with the opt-out mention its type needs; ValidationError saying why when we cannot add it.

    `configured` is `smtp_in.stop_mention` (empty: add nothing). A premium SMS needs "STOP au " and the
    short number (or the literal XXXXX, which Octopush fills in), so only a configured mention holding that
    will do; the low-cost mention is fixed wording, so once the operator asks for mentions, "no PUB=STOP" is
    added whatever they wrote.
    """
    if has_stop_mention(text, type):
        return text
    if configured and has_stop_mention(configured, type):
        return f"{text}\n{configured}"
    if configured and type == SmsType.LOW_COST:
        return f"{text}\n{STOP_EXAMPLES[SmsType.LOW_COST]}"
    if configured:
        raise ValidationError(
            f"a premium marketing SMS must carry 'STOP au <short number>' (or 'STOP au XXXXX'), exactly so, and "
            f"smtp_in.stop_mention ({configured!r}) has none: add the mention to the text, or ask the operator "
            "to fix smtp_in.stop_mention",
            "text",
        )
    raise ValidationError(stop_mention_missing(type), "text")


def stop_mention_missing(type: str) -> str:
    """The reason given for a marketing text without its mention: what to write, case included."""
    if type == SmsType.LOW_COST:
        return "a low-cost marketing SMS must carry the mention 'no PUB=STOP', written exactly so: add it to the text"
    return (
        "a premium marketing SMS must carry the mention 'STOP au ' and your short number (e.g. 'STOP au 30101', "
        "or 'STOP au XXXXX' for Octopush to fill it in), written exactly so: add it to the text"
    )


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
        raise ValidationError(f"sender {c.sender!r} must be {SENDER_RULE}", "sender")
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
    check_placeholders(c.text, c.recipients)
    if c.purpose == Purpose.WHOLESALE and not has_stop_mention(c.text, c.type):
        raise ValidationError(stop_mention_missing(c.type), "text")


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

    async def _call(
        self, method: str, path: str, *, body: dict | None = None, params: dict | None = None
    ) -> tuple[int, bytes]:
        """One HTTP call to `{base}{path}` with the credentials: (status, body); TemporaryError when unreachable."""
        if self._session is None:
            raise RuntimeError("OctopushClient.start() was not called")
        headers = {"api-key": self._api_key, "api-login": self.api_login, "Content-Type": "application/json"}
        data = json.dumps(body) if body is not None else None
        try:
            async with self._session.request(
                method, f"{self.base_url}{path}", data=data, params=params, headers=headers
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise TemporaryError(f"Octopush did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"cannot reach Octopush: {exc.__class__.__name__}: {exc}".rstrip(": ")) from None

    async def send_once(self, c: Campaign) -> SendResult:
        """One POST, no validation and no retry: OctopushError, TemporaryError or a result."""
        try:
            status, raw = await self._call("POST", "/sms-campaign/send", body=c.payload())
            return self._answer(c, status, raw)
        except (OctopushError, TemporaryError) as error:
            self._note(False, str(error))
            raise

    def _answer(self, c: Campaign, status: int, raw: bytes) -> SendResult:
        """Turn an HTTP answer into a result; raises for refusals and faults."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status >= 500 or status in RETRYABLE_STATUS:
            raise TemporaryError(f"Octopush answered HTTP {status}", status)
        if isinstance(body, dict) and body.get("code") in TEMPORARY_CODES and not 200 <= status < 300:
            raise TemporaryError(
                f"Octopush answered code {body['code']}: {body.get('message') or 'try later'}", status, body["code"]
            )
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
        code, message = _refusal(body, raw)
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

    # ------------------------------------------------------------ account endpoints

    async def _account(self, method: str, path: str, what: str, **kw) -> Any:
        """An account call: its decoded JSON answer (None for 204); OctopushError naming `what` when refused."""
        status, raw = await self._call(method, path, **kw)
        if status >= 500 or status in RETRYABLE_STATUS:
            raise TemporaryError(f"Octopush answered HTTP {status} to {what}", status)
        if 200 <= status < 300:
            if status == 204 or not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError:
                raise TemporaryError(f"Octopush answered {what} with something that is not JSON", status) from None
        code, message = _refusal(json_or_none(raw), raw)
        raise OctopushError(code, message or f"HTTP {status}", status, action=what)

    async def check_balance(self, *, product: str | None = None, country: str | None = None) -> Balance:
        """GET /wallet/check-balance: the credit in euros, or in SMS of `product` to `country`."""
        params = {"with_details": "true", "country_code": country, "product_name": product} if product else None
        body = await self._account("GET", "/wallet/check-balance", "the balance request", params=params)
        if not isinstance(body, dict) or _float(body.get("amount")) is None:
            raise TemporaryError(f"Octopush's balance answer has no amount: {str(body)[:200]}")
        return Balance(float(body["amount"]), str(body.get("unit") or "euros"))

    async def campaign_parameters(self) -> dict:
        """GET /user/campaign-parameters: the account's settings, among them `callbacks`."""
        body = await self._account("GET", "/user/campaign-parameters", "the settings request")
        return body if isinstance(body, dict) else {}

    async def set_callbacks(self, urls: dict[str, str]) -> dict:
        """PATCH /user/campaign-parameters/edit with `{"callbacks": urls}`; the settings Octopush answers."""
        body = await self._account(
            "PATCH", "/user/campaign-parameters/edit", "the callback settings", body={"callbacks": urls}
        )
        return body if isinstance(body, dict) else {}

    async def cancel(self, ticket: str) -> None:
        """DELETE /sms-campaign/cancel: a campaign scheduled with send_at, to fewer than 3 numbers."""
        await self._account("DELETE", "/sms-campaign/cancel", "the cancellation", body={"ticket_number": ticket})


@dataclass(frozen=True)
class Balance:
    amount: float
    unit: str  # "euros", or the product asked for ("sms_premium")


def json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _refusal(body: Any, raw: bytes) -> tuple[int | None, str]:
    """Octopush's code and message from an error answer (JSON `{"code", "message"}`, else the raw text)."""
    if not isinstance(body, dict):
        return None, raw[:200].decode("utf-8", "replace")
    code = body.get("code")
    return (code if isinstance(code, int) and not isinstance(code, bool) else None), str(body.get("message") or "")


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


__all__ = [
    "Balance",
    "Campaign",
    "OctopushClient",
    "Recipient",
    "STOP_MENTIONS",
    "SendResult",
    "check_placeholders",
    "has_stop_mention",
    "personalise",
    "placeholders",
    "with_stop_mention",
    "split",
    "validate",
]
