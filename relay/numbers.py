"""Phone numbers and countries as people type them: one reading for the SMTP listener, the CLI, the API and the web.

The one module that calls phonenumbers: parsing, checking and formatting numbers, and naming their countries.
It sits low (only phonenumbers and pycountry under it), so any layer may use it.

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


@functools.lru_cache(maxsize=8192)
def normalise(value: str) -> tuple[str, str]:
    """(E.164, ISO country) of a number written internationally, with or without its `+` (`0033…`, `33…`), as
    Octopush posts them; else the text as given (stripped) and no country. Not checked for validity."""
    text = value.strip()
    if text and not text.startswith("+") and text.isdigit():
        text = "+" + text.removeprefix("00")
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return value.strip(), ""
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164, phonenumbers.region_code_for_number(parsed) or ""


@functools.lru_cache(maxsize=8192)  # a number is checked at intake and again at each send
def is_valid_e164(number: str) -> bool:
    """A `+` number that phonenumbers knows as valid and that is already written in E.164."""
    if not number.startswith("+"):
        return False
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
    )


@functools.lru_cache(maxsize=65536)  # a whole digest's numbers, formatted once for both parts (~100 B each)
def international(number: str | None) -> str:
    """+33612345678 → '+33 6 12 34 56 78'; anything phonenumbers cannot read is shown as given."""
    if not number:
        return ""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def country_of(number: str | None) -> str:
    """The ISO code of an E.164 number's country ("" when unknown)."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number or "", None)) or ""
    except phonenumbers.NumberParseException:
        return ""


@functools.cache
def country_name(code: str | None) -> str:
    """The English name of an ISO code (FR → France) from pycountry; the code itself when unknown.

    pycountry rather than phonenumbers' geocoder: the geocoder loads ~100 MB of data to name a country.
    """
    country = pycountry.countries.get(alpha_2=(code or "").upper()) if code else None
    if country is None:
        return code or ""
    return getattr(country, "common_name", None) or country.name


def is_region(code: str) -> bool:
    """Whether phonenumbers knows `code` as a region (FR, BE): what `smtp_in.region` and `[limits] countries` take."""
    return code in phonenumbers.SUPPORTED_REGIONS


def region_time_zones(region: str) -> tuple[str, ...]:
    """The time zones of a region's numbers (FR → Europe/Paris), from an example number of that region."""
    from phonenumbers import timezone as pn_timezone  # loaded on first use: its tables are large

    example = phonenumbers.example_number(region)
    return tuple(pn_timezone.time_zones_for_number(example)) if example else ()
