"""Shared fixtures: a real SMTP sink, the whole daemon on loopback port 0 from a real config file, a store, a CA."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
import trustme
from aiosmtpd.smtp import SMTP

from relay import backoff
from relay import config as config_mod
from relay.daemon import Daemon
from relay.octopush.emulator import Emulator
from relay.storage.database import Store
from relay.storage.engine import open_store


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll `predicate` (sync or async) until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def fast_backoff(monkeypatch):
    """Retries in tens of milliseconds: the tests check what is retried, not how long the wait is (backoff's own
    delays are tested in test_storage). A module asks for it with `pytest.mark.usefixtures("fast_backoff")`."""
    monkeypatch.setattr(backoff, "delay", lambda attempt: 0.02)


@pytest.fixture
async def store(tmp_path):
    """A started Store on a real SQLite file, `tmp_path / "octorelay.db"`, migrated; stopped after the test."""
    s = Store(tmp_path / "octorelay.db")
    await s.start()
    yield s
    await s.stop()


# ------------------------------------------------------------------ PostgreSQL

# CI sets OCTORELAY_TEST_POSTGRES=required: there a missing PostgreSQL fails the run instead of skipping its tests.
POSTGRES_REQUIRED = os.environ.get("OCTORELAY_TEST_POSTGRES") == "required"
PG_USER = "octorelay"
PG_PASSWORD = "test-db-password-31"  # the role's password: the tests log in with it, as a deployment would


def postgres_bin() -> Path | None:
    """Debian's server binaries (the newest version installed), else whatever pg_ctl is on the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, on a free loopback port, for one test session.

    PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to `nobody` and its commands run
    through runuser. Logins over TCP need the password (scram-sha-256), as in production; the tests' own
    administration goes through the cluster's unix socket.
    """

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="octorelay-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.sockets.mkdir()
        self.user = "nobody" if os.geteuid() == 0 else None
        if self.user:
            import pwd

            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._databases = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=self.root, timeout=120)

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text("unused-superuser-password\n")
        if self.user:
            shutil.chown(pwfile, self.user)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        self.start()
        self.admin(f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
            " -c fsync=off -c full_page_writes=off"  # a throwaway cluster: speed over crash safety
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host=str(self.sockets), port=self.port, user="postgres", dbname=dbname) as conn:
            conn.autocommit = True
            conn.execute(sql)

    def url(self, dbname: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database owned by the test role; its URL (the password is PG_PASSWORD)."""
        self._databases += 1
        name = f"t{self._databases}"
        self.admin(f"CREATE DATABASE {name} OWNER {PG_USER}")
        return self.url(name)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server; its tests skip without the binaries (fail when CI requires them)."""
    bindir = postgres_bin()
    reason = None
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "psycopg is not installed: pip install 'psycopg[binary]' psycopg-pool"
    if reason:
        if POSTGRES_REQUIRED:
            pytest.fail(f"OCTORELAY_TEST_POSTGRES=required but {reason}")
        pytest.skip(reason)
    server = PostgresServer(bindir)
    try:
        server.init()
    except subprocess.CalledProcessError as exc:
        server.cleanup()
        pytest.fail(f"could not start a PostgreSQL cluster: {exc.stderr or exc.stdout}")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres) -> str:
    """A new empty PostgreSQL database for this test: its URL, without the password (PG_PASSWORD)."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_engine(request) -> str:
    """Each test that takes it runs on both engines."""
    return request.param


@pytest.fixture
def storage_toml(request, storage_engine) -> str:
    """Config text for `make_daemon`/`write_config`: "" on SQLite, the `[storage]` url and password on PostgreSQL."""
    if storage_engine == "sqlite":
        return ""
    url = request.getfixturevalue("pg_url")
    return f'[storage]\nurl = "{url}"\npassword = "{PG_PASSWORD}"\n'


@pytest.fixture
async def engine_store(request, storage_engine, tmp_path):
    """A started Store on `storage_engine`: a real SQLite file, or a new PostgreSQL database; stopped after."""
    url = request.getfixturevalue("pg_url") if storage_engine == "postgresql" else ""
    s = open_store(path=tmp_path / "octorelay.db", url=url, password=PG_PASSWORD if url else "")
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """One test certificate authority for the session: tests issue their certificates from it and trust it."""
    return trustme.CA()


class Sink:
    """A real SMTP server on loopback that records what it accepts and can be told to fail."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.fail_next: list[str] = []  # e.g. ["451 4.3.0 try later"] answered to the next DATA commands
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.fail_next:
            return self.fail_next.pop(0)
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 2.0.0 OK"

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SMTP(self, hostname="sink"), "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def sink():
    s = Sink()
    await s.start()
    yield s
    await s.stop()


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(path: Path, tmp: Path, *, smtp_port: int | None = None, extra: str = "") -> Path:
    """A test config: port 0 everywhere, state in `tmp`, mail to the sink (or a Maildir); `extra` merges in."""
    smtp_out = {"from": "octorelay <relay@sms.example.org>", "maildir": str(tmp / "mail")}
    smtp_out.update(
        {"transport": "smtp", "host": "127.0.0.1", "port": smtp_port} if smtp_port else {"transport": "maildir"}
    )
    base = {
        # Marketing may go at any time unless a test says otherwise: tests pass at any hour, on any day.
        "octopush": {
            "retry_for": 30,
            "timeout": 2,
            "emulator": {"reply_after": 0.2},
            "marketing_hours": "",
            "marketing_days": "mon-sun",
            "marketing_holidays": False,
        },
        "http": {"listen": "127.0.0.1:0"},
        "smtp_in": {"listen": "127.0.0.1:0", "domain": "sms.example.org"},
        "smtp_out": smtp_out,
        "storage": {"path": str(tmp / "octorelay.db")},
    }
    path.write_text(tomli_w.dumps(merge(base, tomllib.loads(textwrap.dedent(extra)))))
    return path


@pytest.fixture
async def make_daemon(tmp_path):
    """Factory: `await make_daemon(extra_toml, smtp_port=...)` starts a full daemon; all are stopped after."""
    started: list[Daemon] = []

    async def factory(extra: str = "", *, smtp_port: int | None = None, name: str = "octorelay.toml") -> Daemon:
        path = write_config(tmp_path / name, tmp_path, smtp_port=smtp_port, extra=extra)
        daemon = Daemon(config_mod.load(path), config_path=str(path))
        await daemon.start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in reversed(started):
        await daemon.stop()


@pytest.fixture
async def daemon(make_daemon, sink):
    """The whole daemon with the Octopush emulator, e-mail going to a real SMTP sink."""
    return await make_daemon(smtp_port=sink.port)


class DaemonProcess:
    """`octorelay run` as a real subprocess, with a real notify socket to learn when it is READY and where."""

    def __init__(self, tmp: Path, config_path: Path | None, *, env: dict | None = None, cwd: Path | None = None):
        import socket

        self.tmp, self.config_path = tmp, config_path
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.datagrams: list[str] = []
        self.env = env or {}
        self.cwd = cwd or tmp
        self.proc: asyncio.subprocess.Process | None = None
        self.http_url = ""
        self.smtp: tuple[str, int] | None = None

    async def start(self, timeout: float = 20.0) -> DaemonProcess:
        import os
        import sys

        root = str(Path(__file__).resolve().parent.parent)  # the checked-out code, installed or not
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONPATH": path, **self.env}
        env.pop("OCTORELAY_CONFIG", None)
        args = [sys.executable, "-m", "relay", "run"] + (["-c", str(self.config_path)] if self.config_path else [])
        self.log = open(self.tmp / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=self.cwd, stdout=self.log, stderr=self.log)
        ready = await self.wait_datagram("READY=1", timeout)
        status = next(line for line in ready.splitlines() if line.startswith("STATUS="))
        # STATUS=HTTP http://127.0.0.1:PORT, SMTP 127.0.0.1:PORT
        http_part, smtp_part = status[len("STATUS=HTTP ") :].split(", SMTP ")
        self.http_url = http_part
        host, _, port = smtp_part.rpartition(":")
        self.smtp = (host.strip("[]"), int(port))
        return self

    def drain(self) -> None:
        while True:
            try:
                self.datagrams.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return

    async def wait_datagram(self, needle: str, timeout: float = 10.0, after: int = 0) -> str:
        def find():
            self.drain()
            if self.proc and self.proc.returncode is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.output()[-2000:]}")
            return next((d for d in self.datagrams[after:] if needle in d), None)

        return await wait_for(find, timeout)

    def output(self) -> str:
        self.log.flush()
        return (Path(self.log.name)).read_text(errors="replace")

    async def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        import signal as _signal

        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(_signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.notify.close()
        self.log.close()


@pytest.fixture
async def spawn(tmp_path):
    """Factory: `await spawn(config_path)` runs the daemon as a subprocess; all are stopped after."""
    procs: list[DaemonProcess] = []

    async def factory(config_path: Path | None, **kwargs) -> DaemonProcess:
        proc = DaemonProcess(tmp_path, config_path, **kwargs)
        procs.append(proc)
        return await proc.start()

    yield factory
    for proc in procs:
        await proc.stop()


@pytest.fixture
async def octopush():
    """An Octopush emulator of the test's own, outside any daemon (for `live` mode): no replies."""
    emulator = Emulator(reply_text="", reply_after=0)
    await emulator.start()
    yield emulator
    await emulator.stop()


def live_mode(base_url: str, **settings) -> str:
    """Config text for `live` mode against an emulator at `base_url`, plus any other [octopush] settings."""
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return (
        f'[octopush]\nmode = "live"\nbase_url = "{base_url}"\napi_login = "test@example.org"\n'
        f'api_key = "test-key-123"\n{lines}'
    )
