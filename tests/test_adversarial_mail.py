"""A crafted e-mail of `max_size` cannot hold the daemon (issue 14, HIGH 1; SPEC §5 "linear in the message's size").

One 274 KB e-mail whose text was `From` and 200,000 spaces once held the event loop 55 s. Here e-mails of
the full default `max_size` (5 MiB), built from lines that made the old patterns backtrack, go through the
real SMTP listener while a client keeps posting callbacks: the e-mail is answered within 2 s and every
callback meanwhile within 200 ms.
"""

from __future__ import annotations

import asyncio
import email.policy
import smtplib
import sqlite3
import time
from email.message import EmailMessage

import aiohttp
import pytest

from tests.conftest import write_config

MAX_SIZE = 5_242_880
LINE = 200_000


def _adversarial_text(kind: str) -> str:
    shapes = {
        "header-block": ["From" + " " * LINE + "x", "Sent" + " " * LINE + "x", "From *" + " " * LINE],
        "separators": ["-" * LINE + " original message " + " " * LINE, "_" * LINE + "x", "> " * (LINE // 2)],
        "attribution": ["On a" + " " * LINE + "x", "wrote:" + " " * LINE + "x", "a" + " " * LINE + "écrit x"],
    }[kind]
    lines = ["Hello, see below."]
    while sum(len(line) + 1 for line in lines) < MAX_SIZE * 0.7:  # headroom for base64 / QP
        lines.extend(shapes)
    return "\n".join(lines)


def _message(kind: str, *, html: bool) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "+33612345678@sms.example.org"
    msg["Subject"] = "Re: " * 2000 + "x"
    msg["Message-ID"] = f"<{kind}-{html}-{time.monotonic_ns()}@example.org>"
    text = _adversarial_text(kind)
    if html:
        html_text = f"<html><body><div style='border-top:solid'>{text}</div><p>{text[:LINE]}</p></body></html>"
        msg.set_content(html_text, subtype="html")
    else:
        msg.set_content(text)
    return msg


def _send(address: tuple[str, int], data: bytes) -> tuple[int, float]:
    """One real SMTP session in a thread of its own: (final code, seconds from the end of DATA to the answer)."""
    with smtplib.SMTP(*address, timeout=60) as session:
        session.ehlo()
        session.mail("alice@example.org")
        session.rcpt("+33612345678@sms.example.org")
        session.putcmd("data")
        code, _ = session.getreply()
        assert code == 354
        session.send(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        started = time.perf_counter()
        code, _ = session.getreply()
        return code, time.perf_counter() - started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("html", [False, True], ids=["plain", "html"])
@pytest.mark.parametrize("kind", ["header-block", "separators", "attribution"])
async def test_a_max_size_adversarial_e_mail_does_not_hold_the_daemon(spawn, tmp_path, kind, html):
    """The daemon is a real process: its event loop is alone, as in production."""
    proc = await spawn(write_config(tmp_path / "c.toml", tmp_path))
    token = sqlite3.connect(tmp_path / "octorelay.db").execute("SELECT value FROM meta WHERE key='callback_token'")
    callback_url = f"{proc.http_url}/octopush/{token.fetchone()[0]}"
    data = _message(kind, html=html).as_bytes(policy=email.policy.SMTP)
    assert len(data) < MAX_SIZE
    latencies: list[float] = []
    done = asyncio.Event()

    async def post_callbacks() -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while not done.is_set():
                i += 1
                body = {"number": "+33600000001", "text": f"meanwhile {i}", "reception_date": "2026-11-04 11:11:45"}
                started = time.perf_counter()
                async with http.post(callback_url, json=body) as resp:
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    poster = asyncio.create_task(post_callbacks())
    try:
        code, answered_in = await asyncio.to_thread(_send, proc.smtp, data)
    finally:
        done.set()
        await poster
    assert code in (250, 550), code  # accepted, or refused with a reason (too long): never a 4xx or a hang
    assert answered_in < 2.0, f"the end of DATA was answered after {answered_in:.1f} s"
    assert latencies and max(latencies) < 0.2, f"a callback waited {max(latencies) * 1000:.0f} ms"
