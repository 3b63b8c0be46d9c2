"""sd_notify against a real datagram socket, and the unit file against systemd-analyze."""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from relay import systemd

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "octorelay.service"
MAX_EXPOSURE = 2.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound AF_UNIX datagram socket standing in for systemd; $NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_without_notify_socket_nothing_happens():
    assert systemd.notify("READY=1") is False
    assert systemd.ready("up") is False
    assert systemd.stopping() is False
    assert systemd.reloading() is False
    assert systemd.watchdog() is False


def test_unreachable_socket_returns_false(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.ready() is False


def test_relative_socket_name_is_ignored(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert systemd.ready() is False


def test_notify_sends_one_datagram(notify_socket):
    assert systemd.notify("READY=1", "STATUS=listening on 127.0.0.1:2525") is True
    assert received(notify_socket) == ["READY=1", "STATUS=listening on 127.0.0.1:2525"]


def test_ready(notify_socket):
    assert systemd.ready() is True
    assert received(notify_socket) == ["READY=1"]
    assert systemd.ready("listening on 127.0.0.1:8080") is True
    assert received(notify_socket) == ["READY=1", "STATUS=listening on 127.0.0.1:8080"]


def test_stopping(notify_socket):
    assert systemd.stopping() is True
    assert received(notify_socket)[0] == "STOPPING=1"


def test_reloading_carries_monotonic_usec(notify_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(notify_socket)
    assert lines[0] == "RELOADING=1"
    usec = [line for line in lines if line.startswith("MONOTONIC_USEC=")]
    assert len(usec) == 1
    assert before <= int(usec[0].removeprefix("MONOTONIC_USEC=")) <= after


def test_watchdog(notify_socket):
    assert systemd.watchdog() is True
    assert received(notify_socket) == ["WATCHDOG=1"]


def test_abstract_socket(monkeypatch):
    name = f"octorelay-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready("abstract") is True
        assert received(sock) == ["READY=1", "STATUS=abstract"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("200000", None, 0.1),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("30000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert systemd.watchdog_interval() == expected


async def test_watchdog_component_pings(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notify_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    dog = systemd.Watchdog()
    assert dog.interval == 0.1
    await dog.start()
    pings = 0
    try:
        async with asyncio.timeout(5):
            while pings < 2:
                data = await loop.sock_recv(notify_socket, 4096)
                assert data == b"WATCHDOG=1"
                pings += 1
    finally:
        await dog.stop()
    assert pings >= 2
    await dog.stop()  # a second stop is harmless


async def test_watchdog_component_is_idle_without_watchdog(notify_socket):
    dog = systemd.Watchdog()
    assert dog.interval is None
    await dog.start()
    assert dog._task is None
    await dog.stop()


# ---------------------------------------------------------------- the unit file

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


@needs_analyze
def test_unit_exposure_score():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout
    assert float(found[1]) <= MAX_EXPOSURE, result.stdout


@needs_analyze
def test_unit_verifies(tmp_path):
    # verify insists the ExecStart binary exists; point it at one that does.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/octorelay/bin/octorelay", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values: its warnings name the file and line.
    complaints = [line for line in result.stderr.splitlines() if str(unit) in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_unit_has_the_required_directives():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecStart=/opt/octorelay/bin/octorelay run -c /etc/octorelay/octorelay.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=octorelay",
        "LoadCredential=octopush_api_key:/etc/octorelay/credentials/octopush_api_key",
        "LoadCredential=smtp_password:/etc/octorelay/credentials/smtp_password",
    ):
        assert line in text.splitlines(), line
