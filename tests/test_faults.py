"""Fault tests: kill -9 mid-flood, Octopush faults, a full disk, malformed input (`pytest -m fault`).

The daemon runs as a real subprocess in `live` mode against an emulator in the
test process, so what Octopush "really sent" survives the kills and proves
that nothing acknowledged is lost and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import smtplib
import sqlite3
import subprocess
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from functools import partial

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.octopush.callbacks import classify
from relay.octopush.emulator import Emulator
from relay.web.callbacks import BadBody, parse_body, raw_text
from tests.conftest import live_mode, wait_for, write_config

pytestmark = pytest.mark.fault

REPLY = {
    "message_id": "",
    "number": "+33600000001",
    "sim_card_number": "30101",
    "reception_date": "2026-11-04 11:11:45",
}


def live_config(tmp_path, emulator: Emulator):
    """A config in `live` mode whose base_url is the test's emulator: it outlives the daemon's kills."""
    return write_config(tmp_path / "live.toml", tmp_path, extra=live_mode(emulator.base_url, retry_for=60, timeout=0.5))


def db_path(tmp_path):
    return tmp_path / "octorelay.db"


async def flood_callbacks(url: str, texts: list[str], acknowledged: list[str], clients: int = 32) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)

    async def client(http):
        while not queue.empty():
            text = queue.get_nowait()
            try:
                async with http.post(url, json={**REPLY, "text": text}) as resp:
                    if resp.status == 200:
                        acknowledged.append(text)
            except (TimeoutError, aiohttp.ClientError):
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


@pytest.mark.parametrize("round_", range(2))
async def test_kill_9_during_a_callback_flood_loses_nothing(spawn, tmp_path, round_):
    """32 clients post 2,000 replies; SIGKILL mid-flood; every acknowledged callback is stored exactly once."""
    config = write_config(tmp_path / "c.toml", tmp_path)
    proc = await spawn(config)
    token = (
        sqlite3.connect(db_path(tmp_path)).execute("SELECT value FROM meta WHERE key='callback_token'").fetchone()[0]
    )
    acknowledged: list[str] = []
    texts = [f"round {round_} reply {i}" for i in range(2000)]
    flood = asyncio.create_task(flood_callbacks(f"{proc.http_url}/octopush/{token}", texts, acknowledged))
    await wait_for(lambda: len(acknowledged) >= 300 + round_ * 300, timeout=30)
    proc.proc.send_signal(signal.SIGKILL)
    await flood
    await proc.wait()
    again = await spawn(config)  # restarts on the same database and recovers the WAL
    rows = sqlite3.connect(db_path(tmp_path)).execute("SELECT text FROM callbacks").fetchall()
    counts = Counter(r[0] for r in rows)
    assert acknowledged, "the flood was acknowledged at least in part"
    missing = [t for t in acknowledged if counts[t] != 1]
    assert missing == []
    assert max(counts.values()) == 1
    await again.stop()


async def test_kill_9_during_an_e_mail_flood_sends_each_once(spawn, tmp_path, octopush):
    """Every e-mail answered 250 becomes exactly one SMS, across a SIGKILL and a restart."""
    config = live_config(tmp_path, octopush)
    proc = await spawn(config)
    accepted: list[str] = []

    def send_many(n: int):
        for i in range(n):
            msg = EmailMessage()
            msg["From"] = "alice@example.org"
            msg["Subject"] = f"flood {i}"
            msg["Message-ID"] = make_msgid(domain="example.org")
            msg.set_content(f"flood message {i}")
            try:
                with smtplib.SMTP(*proc.smtp, timeout=5) as s:
                    s.sendmail(
                        "alice@example.org",
                        [f"+336123456{i % 100:02d}@sms.example.org"],
                        msg.as_bytes(policy=SMTP_POLICY),
                    )
                accepted.append(f"flood message {i}")
            except (OSError, smtplib.SMTPException):
                return

    sender = asyncio.create_task(asyncio.to_thread(send_many, 400))
    await wait_for(lambda: len(accepted) >= 40, timeout=30)
    proc.proc.send_signal(signal.SIGKILL)
    await sender
    await proc.wait()
    again = await spawn(config)
    await wait_for(lambda: {s["text"] for s in octopush.sent} >= set(accepted), timeout=60)
    texts = Counter(s["text"] for s in octopush.sent)
    assert all(texts[t] == 1 for t in accepted)
    assert max(texts.values()) == 1
    await again.stop()


@pytest.mark.parametrize("fault", ["timeout", "500", "reset", "lost", "429"])
async def test_octopush_faults_never_lose_nor_double_a_campaign(make_daemon, sink, octopush, tmp_path, fault):
    daemon = await make_daemon(
        live_mode(octopush.base_url, retry_for=30, timeout=0.5), smtp_port=sink.port, name="faults.toml"
    )
    octopush.inject(fault, fault)
    msg = EmailMessage()
    msg["From"], msg["Subject"], msg["Message-ID"] = "alice@example.org", "fault", make_msgid(domain="example.org")
    msg.set_content(f"through {fault}")
    await asyncio.to_thread(_smtp_send, daemon.smtp.address, msg)
    await wait_for(
        lambda: daemon.store.read(lambda db: db.execute("SELECT status FROM campaigns").fetchone()[0] == "sent"),
        timeout=20,
    )
    assert [s["text"] for s in octopush.sent] == [f"through {fault}"]
    request_ids = {r["body"]["request_id"] for r in octopush.requests if isinstance(r["body"], dict)}
    assert len(request_ids) == 1


async def test_a_send_whose_answer_cannot_be_recorded_at_once_is_recorded_later_not_resent(
    make_daemon, sink, octopush, monkeypatch
):
    """The disk refuses the write of Octopush's answer twice: the answer is kept and recorded, ticket and all."""
    from relay import sending
    from relay.storage.database import StoreError

    daemon = await make_daemon(
        live_mode(octopush.base_url, retry_for=30, timeout=0.5), smtp_port=sink.port, name="rec.toml"
    )
    refusals = []
    write = daemon.store.write

    async def failing_write(fn, **kwargs):
        if getattr(fn, "func", None) is sending._record and len(refusals) < 2:
            refusals.append(fn)
            raise StoreError("the database could not commit: database or disk is full")
        return await write(fn, **kwargs)

    monkeypatch.setattr(daemon.store, "write", failing_write)
    msg = EmailMessage()
    msg["From"], msg["Subject"], msg["Message-ID"] = "alice@example.org", "disk", make_msgid(domain="example.org")
    msg.set_content("through a full disk")
    await asyncio.to_thread(_smtp_send, daemon.smtp.address, msg)
    await wait_for(lambda: daemon.store.read(lambda db: db.execute("SELECT status FROM sends").fetchone()[0] == "sent"))
    ticket = await daemon.store.read(lambda db: db.execute("SELECT ticket FROM sends").fetchone()[0])
    assert len(refusals) == 2
    assert ticket and [s["text"] for s in octopush.sent] == ["through a full disk"]


def _smtp_send(address, msg):
    with smtplib.SMTP(*address, timeout=10) as s:
        s.sendmail("alice@example.org", ["+33612345678@sms.example.org"], msg.as_bytes(policy=SMTP_POLICY))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs for the database, so the test can fill the disk for real (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_answers_503_and_recovers(make_daemon, sink, small_disk):
    daemon = await make_daemon(
        f'[storage]\npath = "{small_disk / "octorelay.db"}"\n', smtp_port=sink.port, name="disk.toml"
    )
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    filler = small_disk / "filler"
    # Unbuffered, and the suppress outside the open: closing must not flush (and fail on) a last partial write.
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(50):
            async with http.post(url, json={**REPLY, "text": f"big {i} " + "x" * 4000}) as resp:
                statuses.append(resp.status)
        async with http.get(f"{daemon.http_url}/healthz") as resp:
            health = await resp.json()
            assert resp.status == 503 and health["status"] == "degraded"
        assert 503 in statuses
        acked = [i for i, s in enumerate(statuses) if s == 200]
        filler.unlink()
        async with http.post(url, json={**REPLY, "text": "after"}) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.http_url}/healthz") as resp:
            assert resp.status == 200
    stored = {
        r["text"] for r in await daemon.store.read(lambda db: [dict(x) for x in db.query("SELECT text FROM callbacks")])
    }
    assert all(any(t.startswith(f"big {i} ") for t in stored) for i in acked)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "", "text/plain", "application/json; charset=utf-8"]
    ),
)
def test_callback_parser_never_crashes(body, content_type):
    try:
        fields = parse_body(body, content_type)
    except BadBody:
        return
    callback = classify(fields if isinstance(fields, dict) else {}, raw=raw_text(body), content_type=content_type)
    assert callback.kind in ("reply", "delivery", "stop", "unrecognised")
    assert len(callback.dedup_key) == 64


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=1000)
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "number",
                "text",
                "reception_date",
                "answer_date",
                "status",
                "delivery_date",
                "stop_date",
                "message_id",
                "sim_card_number",
                "other",
            ]
        ),
        _json_values,
        max_size=8,
    )
)
def test_classify_never_crashes_on_odd_field_values(fields):
    callback = classify(fields, raw="{}", content_type="application/json")
    assert callback.kind in ("reply", "delivery", "stop", "unrecognised")
    assert isinstance(callback.number, str) and isinstance(callback.text, str)


@pytest.mark.parametrize("command", [["send", "--to", "+33612345678", "--text", "hi"], ["digest", "ops"]])
async def test_a_full_disk_is_one_line_for_send_and_digest(tmp_path, small_disk, command):
    """A StoreError is a user-facing error: one line on stderr and exit 1, not a traceback."""
    import os
    import sys
    from pathlib import Path

    database = small_disk / "octorelay.db"
    extra = f'[storage]\npath = "{database}"\n'
    extra += '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n'
    path = write_config(tmp_path / "c.toml", tmp_path, extra=extra)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    run = partial(subprocess.run, capture_output=True, text=True, env=env, timeout=60)
    from relay.storage.database import migrate

    migrate(database)  # the database a daemon's first start makes (read-only commands make none)
    # A reader keeps its snapshot: every new write must grow the WAL, on a disk that has no room left.
    reader = sqlite3.connect(database, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM meta").fetchone()
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)
    try:
        done = await asyncio.to_thread(run, [sys.executable, "-m", "relay", *command, "-c", str(path)])
    finally:
        reader.close()
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(database) in done.stderr and "full" in done.stderr
