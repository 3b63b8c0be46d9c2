"""What DATA needs from an e-mail's bytes, by a parse that cannot fail.

A module of its own, light to import: an e-mail over `CHILD_PARSE` is read in a child process
(relay/mail/offload.py), which imports this module and its parsers, not the SMTP listener (0.09 s instead of
0.7 s before a first large e-mail can be read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.utils import getaddresses

from relay.mail.parsing import (
    Body,
    Rejected,
    Tags,
    extract_text,
    header_text,
    is_automatic,
    parse_message,
    parse_subject,
)

log = logging.getLogger("relay.smtp")

# A message's MIME parts may nest this deep (real mail: under 10); deeper is refused as unreadable.
MAX_DEPTH = 50


def address_of(text: str) -> str:
    """The bare, lower-case address of a header or envelope value ("" when there is none)."""
    pairs = getaddresses([text or ""])
    return pairs[0][1].strip().lower() if pairs else ""


MAX_THREAD = 50  # Message-IDs of References kept: the chain's newest; a header can be as long as a message


@dataclass
class Parsed:
    """What DATA needs from the message."""

    message_id: str = ""
    references: list[str] = field(default_factory=list)  # In-Reply-To and References, oldest first
    thread: list[str] = field(default_factory=list)  # its References, else its In-Reply-To (RFC 5322 §3.6.4)
    automatic: str | None = None
    rejected: str | None = None
    unreadable: str | None = None  # why the structure cannot be read: 554, never a retry
    tags: Tags | None = None
    body: Body | None = None


def read_message(data: bytes, mail_from: str, region: str, *, own_address: str = "", own_domain: str = "") -> Parsed:
    """What DATA needs, from a parse that cannot fail: a structure it cannot read is `unreadable`.

    Reading the same bytes again gives the same result, so a failure here is answered 554 (permanent), not
    a 4xx that the sender's MTA would retry for days.
    """
    try:
        return _read_message(data, mail_from, region, own_address, own_domain)
    except RecursionError:  # the stdlib parser recurses once per nesting level
        return Parsed(unreadable="its MIME parts are nested too deep")
    except Exception:  # noqa: BLE001 - any other parser failure on these bytes would recur at every retry
        log.exception("cannot read a message's structure; answered 554")
        return Parsed(unreadable="its structure is broken")


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the raw message's multiparts may nest deeper than `limit`, told before the stdlib parser runs:
    its cost grows with the depth squared (2 s of CPU for 1,000 levels), so a deep message is refused unparsed.

    An upper bound from the bytes alone: each `boundary=` opens a level until its closing `--boundary--`
    line (the parser's own errors and slowness stay the backstop for what this misses). Nearly all mail has
    fewer `multipart/` mentions than `limit` and is not scanned at all.
    """
    if data.lower().count(b"multipart/") <= limit:
        return False
    stack: list[bytes] = []
    for line in data.split(b"\n"):
        found = line.lower().find(b"boundary")
        value = line[found + 8 :].lstrip() if found >= 0 else b""
        if value[:1] in (b"=", b"*"):  # `boundary=x`, `boundary = x` (the stdlib reads both), `boundary*0=x`
            stack.append(value.partition(b"=")[2].strip().split(b";")[0].strip(b"\"' \t\r"))
            if len(stack) > limit:
                return True
        elif line.startswith(b"--"):
            closing = line.rstrip()[2:]
            if closing.endswith(b"--") and closing[:-2] in stack:  # closes that level and every one inside it
                while stack.pop() != closing[:-2]:
                    pass
    return False


def mime_depth(msg) -> int:
    """How deep the MIME parts nest, counted without recursion."""
    deepest, stack = 0, [(msg, 1)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload)
    return deepest


def _read_message(data: bytes, mail_from: str, region: str, own_address: str, own_domain: str) -> Parsed:
    if nests_deeper_than(data, MAX_DEPTH):
        return Parsed(unreadable=f"its MIME parts are nested more than {MAX_DEPTH} deep")
    msg = parse_message(data)
    if mime_depth(msg) > MAX_DEPTH:
        return Parsed(unreadable=f"its MIME parts are nested more than {MAX_DEPTH} deep")
    automatic = is_automatic(msg, mail_from) or _from_ourselves(msg, mail_from, own_address, own_domain)
    if automatic:
        return Parsed(automatic=automatic)
    parsed = Parsed(
        message_id=header_text(msg, "Message-ID"),
        references=f"{header_text(msg, 'In-Reply-To')} {header_text(msg, 'References')}".split(),
        thread=(header_text(msg, "References") or header_text(msg, "In-Reply-To")).split()[-MAX_THREAD:],
    )
    try:
        parsed.tags = parse_subject(header_text(msg, "Subject"), region=region)
        parsed.body = extract_text(msg)
    except Rejected as exc:
        parsed.rejected = exc.reason
    return parsed


def _from_ourselves(msg, mail_from: str, own_address: str, own_domain: str) -> str | None:
    """Mail from the relay's own smtp_out.from address, or with a Message-ID in its domain: a loop."""
    if own_address and own_address in (address_of(mail_from), address_of(header_text(msg, "From"))):
        return f"sent from the relay's own address {own_address} (mail loop)"
    message_id = header_text(msg, "Message-ID").strip().strip("<>").lower()
    if own_domain and message_id.endswith("@" + own_domain):
        return "a Message-ID this relay made (mail loop)"
    return None
