"""What keeps a few years of data cheap, checked for correctness (the timings live in bench/scale.py)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from relay import clock
from relay.cli import main
from relay.storage import callbacks, retention
from relay.storage.database import connect, migrate
from tests.conftest import wait_for, write_config
from tests.test_outbox import make_outbox, queue, reply_message, smtp_out, status_is  # noqa: F401 - a fixture
from tests.test_ui import make_client, make_relay  # noqa: F401, F811 - fixtures

pytestmark = pytest.mark.usefixtures("fast_backoff")  # as in test_outbox, whose helpers these tests use

OLD = "2020-01-01T00:00:00.000000+00:00"
NEW = "2099-01-01T00:00:00.000000+00:00"


def _fill(conn: sqlite3.Connection, n: int) -> set[int]:
    """n callbacks of every sort, old and new; returns the ids a purge must delete."""
    expected = set()
    for i in range(n):
        old = i % 3 != 2
        routed = 0 if i % 7 == 0 else 1
        cur = conn.execute(
            "INSERT INTO callbacks (kind, dedup_key, number, text, received_at, occurred_at, routed) "
            "VALUES (?, ?, '+33600000001', 'x', ?, ?, ?)",
            ["reply" if i % 2 else "delivery", f"k{i}", OLD if old else NEW, OLD, routed],
        )
        if old and routed:
            expected.add(cur.lastrowid)
        conn.execute(
            "INSERT INTO outbox (kind, recipients, message, status, created_at) VALUES ('reply', '[]', ?, ?, ?)",
            [b"body", "sent" if i % 5 else "pending", OLD if old else NEW],
        )
        conn.execute(
            "INSERT INTO messages (message_id, number, direction, created_at) VALUES (?, '+33600000001', 'out', ?)",
            [f"<m{i}@x>", OLD if old else NEW],
        )
    return expected


def test_purge_batches_delete_exactly_the_old_rows_and_each_stays_small(tmp_path):
    path = tmp_path / "p.db"
    migrate(path)
    db = connect(path)
    expected = _fill(db.conn, 230)
    # A digest whose watermark sits in the middle holds back what it has still to send.
    watermark = sorted(expected)[len(expected) // 2]
    db.execute("INSERT INTO digests (name, last_callback_id) VALUES ('ops', ?)", [watermark])
    expected = {i for i in expected if i <= watermark}
    before = {r[0] for r in db.execute("SELECT id FROM callbacks")}
    outbox_left = db.execute("SELECT count(*) FROM outbox WHERE NOT (status = 'sent' AND created_at = ?)", [OLD])
    outbox_left = outbox_left.fetchone()[0]
    batches = []
    while True:
        counts = retention.purge_batch(db, cutoff=clock.ago(days=30), digests=["ops"], limit=20)
        batches.append(counts)
        assert all(n <= 20 for n in counts.values())
        if retention.purge_done(counts, limit=20):
            break
    assert len(batches) > 3
    _counts_are_exact(db)
    after = {r[0] for r in db.execute("SELECT id FROM callbacks")}
    assert before - after == expected
    assert sum(b["callbacks"] for b in batches) == len(expected)
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == outbox_left
    assert db.execute("SELECT count(*) FROM messages WHERE created_at = ?", [OLD]).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == len([i for i in range(230) if i % 3 == 2])
    # The purge reaches rows by their date index, never by scanning a table.
    plan = " ".join(
        r[3]
        for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM outbox INDEXED BY idx_outbox_status_created "
            "WHERE status = 'sent' AND created_at < ? ORDER BY created_at LIMIT 5",
            [NEW],
        )
    )
    assert "COVERING INDEX idx_outbox_status_created" in plan
    db.close()


def _counts_are_exact(db) -> None:
    """The counts the triggers keep equal a count of the rows, and the summary read from them equals one scan."""
    kept = {(k, c): n for k, c, n in db.execute("SELECT kind, country, n FROM callback_counts WHERE n != 0")}
    actual = db.execute("SELECT kind, coalesce(country, ''), count(*) FROM callbacks GROUP BY 1, 2").fetchall()
    assert kept == {(k, c): n for k, c, n in actual}
    numbers = db.execute("SELECT country, number, n FROM reply_numbers ORDER BY 1, 2").fetchall()
    actual = db.execute(
        "SELECT coalesce(country, ''), number, count(*) FROM callbacks WHERE kind = 'reply' AND number IS NOT NULL "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert [tuple(r) for r in numbers] == [tuple(r) for r in actual]  # and no row left at 0
    # since="0" makes country_summary count every reply itself; without filters it reads the kept counts.
    assert callbacks.country_summary(db) == callbacks.country_summary(db, since="0")
    for country in ("DE", "FR", callbacks.NO_COUNTRY):
        assert callbacks.country_summary(db, country=country) == callbacks.country_summary(
            db, country=country, since="0"
        )


def test_reply_counts_follow_inserts_updates_deletes_and_migration(tmp_path):
    path = tmp_path / "c.db"
    migrate(path)
    db = connect(path)
    _fill(db.conn, 40)
    db.execute("UPDATE callbacks SET country = 'DE' WHERE id % 3 = 0")
    db.execute("UPDATE callbacks SET country = 'FR', occurred_at = ? WHERE id % 3 = 1", [NEW])
    db.execute("UPDATE callbacks SET number = '+3360000000' || (id % 4) WHERE id % 2 = 0")
    db.execute("UPDATE callbacks SET kind = 'stop' WHERE id % 5 = 0")
    db.execute("UPDATE callbacks SET country = country WHERE id % 6 = 0")  # an update that changes nothing
    db.execute("DELETE FROM callbacks WHERE id % 4 = 0")
    _counts_are_exact(db)
    # The migrations count what an older database holds.
    db.execute("DROP TABLE callback_counts")
    db.execute("DROP TABLE reply_numbers")
    db.execute("DELETE FROM _sqlite_migrations WHERE name IN ('m012_callback_counts', 'm014_reply_numbers')")
    for trigger in ("insert", "delete", "update"):
        db.execute(f"DROP TRIGGER callback_counts_{trigger}")
    for trigger in ("insert", "delete", "update_old", "update_new"):
        db.execute(f"DROP TRIGGER reply_numbers_{trigger}")
    db.close()
    migrate(path)
    db = connect(path)
    _counts_are_exact(db)
    db.close()


def test_db_purge_command_deletes_every_old_row_over_many_batches(tmp_path, capsys):
    path = write_config(tmp_path / "c.toml", tmp_path)
    migrate(tmp_path / "octorelay.db")
    conn = sqlite3.connect(tmp_path / "octorelay.db")
    expected = _fill(conn, 1200)
    conn.commit()
    assert main(["db", "purge", "--older-than", "30", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"purged {len(expected)} callbacks" in out
    assert conn.execute("SELECT count(*) FROM callbacks WHERE received_at = ? AND routed = 1", [OLD]).fetchone()[0] == 0
    # Unrouted callbacks (the notifier still owes their e-mails) and the newest one stay.
    assert conn.execute("SELECT count(*) FROM callbacks WHERE routed = 0").fetchone()[0] > 0


# ------------------------------------------------------------------ exports stream


def _replies(n: int) -> list:
    """n replies over a few dates, many sharing one date (a chunk boundary falls between equal dates)."""
    from relay.octopush.callbacks import classify

    out = []
    for i in range(n):
        fields = {
            "number": f"+336{i % 50:08d}",
            "text": f"reply {i}",
            "reception_date": f"2026-02-{1 + i % 3:02d} 10:00:{i % 2:02d}",
            "message_id": "",
        }
        out.append(classify(fields, raw="{}", content_type="application/json"))
    return out


async def test_web_csv_export_streams_every_reply_once_in_order(make_client, monkeypatch):  # noqa: F811
    from relay.web import exports

    monkeypatch.setattr(exports, "CSV_CHUNK", 37)
    client, relay = await make_client()
    cbs = _replies(500)
    await relay.store.write(lambda db: [callbacks.store_callback(db, cb) for cb in cbs])
    resp = await client.get("/replies.csv")
    assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
    rows = list(csv.DictReader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
    texts = [r["text"] for r in rows]
    assert sorted(texts) == sorted(f"reply {i}" for i in range(500))  # each exactly once
    assert [r["time_utc"] for r in rows] == sorted((r["time_utc"] for r in rows), reverse=True)  # newest first


def test_cli_exports_stream_every_reply_once(tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path / "c.toml", tmp_path)
    migrate(tmp_path / "octorelay.db")
    db = connect(tmp_path / "octorelay.db")
    with db.atomic():
        for cb in _replies(700):
            callbacks.store_callback(db, cb)
    chunks = []
    real = callbacks.replies
    monkeypatch.setattr(callbacks, "replies", lambda *a, **k: chunks.append(k["limit"]) or real(*a, **k))
    capsys.readouterr()
    assert main(["replies", "--format", "csv", "--limit", "0", "-c", str(path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["text"] for r in rows) == sorted(f"reply {i}" for i in range(700))
    assert chunks and max(chunks) <= 1000  # never the whole table in one read
    assert main(["replies", "--format", "json", "--limit", "650", "-c", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 650 and len({r["id"] for r in rows}) == 650
    # Keyset pages of 13 give the same rows as one read, ties on the date included.
    assert [r["id"] for r in callbacks.iter_replies(db, chunk=13)] == [
        r["id"] for r in callbacks.replies(db, limit=None)
    ]
    db.close()


# ------------------------------------------------------------------ the outbox keeps no delivered body


async def test_outbox_retries_whole_mail_and_drops_only_delivered_bodies(store, sink, make_outbox, tmp_path):  # noqa: F811
    box = make_outbox(smtp_out(tmp_path, sink.port))
    # One step at a time: the outbox delivers several e-mails at once, and the sink fails whichever comes next.
    sink.fail_next = ["451 4.3.0 try later"]
    first = await queue(store, reply_message(text="first, retried\n"))
    await box.start()
    box.wake()
    await status_is(store, first, "sent")  # after the 451, retried
    sink.fail_next = ["550 5.1.1 no such user"]
    failed_and_later = [await queue(store, reply_message(text="mail 0\n"))]
    box.wake()
    await status_is(store, failed_and_later[0], "failed")
    failed_and_later += [await queue(store, reply_message(text=f"mail {i}\n")) for i in (1, 2)]
    box.wake()
    for outbox_id in [first, *failed_and_later[1:]]:
        await status_is(store, outbox_id, "sent")
    await wait_for(lambda: len(sink.messages) == 3)
    texts = sorted(m.get_body(("plain",)).get_content().strip() for _, _, m in sink.messages)
    assert texts == ["first, retried", "mail 1", "mail 2"]  # the retry went whole, once
    rows = {r["id"]: r for r in await store.read(lambda db: [dict(r) for r in db.query("SELECT * FROM outbox")])}
    for outbox_id in [first, *failed_and_later[1:]]:
        sent = rows[outbox_id]
        assert sent["message"] == b"" and sent["message_id"] and sent["subject"] and sent["sent_at"]
    failed = rows[failed_and_later[0]]
    assert failed["status"] == "failed" and b"mail 0" in failed["message"]  # kept for the operator


# ------------------------------------------------------------------ a catch-up digest is split


async def test_a_large_digest_is_split_and_every_event_goes_exactly_once(make_daemon, sink, monkeypatch):
    from relay import notify
    from tests.test_notify import DIGEST, post, reply, to

    monkeypatch.setattr(notify, "DIGEST_PART", 7)
    daemon = await make_daemon(DIGEST.format(group_by="country"), smtp_port=sink.port)
    await post(daemon, *(reply(i) for i in range(30)))
    # The third part fails to commit (a crash there): the first two stay sent, the rest waits for the next run.
    real, calls = notify.Notifier._queue_digest, []

    async def flaky(self, sub, msg, snapshot):
        calls.append(msg["Subject"])
        if len(calls) == 3:
            raise RuntimeError("the disk went away")
        return await real(self, sub, msg, snapshot)

    monkeypatch.setattr(notify.Notifier, "_queue_digest", flaky)
    try:
        await daemon.notifier.run_digest("ops")
    except RuntimeError:
        pass
    assert calls == [f"7 SMS replies \u2014 ops (part {i} of 5)" for i in (1, 2, 3)]
    monkeypatch.setattr(notify.Notifier, "_queue_digest", real)
    first = await daemon.notifier.run_digest("ops")
    assert first["Subject"] == "7 SMS replies \u2014 ops (part 1 of 3)"
    assert await daemon.notifier.run_digest("ops") is None
    mails = await wait_for(lambda: len(to(sink, "ops@example.org")) == 5 and to(sink, "ops@example.org"))
    seen = []
    for mail in mails:
        text = mail.get_body(("plain",)).get_content()
        seen += [i for i in range(30) if f"reply {i}\n" in text or f"reply {i}\r\n" in text]
    assert sorted(seen) == list(range(30))  # every event once across the parts


async def test_the_daemons_purge_runs_batch_after_batch_to_the_end(make_daemon):
    daemon = await make_daemon()
    expected = await daemon.store.write(lambda db: _fill(db.conn, 450))
    assert len(expected) > 2 * retention.PURGE_BATCH  # several batches
    counts = await daemon.housekeeping.purge(30)
    assert counts["callbacks"] == len(expected)
    left = await daemon.store.read(
        lambda db: db.execute("SELECT count(*) FROM callbacks WHERE received_at = ? AND routed = 1", [OLD]).fetchone()
    )
    assert left[0] == 0


def test_the_country_chart_reads_its_window_and_totals_every_reply(tmp_path):
    """Only the newest MAX_DAYS days are read and drawn; the legend counts every reply, and says older days exist."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from relay.templating import country_label
    from relay.web import chart, pages

    path = tmp_path / "c.db"
    migrate(path)
    db = connect(path)
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    for day in range(200):
        at = clock.iso(start + timedelta(days=day))
        for j, country in enumerate(("FR", "DE", "GB") if day % 2 else ("FR",)):
            db.execute(
                "INSERT INTO callbacks (kind, dedup_key, number, country, text, received_at, occurred_at, routed) "
                "VALUES ('reply', ?, ?, ?, 'x', ?, ?, 1)",
                [f"k{day}-{j}", f"+336000{j:05d}", country, at, at],
            )
    graph = pages.load_replies(db, f=pages.ReplyFilter(view="country"), tz=ZoneInfo("Europe/Paris"))["chart"]
    assert graph.days == chart.MAX_DAYS and graph.truncated
    assert graph.last == (start + timedelta(days=199)).date()
    assert {label: n for _, label, n in graph.legend} == {
        country_label("FR"): 200,
        country_label("DE"): 100,
        country_label("GB"): 100,
    }
    assert sum(1 for bar in graph.bars if bar.title.endswith(f"{country_label('FR')}, 1")) == chart.MAX_DAYS
    # One country's view: its own span and totals.
    one = pages.load_replies(db, f=pages.ReplyFilter(view="country", country="DE"), tz=ZoneInfo("Europe/Paris"))
    assert {label: n for _, label, n in one["chart"].legend} == {country_label("DE"): 100}
    db.close()


def test_the_chart_window_keeps_whole_days_in_a_half_hour_zone(tmp_path):
    """Asia/Kolkata is UTC+5:30: the chart buckets whole UTC hours, so its window starts on a whole hour too and
    its first bar holds a whole day of replies, like the others."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from relay.web import chart, pages

    path = tmp_path / "c.db"
    migrate(path)
    db = connect(path)
    start = datetime(2026, 8, 1, 0, 40, tzinfo=UTC)
    for hour in range(70 * 24 + 19):  # the newest reply at 18:40Z, i.e. 00:10 on the next local day
        at = clock.iso(start + timedelta(hours=hour))
        db.execute(
            "INSERT INTO callbacks (kind, dedup_key, number, country, text, received_at, occurred_at, routed) "
            "VALUES ('reply', ?, '+33600000001', 'FR', 'x', ?, ?, 1)",
            [f"k{hour}", at, at],
        )
    graph = pages.load_replies(db, f=pages.ReplyFilter(view="country"), tz=ZoneInfo("Asia/Kolkata"))["chart"]
    per_bar = [int(bar.title.rsplit(", ", 1)[1]) for bar in graph.bars]
    assert graph.days == chart.MAX_DAYS == len(per_bar)
    assert per_bar[:-1] == [24] * (chart.MAX_DAYS - 1)  # the newest day has only begun
    db.close()
