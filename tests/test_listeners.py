"""The listeners against slow clients, floods and guessers (SPEC §3, §5), through real sockets."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import smtplib
import ssl
import subprocess
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiohttp
import pytest

from relay.guard import LoginGuard, address_key
from relay.passwords import make_hash
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
FROM = "alice@example.org"
TO = "+33612345678@sms.example.org"
REPLY = {"number": "+33612345678", "text": "ok", "reception_date": "2026-01-05 10:00:00", "ticket": "t1"}


# ---------------------------------------------------------------- helpers


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after `timeout`."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(4096):
            data += chunk
    return data


async def drip(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` one byte at a time, until the server closes the connection."""
    for byte in data:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(every)


async def post_callback(session: aiohttp.ClientSession, daemon, n: int) -> float:
    """One reply callback on a fresh connection; returns how long its 200 took."""
    started = time.monotonic()
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    async with session.post(url, json={**REPLY, "ticket": f"t{n}", "text": f"reply {n}"}) as response:
        assert response.status == 200, await response.text()
    return time.monotonic() - started


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def mail(body: str = "Hello there", subject: str = "Test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = FROM, TO, subject
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content(body)
    return msg


# ---------------------------------------------------------------- HTTP: slow clients and the cap


async def test_idle_and_dripping_http_connections_are_closed_while_callbacks_are_answered(make_daemon):
    daemon = await make_daemon("[http]\nrequest_timeout = 1\n")
    host, port = daemon.http_address
    idle = await asyncio.open_connection(host, port)
    head = await asyncio.open_connection(host, port)  # a request line and headers, a byte every 0.2 s
    body = await asyncio.open_connection(host, port)  # complete headers, then a body a byte every 0.2 s
    path = f"/octopush/{daemon.callback_token}"
    body[1].write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 200\r\n\r\n".encode())
    drips = [
        asyncio.create_task(drip(head[1], b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200, 0.2)),
        asyncio.create_task(drip(body[1], b"number=%2B33612345678&text=" + b"a" * 200, 0.2)),
    ]
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for n in range(3):  # meanwhile, callbacks are answered at once
            assert await post_callback(session, daemon, n) < 0.5
        for reader, _ in (idle, head, body):
            await closed_by_server(reader, timeout=5)
    assert time.monotonic() - started < 4
    for task in drips:
        await task
    for _, writer in (idle, head, body):
        writer.close()


async def test_a_keep_alive_client_that_keeps_asking_in_time_is_not_cut(make_daemon):
    daemon = await make_daemon("[http]\nrequest_timeout = 1\n")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(6):  # 2.4 s on one connection, longer than the timeout
            async with session.get(f"{daemon.http_url}/healthz") as response:
                assert response.status in (200, 503)
                await response.read()
            await asyncio.sleep(0.4)
        url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
        async with session.post(url, json=REPLY) as response:
            assert response.status == 200


async def test_callbacks_are_answered_while_many_slow_connections_are_held(make_daemon):
    daemon = await make_daemon()  # the default 30 s timeout: every slow connection stays for the whole test
    host, port = daemon.http_address
    slow = [await asyncio.open_connection(host, port) for _ in range(150)]
    drips = [asyncio.create_task(drip(w, b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 100, 0.5)) for _, w in slow]
    try:
        async with aiohttp.ClientSession() as session:
            times = [await post_callback(session, daemon, n) for n in range(20)]
        assert max(times) < 0.5, times
        assert all(not w.is_closing() for _, w in slow)  # held, not cut: the cap (512) is not reached
    finally:
        for task in drips:
            task.cancel()
        for _, writer in slow:
            writer.close()


async def test_the_http_cap_refuses_with_503_and_says_so_in_the_log(make_daemon, caplog):
    daemon = await make_daemon("[http]\nmax_connections = 5\n")
    host, port = daemon.http_address
    held = [await asyncio.open_connection(host, port) for _ in range(5)]
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="relay.auth"):
        reader, writer = await asyncio.open_connection(host, port)
        answer = await closed_by_server(reader, timeout=5)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
    assert "HTTP listener full" in caplog.text and "http.max_connections" in caplog.text
    assert "127.0.0.1" in caplog.text
    writer.close()
    for _, w in held:  # once they go, the listener answers again
        w.close()
    async with aiohttp.ClientSession() as session:
        await wait_for(lambda: daemon.http_address and _healthz(session, daemon), timeout=5)


async def _healthz(session, daemon) -> bool:
    try:
        async with session.get(f"{daemon.http_url}/healthz") as response:
            return response.status in (200, 503) and b"status" in await response.read()
    except aiohttp.ClientError:
        return False
