"""Digest subscriptions' watermarks (where each one's next run starts) and the events a run sends."""

from __future__ import annotations

from typing import NamedTuple

from relay import clock
from relay.storage.callbacks import EVENT_COLUMNS, Event, newest_id
from relay.storage.database import Connection


def init_digests(db: Connection, names: list[str]) -> dict[str, str | None]:
    """A digest seen for the first time starts from now, not from the first callback ever; each one's last run."""
    top = newest_id(db)
    result = {}
    for name in names:
        # Another node starting at the same time may insert it first: its starting point is as good.
        db.execute(
            "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [name, top, clock.iso()],
        )
        result[name] = db.execute("SELECT last_run_at FROM digests WHERE name = ?", [name]).fetchone()[0]
    return result


class Watermark(NamedTuple):
    last_callback_id: int  # the run sent every event up to this id
    last_run_at: str | None


def watermark(db: Connection, name: str) -> Watermark | None:
    """Where digest `name` stands; None when it has never been started."""
    row = db.execute("SELECT last_callback_id, last_run_at FROM digests WHERE name = ?", [name]).fetchone()
    return Watermark(*row) if row else None


def _where(after: int, upto: int, kinds: list[str], countries: list[str]) -> tuple[str, list]:
    where = f"cb.id > ? AND cb.id <= ? AND cb.kind IN ({', '.join('?' * len(kinds))})"
    params: list = [after, upto, *kinds]
    if countries:
        where += f" AND cb.country IN ({', '.join('?' * len(countries))})"
        params += list(countries)
    return where, params


def count_events(db: Connection, *, after: int, upto: int, kinds: list[str], countries: list[str]) -> int:
    """How many callbacks of these kinds (and countries, if any) have ids in (`after`, `upto`]."""
    where, params = _where(after, upto, kinds, countries)
    return db.execute(f"SELECT count(*) FROM callbacks cb WHERE {where}", params).fetchone()[0]


def events(db: Connection, *, after: int, upto: int, kinds: list[str], countries: list[str], limit: int) -> list[Event]:
    """The first `limit` of those callbacks, in id order."""
    where, params = _where(after, upto, kinds, countries)
    return [
        Event(**r)
        for r in db.query(
            f"SELECT {EVENT_COLUMNS} FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id "
            f"WHERE {where} ORDER BY cb.id LIMIT ?",
            [*params, limit],
        )
    ]


def advance(db: Connection, *, sub: str, expected: int, to: int) -> bool:
    """Move a digest's watermark from `expected` to `to`; False when someone else moved it.

    One compare-and-set statement, not a read then a write: of two runs at once (two nodes, or a node and
    `octorelay digest`), the second waits for the first's commit, then finds the watermark moved.
    """
    now = clock.iso()
    moved = db.execute(
        "UPDATE digests SET last_callback_id = ?, last_run_at = ? WHERE name = ? AND last_callback_id = ?",
        [to, now, sub, expected],
    ).rowcount
    if not moved and expected == 0:  # never started: the first run creates its row
        moved = db.execute(
            "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [sub, to, now],
        ).rowcount
    return moved > 0
