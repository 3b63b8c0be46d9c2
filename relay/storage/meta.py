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


def meta_delete(db: Connection, key: str) -> None:
    db.execute("DELETE FROM meta WHERE key = ?", [key])


def ensure_callback_token(db: Connection) -> str:
    """The stored callback token, made once at first start (by whichever node inserts it first)."""
    token = meta_get(db, "callback_token")
    if not token:
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('callback_token', ?) ON CONFLICT DO NOTHING",
            [secrets.token_urlsafe(24)],
        )
        token = meta_get(db, "callback_token")
    return token
