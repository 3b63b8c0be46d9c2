"""Group CSV files: `team@domain` sends to every row, and replies name the contact."""

from __future__ import annotations

import csv
from pathlib import Path

from relay import numbers
from relay.errors import ConfigError
from relay.octopush.client import Recipient


def load_group(name: str, path: Path, region: str, source: str = "") -> tuple[Recipient, ...]:
    """Read one group's CSV (header row optional); a bad row is a ConfigError naming the config file (`source`),
    the group's file and the line."""
    where = f"{source}: groups.{name}" if source else f"groups.{name}"
    try:
        text = path.read_text(encoding="utf-8-sig")
        rows = list(csv.reader(text.splitlines()))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where}: {path} is not a UTF-8 CSV file: {exc}") from None
    if rows and rows[0] and rows[0][0].strip().lower() == "phone_number":
        rows = rows[1:]
        start = 2
    else:
        start = 1
    recipients, seen = [], set()
    for line, row in enumerate(rows, start=start):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        parsed = numbers.parse(row[0].strip(), region)  # any form SPEC §5 accepts, as in an e-mail's address
        if parsed is None:
            raise ConfigError(f"{where}: {path} line {line}: {row[0]!r} is not a valid phone number")
        number = parsed.e164
        if number in seen:
            continue
        seen.add(number)
        cells = [c.strip() for c in row[1:8]] + [""] * 7
        params = tuple(cells[2:7])
        while params and not params[-1]:
            params = params[:-1]
        # Named in a refusal (a value over Octopush's 50 characters): the file and line to fix.
        recipients.append(Recipient(number, cells[0], cells[1], params, source=f"groups.{name} ({path}) line {line}"))
    if not recipients:
        raise ConfigError(f"{where}: {path} has no phone numbers")
    return tuple(recipients)


def load_groups(groups: dict[str, Path], region: str, source: str = "") -> dict[str, tuple[Recipient, ...]]:
    return {name: load_group(name, path, region, source) for name, path in groups.items()}


def contacts(groups: dict[str, tuple[Recipient, ...]]) -> dict[str, str]:
    """Number → "First Last", for naming who replied."""
    names: dict[str, str] = {}
    for members in groups.values():
        for r in members:
            name = f"{r.first_name} {r.last_name}".strip()
            if name:
                names.setdefault(r.phone_number, name)
    return names
