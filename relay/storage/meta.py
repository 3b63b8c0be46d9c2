"""The `meta` table: the relay's own settings and tokens (callback token, emulator URL, credit alerts)."""

from __future__ import annotations

import secrets

from relay.storage.database import Connection


def meta_get(db: Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def meta_set(db: Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def meta_setdefault(db: Connection, key: str, value: str) -> str:
    """Store `value` unless `key` holds one already; the value that stands. Insert-if-absent, not read-then-write:
    two nodes starting at once on one database both get the first one's value."""
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", [key, value])
    return meta_get(db, key)


def meta_replace(db: Connection, key: str, *, old: str | None, new: str | None) -> bool:
    """Compare-and-set: `key` goes from `old` to `new` (None: absent) only if it holds `old` now; whether it did.

    What several nodes decide once (an alert said for this credit) is decided by the one whose swap succeeds.
    """
    if old is None:
        if new is None:
            return meta_get(db, key) is None
        return (
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", [key, new]).rowcount
            == 1
        )
    if new is None:
        return db.execute("DELETE FROM meta WHERE key = ? AND value = ?", [key, old]).rowcount == 1
    return db.execute("UPDATE meta SET value = ? WHERE key = ? AND value = ?", [new, key, old]).rowcount == 1


def meta_delete(db: Connection, key: str) -> None:
    db.execute("DELETE FROM meta WHERE key = ?", [key])


def ensure_callback_token(db: Connection) -> str:
    """The stored callback token, made once at first start (by whichever node starts first)."""
    token = meta_get(db, "callback_token")
    if not token:
        # An empty one left by hand counts as none; never a token another node stored since the read above.
        meta_replace(db, "callback_token", old="", new=None)
        token = meta_setdefault(db, "callback_token", secrets.token_urlsafe(24))
    return token
