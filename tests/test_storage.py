"""The store: group commit, resumption only after commit, migrations from empty and older versions."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial

import pytest
from sqlite_utils import Database

from relay import clock
from relay.notify import RoutingFacts, store_callback
from relay.octopush.callbacks import classify
from relay.storage import callbacks, database
from relay.storage.database import StoreError, connect, migrate
from relay.storage.schema import migrations


async def test_group_commit_resumes_callers_after_their_commit(store):
    seen_committed = []

    def write(i):
        def fn(db):
            db.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", [f"k{i}"])
            return i

        return fn

    async def one(i):
        result = await store.write(write(i))
        # A fresh connection sees the row: the caller resumed after COMMIT.
        conn = sqlite3.connect(store.path)
        seen_committed.append(conn.execute("SELECT 1 FROM meta WHERE key = ?", [f"k{i}"]).fetchone() is not None)
        conn.close()
        return result

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert results == list(range(300))
    assert all(seen_committed)
    assert store.writes == 300 and store.commits < 300


async def test_one_failing_write_does_not_spoil_its_batch(store):
    await store.write(lambda db: db.execute("INSERT INTO meta VALUES ('dup', 'x')"))
    good = store.write(lambda db: db.execute("INSERT INTO meta VALUES ('a', 'x')"), small=True)
    bad = store.write(lambda db: db.execute("INSERT INTO meta VALUES ('dup', 'y')"), small=True)
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await store.read(lambda db: db.execute("SELECT count(*) FROM meta").fetchone()[0]) == 2


@pytest.mark.parametrize("small", [False, True])
async def test_a_write_with_a_bad_statement_fails_alone_and_its_batch_commits(store, small):
    """SQLite raises OperationalError for a typo'd column too: that is the write's own error, not the database's."""
    writes = [
        store.write(lambda db, i=i: db.execute("INSERT INTO meta VALUES (?, 'v')", [f"ok{i}"]), small=small)
        for i in range(5)
    ]
    writes.insert(2, store.write(lambda db: db.execute("UPDATE meta SET no_such_column = 1"), small=small))
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[2], sqlite3.OperationalError) and "no_such_column" in str(results[2])
    assert not any(isinstance(r, Exception) for i, r in enumerate(results) if i != 2)
    assert store.commits == 1 and store.last_error is None  # one batch, committed
    assert await store.read(lambda db: db.execute("SELECT count(*) FROM meta WHERE key LIKE 'ok%'").fetchone()[0]) == 5


@pytest.mark.parametrize("small", [False, True])
async def test_commit_failure_is_a_store_error(store, small):
    store._db.conn.execute("PRAGMA query_only = ON")  # the write connection refuses writes, like a read-only disk
    with pytest.raises(StoreError):
        await store.write(lambda db: db.execute("INSERT INTO meta VALUES ('x', 'y')"), small=small)
    assert store.last_error
    store._db.conn.execute("PRAGMA query_only = OFF")
    await store.write(lambda db: db.execute("INSERT INTO meta VALUES ('x', 'y')"), small=small)
    assert store.last_error is None


async def test_small_and_other_writes_share_batches(store):
    def put(i):
        return lambda db: db.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", [f"k{i}"]) and i

    results = await asyncio.gather(*(store.write(put(i), small=i % 3 != 0) for i in range(200)))
    assert results == list(range(200))
    assert await store.read(lambda db: db.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0]) == 200


async def test_a_small_write_waits_for_another_writer_off_the_loop(store):
    """Another process (the CLI) holding the write lock: the batch waits in the writer thread, not on the loop."""
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    late = asyncio.ensure_future(
        store.write(lambda db: db.execute("INSERT INTO meta VALUES ('late', 'v')"), small=True)
    )
    ticks = 0
    for _ in range(20):  # the loop keeps running while the write waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not late.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(late, 10)
    assert await store.read(lambda db: db.execute("SELECT value FROM meta WHERE key = 'late'").fetchone()[0]) == "v"


@pytest.mark.parametrize("small", [False, True])
async def test_a_write_raising_stopiteration_does_not_stop_the_writer(store, small):
    with pytest.raises(RuntimeError):
        await store.write(lambda db: next(iter([])), small=small)
    assert await store.write(lambda db: db.execute("INSERT INTO meta VALUES ('after', 'v')").rowcount, small=small)


async def test_a_stop_that_times_out_still_commits_and_answers_queued_writes(store):
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the writer waits for this lock (busy timeout)
    first = asyncio.ensure_future(store.write(lambda db: db.execute("INSERT INTO meta VALUES ('w1', 'v')")))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(store.write(lambda db: db.execute("INSERT INTO meta VALUES ('w2', 'v')")))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.stop(), 0.2)
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    await store.stop()
    check = sqlite3.connect(store.path)
    assert check.execute("SELECT count(*) FROM meta WHERE key IN ('w1', 'w2')").fetchone()[0] == 2
    check.close()


async def test_a_callback_is_stored_routed_when_no_one_gets_it_at_once(engine_store):
    """`notify.store_callback` links the campaign before the insert and asks `needs_mail` what the notifier would
    send: storage never calls back into routing."""
    store = engine_store  # on SQLite and on PostgreSQL

    def seed(db):
        now = clock.iso()
        for cid, origin, sender in [(1, "email", "author@example.org"), (2, "cli", None)]:
            database.insert(
                db,
                "campaigns",
                {
                    "id": cid,
                    "request_key": f"k{cid}",
                    "origin": origin,
                    "sender_email": sender,
                    "text": "hi",
                    "status": "sent",
                    "created_at": now,
                },
            )
            database.insert(
                db, "sends", {"campaign_id": cid, "request_id": f"r{cid}", "status": "sent", "ticket": f"sms_{cid}"}
            )

    await store.write(seed)
    asked: list[dict] = []

    def needs_mail(row: RoutingFacts) -> bool:
        asked.append(row)
        return row["kind"] == "reply" and row["sender_email"] == "author@example.org"

    async def store_one(fields: dict) -> callbacks.Stored:
        cb = classify(fields, raw=repr(fields), content_type="application/json")
        return await store.write(partial(store_callback, cb=cb, needs_mail=needs_mail))

    reply = {"message_id": "sms_1", "number": "+33600000001", "text": "yes", "reception_date": "2026-11-04 11:11:45"}
    to_author = await store_one(reply)
    assert to_author.new and to_author.pending
    assert asked[-1] == {
        "kind": "reply",
        "country": "FR",
        "campaign_origin": "email",
        "sender_email": "author@example.org",
    }
    to_no_one = await store_one({**reply, "message_id": "sms_2"})
    assert to_no_one.new and not to_no_one.pending
    receipt = {
        "message_id": "sms_2",
        "number": "+33600000001",
        "status": "DELIVERED",
        "delivery_date": "2026-11-04 11:12:00",
    }
    assert not (await store_one(receipt)).pending
    unrecognised = await store_one({"hello": "world"})
    assert unrecognised.new and not unrecognised.pending and len(asked) == 3  # never asked: nothing to send
    again = await store_one(reply)
    assert again == callbacks.Stored(to_author.id, False, False)
    rows = await store.read(
        lambda db: db.execute("SELECT id, campaign_id, routed FROM callbacks ORDER BY id").fetchall()
    )
    assert rows == [(to_author.id, 1, 0), (to_no_one.id, 2, 1), (to_no_one.id + 1, None, 1), (unrecognised.id, None, 1)]


async def test_a_reply_with_a_ticket_we_do_not_know_is_not_linked_by_its_number(engine_store):
    """SPEC §4.1: the number fallback is for replies without a ticket, or to a send Octopush gave no ticket (120)."""
    store = engine_store  # on SQLite and on PostgreSQL

    def seed(db):
        for cid, ticket, number in [(1, "sms_1", "+33600000001"), (2, None, "+33600000002")]:
            database.insert(
                db,
                "campaigns",
                {
                    "id": cid,
                    "request_key": f"k{cid}",
                    "origin": "email",
                    "sender_email": "author@example.org",
                    "text": "hi",
                    "status": "sent",
                    "created_at": clock.iso(),
                },
            )
            sid = database.insert(
                db, "sends", {"campaign_id": cid, "request_id": f"r{cid}", "status": "sent", "ticket": ticket}
            )
            database.insert(db, "recipients", {"campaign_id": cid, "send_id": sid, "number": number})

    await store.write(seed)

    async def linked(ticket: str, number: str) -> int | None:
        found = await store.read(partial(callbacks.campaign_answered, ticket=ticket, number=number))
        return found.id if found else None

    assert await linked("sms_1", "+33699999999") == 1
    assert await linked("", "+33600000001") == 1
    assert await linked("sms_from_another_app", "+33600000001") is None
    assert await linked("sms_unknown", "+33600000002") == 2  # campaign 2's send was answered 120: no ticket


def test_wal_mode_and_migrations_from_empty(tmp_path):
    path = tmp_path / "new.db"
    applied = migrate(path)
    assert applied == [m.name for m in migrations._migrations]
    db = connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for table in ("campaigns", "sends", "recipients", "callbacks", "optouts", "outbox", "messages", "digests"):
        assert db[table].exists(), table
    for view in ("replies", "receipts", "stops", "unrecognised"):
        assert view in db.view_names()
    assert migrate(path) == []


@pytest.mark.parametrize("stop_index", range(1, len(migrations._migrations)))
def test_every_older_version_migrates(tmp_path, stop_index):
    """A database left at any older version reaches the current schema and keeps its data."""
    path = tmp_path / "old.db"
    names = [m.name for m in migrations._migrations]
    db = Database(path)
    migrations.apply(db, stop_before=names[stop_index])
    db.execute("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
    db.conn.commit()
    db.close()
    assert migrate(path) == names[stop_index:]
    assert connect(path).execute("SELECT value FROM meta WHERE key = 'kept'").fetchone()[0] == "yes"


def test_m003_marks_campaigns_finished_before_it_as_notified(tmp_path):
    """Upgrading must not re-send confirmations for campaigns that were confirmed the old way."""
    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m003_campaign_notified")
    for i, status in enumerate(["sent", "failed", "queued"]):
        db.execute(
            "INSERT INTO campaigns (request_key, origin, text, status, created_at) VALUES (?, 'email', 'x', ?, 'now')",
            [f"k{i}", status],
        )
    db.conn.commit()
    db.close()
    migrate(path)
    rows = connect(path).execute("SELECT status, notified FROM campaigns ORDER BY id").fetchall()
    assert rows == [("sent", 1), ("failed", 1), ("queued", 0)]


async def test_nap_never_swallows_a_cancellation():
    """A worker's stop() cancels its nap; the cancellation must go through even as the event fires."""
    from relay.backoff import nap

    for _ in range(50):
        event = asyncio.Event()
        task = asyncio.create_task(nap(event, 60))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
