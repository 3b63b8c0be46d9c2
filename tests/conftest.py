"""Shared fixtures: a real SMTP sink, and the whole daemon on loopback port 0 from a real config file."""

from __future__ import annotations

import asyncio
import email
import email.policy
import textwrap
import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from relay import config as config_mod
from relay.daemon import Daemon


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


def write_config(path: Path, tmp: Path, *, smtp_port: int | None = None, extra: str = "") -> Path:
    """A config file for tests: port 0 everywhere, state in `tmp`, mail to the sink (or a Maildir)."""
    transport = (
        f'transport = "smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\n' if smtp_port else 'transport = "maildir"\n'
    )
    text = textwrap.dedent(
        f"""
        [octopush]
        retry_for = 30
        timeout = 2

        [octopush.emulator]
        reply_after = 0.2

        [http]
        listen = "127.0.0.1:0"

        [smtp_in]
        listen = "127.0.0.1:0"
        domain = "sms.example.org"

        [smtp_out]
        from = "octorelay <relay@sms.example.org>"
        maildir = "{tmp / 'mail'}"
        """
    )
    text = text.replace("[smtp_out]\n", "[smtp_out]\n" + transport)
    text += f'\n[storage]\npath = "{tmp / "octorelay.db"}"\n'
    path.write_text(text + "\n" + textwrap.dedent(extra))
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
