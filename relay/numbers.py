"""Phone numbers and countries as people type them: one reading for the SMTP listener, the CLI, the API and the web.

Every entry point that takes a number accepts the forms SPEC §5 lists (`+33612345678`, `0033612345678`,
`33612345678`, national `0612345678` read with `smtp_in.region`, with any spaces, dots, dashes or brackets),
so `replies --number 0611111111`, `/api/replies?number=…` and `/conversations/0611111111` find what the web
list shows.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import phonenumbers
import pycountry

_SEPARATORS = re.compile(r"[\s.\-()/]+")
_DIGITS = re.compile(r"\+?[0-9]{3,20}")
_FRAGMENT = re.compile(r"\+?[0-9]{1,20}")


# Names people use that ISO 3166 does not.
_ALIASES = {"UK": "GB", "ENGLAND": "GB", "USA": "US", "HOLLAND": "NL"}


class Number(NamedTuple):
    e164: str  # "+33612345678"
    country: str  # ISO code, "FR"; "" when phonenumbers cannot place it


@functools.lru_cache(maxsize=8192)
def parse(text: str, region: str) -> Number | None:
    """The number `text` means, in E.164 with its country; None when it is not a valid phone number.

    The forms are tried most specific first: `+…` is international; `00…` is international, else national;
    `0…` is national; bare digits are read in the region first (phonenumbers reads "33612345678" in FR as
    +33 6…, and a US "2015550123" must not become +20, Egypt), then as international ("4915112345678").
    """
    digits = _SEPARATORS.sub("", text or "")
    if not _DIGITS.fullmatch(digits):
        return None
    if digits.startswith("+"):
        candidates = [(digits, None)]
    elif digits.startswith("00"):
        candidates = [("+" + digits[2:], None), (digits, region)]
    elif digits.startswith("0"):
        candidates = [(digits, region)]
    else:
        candidates = [(digits, region), ("+" + digits, None)]
    for candidate, where in candidates:
        try:
            number = phonenumbers.parse(candidate, where)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return Number(
                phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
                phonenumbers.region_code_for_number(number) or "",
            )
    return None


def search_term(text: str, region: str) -> str | None:
    """What a number filter searches for: the E.164 form of a whole number, else the digits of a fragment
    ("1111" finds every number holding it); None when `text` holds no number at all."""
    number = parse(text, region)
    if number:
        return number.e164
    digits = _SEPARATORS.sub("", text or "")
    return digits if _FRAGMENT.fullmatch(digits) else None


def country_code(text: str) -> str | None:
    """The ISO 3166 alpha-2 code for a code or an English name ("be", "BEL", "Belgium"); None when unknown."""
    text = " ".join((text or "").split())
    if not text:
        return None
    if text.upper() in _ALIASES:
        return _ALIASES[text.upper()]
    try:
        country = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return country.alpha_2
