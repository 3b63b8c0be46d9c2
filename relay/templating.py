"""Jinja2 for the e-mails and the web pages: the one environment factory, and the formatting helpers that are
its filters (the CLI's tables and the CSV export use the same helpers, so a number or a cost reads alike
everywhere).

Templates live in `templates/` (packaged as `relay/templates/`): `mail/NAME.txt` and `mail/NAME.html`,
`web/NAME.html`. An override directory from the config (`[templates] dir`) is searched first, so an operator
can restyle one template without copying the others. Every filter has one meaning in both: `country_name`
takes a phone number, `country_name_iso` and `country_label` an ISO code.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

import jinja2
from markupsafe import Markup, escape

import relay
from relay import numbers


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


FILTERS = {
    "intl": intl,
    "country_name": country_name,
    "country_name_iso": country_name_iso,
    "country_label": country_label,
    "amount": amount,
    "sent_by": sent_by,
    "nl2br": nl2br,
    "wrap_list": wrap_list,
    "unix_newlines": unix_newlines,
    "quoted": quoted,
}


def make_env(override: Path | None = None, *, kind: Literal["mail", "web"]) -> jinja2.Environment:
    """The environment for e-mails or web pages: the override directory first, then the packaged templates.

    Web pages are escaped whole. E-mails are escaped in their HTML part only: a reply like "a < b & c" must
    read as written in the text part, whose trailing newline is kept.
    """
    dirs = [str(d) for d in (override, packaged_templates()) if d]
    if kind == "mail":
        autoescape = jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False)
    else:
        autoescape = True
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=kind == "mail",
        # Packaged e-mail templates are read once: checking every template's mtime at each e-mail cost 6% of the
        # daemon's time under a flood of instant notifications. An override directory is still watched, so an
        # operator's fix to a template shows at the next e-mail (the Attention page's Retry relies on it).
        auto_reload=kind != "mail" or override is not None,
    )
    env.filters.update(FILTERS)
    return env
