"""What Octopush accepts in a campaign, as plain data and checks (octopush-api.md): no I/O, no client.

The configuration checks its defaults against these rules at start, the client and the e-mail parser check
each campaign against them, and the emulator refuses what they refuse.
"""

from __future__ import annotations

import re

from relay.statuses import Purpose, SmsType

MAX_TEXT = 1224
MAX_RECIPIENTS = 500
TYPES = tuple(SmsType)
PURPOSES = tuple(Purpose)
# Letters and digits only: Octopush's pages disagree on spaces (code 106 says "no accent, space or punctuation"),
# and only this reading is safe under both.
SENDER_RE = re.compile(r"[a-zA-Z0-9]{3,11}")
SENDER_RULE = "3 to 11 letters or digits, without space, accent or punctuation (Octopush's code 106)"
# The mentions exactly as Octopush checks them, case included (octopush-api.md): premium marketing needs
# "STOP au " and the short number, or the literal "XXXXX" that Octopush fills in; low-cost needs "no PUB=STOP".
STOP_MENTIONS = {
    SmsType.PREMIUM: re.compile(r"STOP au (?:[0-9]++|XXXXX)"),
    SmsType.LOW_COST: re.compile(r"no PUB=STOP"),
}
STOP_EXAMPLES = {SmsType.PREMIUM: "STOP au 30101", SmsType.LOW_COST: "no PUB=STOP"}


def has_stop_mention(text: str, type: str) -> bool:
    """Whether a marketing text carries the opt-out mention Octopush requires for this type, exactly."""
    pattern = STOP_MENTIONS.get(type)
    return bool(pattern and pattern.search(text))
