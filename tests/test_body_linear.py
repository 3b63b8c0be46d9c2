"""The body clean-up takes time linear in the message's size, whatever the message (SPEC §5, issue 16).

Hypothesis builds texts from the pieces every rule looks at (attribution words, header names, separators,
quote marks, footers, long runs of one character, HTML tags) and repeats each drawn pattern to 25 KB and
to 100 KB: a rule that rescans lines or backtracks on a long line costs sixteen times more for four times
the text, a linear one four. CPU time of this process is measured, the best of three, and both sizes in
the same run, so a slow or loaded machine does not fail the test; only the growth does.
"""

from __future__ import annotations

import time
from email.message import EmailMessage

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from relay.mail.body import extract_text, html_to_text, new_words_only
from relay.mail.parsing import Rejected

SIZE = 100_000
# Four times the text may cost at most ten times the time: linear is four, quadratic sixteen.
# Both sizes are timed in the same run, so a slow or loaded machine slows both alike.
GROWTH = 10
FLOOR = 0.020  # under 20 ms per 100 KB is fast whatever the ratio says
CEILING = 1.0  # seconds per 100 KB, whatever the ratio: a safety net, not the rule

PIECES = [
    "On ",
    "Le ",
    "Am ",
    "wrote:",
    "a écrit :",
    "schrieb",
    "写道：",
    "님이 작성:",
    " <j@x.org>",
    " (",
    ")",
    ":",
    "：",
    "> ",
    ">",
    ">>",
    "\n",
    "\n\n",
    " ",
    "  ",
    "\t",
    "a",
    "Hello",
    "é",
    "1",
    "2026",
    "@",
    "<",
    ">:",
    "From: ",
    "De : ",
    "Sent: ",
    "Envoyé : ",
    "To: ",
    "Subject: ",
    "发件人: ",
    "*From:* ",
    "Date: ",
    "-- ",
    "--",
    "-----Original Message-----",
    "-" * 40,
    "_" * 32,
    "=" * 40,
    "*",
    "-",
    "_",
    "=",
    "Sent from my iPhone",
    "Get Outlook for iOS<https://aka.ms/o0ukef>",
    "Begin forwarded message:",
    "---- On Mon wrote ----",
    " " * 500,
    "-" * 3000,
    ">" * 2000,
    "a" * 5000,
    "\u00a0",
    "\u200e",
]
HTML_PIECES = [
    "<div>",
    "</div>",
    "<blockquote>",
    "</blockquote>",
    '<div class="gmail_quote">',
    "<br>",
    "<p>",
    "</p>",
    '<div style="border-top:solid #E1E1E1 1.0pt">',
    '<div id="divRplyFwdMsg">',
    "<hr>",
    "&nbsp;",
    "&lt;",
    '<blockquote type="cite">',
    '<div class="moz-cite-prefix">',
    "<b>",
    "</b>",
]

patterns = st.lists(st.sampled_from(PIECES), min_size=1, max_size=30)
html_patterns = st.lists(st.sampled_from(PIECES + HTML_PIECES), min_size=1, max_size=30)


def _to_size(pattern: list[str], size: int = SIZE) -> str:
    unit = "".join(pattern)
    return (unit * (size // len(unit) + 1))[:size]


def _cpu(fn, *args) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        try:
            fn(*args)
        except Rejected:
            pass
        best = min(best, time.process_time() - started)
    return best


def _assert_linear(fn, make, pattern) -> None:
    small = _cpu(fn, make(_to_size(pattern, SIZE // 4)))
    large = _cpu(fn, make(_to_size(pattern)))
    assert large < CEILING, f"{large:.3f} s for 100 KB"
    assert large < max(GROWTH * small, FLOOR), f"{small:.4f} s for 25 KB but {large:.4f} s for 100 KB"


def _same(text: str) -> str:
    return text


def _message(text: str, subtype: str) -> EmailMessage:
    msg = EmailMessage()
    msg.set_content(text, subtype=subtype)
    return msg


# No explain phase: it replays the failing example under a tracer, which would time the tracer.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)


@settings(max_examples=40, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(patterns)
def test_plain_text_clean_up_is_linear(pattern):
    _assert_linear(new_words_only, _same, pattern)
    _assert_linear(extract_text, lambda text: _message(text, "plain"), pattern)


@settings(max_examples=25, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(html_patterns)
def test_html_clean_up_is_linear(pattern):
    _assert_linear(lambda h: new_words_only(html_to_text(h)), _same, pattern)
    _assert_linear(extract_text, lambda html: _message(html, "html"), pattern)


def test_a_long_message_costs_in_proportion():
    """Ten times the text costs about ten times the time, not a hundred (the rules never rescan)."""
    unit = "Hi\n\nOn Mon, Jan 12, 2026 at 9:41 AM John <j@x.org> wrote:\n> q\nanswer\nFrom: a <b@c>\nSent: x\n"
    small = unit * (SIZE // len(unit))
    large = small * 10
    assert _cpu(new_words_only, large) < 30 * max(_cpu(new_words_only, small), 0.002)
