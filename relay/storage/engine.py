"""The engine a configuration names: SQLite at `[storage] path` (the default), or PostgreSQL at `[storage] url`."""

from __future__ import annotations

from pathlib import Path

from relay.storage import database, postgres


def open_store(*, path: Path, url: str = "", password: str = "") -> database.Store | postgres.PgStore:
    """The Store of the daemon and of the commands: not started yet."""
    if url:
        return postgres.PgStore(url, password=password)
    return database.Store(path)


def connect(*, path: Path, url: str = "", password: str = "", readonly: bool = False) -> database.Connection:
    """One connection for a command, outside any Store: migrated first unless `readonly`."""
    if url:
        if not readonly:
            postgres.migrate(url, password=password)
        return postgres.connect(url, password=password)
    if not readonly:
        database.migrate(path)
    return database.connect(path, readonly=readonly)
