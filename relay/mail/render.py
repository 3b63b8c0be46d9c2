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
import re
import secrets
import time
from collections.abc import Sequence
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
