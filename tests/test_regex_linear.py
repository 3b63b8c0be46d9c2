"""Every pattern in relay/ runs in time linear in its input (issue 14, SPEC §5): no e-mail can hold the loop.

A backtracking pattern costs nothing on ordinary text and everything on a crafted line: `From` followed by
200,000 spaces once held the event loop 55 s. So instead of trusting review, this sweeps every compiled
pattern the package keeps (module attributes, and patterns inside module-level dicts, lists and tuples)
with adversarial inputs built from the pattern's own words and from characters its quantifiers take.
A linear pattern answers each in microseconds to milliseconds; a quadratic one takes seconds at this size.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time

import pytest

import relay

SIZE = 40_000
# A linear search over 40 kB takes well under 10 ms even on a loaded machine; a quadratic one, seconds.
BOUND = 0.5
FILLERS = [" ", "\t", "\n", "\r\n", "*", "-", "_", ">", ":", "=", ".", "0", "a", "[", "<", " -", "a ", "> ", "  ", "é"]


def _patterns() -> list[tuple[str, re.Pattern]]:
    found: dict[int, tuple[str, re.Pattern]] = {}

    def add(name: str, value: object) -> None:
        if isinstance(value, re.Pattern):
            found.setdefault(id(value), (name, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}[{key!r}]", item)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)

    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            add(f"{info.name}.{attr}", value)
    return sorted(found.values(), key=lambda item: item[0])


def _words(pattern: re.Pattern) -> list[str]:
    """Literal words in the pattern, so inputs reach past its alternations (`From` + spaces …)."""
    words = re.findall(r"[^\W\d_]{2,}", pattern.pattern)
    return [""] + sorted(set(words), key=words.index)[:16]


def _inputs(pattern: re.Pattern, size: int) -> list[str]:
    inputs = []
    for word in _words(pattern):
        for filler in FILLERS:
            run = filler * (size // len(filler))
            inputs.append(word + run + "\x00")
            inputs.append(word + run + word + "\x00")
            inputs.append((word + filler) * (size // (len(word) + len(filler))) + "\x00")
    return inputs


def _timed(pattern: re.Pattern, text: str) -> float:
    data = text.encode() if isinstance(pattern.pattern, bytes) else text
    started = time.perf_counter()
    pattern.search(data)  # search tries every start: it is the worst case of match, sub and findall too
    return time.perf_counter() - started


PATTERNS = _patterns()


def test_the_sweep_finds_the_mail_patterns():
    names = {name for name, _ in PATTERNS}
    assert any(name.startswith("relay.mail.body.") for name in names)
    assert any(name.startswith("relay.mail.parsing.") for name in names)


@pytest.mark.parametrize(("name", "pattern"), PATTERNS, ids=[name for name, _ in PATTERNS])
def test_pattern_is_linear_on_adversarial_input(name, pattern):
    """Every shape at a small size picks the worst few; those, 20 times larger, must stay within the bound."""
    small = _inputs(pattern, SIZE // 20)
    worst = sorted(range(len(small)), key=lambda i: _timed(pattern, small[i]), reverse=True)[:4]
    large = _inputs(pattern, SIZE)
    for i in worst:
        elapsed = _timed(pattern, large[i])
        assert elapsed < BOUND, f"{name} took {elapsed:.2f} s on {large[i][:30]!r}… ({len(large[i])} characters)"
