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
from email.policy import SMTP as SMTP_POLICY
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
    msg = EmailMessage(policy=SMTP_POLICY)  # CRLF line ends, as on the wire
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
            assert await post_callback(session, daemon, n) < 1.0
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
    drips = [
        asyncio.create_task(drip(w, b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 100, 0.5)) for _, w in slow
    ]
    try:
        async with aiohttp.ClientSession() as session:
            times = [await post_callback(session, daemon, n) for n in range(20)]
        assert max(times) < 1.0, times
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


# ---------------------------------------------------------------- SMTP: slow clients, endless sessions, the cap


async def test_idle_and_dripping_smtp_sessions_are_closed(make_daemon):
    daemon = await make_daemon("[smtp_in]\ncommand_timeout = 1\n")
    host, port = daemon.smtp.address
    idle = await asyncio.open_connection(host, port)
    dripping = await asyncio.open_connection(host, port)
    in_data = await asyncio.open_connection(host, port)  # a message that never ends
    for reader, _ in (idle, dripping, in_data):
        assert (await reader.readline()).startswith(b"220 ")
    in_data[1].write(f"EHLO x\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n".encode())
    started = time.monotonic()
    tasks = [
        asyncio.create_task(drip(dripping[1], b"EHLO " + b"x" * 100 + b"\r\n", 0.2)),
        asyncio.create_task(drip(in_data[1], b"Subject: slow\r\n\r\n" + b"y" * 100, 0.2)),
    ]
    for reader, _ in (idle, dripping, in_data):
        await closed_by_server(reader, timeout=5)
    assert time.monotonic() - started < 4
    for task in tasks:
        await task
    for _, writer in (idle, dripping, in_data):
        writer.close()


async def test_a_noop_loop_cannot_keep_a_session_forever(make_daemon):
    daemon = await make_daemon("[smtp_in]\ncommand_timeout = 1\nsession_limit = 2\n")
    host, port = daemon.smtp.address
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readline()
    started, answers = time.monotonic(), []
    async with asyncio.timeout(6):
        while not answers or answers[-1].startswith(b"250"):
            writer.write(b"NOOP\r\n" if len(answers) % 2 else b"RSET\r\n")
            answers.append(await reader.readline())
            await asyncio.sleep(0.3)
    assert answers[-1].startswith(b"421 4.4.2"), answers[-3:]
    assert 1.8 < time.monotonic() - started < 4
    assert await closed_by_server(reader, timeout=2) == b""
    writer.close()


async def test_the_smtp_cap_refuses_with_421_and_says_so_in_the_log(make_daemon, caplog):
    daemon = await make_daemon("[smtp_in]\nmax_connections = 3\n")
    host, port = daemon.smtp.address
    held = [await asyncio.open_connection(host, port) for _ in range(3)]
    for reader, _ in held:
        assert (await reader.readline()).startswith(b"220 ")
    with caplog.at_level(logging.WARNING, logger="relay.auth"):
        reader, writer = await asyncio.open_connection(host, port)
        assert (await closed_by_server(reader, timeout=5)).startswith(b"421 4.7.0 ")
    assert "SMTP listener full" in caplog.text and "smtp_in.max_connections" in caplog.text
    writer.close()
    held[0][1].write(b"QUIT\r\n")
    await closed_by_server(held[0][0], timeout=5)

    def send():  # a place is free again
        with smtplib.SMTP(host, port, timeout=10) as s:
            s.sendmail(FROM, [TO], mail().as_bytes())

    await asyncio.to_thread(send)
    for _, w in held:
        w.close()


async def test_callbacks_are_answered_while_many_smtp_sessions_are_held(make_daemon):
    daemon = await make_daemon()
    host, port = daemon.smtp.address
    held = [await asyncio.open_connection(host, port) for _ in range(100)]
    drips = [asyncio.create_task(drip(w, b"EHLO " + b"x" * 100, 0.5)) for _, w in held]
    try:
        async with aiohttp.ClientSession() as session:
            times = [await post_callback(session, daemon, n) for n in range(20)]
        assert max(times) < 1.0, times
    finally:
        for task in drips:
            task.cancel()
        for _, writer in held:
            writer.close()


# ---------------------------------------------------------------- SMTP: size, structure, refusals in the log


def smtp_session(daemon) -> smtplib.SMTP:
    host, port = daemon.smtp.address
    session = smtplib.SMTP(host, port, timeout=10)
    session.ehlo()
    return session


async def test_size_counts_the_message_as_received_not_its_doubled_dots(make_daemon):
    daemon = await make_daemon("[smtp_in]\nmax_size = 2000\n")
    # Lines starting with a dot are sent with a second one (RFC 5321 §4.5.2): on the wire this message is
    # a third larger than the 1,900 bytes it is.
    msg = mail("Hello\n" + ".\n" * 560).as_bytes()
    assert len(msg) < 2000 < len(msg) + msg.count(b"\r\n.")

    def session():
        with smtp_session(daemon) as s:
            assert s.esmtp_features["size"] == "2000"
            code, _ = s.mail(FROM, ["SIZE=2001"])
            assert code == 552
            s.rset()
            s.mail(FROM, [f"SIZE={len(msg)}"])
            s.rcpt(TO)
            code, text = s.data(msg)
            assert code == 250, text
            s.mail(FROM)
            s.rcpt(TO)
            return s.data(mail(("x" * 70 + "\n") * 30).as_bytes())

    code, text = await asyncio.to_thread(session)
    assert (code, text[:5]) == (552, b"5.3.4"), text


def nested(depth: int) -> bytes:
    head = "From: alice@example.org\r\nTo: +33612345678@sms.example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    return (head + opening + "Content-Type: text/plain\r\n\r\nhello" + closing).encode()


@pytest.mark.parametrize("depth", [3000, 60])
async def test_a_message_nested_too_deep_is_refused_for_good(make_daemon, caplog, depth):
    daemon = await make_daemon()

    def send():
        with smtp_session(daemon) as s:
            s.mail(FROM)
            s.rcpt(TO)
            return s.data(nested(depth))

    with caplog.at_level(logging.INFO):
        code, text = await asyncio.to_thread(send)
    assert code == 554 and text.startswith(b"5.6.0 ") and b"nested" in text, text
    assert "RecursionError" not in caplog.text and "Traceback" not in caplog.text


def siblings(count: int) -> bytes:
    """`count` multipart/alternative parts side by side in one multipart/mixed: wide, not deep."""
    head = "From: alice@example.org\r\nTo: +33612345678@sms.example.org\r\nSubject: wide\r\nMIME-Version: 1.0\r\n"
    alternative = (
        'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\n'
        "see attached\r\n--alt--\r\n"
    )
    parts = "".join(f"--top\r\n{alternative}" for _ in range(count))
    return (head + f'Content-Type: multipart/mixed; boundary="top"\r\n\r\n{parts}--top--\r\n').encode()


async def test_many_multiparts_side_by_side_are_not_too_deep(make_daemon):
    daemon = await make_daemon()

    def send():
        with smtp_session(daemon) as s:
            s.mail(FROM)
            s.rcpt(TO)
            return s.data(siblings(80))

    code, text = await asyncio.to_thread(send)
    assert code == 250, text


async def test_every_smtp_refusal_is_logged_with_the_peer_the_sender_and_the_reason(make_daemon, caplog):
    daemon = await make_daemon("[smtp_in]\nmax_size = 3000\n")

    def session():
        with smtp_session(daemon) as s:
            s.mail(FROM)
            assert s.rcpt("nobody@sms.example.org")[0] == 550
            assert s.rcpt(TO)[0] == 250
            assert s.data(mail(("x" * 70 + "\n") * 45).as_bytes())[0] == 552
            s.mail(FROM)
            s.rcpt(TO)
            assert s.data(mail("hi", subject="[simulte] typo").as_bytes())[0] == 550

    with caplog.at_level(logging.INFO, logger="relay.smtp"):
        await asyncio.to_thread(session)
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.smtp" and "refused" in r.getMessage()]
    assert len(lines) == 3, lines
    for line, answer in zip(lines, ("550 5.1.1", "552 5.3.4", "550 5.6.0"), strict=True):
        assert "127.0.0.1" in line and FROM in line and answer in line, line
    assert "nobody" in lines[0] and "simulte" in lines[2]


# ---------------------------------------------------------------- guessing passwords


def test_the_guard_blocks_an_address_for_a_minute_after_5_failures_within_a_minute():
    now = [1000.0]
    guard = LoginGuard(clock=lambda: now[0])
    for _ in range(4):
        guard.failed("203.0.113.7", "test")
        now[0] += 20  # 4 failures over 80 s: never 5 within a minute
    assert guard.retry_after("203.0.113.7") == 0
    for _ in range(4):
        guard.failed("203.0.113.7", "test")
    assert 59 < guard.retry_after("203.0.113.7") <= 60
    assert guard.retry_after("203.0.113.8") == 0  # another address is not concerned
    now[0] += 61
    assert guard.retry_after("203.0.113.7") == 0
    # IPv6: one subscriber's /64 is one address
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"


async def test_the_web_interface_answers_429_after_5_failed_logins(make_daemon, caplog):
    daemon = await make_daemon(f'[http.ui_users]\nann = "{make_hash("right")}"\n')
    url = f"{daemon.http_url}/replies"
    with caplog.at_level(logging.INFO, logger="relay.auth"):
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=basic("ann", "right")) as response:
                assert response.status == 200
            for guess in range(5):
                async with session.get(url, headers=basic("ann", f"guess{guess}")) as response:
                    assert response.status == 401
            async with session.get(url, headers=basic("ann", "right")) as response:
                assert response.status == 429
                assert 0 < int(response.headers["Retry-After"]) <= 60
    failed = [r.getMessage() for r in caplog.records if "login failed from 127.0.0.1" in r.getMessage()]
    assert len(failed) == 5 and "'ann'" in failed[0] and "guess" not in caplog.text
    assert "login refused from 127.0.0.1" in caplog.text


def tls_login(daemon, user: str, password: str) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the listener's self-signed certificate
    with smtp_session(daemon) as s:
        s.starttls(context=context)
        s.ehlo()
        return s.docmd(
            "AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        )  # one mechanism: smtplib's login() tries several


async def test_smtp_auth_answers_454_after_5_failed_logins_counted_with_the_web_interface(make_daemon, caplog):
    hashed = make_hash("right")
    daemon = await make_daemon(
        f'[http.ui_users]\nann = "{hashed}"\n[smtp_in]\nrequire_auth = true\n[smtp_in.users]\nann = "{hashed}"\n'
    )
    assert (await asyncio.to_thread(tls_login, daemon, "ann", "right"))[0] == 235
    with caplog.at_level(logging.INFO, logger="relay.auth"):
        for guess in range(3):
            assert (await asyncio.to_thread(tls_login, daemon, "ann", f"guess{guess}"))[0] == 535
        async with aiohttp.ClientSession() as session:
            for guess in range(2):  # the same address guessing on the web interface: the same count
                async with session.get(f"{daemon.http_url}/", headers=basic("ann", f"web{guess}")) as response:
                    assert response.status == 401
        code, text = await asyncio.to_thread(tls_login, daemon, "ann", "right")
    assert code == 454 and text.startswith(b"4.7.0 "), text
    assert "login failed from 127.0.0.1: SMTP AUTH PLAIN as 'ann'" in caplog.text
    assert "login refused from 127.0.0.1: SMTP AUTH" in caplog.text


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed (CI installs it)")
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_fail2ban_filter_finds_the_daemons_failed_logins(spawn, tmp_path, log_format):
    from tests.conftest import write_config

    extra = f'[log]\nformat = "{log_format}"\n[http.ui_users]\nann = "{make_hash("right")}"\n'
    path = write_config(tmp_path / "octorelay.toml", tmp_path, extra=extra)
    proc = await spawn(path)
    async with aiohttp.ClientSession() as session:
        for guess in range(7):
            async with session.get(f"{proc.http_url}/replies", headers=basic("ann", f"guess{guess}")) as response:
                assert response.status == (401 if guess < 5 else 429)
    await proc.stop()
    log_file = Path(proc.log.name)
    assert "login failed from 127.0.0.1" in log_file.read_text()
    result = await asyncio.to_thread(
        subprocess.run,
        ["fail2ban-regex", "-o", "ip", str(log_file), str(ROOT / "systemd/fail2ban/filter.d/octorelay.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ips = result.stdout.split()
    assert ips.count("127.0.0.1") == 8, result.stdout  # 5 failures, the block, and 2 refusals


async def test_the_daemon_process_cuts_idle_clients_too(spawn, tmp_path):
    """`octorelay run` (with uvloop when installed) runs the same watchdogs."""
    from tests.conftest import write_config

    extra = "[http]\nrequest_timeout = 1\n[smtp_in]\ncommand_timeout = 1\n"
    proc = await spawn(write_config(tmp_path / "octorelay.toml", tmp_path, extra=extra))
    host, port = proc.http_url.removeprefix("http://").rsplit(":", 1)
    http = await asyncio.open_connection(host, int(port))
    body = await asyncio.open_connection(host, int(port))  # complete headers, then a body that never comes
    body[1].write(b"POST /octopush/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nab")
    smtp = await asyncio.open_connection(*proc.smtp)
    for reader, _ in (http, body, smtp):
        await closed_by_server(reader, timeout=5)
    for _, writer in (http, body, smtp):
        writer.close()
    await proc.stop()
    output = Path(proc.log.name).read_text()
    assert output.count("no complete request within 1 s") == 2
    assert "Traceback" not in output


async def test_a_slow_reader_of_a_large_answer_is_not_cut(make_daemon):
    """The clock runs for the client's request, not for its reading of the answer: a large CSV export read
    slowly, for longer than the timeout, arrives whole."""
    import socket

    from relay.octopush.callbacks import classify
    from relay.storage import callbacks

    daemon = await make_daemon("[http]\nrequest_timeout = 1\n")

    def fill(db):  # 5,000 replies of 1.5 KB: a 7.5 MB CSV export, more than the sockets' buffers hold (4 MB)
        for n in range(5000):
            fields = {**REPLY, "ticket": f"t{n}", "text": f"{n} " + "x" * 1500}
            callbacks.store_callback(db, classify(fields, raw="{}", content_type="application/json"), routed=True)

    await daemon.store.write(fill)
    host, port = daemon.http_address

    def download(pause: float, seconds: float) -> tuple[int, bool]:
        """Once the answer starts, read 64 KB every `pause` s for `seconds`, then read on until the end;
        how much came, and whether the server cut the connection."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect((host, port))
        s.sendall(b"GET /replies.csv HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            received = len(s.recv(65536))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(pause)
                received += len(s.recv(65536))
            while data := s.recv(65536):
                received += len(data)
            return received, False
        except ConnectionResetError:
            return received, True
        finally:
            s.close()

    received, cut = await asyncio.to_thread(download, 0.2, 3.5)
    assert received > 7_500_000 and not cut, (received, cut)  # read slowly over three timeouts: all of it


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nrequest_timeout = 0\n", "http.request_timeout"),
        ("[http]\nmax_connections = -1\n", "http.max_connections"),
        ("[smtp_in]\ncommand_timeout = 0\n", "smtp_in.command_timeout"),
        ("[smtp_in]\nsession_limit = -5\n", "smtp_in.session_limit"),
        ('[smtp_in]\nmax_connections = "many"\n', "smtp_in.max_connections"),
    ],
)
def test_the_listener_limits_are_checked_at_start(tmp_path, text, key):
    from relay import config as config_mod
    from relay.errors import ConfigError

    path = tmp_path / "octorelay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_mod.load(path, env={})


async def test_a_reload_applies_the_smtp_cap_and_timeouts_to_new_sessions(make_daemon, tmp_path):
    from tests.conftest import write_config

    daemon = await make_daemon()
    write_config(Path(daemon.config_path), tmp_path, extra="[smtp_in]\nmax_connections = 1\ncommand_timeout = 1\n")
    assert await daemon.reload()
    host, port = daemon.smtp.address
    first = await asyncio.open_connection(host, port)
    assert (await first[0].readline()).startswith(b"220 ")
    second = await asyncio.open_connection(host, port)
    assert (await closed_by_server(second[0], timeout=5)).startswith(b"421 4.7.0 ")
    await closed_by_server(first[0], timeout=5)  # idle for the new 1 s timeout
    for _, writer in (first, second):
        writer.close()
