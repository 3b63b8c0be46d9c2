"""Rendering of the e-mails octorelay sends: Jinja2 templates to text and HTML, then a safe MIME message.

Templates live in `templates/mail/` (packaged as `relay/templates/mail/`), each
e-mail as a `NAME.txt` and `NAME.html` pair; an override directory from the
config is searched first, so an operator can restyle one e-mail without
copying the others. Subjects are built by the callers, which know the
context (`Re: <label>`, `<count> SMS replies — <name>`).
"""

from __future__ import annotations

import email.policy
import email.utils
import importlib.resources
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

import relay
from relay import numbers

# Text parts are encoded quoted-printable or base64 (whichever is shorter), never
# raw 8bit: the relay may hand mail to servers without 8BITMIME. refold_source
# "none" keeps the Message-ID headers exactly as folded here: the stdlib would
# otherwise RFC 2047-encode a long References line and break threading. Bodies
# are encoded with LF, as Python's own senders do; the outbox serialises with
# CRLF for SMTP (`POLICY.clone(linesep="\r\n")`).
POLICY = email.policy.default.clone(cte_type="7bit", refold_source="none")
_NEWLINES = re.compile(r"[\r\n]++")


def packaged_templates() -> Path:
    """`relay/templates` in an installed wheel, else the repository's top-level `templates/` (editable/dev)."""
    packaged = importlib.resources.files("relay") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(relay.__file__).resolve().parent.parent / "templates"


# ------------------------------------------------------------------ filters


intl = numbers.international  # +33612345678 → '+33 6 12 34 56 78'
country_name_iso = numbers.country_name  # FR → France


def country_name(number: str | None) -> str:
    """The English name of an E.164 number's country ('' when unknown)."""
    region = numbers.country_of(number)
    return country_name_iso(region) if region else ""


def country_label(code: str | None) -> str:
    """A section title for a country: its name, or "Unknown country" for a number phonenumbers could not place."""
    return country_name_iso(code) if code else "Unknown country"


ORIGINS = {"cli": "command line", "web": "web interface", "email": "e-mail"}


def sent_by(sender_email: str | None, origin: str | None) -> str:
    """Who sent a campaign, in the same words on every page and export: the e-mail's author, else where from."""
    return sender_email or ORIGINS.get(origin or "", origin or "")


def amount(value: float | int | None) -> str:
    """A cost or credit with at most three decimals (Octopush prices are fractions of a cent)."""
    if value is None:
        return ""
    return f"{float(value):.3f}".rstrip("0").rstrip(".") or "0"


def wrap_list(items, width: int = 76) -> str:
    """'a, b, c' over lines of at most `width`, never breaking inside an item ('+33 6 12 34 56 78' has spaces)."""
    lines: list[str] = []
    for item in (str(i) for i in items):
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return "\n".join(lines)


def nl2br(text: str | None) -> Markup:
    """Escape, then keep the author's line breaks: `white-space: pre-wrap` is ignored by Outlook's Word engine."""
    text = str(text or "")
    if "\n" not in text and "\r" not in text:
        return escape(text)  # most SMS are one line: skip the split and join
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return Markup("<br>\n").join(escape(line) for line in lines)


def quoted(text: str | None, prefix: str = "  > ") -> str:
    """Every line of `text` behind a quote prefix, so a multi-line reply stays one block in plain text."""
    return "\n".join(prefix + line for line in unix_newlines(text).split("\n"))


def unix_newlines(text: str | None) -> str:
    """CR LF and bare CR become LF, so a text part never carries stray carriage returns."""
    return str(text or "").replace("\r\n", "\n").replace("\r", "\n")


class Renderer:
    """Renders `mail/NAME.txt` and `mail/NAME.html` with the same context."""

    def __init__(self, override_dir: Path | None = None):
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(packaged_templates())))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            # Only .html is escaped: a reply like "a < b & c" must read as written in the text part.
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters.update(
            intl=intl,
            country_name=country_name,
            country_name_iso=country_name_iso,
            amount=amount,
            nl2br=nl2br,
            wrap_list=wrap_list,
            unix_newlines=unix_newlines,
            quoted=quoted,
        )

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
