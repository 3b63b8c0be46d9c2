"""Rendering of the e-mails octorelay sends: Jinja2 templates to text and HTML, then a safe MIME message.

Templates live in `templates/mail/` (packaged as `relay/templates/mail/`), each
e-mail as a `NAME.txt` and `NAME.html` pair; an override directory from the
config is searched first, so an operator can restyle one e-mail without
copying the others. Subjects are built by the callers, which know the
context (`Re: <label>`, `<count> SMS replies — <name>`).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import functools
import random
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

# The formatting helpers are the templates' filters; those callers use are importable from here too.
from relay.templating import (  # noqa: F401
    amount,
    country_label,
    country_name,
    country_name_iso,
    intl,
    make_env,
    packaged_templates,
    sent_by,
    unix_newlines,
)

# Text parts are encoded quoted-printable or base64 (whichever is shorter), never
# raw 8bit: the relay may hand mail to servers without 8BITMIME. refold_source
# "none" keeps the Message-ID headers exactly as folded here: the stdlib would
# otherwise RFC 2047-encode a long References line and break threading. Bodies
# are encoded with LF, as Python's own senders do; the outbox serialises with
# CRLF for SMTP (`POLICY.clone(linesep="\r\n")`).
POLICY = email.policy.default.clone(cte_type="7bit", refold_source="none")
_NEWLINES = re.compile(r"[\r\n]++")


class Renderer:
    """Renders `mail/NAME.txt` and `mail/NAME.html` with the same context."""

    def __init__(self, override_dir: Path | None = None):
        self.env = make_env(override_dir, kind="mail")

    def render(self, template: str, /, **context) -> tuple[str, str]:
        """(text, html) of e-mail `template`; a missing context key raises jinja2.UndefinedError.

        `template` is positional-only: the digest's context has a key `name`.
        """
        text = self.env.get_template(f"mail/{template}.txt").render(**context)
        html = self.env.get_template(f"mail/{template}.html").render(**context)
        return _tidy_text(text), html


def _tidy_text(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row: templates stay readable, output stays tidy."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


# ------------------------------------------------------------------ messages


def one_line(value: str) -> str:
    """Collapse CR/LF (and the whitespace around them) to one space: a header value can never start a new header."""
    return " ".join(part.strip() for part in _NEWLINES.split(str(value)) if part.strip())


def make_msgid(domain: str) -> str:
    """A fresh `<random@domain>` Message-ID; random enough to be unique without any state."""
    domain = one_line(domain).strip("<>[] ").lower() or "localhost"
    return f"<{int(time.time())}.{secrets.token_hex(10)}@{domain}>"


def _msgid(value: str) -> str:
    """`<id@domain>` with anything but printable ASCII removed: ids come from other people's mail."""
    value = "".join(ch for ch in str(value) if "!" <= ch <= "~").strip("<>")
    return f"<{value}>" if value else ""


def _fold_ids(ids: Sequence[str]) -> str:
    """Message-IDs one per line when long: never split inside an id, never encoded."""
    lines: list[str] = []
    for msgid in ids:
        if lines and len(lines[-1]) + 1 + len(msgid) <= 76:
            lines[-1] += " " + msgid
        else:
            lines.append(msgid)
    return "\n ".join(lines)


def _cte(body: str) -> str | None:
    """The stdlib encodes a part both ways to keep the shorter; a large digest goes straight to base64 (C-fast)."""
    return "base64" if len(body) > 100_000 else None


def build_message(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    reply_to: str | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """A multipart/alternative e-mail (text, then HTML) with the relay's headers.

    Every header value is sanitised rather than refused: a reply text or a
    label that carries CR/LF ends up as spaces, never as a new header, and the
    caller never has to handle an exception for content it does not control.
    """
    msg = EmailMessage(policy=POLICY)
    msg["From"] = one_line(sender)
    msg["To"] = ", ".join(one_line(addr) for addr in to if one_line(addr))
    msg["Subject"] = one_line(subject)
    msg["Date"] = email.utils.format_datetime((date or datetime.now(UTC)).astimezone(UTC))
    msg.set_raw("Message-ID", _msgid(message_id) or make_msgid("localhost"))
    if reply_to:
        msg["Reply-To"] = one_line(reply_to)
    parent = _msgid(in_reply_to or "")
    if parent:
        msg.set_raw("In-Reply-To", parent)
    refs = [ref for ref in (_msgid(r) for r in references) if ref]
    if refs:
        msg.set_raw("References", _fold_ids(refs))
    msg["Auto-Submitted"] = "auto-generated"
    text = unix_newlines(text)
    msg.set_content(text, subtype="plain", charset="utf-8", cte=_cte(text))
    msg.add_alternative(html, subtype="html", charset="utf-8", cte=_cte(html))
    return msg


# ------------------------------------------------------------------ the fast builder


@dataclass(frozen=True, slots=True)
class Composed:
    """An e-mail made by `compose`: its bytes as SMTP sends them (CRLF), and what the outbox remembers of it.

    `msg["Message-ID"]` and `msg.get("Subject")` read as they do on an `EmailMessage` (the subject decoded).
    """

    data: bytes
    message_id: str
    subject: str

    def get(self, name: str, default=None):
        return {"message-id": self.message_id, "subject": self.subject}.get(name.lower(), default)

    def __getitem__(self, name: str):
        return self.get(name)


def compose(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    reply_to: str | None = None,
    date: datetime | None = None,
) -> Composed:
    """`build_message` then `serialise`, without the stdlib's `EmailMessage`: the same headers, in the same order,
    and the same parts, made as bytes directly (about 30 x faster: the instant path makes one per callback).

    Header values that are not plain short ASCII (an RFC 2047 subject, any address list) are folded by the
    stdlib's own header classes, so they read exactly as before (the address lists, constant per subscription,
    are cached). The parts are chosen as the stdlib chooses (7bit when it can, else quoted-printable or base64,
    whichever is shorter); quoted-printable comes from `binascii`, whose soft line breaks fall at 76 characters
    where the stdlib's fall at 78: the decoded parts are the same. tests/test_compose.py parses both with the
    stdlib's strict policy and compares them.
    """
    subject = one_line(subject)
    msgid = _msgid(message_id) or make_msgid("localhost")
    head = [
        _address_header("From", one_line(sender)),
        _address_header("To", ", ".join(one_line(addr) for addr in to if one_line(addr))),
        _text_header("Subject", subject),
        f"Date: {email.utils.format_datetime((date or datetime.now(UTC)).astimezone(UTC))}\n",
        f"Message-ID: {msgid}\n",
    ]
    if reply_to:
        reply_to = one_line(reply_to)
        plain = _PLAIN_ADDRESS.fullmatch(reply_to)
        head.append(f"Reply-To: {reply_to}\n" if plain else _address_header("Reply-To", reply_to))
    parent = _msgid(in_reply_to or "")
    if parent:
        head.append(f"In-Reply-To: {parent}\n")
    refs = [ref for ref in (_msgid(r) for r in references) if ref]
    if refs:
        head.append(f"References: {_fold_ids(refs)}\n")
    text_cte, text_body = _encode_part(unix_newlines(text))
    html_cte, html_body = _encode_part(unix_newlines(html))
    boundary = _boundary()
    while boundary.encode() in text_body or boundary.encode() in html_body:  # as the stdlib does: never inside a part
        boundary = _boundary()
    head.append(
        "Auto-Submitted: auto-generated\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/alternative;\n boundary="{boundary}"\n\n'
        f'--{boundary}\nContent-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: {text_cte}\n\n'
    )
    out = "".join(head).encode("ascii")
    out += text_body
    out += (
        f'\n--{boundary}\nContent-Type: text/html; charset="utf-8"\nContent-Transfer-Encoding: {html_cte}\n'
        "MIME-Version: 1.0\n\n"
    ).encode("ascii")
    out += html_body
    out += f"\n--{boundary}--\n".encode("ascii")
    return Composed(out.replace(b"\n", b"\r\n"), msgid, subject)


# A subject that the stdlib would write unchanged: printable ASCII, single spaces, no encoded-word look-alike.
_PLAIN_TEXT = re.compile(r"[!-~]++(?: [!-~]++)*+")
_PLAIN_ADDRESS = re.compile(r"\+?[A-Za-z0-9._-]{1,64}+@[A-Za-z0-9.-]{1,253}+")
_FIELD = 78  # the stdlib's max_line_length: a longer header line is folded


def _text_header(name: str, value: str) -> str:
    if len(name) + 2 + len(value) <= _FIELD and "=?" not in value and _PLAIN_TEXT.fullmatch(value):
        return f"{name}: {value}\n"
    return _folded(name, value)


@functools.lru_cache(maxsize=1024)
def _address_header(name: str, value: str) -> str:
    """From and To are the same for every e-mail of a subscription: parsed and folded once."""
    return _folded(name, value)


def _folded(name: str, value: str) -> str:
    """The header as `EmailMessage` writes it (parsed, RFC 2047 where needed, folded at 78), LF line ends."""
    return POLICY.header_factory(name, value).fold(policy=POLICY)


def _boundary() -> str:
    """The stdlib's boundary shape: 15 "=", 19 random digits, "=="."""
    return f"==============={random.randrange(2**63 - 1):019d}=="


_BASE64_OVER = 100_000  # as `_cte`: a large part goes straight to base64


def _encode_part(body: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body ending in LF), chosen as `email.contentmanager` chooses."""
    raw = body.encode("utf-8")
    lines = raw.splitlines()
    data = b"\n".join(lines) + b"\n"
    if len(raw) <= _BASE64_OVER:
        if raw.isascii() and max((len(line) for line in lines), default=0) <= _FIELD:
            return "7bit", data
        sniff = b"\n".join(lines[:10]) + b"\n"
        if len(binascii.b2a_qp(sniff, istext=True)) <= len(binascii.b2a_base64(sniff)):
            return "quoted-printable", binascii.b2a_qp(data, istext=True)
    return "base64", base64.encodebytes(data)
