"""Pure e-mail parsing for the SMTP listener: recipients, subject tags, loop protection, the SMS text (SPEC §5).

Nothing here does I/O. Every refusal is a `Rejected` whose `.reason` is one
line a person can act on; the listener turns it into the SMTP answer. The
body rules (which part, quote and signature removal) live in
`relay.mail.body`, below this module; `Body`, `extract_text` and
`new_words_only` are imported here so that callers import one module.
"""

from __future__ import annotations

import email
import email.policy
import fnmatch
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message

from relay import numbers
from relay.clock import region_timezone
from relay.errors import Rejected

# Re-exported, so that callers import one module for e-mail parsing.
from relay.mail.body import Body, extract_text, new_words_only  # noqa: F401
from relay.octopush.rules import MAX_TEXT  # noqa: F401


class NotOurDomain(Rejected):
    """The recipient's domain is not the relay's: relaying denied (550 5.7.1)."""


class UnknownRecipient(Rejected):
    """The local part is neither a valid phone number nor a known group (550 5.1.1)."""

    def __init__(self, reason: str, local: str):
        super().__init__(reason)
        self.local = local


# ---------------------------------------------------------------------------
# Recipients


@dataclass(frozen=True)
class Address:
    """One envelope recipient's local part, resolved."""

    kind: str  # "number" | "group"
    value: str  # E.164 "+33612345678", or the group's name as the groups mapping spells it (lower-case)
    country: str  # ISO code for numbers ("FR"), "" for groups


def parse_recipient(address: str, *, domain: str, region: str, groups: Collection[str]) -> Address:
    """Resolve `local@domain` to a number or a group; any other domain is relaying, refused."""
    address = address.strip().strip("<>").strip()
    local, at, rcpt_domain = address.rpartition("@")
    if not at or rcpt_domain.strip().rstrip(".").lower() != domain.strip().rstrip(".").lower():
        raise NotOurDomain(f"relaying denied: this relay only takes mail for @{domain}")
    local = local.strip()
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1].strip()  # a quoted local part: "+33 6 12 34 56 78"@domain
    by_name = {name.lower(): name for name in groups}
    if local.lower() in by_name:
        return Address("group", by_name[local.lower()], "")
    number = numbers.parse(local, region)
    if number is None:
        raise UnknownRecipient(
            f"{local!r} is neither a valid phone number (+33612345678, 0033612345678 or national "
            f"for {region}) nor a known group",
            local,
        )
    return Address("number", *number)


def sender_glob_allows(patterns: Sequence[str], mail_from: str) -> bool:
    """True when the envelope sender matches one of the `allowed_senders` globs (any case)."""
    sender = mail_from.strip().strip("<>").strip().lower()
    if not sender:
        return False
    return any(fnmatch.fnmatchcase(sender, pattern.strip().lower()) for pattern in patterns)


# ---------------------------------------------------------------------------
# Subject tags


@dataclass(frozen=True)
class Tags:
    """What the subject's tags set; None means "the configured default"."""

    label: str  # the subject minus tags and Re:/Fwd: prefixes, whitespace collapsed
    type: str | None = None  # "sms_premium" | "sms_low_cost"
    purpose: str | None = None  # "alert" | "wholesale"
    with_replies: bool | None = None
    simulate: bool = False
    sender: str | None = None
    send_at: datetime | None = None  # aware, UTC


# tag → (field, value)
_FLAGS: dict[str, tuple[str, object]] = {
    "premium": ("type", "sms_premium"),
    "low-cost": ("type", "sms_low_cost"),
    "alert": ("purpose", "alert"),
    "marketing": ("purpose", "wholesale"),
    "replies": ("with_replies", True),
    "no-replies": ("with_replies", False),
    "simulate": ("simulate", True),
}
_VALUED = {"sender": "[sender:NAME]", "at": "[at:WHEN]"}
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_TAG_NAME = re.compile(r"[a-z][a-z_-]{0,30}")
_WORDISH = re.compile(r"[a-z][a-z _-]*[a-z]")
_PREFIX = re.compile(r"^(?>(?:re|fwd?|tr|aw|wg|sv|rif|ref|réf)\s*+(?:\[\d++\]|\(\d++\))?\s*+:\s*+)++", re.IGNORECASE)
_SENDER = re.compile(r"[a-zA-Z0-9]{3,11}")  # letters and digits: the reading of Octopush's pages safe under all
_SHORT_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{1,2}:\d{2})")


def parse_subject(subject: str, *, region: str, now: datetime | None = None) -> Tags:
    """Read the SPEC §5 tags; a near-miss tag is refused so that a typo never sends the wrong kind of SMS."""
    now = now or datetime.now(UTC)
    found: dict[str, object] = {}
    spelled: dict[str, str] = {}

    def put(field: str, value: object, tag: str) -> None:
        if field in found and found[field] != value:
            raise Rejected(f"conflicting tags {spelled[field]} and {tag} in the subject: keep only one")
        found[field], spelled[field] = value, tag

    def take(match: re.Match[str]) -> str:
        raw = " ".join(match.group(0).split())
        inner = " ".join(match.group(1).split())
        name, colon, value = inner.partition(":")
        key = name.strip().lower()
        if colon and _TAG_NAME.fullmatch(key) and not value.startswith("//"):
            value = value.strip()
            if key == "sender":
                put("sender", _sender(value, raw), raw)
            elif key == "at":
                put("send_at", _send_at(value, raw, region, now), raw)
            else:
                hint = _closest(key, _VALUED, lenient=True)  # refused anyway: the hint may guess more
                tip = f"did you mean [{hint}:{value}]?" if hint else "tags with a value are [sender:NAME] and [at:WHEN]"
                raise Rejected(f"unknown tag {raw} in the subject — {tip}")
            return " "
        word = re.sub(r"[\s_]+", "-", key)
        if not colon and word in _FLAGS:
            put(*_FLAGS[word], raw)
            return " "
        if not colon and word in _VALUED:
            raise Rejected(f"the tag {raw} needs a value: write {_VALUED[word]}")
        if not colon and _WORDISH.fullmatch(key):
            hint = _closest(word, [*_FLAGS, *_VALUED])
            if hint:
                shown = f"[{hint}]" if hint in _FLAGS else _VALUED[hint]
                raise Rejected(f"unknown tag {raw} in the subject — did you mean {shown}?")
        return raw  # [EXTERNAL], [list-name], [Ticket #42]: part of the label

    rest = _BRACKETED.sub(take, subject)
    label = " ".join(rest.split())
    label = strip_prefixes(label)
    return Tags(label=label, **found)  # type: ignore[arg-type]


def strip_prefixes(label: str) -> str:
    """A subject without its Re:/Fwd:/TR:… prefixes, as a campaign label or a reply subject wants it."""
    return _PREFIX.sub("", " ".join(label.split())).strip()


def _sender(value: str, raw: str) -> str:
    if not _SENDER.fullmatch(value):
        raise Rejected(
            f"bad sender in {raw}: it must be 3 to 11 letters or digits (a-z A-Z 0-9, no space), e.g. [sender:ACME]"
        )
    return value


def _send_at(value: str, raw: str, region: str, now: datetime) -> datetime:
    """ISO 8601, or "YYYY-MM-DD HH:MM"; a time without an offset is read in the region's timezone."""
    text = value.strip()
    short = _SHORT_TIME.fullmatch(text)
    if short:
        text = f"{short.group(1)}T{short.group(2).zfill(5)}"
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=region_timezone(region))
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise Rejected(
            f"cannot read the time in {raw}: write it as ISO 8601 (2026-12-01T09:00+01:00) "
            f"or YYYY-MM-DD HH:MM in {region} local time"
        ) from None
    if moment <= now:
        raise Rejected(f"the time in {raw} is in the past ({moment:%Y-%m-%d %H:%M} UTC): give a future time")
    return moment


def _closest(word: str, known: Collection[str], *, lenient: bool = False) -> str | None:
    """The known tag within two edits of `word` (nearest first), or None.

    Short tags allow fewer edits: every two-letter word is two edits from [at], and [FR] or [QA]
    in a subject are labels, not typos.
    """
    best: tuple[int, str] | None = None
    for candidate in known:
        allowed = 2 if lenient or len(candidate) >= 5 else 1 if len(candidate) >= 3 else 0
        if (len(word) < 3 and not lenient) or abs(len(candidate) - len(word)) > allowed:
            continue
        distance = edit_distance(word, candidate)
        if distance <= allowed and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def edit_distance(a: str, b: str) -> int:
    """Damerau–Levenshtein (optimal string alignment): an adjacent swap ("low-cots") counts as one edit."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


# ---------------------------------------------------------------------------
# Reading the message


def parse_message(data: bytes) -> Message:
    """The listener's parse: the stdlib parser with its compat32 policy.

    The body rules use only the classic Message API, and compat32 parses a
    message ten times faster than `policy.default`, whose header objects parse
    again at every access. The few headers read as text go through
    `header_text`, which reads them the modern way.
    """
    return email.message_from_bytes(data)


_ONE_MSG_ID = re.compile(r"<[^<>\s]++>")  # a well-formed Message-ID, which the modern parse keeps as is


def header_text(msg: Message, name: str) -> str:
    """The first `name` header as `policy.default` reads it (encoded words and raw UTF-8 decoded), on one
    line; "" when absent. Never raises: an unreadable header is read as raw text."""
    name = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == name:
            if value.isascii() and "=?" not in value and (name != "message-id" or _ONE_MSG_ID.fullmatch(value.strip())):
                return " ".join(value.split())  # nothing to decode: what the modern parse would give, 10x cheaper
            try:
                text = str(email.policy.default.header_fetch_parse(key, value))
            except Exception:  # noqa: BLE001 - a header the parser trips on: its raw text
                text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return " ".join(text.split())
    return ""


# ---------------------------------------------------------------------------
# Loop and list protection

_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress")
MAX_RECEIVED = 30


def is_automatic(msg: Message, mail_from: str) -> str | None:
    """Why this message must be accepted and dropped (bounce, auto-reply, list traffic, loop), else None.

    Reads raw header values so that a malformed header can never make the
    check itself fail.
    """
    if mail_from.strip() in ("", "<>"):
        return "null envelope sender (bounce)"
    try:
        headers = [(str(name).strip().lower(), _raw_value(value)) for name, value in msg.raw_items()]
    except Exception:  # noqa: BLE001 - a header we cannot read at all: judge on what we could
        headers = []
    received = 0
    for name, value in headers:
        word = value.split(";", 1)[0].strip().lower()
        if name == "auto-submitted" and word and word != "no":
            return f"Auto-Submitted: {word}"
        if name == "precedence" and word in _PRECEDENCE:
            return f"Precedence: {word}"
        if name in _AUTO_HEADERS:
            return f"{name} header"
        if name.startswith("list-"):
            return f"mailing list ({name} header)"
        if name == "received":
            received += 1
    if received >= MAX_RECEIVED:
        return f"mail loop ({received} Received headers)"
    if _is_delivery_report(msg):
        return "delivery-status report"
    return None


def _raw_value(value: object) -> str:
    return " ".join(str(value).split())


def _is_delivery_report(msg: Message) -> bool:
    try:
        for part in msg.walk():
            kind = part.get_content_type()
            if kind in ("multipart/report", "message/delivery-status", "message/global-delivery-status"):
                return True
    except Exception:  # noqa: BLE001 - an unreadable structure is not a report
        return False
    return False
