"""`octorelay db copy`: an SQLite database into an empty PostgreSQL one, table by table, counts verified.

The copy runs in one PostgreSQL transaction: it commits only once every table is copied and every count
matches, so a failure (a dropped connection, a full disk, a count that differs) leaves the target as empty as
it was, and running the command again starts afresh. Rows are read from SQLite a batch at a time and sent with
COPY, so memory stays flat whatever the size of the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from relay.errors import RelayError
from relay.storage.callbacks import fold_counts
from relay.storage.database import Connection

BATCH = 1000  # rows read from SQLite at a time
# Kept by triggers on both engines (`callback_counts`: callbacks per kind and country; `reply_numbers`: replies
# per country and number): the target's own triggers rebuild them from the copied callbacks (as deltas, folded
# before the check), and the verification compares them with the source's all the same.
DERIVED = ("callback_counts", "reply_numbers")
# Bookkeeping of each engine's migrations: the target has its own.
OWN_BOOKKEEPING = ("_sqlite_migrations", "octorelay_migrations")
# PostgreSQL's alone (pg_schema's m015): nothing in SQLite to copy into them.
POSTGRES_ONLY = ("callback_deltas",)


class CopyError(RelayError):
    """The copy cannot start (the target holds data, the schemas differ) or did not verify: nothing was kept."""


class Copied(NamedTuple):
    table: str
    source: int  # rows in SQLite
    target: int  # rows in PostgreSQL after the copy


def source_tables(src: Connection) -> list[str]:
    """The SQLite database's tables in creation order (parents before the tables that point at them)."""
    rows = src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    return [name for (name,) in rows if name not in OWN_BOOKKEEPING]


def target_tables(dst: Connection) -> list[str]:
    """Every table in the target's current schema."""
    # pg_class, not information_schema: that one hides the tables this role has no right on.
    rows = dst.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    ).fetchall()
    return [name for (name,) in rows]


def refuse_unless_empty(dst: Connection, tables: list[str]) -> None:
    """An empty database, or one holding only the relay's empty tables (a copy that failed, run again)."""
    present = target_tables(dst)
    foreign = [t for t in present if t not in tables and t not in OWN_BOOKKEEPING + POSTGRES_ONLY]
    if foreign:
        raise CopyError(
            f"the target database holds tables that are not octorelay's ({', '.join(foreign[:5])}"
            f"{', …' if len(foreign) > 5 else ''}): copy only into a new, empty database (createdb)"
        )
    ours = [t for t in [*tables, *POSTGRES_ONLY] if t in present]
    full = [t for t in ours if dst.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
    if full:
        raise CopyError(
            f"the target database is not empty (table {', '.join(full)} holds rows): db copy never mixes two "
            "relays' data; give it a new, empty database"
        )


def _columns_sqlite(src: Connection, table: str) -> list[str]:
    return [row[1] for row in src.execute(f"PRAGMA table_info({table})").fetchall()]


def _columns_target(dst: Connection, table: str) -> dict[str, str]:
    rows = dst.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()
    return dict(rows)


def _rows(src: Connection, table: str, columns: list[str], binary: set[int]) -> Iterator[tuple]:
    cur = src.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
    while batch := cur.fetchmany(BATCH):
        for row in batch:
            if binary:
                row = tuple(
                    v.encode("utf-8", "surrogateescape") if i in binary and isinstance(v, str) else v
                    for i, v in enumerate(row)
                )
            yield row


def copy_table(src: Connection, dst: Connection, table: str) -> int:
    """Copy one table's rows (ids included) with COPY; how many were sent."""
    columns = _columns_sqlite(src, table)
    target = _columns_target(dst, table)
    missing = [c for c in columns if c not in target]
    if missing:
        raise CopyError(
            f"table {table}: the target has no column {', '.join(missing)}: the two schemas differ "
            "(is this octorelay older than the one that made the SQLite database?)"
        )
    binary = {i for i, c in enumerate(columns) if target[c] == "bytea"}
    sent = 0
    with dst.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in _rows(src, table, columns, binary):
            copy.write_row(row)
            sent += 1
    return sent


def _move_identity(dst: Connection, table: str) -> None:
    """New rows' ids continue after the copied ones (the copy gave every row its old id)."""
    if "id" not in _columns_target(dst, table):
        return
    seq = dst.execute("SELECT pg_get_serial_sequence(?, 'id')", [table]).fetchone()
    if seq and seq[0]:
        dst.execute(f"SELECT setval(?, (SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)", [seq[0]])


def _count(db: Connection, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _derived_rows(db: Connection, table: str, columns: list[str]) -> list[tuple]:
    """A derived table's rows in one order, zero counts left out (one engine may keep them, the other not)."""
    rows = [tuple(r) for r in db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()]
    return sorted(r for r in rows if r[-1])


def copy_database(
    src: Connection, dst: Connection, *, progress: Callable[[Copied], None] | None = None
) -> list[Copied]:
    """Copy every table of `src` (SQLite, migrated) into `dst` (PostgreSQL, migrated, empty) in one transaction.

    Returns each table's counts; raises CopyError (and keeps nothing) when a count differs.
    """
    tables = source_tables(src)
    refuse_unless_empty(dst, tables)
    unknown = [t for t in tables if t not in target_tables(dst)]
    if unknown:
        raise CopyError(f"the target has no table {', '.join(unknown)}: the two schemas differ")
    done: list[Copied] = []
    src.execute("BEGIN")  # one snapshot of the source: every table as of the same moment
    try:
        with dst.atomic():
            for table in tables:
                if table in DERIVED:
                    continue
                sent = copy_table(src, dst, table)
                _move_identity(dst, table)
                copied = Copied(table, _count(src, table), _count(dst, table))
                if not copied.source == sent == copied.target:
                    raise CopyError(
                        f"table {table}: {copied.source} rows in SQLite, {sent} sent, {copied.target} in "
                        "PostgreSQL: nothing was kept"
                    )
                done.append(copied)
                if progress:
                    progress(copied)
            fold_counts(dst, wait=True)  # the target's triggers counted the copied callbacks as deltas
            for table in DERIVED:
                if table not in tables:
                    continue
                copied = Copied(table, _count(src, table), _count(dst, table))
                columns = _columns_sqlite(src, table)
                if _derived_rows(src, table, columns) != _derived_rows(dst, table, columns):
                    raise CopyError(f"table {table}: the target's counts differ from the source's: nothing was kept")
                done.append(copied)
                if progress:
                    progress(copied)
    finally:
        src.execute("COMMIT")
    return done
