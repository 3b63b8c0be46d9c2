"""Property tests through the running daemon's listeners (issue 14): random and adversarial e-mails over
real SMTP sessions, random bodies over real HTTP, while a steady trickle of callbacks must stay answered.

Whatever comes in, every answer is one the SPEC documents (§3, §5), comes in bounded time, and nothing
crashes: no traceback in the log, no 451 for a message the relay merely cannot read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FROM = "alice@example.org"
TO = "+33612345678@sms.example.org"
ANSWER_WITHIN = 5.0  # seconds for one e-mail or one callback, on a loaded 2-core machine
CALLBACK_WITHIN = 2.0

# SMTP answers after DATA that SPEC §5 documents for content (no limits, no DKIM in this configuration).
DATA_ANSWERS = {(250, b"2.0.0"), (550, b"5.6.0"), (554, b"5.6.0"), (552, b"5.3.4")}
CALLBACK_STATUSES = {200, 400, 413}  # SPEC §3: stored, not JSON/form, too large

# ---------------------------------------------------------------- strategies

# Text that is hard on parsers and cleaners: quotes, attributions, separators, markup, long runs, odd Unicode.
_tricky = st.sampled_from(
    [
        "> quoted",
        ">>>>>>>>>>>>>>>>>>>>",
        "On Mon, 1 Jan 2024, Bob <bob@example.org> wrote:",
        "Le lun. 1 janv. 2024 à 10:00, Bob a écrit :",
        "-----Original Message-----",
        "From:" + " " * 300 + "x",
        "From: Bob\r\nSent: today\r\nTo: Ann\r\nSubject: hi",
        "-- ",
        "--",
        "Sent from my iPhone",
        "________________________________",
        ".",
        "..",
        "[simulate] [at:2020-01-01 10:00] [sender:X] [marketing] [low-cots]",
        "<html><body><blockquote>" * 20,
        "=?utf-8?b?w6k=?= =?iso-8859-1?q?=E9?=",
        "\u202e\u200b\ufeff\ud7ff",
        "é" * 150,
        "\t \t \t",
        "*" * 500,
        "=" * 400,
    ]
)
_line = st.one_of(_tricky, st.text(max_size=120).map(lambda t: t.replace("\r", " ").replace("\n", " ")))
_body_text = st.lists(_line, max_size=30).map("\n".join)
_header_value = st.one_of(_tricky, st.text(max_size=80)).map(lambda t: t.replace("\r", " ").replace("\n", " "))
_header_name = st.sampled_from(
    [
        "Subject",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "Precedence",
        "Received",
        "X-Whatever",
        "MIME-Version",
        "Date",
        "From",
    ]
)
_content_type = st.sampled_from(
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "text/plain; charset=iso-8859-1; format=flowed; delsp=yes",
        "text/plain; charset=unknown-8bit",
        "text/html; charset=utf-8",
        "application/octet-stream",
        "message/rfc822",
        "message/delivery-status",
        "multipart/mixed",
        "multipart/alternative; boundary=",
    ]
)
_encoding = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-unknown", ""])


def _leaf(draw) -> str:
    kind, encoding, text = draw(_content_type), draw(_encoding), draw(_body_text)
    head = f"Content-Type: {kind}\r\n" + (f"Content-Transfer-Encoding: {encoding}\r\n" if encoding else "")
    if draw(st.booleans()):
        head += "Content-Disposition: attachment; filename=x.txt\r\n"
    return head + "\r\n" + text.replace("\n", "\r\n")


@st.composite
def _mime(draw, depth: int = 0) -> str:
    """A part: a leaf, or a multipart of parts, with boundaries that may collide or never close."""
    if depth >= 4 or draw(st.integers(0, 2)) == 0:
        return _leaf(draw)
    boundary = draw(st.sampled_from(["b", "bb", "=_x", "b" * 70, f"level{depth}"]))
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report", "digest"]))
    parts = [draw(_mime(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts)
    if draw(st.booleans()):
        body += f"--{boundary}--\r\n"
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n{body}'


def _deep(depth: int) -> str:
    """Parts nested `depth` levels deep: the stdlib parser recurses once per level."""
    opening = "".join(f'Content-Type: multipart/mixed; boundary="d{i}"\r\n\r\n--d{i}\r\n' for i in range(depth))
    return opening + "Content-Type: text/plain\r\n\r\nhello" + "".join(f"\r\n--d{i}--" for i in reversed(range(depth)))


@st.composite
def e_mails(draw) -> bytes:
    """A whole message as sent: random and adversarial headers, then a MIME tree or plain random text."""
    headers = [f"From: {FROM}", f"To: {TO}", "MIME-Version: 1.0"]
    headers += [f"{draw(_header_name)}: {draw(_header_value)}" for _ in range(draw(st.integers(0, 6)))]
    body = draw(
        st.one_of(
            _mime(),
            _body_text.map(lambda t: "\r\n" + t.replace("\n", "\r\n")),
            st.integers(40, 3000).map(_deep),
        )
    )
    if not body.startswith("\r\n") and not body.startswith("Content-Type"):
        body = "\r\n" + body
    text = "\r\n".join(headers) + "\r\n" + body
    raw = text.encode("utf-8", "surrogateescape") if draw(st.booleans()) else text.encode("utf-8", "replace")
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8 at all
        raw += b"\r\n" + draw(st.binary(max_size=200)).replace(b"\r", b"").replace(b"\n", b"")
    # SMTP lines are at most 1000 octets (RFC 5321 §4.5.3.1.6); longer ones get aiosmtpd's 500, by design.
    return b"\r\n".join(line[:990] for line in raw.split(b"\r\n"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
_callback_fields = st.dictionaries(
    st.sampled_from(["number", "text", "reception_date", "status", "delivery_date", "stop_date", "ticket", "x"]),
    _json,
    max_size=7,
)
callback_bodies = st.one_of(
    _callback_fields.map(lambda f: (json.dumps(f).encode(), "application/json")),
    st.binary(max_size=3000).map(lambda b: (b, "application/json")),
    st.text(max_size=500).map(lambda t: (t.encode("utf-8", "surrogatepass"), "application/x-www-form-urlencoded")),
    st.binary(max_size=500).map(lambda b: (b, "")),
    st.binary(min_size=65 * 1024, max_size=65 * 1024 + 10).map(lambda b: (b, "text/plain")),
)

# ---------------------------------------------------------------- the test


# The daemon's own workers use `random` (backoff jitter) while hypothesis generates in another thread.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.timeout(180)  # ~25 s alone; more on a loaded machine
async def test_random_e_mails_and_callbacks_get_documented_answers_in_bounded_time(make_daemon, caplog):
    daemon = await make_daemon('[octopush.emulator]\nreply_text = ""\n')
    host, port = daemon.smtp.address
    callback_url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    latencies: list[float] = []
    answers: list[int] = []
    statuses: list[int] = []
    done = asyncio.Event()

    async def steady_callbacks():
        """A reply every 50 ms, the whole time: each must be stored and answered 200 at once."""
        async with aiohttp.ClientSession() as session:
            n = 0
            while not done.is_set():
                n += 1
                started = time.monotonic()
                reply = {"number": "+33612345678", "text": f"steady {n}", "reception_date": "2026-01-05 10:00:00"}
                async with session.post(callback_url, json=reply) as response:
                    statuses.append(response.status)
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(message=e_mails())
    def e_mail_is_answered(message: bytes):
        started = time.monotonic()
        with smtplib.SMTP(host, port, timeout=ANSWER_WITHIN * 2) as s:
            s.ehlo()
            s.mail(FROM)
            s.rcpt(TO)
            code, text = s.data(message)
        assert time.monotonic() - started < ANSWER_WITHIN
        assert (code, text[:5]) in DATA_ANSWERS, (code, text, message[:300])
        answers.append(code)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=callback_bodies)
    def callback_is_answered(body: tuple[bytes, str]):
        data, content_type = body
        request = urllib.request.Request(callback_url, data=data, method="POST")
        if content_type:
            request.add_header("Content-Type", content_type)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=ANSWER_WITHIN * 2) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert time.monotonic() - started < ANSWER_WITHIN
        assert status in CALLBACK_STATUSES, (status, data[:200], content_type)

    trickle = asyncio.create_task(steady_callbacks())
    with caplog.at_level(logging.INFO):
        try:
            await asyncio.to_thread(e_mail_is_answered)
            await asyncio.to_thread(callback_is_answered)
        finally:
            done.set()
            await trickle
    print("e-mail answers:", {code: answers.count(code) for code in set(answers)})
    assert statuses and set(statuses) == {200}
    assert max(latencies) < CALLBACK_WITHIN, sorted(latencies)[-5:]
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-3000:]
