"""relay/numbers.py is the one place phonenumbers is called, and a low layer any other may use."""

from __future__ import annotations

import ast
from pathlib import Path

from relay import numbers

RELAY = Path(__file__).resolve().parent.parent / "relay"


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_numbers_module_calls_phonenumbers_and_it_imports_nothing_of_relay():
    callers = sorted(
        str(path.relative_to(RELAY))
        for path in RELAY.rglob("*.py")
        if any(name.split(".")[0] == "phonenumbers" for name in imports(path))
    )
    assert callers == ["numbers.py"]
    assert not [name for name in imports(RELAY / "numbers.py") if name.split(".")[0] == "relay"]


def test_the_numbers_module_reads_checks_formats_and_places_numbers():
    assert numbers.parse("06 12 34 56 78", "FR") == ("+33612345678", "FR")
    assert numbers.normalise("0033612345678") == ("+33612345678", "FR")
    assert numbers.normalise("33612345678") == ("+33612345678", "FR")
    assert numbers.normalise(" spy@evil.example ") == ("spy@evil.example", "")
    assert numbers.is_valid_e164("+33612345678") and not numbers.is_valid_e164("+33 6 12 34 56 78")
    assert not numbers.is_valid_e164("0612345678") and not numbers.is_valid_e164("+3361234")
    assert numbers.international("+33612345678") == "+33 6 12 34 56 78"
    assert numbers.international("not a number") == "not a number" and numbers.international(None) == ""
    assert numbers.country_of("+32470123456") == "BE" and numbers.country_of("x") == ""
    assert numbers.country_name("BE") == "Belgium" and numbers.country_name("ZZ") == "ZZ"
    assert numbers.is_region("FR") and not numbers.is_region("XX")
    assert "Europe/Paris" in numbers.region_time_zones("FR")
