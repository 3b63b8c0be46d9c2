"""Octopush callbacks: tell replies, delivery receipts and STOPs apart by their fields.

Octopush signs nothing and may repeat a callback, so each gets a dedup key over
what identifies it (kind, ticket, number, text, status, date); a body we cannot
classify is kept raw rather than lost.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from relay import clock, numbers
from relay.statuses import CallbackKind


@dataclass(frozen=True)
class Callback:
    kind: CallbackKind
    ticket: str = ""
    number: str = ""
    country: str = ""
    text: str = ""
    status: str = ""
    sim_card_number: str = ""
    date_raw: str = ""
    occurred_at: str | None = None
    raw: str = ""
    content_type: str = ""

    @property
    def dedup_key(self) -> str:
        if self.kind == CallbackKind.UNRECOGNISED:
            parts = [self.kind, self.raw]
        else:
            parts = [self.kind, self.ticket, self.number, self.text, self.status, self.date_raw]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def row(self, received_at: str) -> dict:
        return {
            "kind": self.kind,
            "dedup_key": self.dedup_key,
            "ticket": self.ticket,
            "number": self.number,
            "country": self.country,
            "text": self.text,
            "status": self.status,
            "sim_card_number": self.sim_card_number,
            "date_raw": self.date_raw,
            "occurred_at": self.occurred_at or received_at,
            "received_at": received_at,
            "content_type": self.content_type,
            "raw": self.raw,
        }


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")


def _text(fields: dict, key: str) -> str:
    """A field as text, without control characters (a NUL has no place in an SMS nor in an e-mail).

    A lone surrogate (JSON `"\\ud83d"`, half an emoji) is no character: it becomes U+FFFD, as invalid UTF-8 does.
    """
    value = fields.get(key)
    if value is None:
        return ""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", value if isinstance(value, str) else str(value)))


def is_e164(text: str | None) -> bool:
    return bool(text) and _E164.fullmatch(text) is not None


def phone_number(value: str) -> tuple[str, str] | None:
    """(E.164, ISO country) when `value` is a phone number, else None: the only numbers a callback is routed by."""
    e164, country = numbers.normalise(value)
    return (e164, country) if is_e164(e164) else None


def classify(fields: dict, *, raw: str, content_type: str) -> Callback:
    """Read one callback's fields (JSON object or form) into a `Callback`."""
    date_key = next((k for k in ("reception_date", "answer_date", "delivery_date", "stop_date") if fields.get(k)), "")
    number = _text(fields, "number")
    if date_key == "stop_date" and number:
        kind = CallbackKind.STOP
    elif date_key in ("reception_date", "answer_date") and number and "text" in fields:
        kind = CallbackKind.REPLY
    elif date_key == "delivery_date" and number and fields.get("status"):
        kind = CallbackKind.DELIVERY
    else:
        return Callback(kind=CallbackKind.UNRECOGNISED, raw=raw, content_type=content_type)
    phone = phone_number(number)
    if phone is None:
        # Not a phone number ("spy@evil.example,x"): kept raw, never routed, never part of an address.
        return Callback(kind=CallbackKind.UNRECOGNISED, raw=raw, content_type=content_type)
    e164, country = phone
    date_raw = _text(fields, date_key)
    moment = clock.from_octopush(date_raw)
    return Callback(
        kind=kind,
        ticket=_text(fields, "message_id"),
        number=e164,
        country=country,
        text=_text(fields, "text") if kind != CallbackKind.DELIVERY else "",
        status=_text(fields, "status") if kind == CallbackKind.DELIVERY else "",
        sim_card_number=_text(fields, "sim_card_number"),
        date_raw=date_raw,
        occurred_at=clock.iso(moment) if moment else None,
        raw=raw,
        content_type=content_type,
    )
