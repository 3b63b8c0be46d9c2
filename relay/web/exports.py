"""The replies CSV: one set of columns for `/replies.csv` and `octorelay replies --format csv`, spreadsheet-safe.

CSV injection (SPEC §7): a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (or a tab or
carriage return before one) as a formula. The reader's delimiter is not ours to choose: French and German
Excel split on `;`, others on tabs or `|`, so `ok;=cmd` is harmless to a `,` reader and a formula to a `;`
one. The rule is therefore independent of the delimiter: every cell is quoted, and a `'` goes in front of
every `=`, `+`, `-`, `@` that starts the cell or follows any character that is not a letter or a digit
(whatever a reader splits on, a piece then starts with `'`, which spreadsheets show as text), and in
front of a leading tab or carriage return. Words and numbers inside a text (`a-b`, `x=1`) stay as they are.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from relay import clock
from relay.templating import country_label, sent_by

COLUMNS = (
    "time",
    "timezone",
    "number",
    "country",
    "country_name",
    "text",
    "answered_sms",
    "campaign_id",
    "campaign_label",
    "sent_by",
    "ticket",
    "time_utc",
)

# A formula character at the start, or after anything a reader might split on (not a letter or digit).
_FORMULA = re.compile(r"(?:^|(?<=[^\w]))([=+\-@])|^([\t\r])")


def neutralise(value: object) -> str:
    """A cell that no spreadsheet runs as a formula, whatever delimiter it splits the line on."""
    text = "" if value is None else str(value)
    return _FORMULA.sub(lambda m: "'" + m.group(0), text)


def row_cells(row: dict, tz: ZoneInfo) -> list[object]:
    """One reply (a `callbacks.replies` row) as the CSV's cells, before neutralising."""
    return [
        clock.local(row["occurred_at"], tz, "%Y-%m-%d %H:%M:%S"),
        tz.key,
        row["number"],
        row["country"] or "",
        country_label(row["country"]) if row["country"] else "",
        row["text"],
        row.get("answered"),
        row.get("campaign_id"),
        row.get("campaign_label"),
        sent_by(row.get("campaign_sender"), row.get("campaign_origin")) if row.get("campaign_id") else "",
        row.get("ticket"),
        row["occurred_at"],
    ]


def replies_csv(rows: Iterable[dict], tz: ZoneInfo, *, header: bool = True) -> str:
    """Header and rows, every cell quoted and neutralised, CRLF line ends (RFC 4180).

    `header=False` for the chunks after the first of a streamed export.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row_cells(row, tz)])
    return out.getvalue()
