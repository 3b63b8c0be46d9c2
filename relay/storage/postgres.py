"""The PostgreSQL engine (psycopg 3): the storage functions' connection, the schema's migrations, the Store.

The storage functions are synchronous and written once, with `?` placeholders: `PgConnection` offers them
the few methods of a sqlite-utils Database they use (`execute`, `query`, `executemany`, `atomic`) and turns
`?` into psycopg's `%s`. Where the two SQL dialects differ, the storage module holds both variants
(`database.is_postgres`).

`PgStore` has the SQLite Store's API and its group commit: writes run in batches on connections of a psycopg
pool, each batch one transaction, and each write returns after its batch's COMMIT: acknowledged means
committed. A lost connection or a server that is down raises `StoreError` (a callback then gets 503) and
the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from relay.logs import mask_url as masked
from relay.storage import pg_schema
from relay.storage.database import Job, StoreError, next_batch, settle

log = logging.getLogger("relay.storage")
T = TypeVar("T")

# pg_advisory_lock key of the migrations: one node migrates, the others wait and find nothing left to do.
MIGRATION_LOCK = 0x6F63746F72656C61  # "octorela"
CONNECT_TIMEOUT = 5  # seconds to open a connection
CHECKOUT_TIMEOUT = 3.0  # seconds a write waits for a pooled connection before it is answered StoreError
POOL_SIZE = 12  # connections (and threads) per daemon
RETRIES = 3  # a batch that meets a deadlock or a serialization failure runs again
# Writes per transaction. Each write's savepoint that writes is a subtransaction with an id of its own; past 64
# in one transaction PostgreSQL's per-session cache of them overflows, and every other session's snapshot then
# looks them up in pg_subtrans (a known slowdown of busy servers). A batch of 64 already shares its fsync.
MAX_BATCH = 64
WRITERS = 2  # batches in flight at once


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """`?` placeholders to psycopg's `%s`, and a literal `%` doubled (psycopg reads `%` everywhere)."""
    out, quote = [], ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        else:
            out.append("%s" if ch == "?" else ch)
    return "".join(out)


def _params(params: Sequence[Any] | None) -> list[Any] | None:
    # The schema keeps SQLite's 0/1 integers: a Python bool would be sent as a PostgreSQL boolean.
    return None if params is None else [int(p) if isinstance(p, bool) else p for p in params]


class PgConnection:
    """What a storage function receives on PostgreSQL: the sqlite-utils methods it uses, on a psycopg connection.

    `node` names the daemon holding it, for claims of work (`claimed_by`).
    """

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection, node: str = ""):
        self.conn = conn
        self.node = node

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor:
        cur = self.conn.cursor()
        if params:
            cur.execute(translate(sql), _params(params))
        else:
            cur.execute(sql)
        return cur

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Iterator[dict]:
        cur = self.conn.cursor(row_factory=dict_row)
        if params:
            cur.execute(translate(sql), _params(params))
        else:
            cur.execute(sql)
        return iter(cur)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql), [_params(r) for r in rows])

    def atomic(self):
        return self.conn.transaction()

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def has_schema(self) -> bool:
        """Whether a daemon has made the tables here (a command that only reads creates nothing)."""
        return self.execute("SELECT to_regclass('octorelay_migrations') IS NOT NULL").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


def connect(url: str, *, password: str = "", autocommit: bool = True) -> PgConnection:
    """One connection for a command (`octorelay replies`, `db purge`...): each statement commits alone unless
    it runs in `atomic()`."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **_kwargs(password))
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database {masked(url)}: {_reason(exc)}") from None
    return PgConnection(conn)


def _kwargs(password: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "octorelay"}
    if password:
        kwargs["password"] = password
    return kwargs


def _reason(exc: BaseException) -> str:
    """One line of psycopg's message (libpq's may span several) with no secret in it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def migrate(url: str, *, password: str = "") -> list[str]:
    """Apply the PostgreSQL migrations not applied yet, each in its own transaction; their names.

    Under an advisory lock: when several nodes start at once, one migrates and the others wait for it.
    """
    with psycopg.connect(url, autocommit=True, **_kwargs(password)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS octorelay_migrations "
                "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM octorelay_migrations")}
            applied = []
            for name, fn in pg_schema.steps:
                if name in done:
                    continue
                with conn.transaction():
                    fn(PgConnection(conn))
                    conn.execute("INSERT INTO octorelay_migrations (name) VALUES (%s)", [name])
                applied.append(name)
            return applied
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])


class PgStore:
    """A pool of PostgreSQL connections; writes are committed in groups, each answered after its COMMIT.

    Group commit, as SQLite's Store: waiting writes join the next batch, which runs on one pooled connection in
    one transaction, each write in its own savepoint (one bad write fails alone), and commits once. Measured
    with 32 callbacks in flight on a loaded 2-core machine, one transaction per write gave 460-700 callbacks/s
    (p50 40-60 ms: every write paid a checkout, a BEGIN, a COMMIT and its WAL flush, and threads fought for
    the GIL); batched, 660-1,100 callbacks/s, p50 27-36 ms, on the same machine. WRITERS batches run at once,
    so a slow batch (one that waits for another node's row lock) does not stop the next.
    """

    def __init__(self, url: str, *, password: str = "", size: int = POOL_SIZE, node: str | None = None):
        self.url = url
        self.path = masked(url)  # what messages name: the database, never its password
        self.password = password
        self.size = size
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self.commits = 0
        self.writes = 0
        self.last_error: str | None = None
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._jobs: list[Job] = []
        self._wake: asyncio.Event | None = None
        self._writers: list[asyncio.Task] = []
        self._running = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            applied = await asyncio.to_thread(migrate, self.url, password=self.password)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {_reason(exc)}") from None
        if applied:
            log.info("database %s migrated: %s", self.path, ", ".join(applied))
        self._pool = psycopg_pool.ConnectionPool(
            self.url,
            kwargs=_kwargs(self.password),
            min_size=1,
            max_size=self.size,
            open=False,
            timeout=CHECKOUT_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,  # a connection the server dropped is replaced
            reconnect_timeout=0,  # keep trying to reconnect for as long as the server is away
            name="octorelay",
        )
        await asyncio.to_thread(self._pool.open, wait=True, timeout=CONNECT_TIMEOUT * 2)
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="pg")
        self._wake = asyncio.Event()
        self._running = True
        self._writers = [asyncio.create_task(self._run(), name=f"pg-writer-{i}") for i in range(WRITERS)]

    async def stop(self) -> None:
        """Commits what is queued, then closes every connection."""
        self._running = False
        if self._writers:
            self._wake.set()
            # Shielded: if the caller gives up waiting, the writers still commit and answer what is queued.
            await asyncio.shield(asyncio.gather(*self._writers))
            self._writers = []
        if self._threads:
            await asyncio.to_thread(self._threads.shutdown, wait=True)
            self._threads = None
        if self._pool:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    # ------------------------------------------------------------ API

    async def write(self, fn: Callable[[PgConnection], T], *, small: bool = False, alone: bool = False) -> T:
        """Run `fn(db)` in the next batch's transaction; returns once it is committed. (`small` is SQLite's.)
        `alone=True` gives it a transaction of its own: its failure or its time is no other write's."""
        if not self._running:
            raise StoreError("the store is not started")
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(Job(fn, future, small=False, alone=alone))
        self._wake.set()
        return await future

    async def read(self, fn: Callable[[PgConnection], T]) -> T:
        """Run `fn(db)` in a transaction that is rolled back: it sees one snapshot of each statement's time."""
        if not self._running:
            raise StoreError("the store is not started")
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._read, fn)

    def health(self) -> str:
        """Either "ok", or why the store cannot write now (its last commit failed, or it is stopped)."""
        if not self._running:
            return "not writable: the store is not running"
        if self.last_error:
            return f"not writable: {self.last_error}"
        return "ok"

    # ------------------------------------------------------------ the writers

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if not self._running:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = next_batch(self._jobs, MAX_BATCH)
            del self._jobs[: len(batch)]
            if self._jobs:
                self._wake.set()  # the other writer takes the rest
            try:
                outcome = await loop.run_in_executor(self._threads, self._transaction, batch)
            except Exception as exc:  # noqa: BLE001 - the writer outlives a bug; this batch's callers hear of it
                log.exception("database writer: unexpected error")
                outcome = StoreError(f"the database could not commit: {exc}")
            settle(batch, outcome)

    def _transaction(self, batch: list[Job]) -> list[tuple[bool, Any]] | StoreError:
        """In a thread: the batch in one transaction, each write in its own savepoint; retried whole after a
        deadlock or serialization failure (nothing of it was committed)."""
        for attempt in range(RETRIES):
            results: list[tuple[bool, Any]] = []
            try:
                with self._pool.connection() as conn, conn.transaction():
                    db = PgConnection(conn, self.node)
                    conn.execute(b"SAVEPOINT job", prepare=False)
                    for i, job in enumerate(batch):
                        results.append(self._apply(conn, db, job.fn, last=i + 1 == len(batch)))
            except psycopg.errors.TransactionRollback:
                if attempt + 1 < RETRIES:
                    continue
                return self._failed(sys.exc_info()[1])
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                return self._failed(exc)
            self.commits += 1
            self.writes += len(batch)
            self.last_error = None
            return results
        raise AssertionError("unreachable")

    @staticmethod
    def _apply(conn: psycopg.Connection, db: PgConnection, fn, *, last: bool) -> tuple[bool, Any]:
        """One write in the savepoint `job`: its own error (a typo'd column, a constraint) rolls back only it. The
        database's (a lost connection, a deadlock) ends the batch.

        The savepoint is released and the next one made in one round trip (two statements in one simple-protocol
        query), and the last one is left to the COMMIT: a write costs its own statements and one round trip
        more, where psycopg's nested `transaction()` cost two (SAVEPOINT, RELEASE) and each is a hand-off between
        this thread and the busy event loop.
        """
        try:
            value = fn(db)
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:  # it caught its own error
                raise psycopg.errors.InFailedSqlTransaction("the write left its transaction failed")
            if not last:
                conn.execute(b"RELEASE SAVEPOINT job; SAVEPOINT job", prepare=False)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception as exc:  # noqa: BLE001 - handed back to its own caller
            conn.execute(b"ROLLBACK TO SAVEPOINT job", prepare=False)  # the savepoint stays, for the next write
            if isinstance(exc, StopIteration):  # a future refuses StopIteration
                exc = RuntimeError(f"the write raised {exc!r}")
            return False, exc
        return True, value

    def _read(self, fn: Callable[[PgConnection], T]) -> T:
        try:
            with self._pool.connection() as conn, conn.transaction(force_rollback=True):
                return fn(PgConnection(conn, self.node))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._failed(exc) from None
        except StopIteration as exc:
            raise RuntimeError(f"the read raised {exc!r}") from None

    def _failed(self, exc: BaseException) -> StoreError:
        self.last_error = f"{type(exc).__name__}: {_reason(exc)}"
        log.error("database %s: %s", self.path, self.last_error)
        return StoreError(f"the database {self.path} could not commit: {_reason(exc)}")


@contextlib.contextmanager
def transaction(db: PgConnection) -> Iterator[None]:
    """One transaction for a command writing beside the daemons (outside a `Store`)."""
    with db.conn.transaction():
        yield
