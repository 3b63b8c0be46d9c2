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
  106 (sender), 107 (text), 121/122 (STOP mention), 120 (request_id already
  seen within 24 h), 104 (no credit left) / 105 (credit below the cost);
- delivery receipts are sent for premium SMS only, as Octopush documents.

`inject()` queues faults for the next requests, to prove the client's retries
never send twice ("lost" accepts a campaign and drops the answer).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from relay.clock import to_octopush
from relay.octopush.client import MAX_RECIPIENTS, MAX_TEXT, PURPOSES, SENDER_RE, TYPES, has_stop_mention, is_valid_e164
from relay.octopush.parts import count_parts

log = logging.getLogger("relay.octopush.emulator")

PREFIX = "/v1/public"
FAULTS = ("500", "429", "timeout", "reset", "lost")
UNIT_PRICE = {"sms_premium": 0.055, "sms_low_cost": 0.035}
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
        self.requests: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []  # every callback POSTed: {"kind", "body", "status"}
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
        """Queue faults applied to the next requests, one each, in order."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        self._faults.extend(faults)

    async def handle_send(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            shown: Any = json.loads(raw)
        except ValueError:
            shown = raw.decode("utf-8", "replace")
        entry: dict[str, Any] = {"body": shown, "headers": dict(request.headers), "status": None}
        self.requests.append(entry)
        fault = self._faults.popleft() if self._faults else None
        if fault in ("500", "429"):
            entry["status"] = int(fault)
            message = "Internal server error" if fault == "500" else "Too many requests"
            return web.json_response({"message": message}, status=int(fault))
        if fault == "timeout":
            await self._closing.wait()
            return _drop(request)
        if fault == "reset":
            return _drop(request)
        try:
            status, answer = self._process(request, raw)
        except Refusal as refusal:
            status, answer = refusal.status, {"code": refusal.code, "message": refusal.message}
        if fault == "lost":
            return _drop(request)
        entry["status"] = status
        return web.json_response(answer, status=status)

    def _process(self, request: web.Request, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Validate like Octopush, then accept: (201, answer); raises Refusal."""
        login, key = request.headers.get("api-login", ""), request.headers.get("api-key", "")
        if not login or not key or (self.credentials is not None and (login, key) != tuple(self.credentials)):
            raise Refusal(101, "Incorrect login details.", 401)
        if request.content_type != "application/json":
            raise Refusal(1, "Content-Type must be application/json.")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Refusal(1, "The body is not valid UTF-8 JSON.") from None
        if not isinstance(body, dict):
            raise Refusal(1, "The body must be a JSON object.")
        for name, value in body.items():
            if name not in FIELDS:
                raise Refusal(1, f"Unknown field '{name}'.")
            if not isinstance(value, FIELDS[name]) or (FIELDS[name] is not bool and isinstance(value, bool)):
                raise Refusal(1, f"Field '{name}' must be of type {FIELDS[name].__name__}.")
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
        if body["purpose"] == "wholesale" and not has_stop_mention(text, body["type"]):
            if body["type"] == "sms_premium":
                raise Refusal(121, "Mention STOP is missing.")
            raise Refusal(122, "Mention no PUB=STOP is missing.")
        if not numbers:
            raise Refusal(117, "No valid number in the list.")
        simulation = body.get("simulation_mode", False)
        now = time.monotonic()
        request_id = body.get("request_id")
        if request_id and not simulation:
            seen = self._request_ids.get(request_id)
            if seen is not None and now - seen < REQUEST_ID_WINDOW:
                raise Refusal(120, "A request with this request_id has already been sent.")
        sms_needed = count_parts(text).parts * len(numbers)
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
            self.sent.append({**body, "ticket": ticket, "sms_needed": sms_needed, "cost": cost})
            self._spawn(self._callbacks(ticket, numbers, body, send_at))
        answer = {
            "sms_ticket": ticket,
            "number_of_contacts": len(numbers),
            "number_of_sms_needed": sms_needed,
            "residual_credit": self.credit,
            "total_cost": cost,
        }
        return 201, answer

    @staticmethod
    def _numbers(recipients: list) -> list[str]:
        """Valid numbers of the list (invalid ones are skipped, as Octopush does); refuses bad shapes."""
        numbers = []
        for i, recipient in enumerate(recipients):
            if not isinstance(recipient, dict):
                raise Refusal(1, f"recipients[{i}] must be an object.")
            for name, value in recipient.items():
                if name not in RECIPIENT_FIELDS:
                    raise Refusal(1, f"Unknown field 'recipients[{i}].{name}'.")
                if not isinstance(value, str):
                    raise Refusal(1, f"Field 'recipients[{i}].{name}' must be of type str.")
            number = recipient.get("phone_number")
            if number is None:
                raise Refusal(1, f"Field 'recipients[{i}].phone_number' is required.")
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

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _callbacks(self, ticket: str, numbers: list[str], body: dict, send_at: datetime | None) -> None:
        """Delivery receipts shortly after the send time, then the canned reply."""
        wait = max(0.0, (send_at - datetime.now(UTC)).total_seconds()) if send_at else 0.0
        await asyncio.sleep(wait + RECEIPT_AFTER)
        if body["type"] == "sms_premium":
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
        """POST one callback, retried a few times; a receiver that stays down is only logged."""
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            url, session = self.callback_url, self._session
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
    app.router.add_post("/sms-campaign/send", _send_view)
    return app


async def _send_view(request: web.Request) -> web.StreamResponse:
    return await request.app[EMULATOR_KEY].handle_send(request)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; the response returned is never written."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)
