"""SMS part counting (GSM 03.38 7-bit or UCS-2), for previews and confirmations.

Octopush's `number_of_sms_needed` is the truth; this count tells a sender before
the call how many parts a text costs, and which characters made it UCS-2.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM = "GSM 7-bit"
UCS2 = "UCS-2"

# GSM 03.38 basic character set (the ESC code 0x1B is not a character of its own).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# Extension table: each is sent as ESC + code, so it takes two septets.
GSM_EXTENSION = frozenset("\f^{}\\[]~|€")

SINGLE = {GSM: 160, UCS2: 70}
PER_PART = {GSM: 153, UCS2: 67}


@dataclass(frozen=True)
class Parts:
    encoding: str  # "GSM 7-bit" or "UCS-2"
    units: int  # GSM septets (extension characters count 2) or UTF-16 code units
    parts: int
    unicode_chars: tuple[str, ...] = ()  # distinct characters that forced UCS-2, in order of first appearance


def count_parts(text: str) -> Parts:
    """How many SMS parts `text` needs; the empty text needs 0 parts (Octopush refuses it anyway).

    A multi-part message never splits an escape sequence or a surrogate pair
    across two parts, as phones and SMSCs do, so a part may hold one unit
    fewer than 153 (or 67) and the count can exceed a plain ceiling division.
    """
    unicode_chars = tuple(dict.fromkeys(ch for ch in text if ch not in GSM_BASIC and ch not in GSM_EXTENSION))
    if unicode_chars:
        encoding = UCS2
        sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    else:
        encoding = GSM
        sizes = [2 if ch in GSM_EXTENSION else 1 for ch in text]
    units = sum(sizes)
    if units == 0:
        parts = 0
    elif units <= SINGLE[encoding]:
        parts = 1
    else:
        parts, used, room = 1, 0, PER_PART[encoding]
        for size in sizes:
            if used + size > room:
                parts, used = parts + 1, 0
            used += size
    return Parts(encoding, units, parts, unicode_chars)
