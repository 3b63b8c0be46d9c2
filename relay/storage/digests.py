"""Digest subscriptions' watermarks (where each one's next run starts) and the events a run sends."""

from __future__ import annotations

from typing import NamedTuple

from relay import clock
from relay.storage.callbacks import EVENT_COLUMNS, Event, newest_id
from relay.storage.database import Connection


def init_digests(db: Connection, names: list[str]) -> dict[str, str | None]:
    """A digest seen for the first time starts from now, not from the first callback ever; each one's last run.

    Insert-if-absent: two nodes starting at once on one database start it once, and neither fails.
    """
    top = newest_id(db)
    now = clock.iso()
    for name in names:
        db.execute(
            "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
            [name, top, now],
        )
    return {name: watermark(db, name).last_run_at for name in names}


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


def advance(db: Connection, *, sub: str, expected: int, since: str | None, to: int) -> bool:
    """Move a digest's watermark from (`expected`, `since`), as the run read it, to `to` and now; False when
    someone else moved it first.

    One conditional UPDATE, not a read and then a write: of two runs at once (two nodes, or the daemon and
    `octorelay digest`), the second waits for the first's row lock, finds the watermark moved, and sends nothing.
    The time is compared too: a run that found no new callback moves only the time, and that still counts.
    """
    moved = db.execute(
        "UPDATE digests SET last_callback_id = ?, last_run_at = ? "
        "WHERE name = ? AND last_callback_id = ? AND COALESCE(last_run_at, '') = ?",
        [to, clock.iso(), sub, expected, since or ""],
    ).rowcount
    if moved:
        return True
    if expected == 0 and since is None and watermark(db, sub) is None:  # never started: this run starts it
        return (
            db.execute(
                "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                [sub, to, clock.iso()],
            ).rowcount
            == 1
        )
    return False
