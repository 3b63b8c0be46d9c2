"""Operations through the real process: sd_notify, SIGHUP, SIGTERM, backup, purge, the offline demo (SPEC §8)."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from relay.cli import main
from relay.storage import callbacks
from relay.storage.database import migrate
from tests.conftest import wait_for, write_config

REPLY = {
    "message_id": "",
    "number": "+33600000001",
    "sim_card_number": "30101",
    "reception_date": "2026-11-04 11:11:45",
}


async def token_of(proc, db_path: Path) -> str:
    return sqlite3.connect(db_path).execute("SELECT value FROM meta WHERE key = 'callback_token'").fetchone()[0]


async def test_ready_watchdog_and_stopping(spawn, tmp_path):
    proc = await spawn(write_config(tmp_path / "c.toml", tmp_path), env={"WATCHDOG_USEC": "200000"})
    assert proc.http_url.startswith("http://127.0.0.1:") and proc.smtp[1] > 0
    await proc.wait_datagram("WATCHDOG=1")
    async with aiohttp.ClientSession() as http, http.get(f"{proc.http_url}/healthz") as resp:
        assert resp.status == 200
    await proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    proc.drain()
    assert any("STOPPING=1" in d for d in proc.datagrams)


async def test_sighup_applies_a_good_file_and_refuses_a_broken_one(spawn, tmp_path):
    path = write_config(tmp_path / "c.toml", tmp_path)
    original = path.read_text()
    proc = await spawn(path)

    def mail_from(address: str) -> int:
        with smtplib.SMTP(*proc.smtp, timeout=10) as s:
            s.ehlo()
            return s.mail(address)[0]

    assert await asyncio.to_thread(mail_from, "bob@other.test") == 250
    path.write_text(
        original.replace(
            'domain = "sms.example.org"', 'domain = "sms.example.org"\nallowed_senders = ["*@example.org"]'
        )
    )
    seen = len(proc.datagrams)
    await proc.signal(signal.SIGHUP)
    await proc.wait_datagram("RELOADING=1", after=seen)
    await proc.wait_datagram("configuration reloaded", after=seen)
    assert await asyncio.to_thread(mail_from, "bob@other.test") == 550
    assert await asyncio.to_thread(mail_from, "alice@example.org") == 250
    # A broken file is refused; the running configuration stays and nothing is dropped.
    path.write_text('[smtp_in]\nmax_size = "big"\n')
    seen = len(proc.datagrams)
    await proc.signal(signal.SIGHUP)
    await proc.wait_datagram("reload refused", after=seen)
    assert "smtp_in.max_size" in proc.output()
    assert await asyncio.to_thread(mail_from, "bob@other.test") == 550
    assert proc.proc.returncode is None


async def test_sigterm_mid_traffic_loses_nothing(spawn, tmp_path):
    proc = await spawn(write_config(tmp_path / "c.toml", tmp_path))
    token = await token_of(proc, tmp_path / "octorelay.db")
    url = f"{proc.http_url}/octopush/{token}"
    acknowledged: list[str] = []

    async def client(n: int, http: aiohttp.ClientSession):
        for i in range(200):
            text = f"client {n} reply {i}"
            try:
                async with http.post(url, json={**REPLY, "text": text}) as resp:
                    if resp.status == 200:
                        acknowledged.append(text)
            except aiohttp.ClientError:
                return

    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(client(n, http)) for n in range(8)]
        await wait_for(lambda: len(acknowledged) > 100)
        await proc.signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
    assert await proc.wait() == 0
    stored = {r[0] for r in sqlite3.connect(tmp_path / "octorelay.db").execute("SELECT text FROM callbacks")}
    assert set(acknowledged) <= stored


async def test_backup_during_writes_is_consistent(daemon, tmp_path, capsys):
    from relay.octopush.callbacks import classify

    stop = asyncio.Event()

    async def writer():
        i = 0
        while not stop.is_set():
            cb = classify({**REPLY, "text": f"r{i}"}, raw="{}", content_type="application/json")
            await daemon.store.write(lambda db, cb=cb: callbacks.store_callback(db, cb))
            i += 1

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.2)
    target = tmp_path / "backup.db"
    config_path = Path(daemon.config_path)
    code = await asyncio.to_thread(main, ["db", "backup", str(target), "-c", str(config_path)])
    stop.set()
    await task
    assert code == 0
    conn = sqlite3.connect(target)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM callbacks").fetchone()[0] > 0


async def test_purge_deletes_old_events_but_keeps_opt_outs(tmp_path, capsys):
    path = write_config(tmp_path / "c.toml", tmp_path)
    migrate(tmp_path / "octorelay.db")
    conn = sqlite3.connect(tmp_path / "octorelay.db")
    for i, when in enumerate(
        ["2020-01-01T00:00:00.000000+00:00", "2020-01-02T00:00:00.000000+00:00", "2099-01-01T00:00:00.000000+00:00"]
    ):
        conn.execute(
            "INSERT INTO callbacks (kind, dedup_key, number, text, received_at, occurred_at, routed) "
            "VALUES ('reply', ?, '+33600000001', 'x', ?, ?, 1)",
            [f"k{i}", when, when],
        )
    conn.execute("INSERT INTO optouts (number, at) VALUES ('+33600000009', '2020-01-01')")
    # The watermark of a digest subscription since removed from the file holds nothing back.
    conn.execute("INSERT INTO digests (name, last_callback_id) VALUES ('removed', 0)")
    conn.commit()
    assert main(["db", "purge", "--older-than", "30", "-c", str(path)]) == 0
    assert "purged 2 callbacks" in capsys.readouterr().out
    assert conn.execute("SELECT count(*) FROM callbacks").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM optouts").fetchone()[0] == 1
    assert main(["db", "purge", "--older-than", "0", "-c", str(path)]) == 1


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not (_port_free(8080) and _port_free(2525)), reason="the demo's default ports are in use")
async def test_offline_demo_with_no_configuration(spawn, tmp_path):
    """`octorelay run` with no config: an e-mail to +33612345678@sms.localhost comes back as a reply in ./var/mail."""
    proc = await spawn(None, cwd=tmp_path, env={"OCTORELAY_CONFIG": ""})
    assert proc.smtp == ("127.0.0.1", 2525) and proc.http_url == "http://127.0.0.1:8080"
    await wait_for(lambda: "Try: python" in proc.output(), timeout=10)  # printed just after READY

    def send():
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
            s.sendmail(
                "you@localhost",
                ["+33612345678@sms.localhost"],
                "Subject: hello\r\nMessage-ID: <demo@localhost>\r\n\r\nHello from octorelay",
            )

    await asyncio.to_thread(send)
    new = tmp_path / "var" / "mail" / "new"

    def reply_landed():
        files = list(new.glob("*")) if new.exists() else []
        return [
            f
            for f in files
            if "OK, thanks!" in f.read_text(errors="replace")
            and "In-Reply-To: <demo@localhost>" in f.read_text(errors="replace")
        ]

    landed = await wait_for(reply_landed, timeout=15)
    assert "Re: hello" in landed[0].read_text()


async def test_a_busy_port_is_one_clear_line(tmp_path):
    """A listener that cannot bind stops the start with exit 1 and a line naming the key, no traceback."""
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[smtp_in]\nlisten = "127.0.0.1:{port}"\n')
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "run",
            "-c",
            str(path),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "smtp_in.listen" in err.decode() and "Traceback" not in err.decode()


async def octorelay(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """The `octorelay` command as a real subprocess: (exit code, stdout, stderr)."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("OCTORELAY_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_a_second_daemon_on_the_same_database_exits_1_naming_it_and_the_first(spawn, tmp_path):
    """SPEC §8: one daemon per SQLite database; the lock dies with its process, and other commands still work."""
    path = write_config(
        tmp_path / "c.toml",
        tmp_path,
        extra='[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n',
    )
    first = await spawn(path)
    code, _, err = await octorelay("run", "-c", str(path))
    assert code == 1
    assert str(tmp_path / "octorelay.db") in err and f"pid {first.proc.pid}" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    # Commands that are not the daemon work beside it.
    for command in (
        ["replies"],
        ["db", "backup", str(tmp_path / "copy.db")],
        ["digest", "ops", "--dry-run"],
        ["callback-url"],
    ):
        code, out, err = await octorelay(*command, "-c", str(path))
        assert code == 0, (command, err)
    async with aiohttp.ClientSession() as http, http.get(f"{first.http_url}/healthz") as resp:
        assert resp.status == 200
    # A daemon killed outright leaves no stale lock: the next one starts at once.
    first.proc.kill()
    await first.wait()
    again = await spawn(path)
    async with aiohttp.ClientSession() as http, http.get(f"{again.http_url}/healthz") as resp:
        assert resp.status == 200


async def test_files_are_private_whatever_the_umask(spawn, tmp_path):
    """SPEC §8: state directory 0700; database, WAL, SHM, lock, TLS key and certificate, backups 0600."""
    import os
    import stat

    state = tmp_path / "state" / "octorelay"
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[storage]\npath = "{state / "octorelay.db"}"\n')
    old = os.umask(0o022)
    try:
        proc = await spawn(path)
        async with aiohttp.ClientSession() as http:
            token = await token_of(proc, state / "octorelay.db")
            async with http.post(f"{proc.http_url}/octopush/{token}", json={**REPLY, "text": "hi"}) as resp:
                assert resp.status == 200
        code, _, err = await octorelay("db", "backup", str(tmp_path / "backup.db"), "-c", str(path))
        assert code == 0, err
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(state) == 0o700 and mode(state.parent) == 0o700
    names = ["octorelay.db", "octorelay.db-wal", "octorelay.db-shm", "octorelay.db.lock"]
    assert {name: oct(mode(state / name)) for name in names} == {name: "0o600" for name in names}
    assert mode(tmp_path / "backup.db") == 0o600


async def test_healthz_says_starting_until_every_component_is_up_and_never_writes(tmp_path, monkeypatch):
    """SPEC §3/§4: `starting` (503) while the SMTP listener is not bound yet; a new digest already holds a callback
    acknowledged in that window; and a health probe commits nothing."""
    from relay import config as config_mod
    from relay.daemon import Daemon
    from relay.mail.smtp_inbound import SmtpListener

    gate = asyncio.Event()
    real_start = SmtpListener.start

    async def slow_start(self):
        await gate.wait()  # the SMTP listener is late: HTTP is up, the daemon is not
        await real_start(self)

    monkeypatch.setattr(SmtpListener, "start", slow_start)
    extra = '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n'
    path = write_config(tmp_path / "c.toml", tmp_path, extra=extra)
    daemon = Daemon(config_mod.load(path), config_path=str(path))
    starting = asyncio.create_task(daemon.start())
    try:
        await wait_for(lambda: daemon.http_address)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{daemon.http_url}/healthz") as resp:
                assert resp.status == 503 and (await resp.json())["status"] == "starting"
            url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
            async with http.post(url, json={**REPLY, "text": "early bird"}) as resp:
                assert resp.status == 200
            gate.set()
            await starting
            async with http.get(f"{daemon.http_url}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            commits = daemon.store.commits
            for _ in range(20):
                async with http.get(f"{daemon.http_url}/healthz") as resp:
                    assert resp.status == 200
            assert daemon.store.commits == commits
        msg = await daemon.notifier.run_digest("ops", dry_run=True)
        assert msg is not None and "early bird" in msg.get_body(("plain",)).get_content()
    finally:
        gate.set()
        if not starting.done():
            await asyncio.gather(starting, return_exceptions=True)
        await daemon.stop()


async def test_a_sighup_right_after_ready_reloads_instead_of_killing(spawn, tmp_path):
    """systemd may send ExecReload's SIGHUP as soon as READY=1 arrives: the handler is in place before it."""
    proc = await spawn(write_config(tmp_path / "c.toml", tmp_path))
    seen = len(proc.datagrams)
    await proc.signal(signal.SIGHUP)
    await proc.wait_datagram("configuration reloaded", after=seen)
    assert proc.proc.returncode is None


async def test_reloads_at_once_run_one_after_the_other(make_daemon, sink):
    """Two quick SIGHUPs each start a reload (`asyncio.ensure_future(daemon.reload())`): they must not interleave,
    or the second adds the first one's job ids again (ConflictingIdError) and leaves the jobs half made."""
    extra = "".join(
        f'[[subscriptions]]\nname = "d{i}"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n'
        for i in range(3)
    )
    daemon = await make_daemon(extra, smtp_port=sink.port)
    results = await asyncio.gather(*(daemon.reload() for _ in range(3)), return_exceptions=True)
    assert results == [True, True, True]
    jobs = sorted(job.id for job in daemon.scheduler.scheduler.get_jobs())
    assert [j for j in jobs if j.startswith("digest-")] == ["digest-d0", "digest-d1", "digest-d2"]
