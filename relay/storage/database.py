"""The SQLite store: one write connection with group commit, and reader threads with their own connections.

sqlite-utils is synchronous. Every write is a function that joins the next
batch: the batch runs in one transaction, each write in its own savepoint,
commits once, and only then resolves each caller's future: acknowledged means
durable, and a burst of callbacks shares one fsync instead of paying one each.

Where a batch runs: when every write in it is small (`small=True`: a few
indexed statements, the hot paths), `BEGIN IMMEDIATE` and the writes run on
the event loop and only the `COMMIT` (the fsync) goes to the writer thread.
In the thread, every statement releases the GIL and then waits to get it back
from the busy event loop, up to a switch interval (5 ms) each time: e-mail
intake ran 40% faster this way (bench/smtp_in.py). Any other batch, or one
that finds another process holding the write lock, runs wholly in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from sqlite_utils import Database

from relay.errors import RelayError
from relay.storage.schema import migrations

log = logging.getLogger("relay.storage")
T = TypeVar("T")

# The handle every storage function takes (`Store.read` and `Store.write` pass it): callers hand it on and never
# build SQL with it. A sqlite-utils database on one connection, or on PostgreSQL a `postgres.PgConnection`, which
# offers the same few methods (`execute`, `query`, `executemany`, `atomic`). `is_postgres` tells them apart.
Connection: TypeAlias = Database
MAX_BATCH = 512
MAX_SMALL_BATCH = 128
BUSY_TIMEOUT_MS = 30_000


# The database's own faults: the whole transaction is gone. Any other error is that one write's (a typo'd
# column, a constraint): only its caller hears of it, and the other writes of its batch commit.
DATABASE_FAULTS = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)


class StoreError(RelayError):
    """The database could not commit (read-only, disk full, I/O error): nothing was stored."""


def database_fault(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the database failed (rather than one statement): by its primary result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in DATABASE_FAULTS


def private_dir(path: Path) -> None:
    """Create a directory (and its parents) 0700 whatever the umask; one that already exists is left as it is."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(OSError):
            os.chmod(created, 0o700)


def private_file(path: Path) -> None:
    """Create `path` empty and 0600, or take group and other permissions away from one of ours that has them.

    SQLite gives its -wal and -shm files the database's own mode, so a private database keeps them private.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        tighten(path)
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def tighten(path: Path) -> None:
    """0600 for an existing file of ours that others can read (an older version's database, its WAL)."""
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
            os.chmod(path, 0o600)


class DaemonLock:
    """One daemon per SQLite database: an exclusive `flock` on `<database>.lock`, held for the daemon's life.

    The kernel releases it when the process ends, however it ends, so a crashed daemon never leaves a stale
    lock. Commands that are not the daemon (`send`, `replies`, `db backup`...) do not take it.
    """

    def __init__(self, database: Path):
        self.database = Path(database)
        # Beside the real file: the same database reached through a symbolic link or another path is one lock.
        real = self.database.resolve()
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None

    async def start(self) -> None:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise RelayError(
                f"storage.path: {self.database} is in use by a running octorelay daemon ({who}); "
                "stop it first, or give this daemon its own storage.path"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    async def stop(self) -> None:
        if self._fd is not None:
            # The file stays: removing it would let a third daemon lock a new file while a second holds the old.
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def connect(path: Path, *, readonly: bool = False) -> Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db = Database(conn)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss, not only a killed process.
        conn.execute("PRAGMA synchronous = FULL")
    return db


@contextlib.contextmanager
def immediate_transaction(db: Connection) -> Iterator[None]:
    """One transaction for a command writing beside the daemon (outside a `Store`): the write lock first, since
    a deferred BEGIN could not upgrade past another connection's commit; rolled back on any error.
    On PostgreSQL, a plain transaction."""
    if is_postgres(db):
        with db.atomic():
            yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(path: Path) -> list[str]:
    """Apply pending migrations; returns their names. The database and its directory are made private."""
    private_dir(path.parent)
    private_file(path)
    db = connect(path)
    for suffix in ("-wal", "-shm"):
        tighten(path.with_name(path.name + suffix))
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending
    finally:
        db.close()


class Job:
    """One write waiting for its batch: the function, its caller's future, whether it may run on the loop, and
    whether it runs in a transaction of its own."""

    __slots__ = ("fn", "future", "small", "alone")

    def __init__(self, fn, future, small, alone=False):
        self.fn, self.future, self.small, self.alone = fn, future, small, alone


def next_batch(jobs: list[Job], limit: int) -> list[Job]:
    """The writes of the next transaction, from the front of `jobs`: at most `limit`, and a write that must run
    alone is a batch of its own (the others stop before it)."""
    if jobs[0].alone:
        return jobs[:1]
    end = next((i for i, job in enumerate(jobs[:limit]) if job.alone), limit)
    return jobs[:end]


class Store:
    """Owns the write connection and a small pool of read connections."""

    def __init__(self, path: Path, *, readers: int = 4):
        self.path = Path(path)
        self.commits = 0
        self.writes = 0
        self.last_error: str | None = None
        self._jobs: list[Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._db: Database | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._readers = readers
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[Database] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        applied = await asyncio.to_thread(migrate, self.path)
        if applied:
            log.info("database %s migrated: %s", self.path, ", ".join(applied))
        self._pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._db = await asyncio.get_running_loop().run_in_executor(self._writer, connect, self.path)
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="sqlite-writer")

    async def stop(self) -> None:
        """Commits what is queued, then closes every connection."""
        if self._task:
            self._stopping = True
            self._wake.set()
            # Shielded: if the caller gives up waiting, the writer still commits and answers what is queued.
            await asyncio.shield(self._task)
            self._task = None
        if self._writer:
            if self._db is not None:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._db.close)
                self._db = None
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._pool:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for db in self._read_conns:
                db.close()
            self._read_conns.clear()

    # ------------------------------------------------------------ API

    async def write(self, fn: Callable[[Connection], T], *, small: bool = False, alone: bool = False) -> T:
        """Run `fn(db)` in the next batch's transaction; returns once it is committed.

        `small=True` promises a few indexed statements and no other work: it may run on the event loop.
        `alone=True` gives it a transaction of its own: its failure or its time is no other write's.
        """
        if self._task is None or self._task.done() or self._stopping:
            raise StoreError("the store is not started")
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(Job(fn, future, small, alone))
        self._wake.set()
        return await future

    def health(self) -> str:
        """Either "ok", or why the store cannot write now (its last commit failed, or its writer stopped)."""
        if self._task is None or self._task.done() or self._stopping:
            return "not writable: the store is not running"
        if self.last_error:
            return f"not writable: {self.last_error}"
        return "ok"

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(db)` on a reader thread's own connection, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, fn)

    def _read(self, fn: Callable[[Database], T]) -> T:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path, readonly=True)
            with self._lock:
                self._read_conns.append(db)
        return fn(db)

    # ------------------------------------------------------------ the writer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._stopping:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = next_batch(self._jobs, MAX_BATCH)
            small = all(job.small for job in batch)
            if small:
                batch = batch[:MAX_SMALL_BATCH]  # the loop's share stays within a few milliseconds
            del self._jobs[: len(batch)]
            try:
                if small:
                    outcome = await self._run_small(loop, batch)
                else:
                    outcome = await loop.run_in_executor(self._writer, self._transaction, batch)
            except Exception as exc:  # noqa: BLE001 - the writer outlives a bug; this batch's callers hear of it
                log.exception("database writer: unexpected error")
                self._rollback()
                outcome = StoreError(f"the database could not commit: {exc}")
            settle(batch, outcome)

    async def _run_small(self, loop, batch: list[Job]):
        """BEGIN IMMEDIATE and the writes here, COMMIT (the fsync) in the writer thread.

        The daemon is normally the only writer, so the lock is free at once; when another process (the CLI)
        holds it, the batch goes to the thread, which may wait for it without stalling the loop.
        """
        conn = self._db.conn
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.OperationalError:
            return await loop.run_in_executor(self._writer, self._transaction, batch)
        try:
            applied = self._apply(batch)  # here: no GIL hand-off to a thread at every statement
        except BaseException:
            self._rollback()  # KeyboardInterrupt or the like: never leave the write lock held
            raise
        return await loop.run_in_executor(self._writer, self._commit, applied)

    def _apply(self, batch: list[Job]) -> list[tuple[bool, Any]] | sqlite3.Error:
        """Each write in its own savepoint (a fixed name): one bad write does not spoil the others.

        Only a fault of the database itself (`database_fault`: disk full, read-only, I/O...) ends the batch;
        any other error, `sqlite3.OperationalError` for a typo'd column included, is that write's own.
        """
        conn, results = self._db.conn, []
        try:
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job.fn(self._db)))
                except sqlite3.Error as exc:
                    if database_fault(exc) or not conn.in_transaction:
                        raise  # the whole transaction is gone
                    conn.execute("ROLLBACK TO job")
                    results.append((False, exc))
                except Exception as exc:  # noqa: BLE001 - handed back to its own caller
                    conn.execute("ROLLBACK TO job")
                    results.append((False, exc))
                conn.execute("RELEASE job")
        except sqlite3.Error as exc:
            return exc
        return results

    def _transaction(self, batch: list[Job]):
        """In the writer thread: the whole batch."""
        try:
            self._db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return self._failed(exc)
        return self._commit(self._apply(batch))

    def _commit(self, applied: list[tuple[bool, Any]] | sqlite3.Error):
        """In the writer thread: COMMIT (the fsync) what `_apply` did, or roll back the error that stopped it."""
        try:
            if isinstance(applied, sqlite3.Error):
                raise applied
            self._db.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._failed(exc)
        self.commits += 1
        self.writes += len(applied)
        self.last_error = None
        return applied

    def _rollback(self) -> None:
        if self._db.conn.in_transaction:
            try:
                self._db.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection rolls back by itself when it cannot

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        self._rollback()
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.error("database commit failed: %s", self.last_error)
        return StoreError(f"the database {self.path} could not commit: {exc}")



def settle(batch: list[Job], outcome: list[tuple[bool, Any]] | StoreError) -> None:
    """Answer each write of a committed (or failed) batch: its result, its own exception, or the batch's fault.
    Both engines' writers use it."""
    for i, job in enumerate(batch):
        if job.future.done():
            continue  # its caller was cancelled; the write itself stands
        if isinstance(outcome, StoreError):
            job.future.set_exception(outcome)
        elif outcome[i][0]:
            job.future.set_result(outcome[i][1])
        elif isinstance(outcome[i][1], StopIteration):  # a future refuses StopIteration
            job.future.set_exception(RuntimeError(f"the write raised {outcome[i][1]!r}"))
        else:
            job.future.set_exception(outcome[i][1])


def is_postgres(db: Connection) -> bool:
    """Whether `db` is a PostgreSQL connection: the engine switch of the few statements whose dialects differ."""
    return getattr(db, "dialect", "sqlite") == "postgresql"


def _insert_sql(verb: str, table: str, columns) -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def insert(db: Connection, table: str, row: Mapping[str, Any], *, or_ignore: bool = False) -> int | None:
    """A plain INSERT; its id, or None when `or_ignore` met a conflict.

    sqlite-utils' insert() reads the schema on every call, which the hot paths feel.
    """
    if is_postgres(db):  # no lastrowid: the id comes back from RETURNING (no row when the conflict ignored it)
        sql = _insert_sql("INSERT", table, row) + (" ON CONFLICT DO NOTHING" if or_ignore else "") + " RETURNING id"
        found = db.execute(sql, list(row.values())).fetchone()
        return found[0] if found else None
    cur = db.execute(_insert_sql("INSERT OR IGNORE" if or_ignore else "INSERT", table, row), list(row.values()))
    return cur.lastrowid if cur.rowcount else None


def insert_many(db: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Plain INSERTs of rows that all have the same keys."""
    if rows and is_postgres(db):
        db.executemany(_insert_sql("INSERT", table, rows[0]), [list(r.values()) for r in rows])
    elif rows:
        db.conn.executemany(_insert_sql("INSERT", table, rows[0]), [list(r.values()) for r in rows])


BACKUP_STEP = 1024  # pages copied per step (4 MiB)
BACKUP_PAUSE = 0.05  # seconds after each step: ~80 MB/s, so the disk still has time for the daemon's fsyncs


def backup(db: Connection, target: str) -> None:
    """SQLite's online backup: a consistent copy while the daemon keeps writing; 0600, like the database.

    One read transaction holds the snapshot for the whole copy, so it can go step by step (another
    connection's commits would otherwise restart it) and pause between steps: copied at full speed, a
    gigabyte of writes made the daemon's commits wait for the disk (callbacks' p99 123 ms).
    """
    private_file(Path(target))
    dest = sqlite3.connect(target)
    try:
        db.execute("BEGIN")
        try:
            db.execute("SELECT count(*) FROM meta").fetchone()  # the snapshot starts at the first read
            db.conn.backup(dest, pages=BACKUP_STEP, progress=lambda *_: time.sleep(BACKUP_PAUSE))
        finally:
            db.execute("COMMIT")
    finally:
        dest.close()
