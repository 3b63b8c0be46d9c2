"""Digest subscriptions' watermarks: where each one's next run starts."""

from __future__ import annotations

from relay import clock
from relay.storage.database import Connection


def init_digests(db: Connection, names: list[str]) -> dict[str, str | None]:
    """A digest seen for the first time starts from now, not from the first callback ever; each one's last run."""
    top = db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]
    result = {}
    for name in names:
        row = db.execute("SELECT last_run_at FROM digests WHERE name = ?", [name]).fetchone()
        if row is None:
            now = clock.iso()
            db.execute("INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?)", [name, top, now])
            result[name] = now
        else:
            result[name] = row[0]
    return result
