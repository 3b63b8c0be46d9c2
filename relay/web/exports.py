"""The replies CSV: one set of columns for `/replies.csv` and `octorelay replies --format csv`, spreadsheet-safe;
and the web's download of it, streamed.

CSV injection (SPEC §7): a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (or a tab or
carriage return before one) as a formula. The reader's delimiter is not ours to choose: French and German
Excel split on `;`, others on tabs or `|`, so `ok;=cmd` is harmless to a `,` reader and a formula to a `;`
one. The rule is therefore independent of the delimiter: every cell is quoted, and a `'` goes in front of
every `=`, `+`, `-`, `@` that starts the cell or follows any character that is not a letter or a digit
(whatever a reader splits on, a piece then starts with `'`, which spreadsheets show as text), and in
front of a leading tab or carriage return. Words and numbers inside a text (`a-b`, `x=1`) stay as they are.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterable
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from relay import clock
from relay.storage import callbacks
from relay.storage.database import Connection
from relay.templating import country_label, sent_by
from relay.web.forms import ui_access
from relay.web.keys import CONFIG, STORE
from relay.web.pages import ReplyFilter, ui_timezone

# Rows per read: ~4 ms of a reader thread's CPU (under the GIL's 5 ms switch interval), ~25 KB of the response.
CSV_CHUNK = 250
CSV_PAUSE = 0.003  # seconds between two chunks, so the event loop has the GIL at least as often as the export

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


def csv_chunk(db: Connection, *, filters: dict[str, Any], tz: ZoneInfo, before: tuple[str, int] | None):
    """The next `CSV_CHUNK` replies after `before` as spreadsheet-safe UTF-8 CSV (the first chunk with the
    header), and where the chunk after it starts (None: the end)."""
    rows = callbacks.replies(db, limit=CSV_CHUNK, before=before, **filters)
    following = (rows[-1]["occurred_at"], rows[-1]["id"]) if len(rows) == CSV_CHUNK else None
    text = replies_csv(rows, tz, header=before is None)
    if before is None:
        text = "\ufeff" + text  # the byte-order mark makes Excel read the file as UTF-8, not the local code page
    return text.encode("utf-8"), following


@ui_access
async def replies_csv_download(request: web.Request) -> web.StreamResponse:
    """`/replies.csv`: every reply under the page's filters (all pages), newest first, streamed a chunk at a time.

    Each chunk is read and formatted on a reader thread with its own short read transaction: memory stays
    constant, the writer never waits for an export, and the event loop only hands bytes to the socket. The
    chunks are small and paced, so callbacks wait a few milliseconds for the GIL at most.
    """
    config, store = request.app[CONFIG](), request.app[STORE]
    f = ReplyFilter.from_query(request.query, config.smtp_in.region)
    tz = ui_timezone(config)
    name = f"octorelay-replies-{clock.now().astimezone(tz):%Y%m%d-%H%M}.csv"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )
    before, first = None, True
    while first or before is not None:
        body, before = await store.read(partial(csv_chunk, filters=f.filters(), tz=tz, before=before))
        if first:
            await response.prepare(request)  # after the first read: a database error still gets its 500
            first = False
        await response.write(body)
        await asyncio.sleep(CSV_PAUSE)
    await response.write_eof()
    return response
