"""The storage functions on both engines, from one suite: SQLite (a file) and PostgreSQL (the session's cluster).

`engine_store` (conftest) is started on `storage_engine`, so each test here runs twice. On PostgreSQL several
writes run at once, each on its own connection: the tests that gather writes check what several daemons on one
database rely on (one row per callback, one claim per piece of work, one digest run).
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial

import pytest

from relay import clock
from relay.octopush.callbacks import classify
from relay.storage import callbacks, campaigns, database, digests, guards, meta, outbox, queues, retention
from relay.storage.database import StoreError

pytestmark = pytest.mark.timeout(60)

REPLY = {"message_id": "", "number": "+33600000001", "text": "Yes Please", "reception_date": "2026-11-04 11:11:45"}


def reply(**fields) -> callbacks.Callback:
    body = {**REPLY, **fields}
    return classify(body, raw=repr(body), content_type="application/json")


async def test_a_write_returns_after_its_commit_and_a_bad_one_fails_alone(engine_store):
    results = await asyncio.gather(
        *(engine_store.write(partial(meta.meta_set, key=f"k{i}", value="v")) for i in range(20)),
        engine_store.write(lambda db: db.execute("UPDATE meta SET no_such_column = 1")),
        return_exceptions=True,
    )
    assert results[:20] == [None] * 20 and isinstance(results[20], Exception)
    assert not isinstance(results[20], StoreError)  # the write's own error, not the database's
    assert await engine_store.read(lambda db: db.execute("SELECT count(*) FROM meta").fetchone()[0]) == 20
    with pytest.raises(RuntimeError):  # a future refuses StopIteration: it comes back as a RuntimeError
        await engine_store.write(lambda db: next(iter([])))
    assert engine_store.health() == "ok"


async def test_the_same_callback_at_once_is_stored_once(engine_store):
    stored = await asyncio.gather(
        *(engine_store.write(partial(callbacks.store_callback, cb=reply())) for _ in range(12))
    )
    assert sum(s.new for s in stored) == 1 and len({s.id for s in stored}) == 1
    assert await engine_store.read(lambda db: db.execute("SELECT count(*) FROM callbacks").fetchone()[0]) == 1
    await engine_store.write(
        partial(
            campaigns.remember_message, message_id="<a@x>", number=REPLY["number"], campaign_id=None, direction="out"
        )
    )
    await engine_store.write(
        partial(
            campaigns.remember_message, message_id="<a@x>", number=REPLY["number"], campaign_id=None, direction="out"
        )
    )
    assert await engine_store.read(partial(campaigns.made_here, message_id="<a@x>"))


async def test_one_callback_token_whoever_makes_it(engine_store):
    tokens = await asyncio.gather(*(engine_store.write(meta.ensure_callback_token) for _ in range(8)))
    assert len(set(tokens)) == 1 and len(tokens[0]) >= 24


async def test_a_digest_run_moves_its_watermark_once(engine_store):
    await engine_store.write(partial(digests.init_digests, names=["daily"]))
    for i in range(3):
        await engine_store.write(partial(callbacks.store_callback, cb=reply(text=f"r{i}")))
    top = await engine_store.read(callbacks.newest_id)
    since = (await engine_store.read(partial(digests.watermark, name="daily"))).last_run_at  # as a run reads it
    moved = await asyncio.gather(
        *(engine_store.write(partial(digests.advance, sub="daily", expected=0, since=since, to=top)) for _ in range(6))
    )
    assert moved.count(True) == 1
    assert (await engine_store.read(partial(digests.watermark, name="daily"))).last_callback_id == top
    # A subscription never started: its first run creates the row, once.
    firsts = await asyncio.gather(
        *(engine_store.write(partial(digests.advance, sub="new", expected=0, since=None, to=top)) for _ in range(4))
    )
    assert firsts.count(True) == 1


def _mails(db, n: int) -> None:
    for i in range(n):
        outbox.add_mail(
            db, kind="reply", recipients=["a@example.org"], message=b"x" * 10, message_id=f"<m{i}@x>", subject="s",
            now=clock.iso(),
        )  # fmt: skip


async def test_concurrent_outbox_claims_never_share_an_e_mail(engine_store):
    await engine_store.write(partial(_mails, n=40))
    until = clock.iso(clock.now().replace(year=clock.now().year + 1))
    claims = await asyncio.gather(
        *(engine_store.write(partial(outbox.claim_due, now=clock.iso(), until=until, limit=7)) for _ in range(8))
    )
    ids = [row["id"] for claim in claims for row in claim]
    assert len(ids) == len(set(ids)) == 40
    assert all(bytes(row["message"]) == b"x" * 10 for claim in claims for row in claim)
    # At a restart, leases held by a running daemon stay on PostgreSQL (they may be another's); SQLite's
    # one daemon makes them due at once.
    pending = await engine_store.write(partial(outbox.make_pending_due, now=clock.iso()))
    assert pending == 40
    again = await engine_store.write(partial(outbox.claim_due, now=clock.iso(), until=until, limit=100))
    assert len(again) == (0 if _pg(engine_store) else 40)


def _pg(store) -> bool:
    return hasattr(store, "node")


def _campaign(db, *, sends: int) -> list[int]:
    cid = campaigns.add_campaign(
        db,
        {
            "request_key": f"k{clock.iso()}{threading.get_ident()}", "origin": "cli", "text": "hi",
            "type": "sms_premium", "purpose": "alert", "status": "queued", "created_at": clock.iso(),
            "with_replies": True, "simulation": False, "sms_budget": 1,
        },
    )  # fmt: skip
    return [
        campaigns.add_send(
            db,
            {
                "campaign_id": cid,
                "chunk": i,
                "request_id": f"r{cid}-{i}",
                "status": "pending",
                "deadline": clock.iso(),
                "not_before": None,
                "created_at": clock.iso(),
            },
        )  # fmt: skip
        for i in range(sends)
    ]


async def test_each_send_is_claimed_once_and_a_dead_claim_is_taken_over_on_postgresql(engine_store):
    [send_ids] = [await engine_store.write(partial(_campaign, sends=5))]
    due = await engine_store.read(partial(campaigns.due_sends, now=clock.iso(), exclude=[], limit=10))
    assert due == send_ids
    claims = await asyncio.gather(
        *(engine_store.write(partial(campaigns.claim_send, send_id=s, now=clock.iso())) for s in send_ids * 3)
    )
    assert sum(c is not None for c in claims) == 5
    assert await engine_store.read(partial(campaigns.due_sends, now=clock.iso(), exclude=[], limit=10)) == []
    # Past the lease (its daemon died): on PostgreSQL another daemon takes the call over, once.
    later = clock.iso(clock.now().replace(year=clock.now().year + 1))
    due = await engine_store.read(partial(campaigns.due_sends, now=later, exclude=[], limit=10))
    assert due == (send_ids if _pg(engine_store) else [])
    taken = await asyncio.gather(
        *(engine_store.write(partial(campaigns.claim_send, send_id=send_ids[0], now=later)) for _ in range(3))
    )
    assert sum(c is not None for c in taken) == (1 if _pg(engine_store) else 0)
    assert await engine_store.write(partial(campaigns.renew_send_claims, send_ids=send_ids, now=clock.iso())) == 5
    await engine_store.write(
        partial(
            campaigns.record_send_sent, send_id=send_ids[0], ticket="sms_1", already_sent=False, sms_needed=1,
            cost=0.05, residual_credit=9.0, at=clock.iso(),
        )
    )  # fmt: skip
    await engine_store.write(
        partial(
            campaigns.record_send_sent, send_id=send_ids[0], ticket=None, already_sent=True, sms_needed=1,
            cost=0.05, residual_credit=9.0, at=clock.iso(),
        )
    )  # fmt: skip
    row = await engine_store.read(partial(campaigns.campaign, campaign_id=1))
    assert row["sends"][0]["ticket"] == "sms_1"  # a taken-over call's code 120 keeps the first ticket


async def test_the_read_side_answers_the_same_on_both_engines(engine_store):
    for i, (number, text) in enumerate([("+33600000001", "Yes Please"), ("+32470000002", "no"), ("+33600000003", "")]):
        await engine_store.write(partial(callbacks.store_callback, cb=reply(number=number, text=text or f"t{i}")))
    read = engine_store.read
    assert [r["text"] for r in await read(partial(callbacks.replies, text="yes please"))] == ["Yes Please"]
    assert await read(partial(callbacks.count_replies, number="3247")) == 1
    assert await read(callbacks.reply_counts) and await read(partial(callbacks.country_counts)) == [
        ("FR", 2),
        ("BE", 1),
    ]
    assert await read(partial(callbacks.country_counts, text="t")) == [("FR", 1)]
    assert [c["country"] for c in await read(partial(callbacks.country_summary))] == ["FR", "BE"]
    # From the kept counts (m012, m014) as from a scan of the replies (since="0"), on both engines.
    kept = await read(partial(callbacks.country_summary))
    assert [(c["replies"], c["numbers"]) for c in kept] == [(2, 2), (1, 1)]
    assert kept == await read(partial(callbacks.country_summary, since="0"))
    assert len(await read(partial(callbacks.reply_hours))) == 2
    assert len(list(await read(lambda db: list(callbacks.iter_replies(db, chunk=1))))) == 3
    assert await read(partial(guards.used_since, since="2000-01-01", sender="A@Example.org")) == 0
    assert await read(partial(guards.top_sender_since, since="2000-01-01")) == 0
    assert (await read(queues.depths))["unrecognised_callbacks"] == 0
    counts = await engine_store.write(partial(retention.purge_batch, cutoff=clock.iso(), digests=[]))
    assert counts == {"callbacks": 0, "outbox": 0, "messages": 0}  # none routed yet: kept


async def test_migrations_run_once_when_several_daemons_start_at_once(pg_url):
    from relay.storage import pg_schema, postgres
    from tests.conftest import PG_PASSWORD

    applied = await asyncio.gather(
        *(asyncio.to_thread(postgres.migrate, pg_url, password=PG_PASSWORD) for _ in range(4))
    )
    names = [name for one in applied for name in one]
    assert sorted(names) == sorted(name for name, _ in pg_schema.steps)


def test_placeholders_are_translated_outside_quotes_only():
    from relay.storage.postgres import translate

    assert translate("SELECT ? WHERE a LIKE '%?%' AND b = ?") == "SELECT %s WHERE a LIKE '%%?%%' AND b = %s"


def test_insert_on_both_engines_is_one_helper(tmp_path):
    db = database.connect(tmp_path / "x.db")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE)")
    assert database.insert(db, "t", {"k": "a"}) == 1
    assert database.insert(db, "t", {"k": "a"}, or_ignore=True) is None
    assert not database.is_postgres(db)


def test_storage_url_and_password_keys(tmp_path, capsys):
    """`[storage] url` is checked at start and shown without its password; the password comes from the file."""
    from relay import config as config_mod
    from relay.cli import main
    from relay.errors import ConfigError

    secret = tmp_path / "db_password"
    secret.write_text("s3cret-from-a-file\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "postgresql://relay:inline-pw@db:5432/octo"\npassword_file = "{secret}"\n')
    cfg = config_mod.load(path, env={})
    assert (cfg.storage.engine, cfg.storage.password) == ("postgresql", "s3cret-from-a-file")
    assert cfg.storage.where == "postgresql://relay:***@db:5432/octo" and "s3cret" not in repr(cfg.storage)
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "storage: postgresql postgresql://relay:***@db:5432/octo" in out and "inline-pw" not in out
    path.write_text('[storage]\nurl = "postgresql://relay@db:5432/octo"\n')
    assert config_mod.load(path, env={"OCTORELAY_DB_PASSWORD": "from-env-123"}).storage.password == "from-env-123"
    for bad in ("mysql://db/octo", "postgresql://db:99999/octo", "postgresql://db"):
        path.write_text(f'[storage]\nurl = "{bad}"\n')
        with pytest.raises(ConfigError, match="storage.url"):
            config_mod.load(path, env={})


async def test_held_campaigns_move_once_whoever_sweeps(engine_store):
    """Expiry and the approval e-mail's state are compare-and-set: of two daemons sweeping, one acts."""
    [send_id] = await engine_store.write(partial(_campaign, sends=1))
    await engine_store.write(
        lambda db: db.execute("UPDATE campaigns SET status = 'held', approval_mailed = 0 WHERE id = 1")
    )
    asked = await asyncio.gather(
        *(engine_store.write(partial(guards.mark_mailed, campaign_id=1, done=False)) for _ in range(4))
    )
    assert asked.count(True) == 1
    released = await asyncio.gather(
        *(engine_store.write(partial(guards.release, campaign_id=1, status="cancelled")) for _ in range(4))
    )
    assert released.count(True) == 1
    assert not await engine_store.write(partial(guards.mark_mailed, campaign_id=1, done=False))  # never back


def _scanned(db) -> tuple[dict, dict]:
    """Replies per country and distinct numbers per country, counted from the rows themselves."""
    rows = db.execute(
        "SELECT coalesce(country, ''), count(*), count(DISTINCT number) FROM callbacks WHERE kind = 'reply' "
        "GROUP BY 1"
    ).fetchall()
    return {c: n for c, n, _ in rows}, {c: k for c, _, k in rows if k}


def _kept(db) -> tuple[dict, dict]:
    """The same, as the readers find it in the kept counts (and, on PostgreSQL, the deltas not folded yet)."""
    summary = callbacks.country_summary(db)
    return {r["country"]: r["replies"] for r in summary}, {r["country"]: r["numbers"] for r in summary if r["numbers"]}


async def test_kept_counts_follow_inserts_updates_and_a_purge_before_and_after_a_fold(engine_store, storage_engine):
    numbers = ["+33600000001", "+33600000002", "+32470000001", "+4915100000001"]
    for i in range(24):
        await engine_store.write(partial(callbacks.store_callback, cb=reply(number=numbers[i % 4], text=f"r{i}")))
    read, write = engine_store.read, engine_store.write
    assert await read(_kept) == await read(_scanned)
    moves = [
        "UPDATE callbacks SET country = 'DE' WHERE id % 5 = 0",
        "UPDATE callbacks SET number = '+33600000009' WHERE id % 7 = 0",
        "UPDATE callbacks SET kind = 'stop' WHERE id % 6 = 0",
        "UPDATE callbacks SET country = country WHERE id % 2 = 0",  # changes nothing
        "DELETE FROM callbacks WHERE number = '+32470000001'",  # every reply of one number: no row left for it
        "DELETE FROM callbacks WHERE id % 4 = 1",  # many rows in one statement, as the purge deletes
    ]
    for sql in moves:
        await write(lambda db, sql=sql: db.execute(sql))
        assert await read(_kept) == await read(_scanned), sql
        if storage_engine == "postgresql" and sql.startswith("DELETE"):
            assert await write(callbacks.fold_counts) > 0
            assert await read(_kept) == await read(_scanned)
    assert await write(callbacks.fold_counts) == 0  # nothing left (and SQLite never has any)
    # Folded, the kept tables alone hold the counts, with no row left at 0 for a number (as on SQLite).
    left = await read(lambda db: db.execute("SELECT count(*) FROM reply_numbers WHERE n <= 0").fetchone()[0])
    assert left == 0


async def test_writers_storing_replies_of_one_country_never_wait_for_each_other(pg_url):
    """Two transactions storing a reply from the same number, neither committed: the second does not wait for the
    first (m015: the counts' triggers lock no row; before, every batch waited for the previous one's COMMIT)."""
    import psycopg

    from relay.storage import postgres
    from tests.conftest import PG_PASSWORD

    postgres.migrate(pg_url, password=PG_PASSWORD)
    first, second = (postgres.connect(pg_url, password=PG_PASSWORD, autocommit=False) for _ in range(2))
    try:
        callbacks.store_callback(first, reply(text="one"))
        second.execute("SET lock_timeout = '2s'")
        try:
            callbacks.store_callback(second, reply(text="two"))
        except psycopg.errors.LockNotAvailable:
            pytest.fail("the second writer waited for the first one's row lock")
        first.conn.commit()
        second.conn.commit()
    finally:
        first.close()
        second.close()
    db = postgres.connect(pg_url, password=PG_PASSWORD)
    try:
        assert callbacks.reply_counts(db) == [("FR", 2)]
        with db.atomic():
            assert callbacks.fold_counts(db) == 2
        assert callbacks.reply_counts(db) == [("FR", 2)]
        assert db.execute("SELECT kind, country, n FROM callback_counts").fetchall() == [("reply", "FR", 2)]
    finally:
        db.close()


async def test_one_fold_at_a_time_across_nodes(pg_url):
    """Two nodes folding at once: one folds, the other finds the lock taken and leaves the deltas to it."""
    from relay.storage import postgres
    from tests.conftest import PG_PASSWORD

    postgres.migrate(pg_url, password=PG_PASSWORD)
    a, b = (postgres.connect(pg_url, password=PG_PASSWORD, autocommit=False) for _ in range(2))
    try:
        callbacks.store_callback(a, reply())
        a.conn.commit()
        assert callbacks.fold_counts(a) == 1  # its transaction, and the fold's lock, still open
        assert callbacks.fold_counts(b) == 0
        a.conn.commit()
        b.conn.rollback()
        assert callbacks.fold_counts(b) == 0  # nothing left to fold
        b.conn.commit()
    finally:
        a.close()
        b.close()


async def test_m015_keeps_the_counts_of_a_database_made_before_it(pg_url):
    """A PostgreSQL database at m014 with callbacks in it: after m015 the counts go on from what they were."""
    import psycopg

    from relay.storage import pg_schema, postgres
    from tests.conftest import PG_PASSWORD

    with psycopg.connect(pg_url, password=PG_PASSWORD, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE octorelay_migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for name, fn in pg_schema.steps:
            if name == "m015_count_deltas":
                break
            with conn.transaction():
                fn(postgres.PgConnection(conn))
                conn.execute("INSERT INTO octorelay_migrations (name) VALUES (%s)", [name])
    db = postgres.connect(pg_url, password=PG_PASSWORD)
    try:
        for i in range(3):
            callbacks.store_callback(db, reply(number=f"+3360000000{i}", text=f"before {i}"))
        assert postgres.migrate(pg_url, password=PG_PASSWORD) == ["m015_count_deltas"]
        callbacks.store_callback(db, reply(text="after"))
        db.execute("DELETE FROM callbacks WHERE text = 'before 2'")
        assert _kept(db) == _scanned(db) == ({"FR": 3}, {"FR": 2})
        with db.atomic():
            callbacks.fold_counts(db)
        assert _kept(db) == _scanned(db)
    finally:
        db.close()


def test_a_write_that_must_run_alone_is_a_batch_of_its_own():
    """`write(..., alone=True)` (the counts' fold): the writes before it commit without it, it commits alone, and
    the ones after it make the next batch."""
    jobs = [database.Job(i, None, small=False, alone=(i in (3, 4))) for i in range(8)]
    batches = []
    while jobs:
        batch = database.next_batch(jobs, 64)
        del jobs[: len(batch)]
        batches.append([job.fn for job in batch])
    assert batches == [[0, 1, 2], [3], [4], [5, 6, 7]]
    assert database.next_batch([database.Job(i, None, small=False) for i in range(10)], 4)[-1].fn == 3


async def test_a_write_alone_commits_and_answers_like_any_other(engine_store):
    results = await asyncio.gather(
        *(engine_store.write(partial(meta.meta_set, key=f"k{i}", value="v"), alone=i % 2 == 0) for i in range(6)),
        engine_store.write(lambda db: db.execute("UPDATE meta SET no_such_column = 1"), alone=True),
        return_exceptions=True,
    )
    assert results[:6] == [None] * 6 and isinstance(results[6], Exception)
    assert await engine_store.read(lambda db: db.execute("SELECT count(*) FROM meta").fetchone()[0]) == 6


async def test_a_write_that_swallows_its_own_database_error_spoils_no_other(engine_store, storage_engine):
    """On PostgreSQL a failed statement fails the whole transaction, even when the write catches the error: that
    write is rolled back to its savepoint and answered with an error; the batch's others commit."""

    def swallow(db):
        try:
            db.execute("SELECT no_such_column FROM meta")
        except Exception:  # noqa: BLE001 - the point of the test
            pass
        return "returned"

    writes = [engine_store.write(partial(meta.meta_set, key=f"k{i}", value="v")) for i in range(3)]
    results = await asyncio.gather(*writes[:2], engine_store.write(swallow), writes[2], return_exceptions=True)
    assert results[:2] == [None, None] and results[3] is None
    if storage_engine == "postgresql":
        assert isinstance(results[2], Exception) and not isinstance(results[2], StoreError)
    else:  # SQLite's failed statement fails only itself
        assert results[2] == "returned"
    assert await engine_store.read(lambda db: db.execute("SELECT count(*) FROM meta").fetchone()[0]) == 3
