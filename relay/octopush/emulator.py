"""A strict in-process emulator of Octopush's send API and callbacks, served by a real aiohttp server.

It powers the offline demo (`mode = "emulator"`) and the tests. It follows
`octopush-api.md` and is stricter than needed where Octopush is vague, so code
that passes here does not depend on leniency:

- any field that page does not document, in the body or in a recipient, is
  refused, as are wrong types, a missing `type`/`purpose`/`with_replies`, more
  than 500 recipients, a text over 1224 characters and a `send_at` without an
  offset. Octopush's code for these is undocumented: the emulator answers
  400 `{"code": 1, "message": ...}`, a code the relay treats like any
  unknown refusal;
- documented refusals use the documented codes: 101 (credentials, HTTP 401),
  103 (no `recipients` field), 110 (empty list), 117 (no valid number),
  106 (sender), 107 (text), 121/122 (STOP mention, exactly as Octopush checks
  it, case included), 120 (request_id already seen within 24 h), 104 (no
  credit left) / 105 (credit below the cost);
- personalisation: `{first_name}`, `{last_name}`, `{param1}`…`{param5}` are
  replaced per recipient (a value over 50 characters is refused), and the SMS
  parts are counted on each recipient's own text;
- the account endpoints: `GET /wallet/check-balance` (also with a product and
  country), `GET /wallet/check-credits`, `GET /user/campaign-parameters`,
  `PATCH /user/campaign-parameters/edit` (the callbacks it registers are where
  the emulator then POSTs), and `DELETE /sms-campaign/cancel` with Octopush's
  rules: a campaign with a `send_at`, to fewer than 3 recipients, at least 10
  minutes before its time, at most 1000 a month; 204, credit given back;
- delivery receipts are sent for premium SMS only, as Octopush documents.

`inject()` queues faults for the next requests, to prove the client's retries
never send twice ("lost" accepts a campaign and drops the answer; "code:N"
answers Octopush's code N, e.g. "code:153" for a congested route).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from relay.clock import to_octopush
from relay.numbers import is_valid_e164
from relay.octopush.client import (
    CALLBACK_URL_FIELDS,
    MAX_PLACEHOLDER_VALUE,
    MAX_RECIPIENTS,
    MAX_TEXT,
    PLACEHOLDER_RE,
    PURPOSES,
    SENDER_RE,
    TYPES,
    has_stop_mention,
)
from relay.octopush.parts import count_parts
from relay.statuses import Purpose, SmsType

log = logging.getLogger("relay.octopush.emulator")

PREFIX = "/v1/public"
FAULTS = ("500", "429", "timeout", "reset", "lost")
# Messages for `inject("code:N")`, from Octopush's return-code table.
CODE_MESSAGES = {
    101: "Incorrect login details.",
    103: "No recipients.",
    104: "No credit left.",
    105: "Credit insufficient for this campaign.",
    106: "Invalid sender: no accent, space or punctuation.",
    107: "Text is missing.",
    108: "Text too long.",
    109: "Sender forbidden.",
    110: "No recipients.",
    113: "Account not validated.",
    114: "Account under fraud investigation.",
    117: "No valid number in the list.",
    120: "A request with this request_id has already been sent.",
    121: "STOP mention ([STOP au 30101]) is missing from your text.",
    122: "Mention no PUB=STOP is missing.",
    152: "Low cost SMS are not allowed to this country.",
    153: "Route congested, try again later.",
}
CALLBACK_KINDS = CALLBACK_URL_FIELDS
CALLBACK_SETTINGS = (*CALLBACK_KINDS.values(), "callback_url_for_visits", "email_for_inbounds")
CANCEL_BEFORE = 600.0  # seconds: Octopush cancels a scheduled campaign only until 10 minutes before it
CANCEL_MAX_RECIPIENTS = 2  # "fewer than 3 recipients"
CANCELS_A_MONTH = 1000
BALANCE_PARAMS = {"with_details", "country_code", "product_name"}
UNIT_PRICE = {SmsType.PREMIUM: 0.055, SmsType.LOW_COST: 0.035}
REQUEST_ID_WINDOW = 24 * 3600.0
RECEIPT_AFTER = 0.1
CALLBACK_ATTEMPTS = 4

FIELDS: dict[str, type] = {
    "text": str,
    "recipients": list,
    "type": str,
    "purpose": str,
    "sender": str,
    "send_at": str,
    "with_replies": bool,
    "simulation_mode": bool,
    "request_id": str,
    "auto_optimize_text": bool,
    "auto_remove_blacklisted_numbers": bool,
    "list_name": str,
    "recipient_tracking": bool,
}
REQUIRED = ("type", "purpose", "with_replies")
RECIPIENT_FIELDS = {"phone_number", "first_name", "last_name", *(f"param{i}" for i in range(1, 6))}


class Refusal(Exception):
    """An Octopush error answer: HTTP status, code and message."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Emulator:
    """Octopush on loopback: answers sends like the real API and POSTs callbacks to `callback_url`."""

    def __init__(
        self,
        *,
        callback_url: str | None = None,
        reply_text: str = "OK, thanks!",
        reply_after: float = 2.0,
        credentials: tuple[str, str] | None = None,
        credit: float = 100.0,
        short_number: str = "30101",
    ) -> None:
        self.callback_url = callback_url
        self.reply_text = reply_text
        self.reply_after = reply_after
        self.credentials = credentials  # (api_login, api_key); None accepts any non-empty pair
        self.credit = credit
        self.short_number = short_number
        self.base_url = ""
        self.requests: list[dict[str, Any]] = []  # sms-campaign/send requests
        self.calls: list[dict[str, Any]] = []  # every request, account endpoints included
        self.sent: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []  # every callback POSTed: {"kind", "body", "status"}
        self.settings: dict[str, Any] = {"callbacks": {name: "" for name in CALLBACK_SETTINGS}}
        self.scheduled: dict[str, dict[str, Any]] = {}  # ticket -> campaign sent with a send_at still ahead
        self.cancelled: list[str] = []  # tickets cancelled through DELETE /sms-campaign/cancel
        self._cancels: dict[str, int] = {}  # "YYYY-MM" -> cancellations that month
        self._faults: collections.deque[str] = collections.deque()
        self._request_ids: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        outer = web.Application()
        outer.add_subapp(PREFIX, create_app(self))
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._runner = web.AppRunner(outer, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}{PREFIX}"
        log.info("Octopush emulator listening on %s", self.base_url)

    async def drain(self, timeout: float) -> bool:
        """Wait (bounded) for pending receipts and replies: `octorelay send` lets them reach the daemon."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        return not pending

    async def stop(self) -> None:
        self._closing.set()  # releases requests held by a "timeout" fault
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def inject(self, *faults: str) -> None:
        """Queue faults applied to the next send requests, one each, in order."""
        for fault in faults:
            code = fault.partition(":")[2]
            if fault not in FAULTS and not (fault.startswith("code:") and code.isdigit()):
                raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)} or code:N")
        self._faults.extend(faults)

    async def handle(self, request: web.Request, process) -> web.StreamResponse:
        """Record a request, apply the next injected fault, else `process(request, raw)` -> (status, answer).

        Faults are for sends only: the daemon's hourly balance check never takes one meant for a send.
        """
        raw = await request.read()
        try:
            shown: Any = json.loads(raw) if raw else None
        except ValueError:
            shown = raw.decode("utf-8", "replace")
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path[len(PREFIX) :],
            "query": dict(request.query),
            "body": shown,
            "headers": dict(request.headers),
            "status": None,
        }
        self.calls.append(entry)
        sending = process == self._process
        if sending:
            self.requests.append(entry)
        fault = self._faults.popleft() if self._faults and sending else None
        if fault in ("500", "429"):
            entry["status"] = int(fault)
            message = "Internal server error" if fault == "500" else "Too many requests"
            return web.json_response({"message": message}, status=int(fault))
        if fault == "timeout":
            await self._closing.wait()
            return _drop(request)
        if fault == "reset":
            return _drop(request)
        if fault and fault.startswith("code:"):
            code = int(fault[len("code:") :])
            entry["status"] = 401 if code == 101 else 400
            return web.json_response(
                {"code": code, "message": CODE_MESSAGES.get(code, f"Undocumented error {code}.")},
                status=entry["status"],
            )
        try:
            _authorised(request, self.credentials)
            status, answer = process(request, raw)
        except Refusal as refusal:
            status, answer = refusal.status, {"code": refusal.code, "message": refusal.message}
        if fault == "lost":
            return _drop(request)
        entry["status"] = status
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    def _process(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Validate like Octopush, then accept: (201, answer); raises Refusal."""
        body = _json_object(request, raw)
        _check_fields(body, FIELDS)
        text = body.get("text", "")
        if not text.strip():
            raise Refusal(107, "Text is missing.")
        if len(text) > MAX_TEXT:
            raise Refusal(1, f"Text is longer than {MAX_TEXT} characters.")
        if "recipients" not in body:
            raise Refusal(103, "No recipients.")
        if not body["recipients"]:
            raise Refusal(110, "The recipients list is empty.")
        if len(body["recipients"]) > MAX_RECIPIENTS:
            raise Refusal(1, f"At most {MAX_RECIPIENTS} recipients per request.")
        numbers = self._numbers(body["recipients"])
        for name in REQUIRED:
            if name not in body:
                raise Refusal(1, f"Field '{name}' is required.")
        if body["type"] not in TYPES:
            raise Refusal(1, f"Field 'type' must be one of {', '.join(TYPES)}.")
        if body["purpose"] not in PURPOSES:
            raise Refusal(1, f"Field 'purpose' must be one of {', '.join(PURPOSES)}.")
        if "sender" in body and not SENDER_RE.fullmatch(body["sender"]):
            raise Refusal(106, "Invalid sender: 3 to 11 characters, letters and digits.")
        send_at = self._send_at(body.get("send_at"))
        if body["purpose"] == Purpose.WHOLESALE and not has_stop_mention(text, body["type"]):
            raise Refusal(
                121 if body["type"] == SmsType.PREMIUM else 122,
                CODE_MESSAGES[121 if body["type"] == SmsType.PREMIUM else 122],
            )
        if not numbers:
            raise Refusal(117, "No valid number in the list.")
        # Each recipient's own text, placeholders replaced: what the phone shows, and what the parts count.
        texts = {r["phone_number"]: _personalise(text, r) for r in body["recipients"] if r["phone_number"] in numbers}
        simulation = body.get("simulation_mode", False)
        now = time.monotonic()
        request_id = body.get("request_id")
        if request_id and not simulation:
            seen = self._request_ids.get(request_id)
            if seen is not None and now - seen < REQUEST_ID_WINDOW:
                raise Refusal(120, "A request with this request_id has already been sent.")
        sms_needed = sum(count_parts(texts[n]).parts for n in numbers)
        cost = round(sms_needed * UNIT_PRICE[body["type"]], 5)
        if not simulation:
            if self.credit <= 0:
                raise Refusal(104, "No credit left.")
            if self.credit < cost:
                raise Refusal(105, "Credit insufficient for this campaign.")
        ticket = "sms_" + secrets.token_hex(7)[:13]
        if not simulation:
            self.credit = round(self.credit - cost, 5)
            if request_id:
                self._request_ids[request_id] = now
            self.sent.append({**body, "ticket": ticket, "sms_needed": sms_needed, "cost": cost, "texts": texts})
            task = self._spawn(self._callbacks(ticket, numbers, body, send_at, texts))
            if send_at is not None and send_at > datetime.now(UTC):
                self.scheduled[ticket] = {"send_at": send_at, "numbers": numbers, "cost": cost, "task": task}
        answer = {
            "sms_ticket": ticket,
            "number_of_contacts": len(numbers),
            "number_of_sms_needed": sms_needed,
            "residual_credit": self.credit,
            "total_cost": cost,
        }
        return 201, answer

    # ------------------------------------------------------------ account endpoints

    def _balance(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        query = request.query
        for name in query:
            if name not in BALANCE_PARAMS:
                raise Refusal(1, f"Unknown parameter '{name}'.")
        product, country = query.get("product_name"), query.get("country_code")
        if query.get("with_details") == "true" and product:
            if product not in TYPES:
                raise Refusal(1, f"Parameter 'product_name' must be one of {', '.join(TYPES)}.")
            if not country or len(country) != 2 or not country.isalpha():
                raise Refusal(1, "Parameter 'country_code' must be an ISO country code.")
            sms = int(self.credit / UNIT_PRICE[product] + 1e-9)
            pack = {"wallet_pack_id": "emulator", "credit": sms, "expiration_date": None}
            return 200, {"amount": sms, "unit": product, "wallet_packs": [pack]}
        return 200, {"amount": round(self.credit, 5), "unit": "euros"}

    def _credits(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        for name in request.query:
            if name != "country_codes[]":
                raise Refusal(1, f"Unknown parameter '{name}'.")
        countries = request.query.getall("country_codes[]", [])
        return 200, {
            cc.upper(): {
                "premium_sms": int(self.credit / UNIT_PRICE[SmsType.PREMIUM] + 1e-9),
                "low_cost_sms": int(self.credit / UNIT_PRICE[SmsType.LOW_COST] + 1e-9),
            }
            for cc in countries
        }

    def _parameters(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        return 200, json.loads(json.dumps(self.settings))

    def _edit_parameters(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        body = _json_object(request, raw)
        _check_fields(body, {"callbacks": dict})
        for value in body.values():
            _check_fields(value, dict.fromkeys(CALLBACK_SETTINGS, str), "callbacks.")
            for key, url in value.items():
                if url and key != "email_for_inbounds" and not url.startswith(("http://", "https://")):
                    raise Refusal(1, f"Field 'callbacks.{key}' must be an http(s) URL.")
        self.settings["callbacks"].update(body.get("callbacks", {}))
        return 200, json.loads(json.dumps(self.settings))

    def _cancel(self, request: web.Request, raw: bytes) -> tuple[int, None]:
        body = _json_object(request, raw)
        _check_fields(body, {"ticket_number": str})
        ticket = body.get("ticket_number")
        if not ticket:
            raise Refusal(1, "Field 'ticket_number' is required.")
        campaign = self.scheduled.get(ticket)
        if campaign is None:
            known = any(s["ticket"] == ticket for s in self.sent)
            raise Refusal(1, "This campaign is not scheduled: it was sent." if known else "Unknown ticket_number.")
        if len(campaign["numbers"]) > CANCEL_MAX_RECIPIENTS:
            raise Refusal(1, "Only a campaign to fewer than 3 recipients can be cancelled.")
        if (campaign["send_at"] - datetime.now(UTC)).total_seconds() < CANCEL_BEFORE:
            raise Refusal(1, "A campaign can be cancelled only until 10 minutes before it is sent.")
        month = datetime.now(UTC).strftime("%Y-%m")
        if self._cancels.get(month, 0) >= CANCELS_A_MONTH:
            raise Refusal(1, "At most 1000 cancellations a month.")
        self._cancels[month] = self._cancels.get(month, 0) + 1
        campaign["task"].cancel()
        del self.scheduled[ticket]
        self.credit = round(self.credit + campaign["cost"], 5)
        self.cancelled.append(ticket)
        return 204, None

    @staticmethod
    def _numbers(recipients: list) -> list[str]:
        """Valid numbers of the list (invalid ones are skipped, as Octopush does); refuses bad shapes."""
        numbers = []
        for i, recipient in enumerate(recipients):
            if not isinstance(recipient, dict):
                raise Refusal(1, f"recipients[{i}] must be an object.")
            _check_fields(recipient, dict.fromkeys(RECIPIENT_FIELDS, str), f"recipients[{i}].")
            number = recipient.get("phone_number")
            if number is None:
                raise Refusal(1, f"Field 'recipients[{i}].phone_number' is required.")
            for name, value in recipient.items():
                if name != "phone_number" and len(value) > MAX_PLACEHOLDER_VALUE:
                    raise Refusal(
                        1, f"Field 'recipients[{i}].{name}' is longer than {MAX_PLACEHOLDER_VALUE} characters."
                    )
            if is_valid_e164(number):
                numbers.append(number)
        return numbers

    @staticmethod
    def _send_at(value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Refusal(1, "Field 'send_at' must be ISO 8601 with an offset.") from None
        if moment.tzinfo is None:
            raise Refusal(1, "Field 'send_at' must be ISO 8601 with an offset.")
        return moment

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _callbacks(
        self, ticket: str, numbers: list[str], body: dict, send_at: datetime | None, texts: dict[str, str]
    ) -> None:
        """Delivery receipts shortly after the send time, then the canned reply."""
        wait = max(0.0, (send_at - datetime.now(UTC)).total_seconds()) if send_at else 0.0
        await asyncio.sleep(wait + RECEIPT_AFTER)
        self.scheduled.pop(ticket, None)  # gone out: no longer cancellable
        if body["type"] == SmsType.PREMIUM:
            for number in numbers:
                receipt = {
                    "channel": "sms",
                    "message_id": ticket,
                    "number": number,
                    "status": "DELIVERED",
                    "delivery_date": to_octopush(datetime.now(UTC)),
                }
                self._spawn(self._post("delivery", receipt))
        if not (self.reply_text and body.get("with_replies")):
            return
        await asyncio.sleep(max(0.0, self.reply_after - RECEIPT_AFTER))
        for number in numbers:
            reply = {
                "message_id": ticket,
                "number": number,
                "text": self.reply_text,
                "sim_card_number": self.short_number,
                "reception_date": to_octopush(datetime.now(UTC)),
            }
            self._spawn(self._post("reply", reply))

    async def _post(self, kind: str, payload: dict[str, Any]) -> None:
        """POST one callback, retried a few times; a receiver that stays down is only logged.

        It goes where the account's settings say for its kind (set with PATCH campaign-parameters/edit),
        else to `callback_url` (what the daemon gives its own emulator).
        """
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            url = self.settings["callbacks"].get(CALLBACK_KINDS[kind]) or self.callback_url
            session = self._session
            if not url or session is None:
                return
            status: int | None = None
            try:
                async with session.post(url, json=payload) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("emulator %s callback failed: %s", kind, exc)
            self.callbacks.append({"kind": kind, "body": payload, "status": status})
            if status is not None and 200 <= status < 300:
                return
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        log.warning("emulator gave up on a %s callback for %s after %d attempts", kind, payload["number"], attempt)


EMULATOR_KEY = web.AppKey("emulator", Emulator)


def create_app(emulator: Emulator) -> web.Application:
    """The API routes relative to `/v1/public`, so the app can also be mounted in another one."""
    app = web.Application()
    app[EMULATOR_KEY] = emulator
    routes = [
        ("POST", "/sms-campaign/send", emulator._process),
        ("DELETE", "/sms-campaign/cancel", emulator._cancel),
        ("GET", "/wallet/check-balance", emulator._balance),
        ("GET", "/wallet/check-credits", emulator._credits),
        ("GET", "/user/campaign-parameters", emulator._parameters),
        ("PATCH", "/user/campaign-parameters/edit", emulator._edit_parameters),
    ]
    for method, path, process in routes:
        app.router.add_route(method, path, functools.partial(_view, process=process))
    return app


async def _view(request: web.Request, *, process) -> web.StreamResponse:
    return await request.app[EMULATOR_KEY].handle(request, process)


def _authorised(request: web.Request, credentials: tuple[str, str] | None) -> None:
    login, key = request.headers.get("api-login", ""), request.headers.get("api-key", "")
    if not login or not key or (credentials is not None and (login, key) != tuple(credentials)):
        raise Refusal(101, "Incorrect login details.", 401)


def _check_fields(body: dict[str, Any], fields: dict[str, type], prefix: str = "") -> None:
    """Stricter than Octopush, on purpose: an unknown field, or one of another type, is refused (code 1)."""
    for name, value in body.items():
        if name not in fields:
            raise Refusal(1, f"Unknown field '{prefix}{name}'.")
        kind = fields[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            expected = "an object" if kind is dict else f"of type {kind.__name__}"
            raise Refusal(1, f"Field '{prefix}{name}' must be {expected}.")


def _json_object(request: web.Request, raw: bytes) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Refusal(1, "Content-Type must be application/json.")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refusal(1, "The body is not valid UTF-8 JSON.") from None
    if not isinstance(body, dict):
        raise Refusal(1, "The body must be a JSON object.")
    return body


def _personalise(text: str, recipient: dict[str, str]) -> str:
    return PLACEHOLDER_RE.sub(lambda m: recipient.get(m.group(1), ""), text)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; the response returned is never written."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)
