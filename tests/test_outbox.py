"""The durable e-mail outbox against a real SMTP server on loopback (SPEC §4): retries, failures, exactly once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import ssl
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from relay import clock
from relay.config import SmtpOut
from relay.mail import outbox as outbox_mod
from relay.mail.outbox import Outbox, queue_message
from relay.mail.render import build_message, make_msgid
from relay.metrics import Metrics
from relay.storage import queues
from relay.storage.database import Store
from tests.conftest import Sink, wait_for

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("fast_backoff")]

DOMAIN = "sms.example.org"


def smtp_out(tmp_path: Path, port: int = 25, **over) -> SmtpOut:
    values = dict(
        transport="smtp",
        host="127.0.0.1",
        port=port,
        security="none",
        username="",
        password="",
        sender="octorelay <relay@sms.example.org>",
        maildir=tmp_path / "mail",
        max_age=3600.0,
        timeout=5.0,
    )
    values.update(over)
    return SmtpOut(**values)


@pytest.fixture
async def make_outbox(store):
    """Factory: `make_outbox(config, **kwargs)` builds an Outbox (not started); all are stopped after."""
    made: list[Outbox] = []

    def factory(config: SmtpOut, **kwargs) -> Outbox:
        box = Outbox(config, store, **kwargs)
        made.append(box)
        return box

    yield factory
    for box in made:
        await box.stop()


def reply_message(to=("ops@example.org",), subject="SMS reply from +33 6 12 34 56 78", **kw):
    return build_message(
        sender="octorelay <relay@sms.example.org>",
        to=list(to),
        subject=subject,
        text=kw.pop("text", "OK, thanks!\n"),
        html=kw.pop("html", "<p>OK, thanks!</p>"),
        message_id=make_msgid(DOMAIN),
        reply_to="+33612345678@sms.example.org",
        **kw,
    )


async def queue(store: Store, msg=None, *, kind="reply", recipients=("ops@example.org",)) -> int:
    msg = msg or reply_message(to=recipients)
    return await store.write(lambda db: queue_message(db, msg, kind=kind, recipients=list(recipients)))


async def row(store: Store, outbox_id: int) -> dict:
    return await store.read(lambda db: dict(db["outbox"].get(outbox_id)))


async def status_is(store: Store, outbox_id: int, status: str):
    async def check():
        r = await row(store, outbox_id)
        return r if r["status"] == status else None

    return await wait_for(check, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ delivery


async def test_queued_mail_is_delivered_once_with_both_parts_and_headers(store, sink, make_outbox, tmp_path):
    metrics = Metrics()
    box = make_outbox(smtp_out(tmp_path, sink.port), metrics=metrics)
    await box.start()
    original = "<campaign-1@example.org>"
    msg = reply_message(to=["alice@example.org"], subject="Re: Meeting", in_reply_to=original, references=[original])
    outbox_id = await queue(store, msg, recipients=["alice@example.org"])
    box.wake()

    done = await status_is(store, outbox_id, "sent")
    await asyncio.sleep(0.2)  # a second delivery would show up by now
    assert len(sink.messages) == 1
    mail_from, rcpt_tos, got = sink.messages[0]
    assert mail_from == "relay@sms.example.org"  # the address part of `from`
    assert rcpt_tos == ["alice@example.org"]
    assert got.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in got.iter_parts()] == ["text/plain", "text/html"]
    assert got["Auto-Submitted"] == "auto-generated"
    assert got["Message-ID"] == msg["Message-ID"] == done["message_id"]
    assert got["Message-ID"].endswith(f"@{DOMAIN}>")
    assert got["Reply-To"] == "+33612345678@sms.example.org"
    assert got["In-Reply-To"] == original
    assert got["References"] == original
    assert done["attempts"] == 1 and done["sent_at"] and done["last_error"] is None
    assert done["subject"] == "Re: Meeting"
    assert metrics.registry.get_sample_value("octorelay_emails_sent_total", {"kind": "reply"}) == 1
    depth = await store.read(queues.depths)
    assert (depth["outbox_pending"], depth["outbox_failed"], depth["outbox_oldest_pending"]) == (0, 0, None)


async def test_temporary_refusal_is_retried_then_delivered_exactly_once(store, sink, make_outbox, tmp_path):
    sink.fail_next = ["451 4.3.0 try later"] * 3
    box = make_outbox(smtp_out(tmp_path, sink.port))
    await box.start()
    outbox_id = await queue(store)
    box.wake()

    done = await status_is(store, outbox_id, "sent")
    await asyncio.sleep(0.2)
    assert len(sink.messages) == 1
    assert done["attempts"] == 4
    assert box.retried == 3 and box.sent == 1


async def test_server_down_then_up_delivers_exactly_once(store, make_outbox, tmp_path):
    port = free_port()
    box = make_outbox(smtp_out(tmp_path, port))
    await box.start()
    outbox_id = await queue(store)
    box.wake()

    async def tried_twice():
        r = await row(store, outbox_id)
        return r["attempts"] >= 2 and r

    waiting = await wait_for(tried_twice)
    assert waiting["status"] == "pending" and waiting["last_error"]
    assert (await store.read(queues.depths))["outbox_pending"] == 1

    sink = Sink()
    await sink.start(port)
    try:
        await status_is(store, outbox_id, "sent")
        await asyncio.sleep(0.2)
        assert len(sink.messages) == 1
    finally:
        await sink.stop()


async def test_permanent_refusal_fails_at_once(store, sink, make_outbox, tmp_path):
    metrics = Metrics()
    sink.fail_next = ["550 5.1.1 no such user"]
    box = make_outbox(smtp_out(tmp_path, sink.port), metrics=metrics)
    await box.start()
    outbox_id = await queue(store, kind="digest")
    box.wake()

    done = await status_is(store, outbox_id, "failed")
    assert done["attempts"] == 1
    assert "550" in done["last_error"] and "no such user" in done["last_error"]
    await asyncio.sleep(0.3)  # not retried: the sink would have accepted a second try
    assert sink.messages == []
    assert (await row(store, outbox_id))["attempts"] == 1
    assert metrics.registry.get_sample_value("octorelay_emails_failed_total", {"kind": "digest"}) == 1
    assert (await store.read(queues.depths))["outbox_failed"] == 1


async def test_retries_stop_after_max_age(store, sink, make_outbox, tmp_path):
    sink.fail_next = ["451 4.3.0 try later"] * 1000
    box = make_outbox(smtp_out(tmp_path, sink.port, max_age=0.5))
    await box.start()
    outbox_id = await queue(store)
    box.wake()

    done = await status_is(store, outbox_id, "failed")
    assert done["attempts"] >= 2
    assert "451" in done["last_error"] and "gave up" in done["last_error"]
    assert sink.messages == []


class RecipientGate:
    """An SMTP handler that answers RCPT per address from a script, and records what it accepts."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.deliveries: list[list[str]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        script = self.answers.get(address)
        if script:
            return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.deliveries.append(list(envelope.rcpt_tos))
        return "250 2.0.0 OK"


@pytest.fixture
async def serve():
    """Factory: `await serve(handler, **smtp_kwargs)` runs aiosmtpd on loopback port 0; returns the port."""
    servers = []

    async def factory(handler, **kwargs) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(handler, hostname="test", **kwargs), "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield factory
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_partial_acceptance_retries_only_the_refused_recipients(store, serve, make_outbox, tmp_path):
    gate = RecipientGate({"later@example.org": ["451 4.2.1 mailbox busy"]})
    port = await serve(gate)
    box = make_outbox(smtp_out(tmp_path, port))
    await box.start()
    outbox_id = await queue(store, recipients=["ok@example.org", "later@example.org"])
    box.wake()

    done = await status_is(store, outbox_id, "sent")
    assert gate.deliveries == [["ok@example.org"], ["later@example.org"]]  # nobody got it twice
    assert done["attempts"] == 2


async def test_all_recipients_refused_for_good_fails(store, serve, make_outbox, tmp_path):
    gate = RecipientGate({"nobody@example.org": ["550 5.1.1 no such user"]})
    port = await serve(gate)
    box = make_outbox(smtp_out(tmp_path, port))
    await box.start()
    outbox_id = await queue(store, recipients=["nobody@example.org"])
    box.wake()

    done = await status_is(store, outbox_id, "failed")
    assert "550 5.1.1 no such user" in done["last_error"]
    assert gate.deliveries == []


async def test_pending_work_at_start_is_picked_up_at_once(store, sink, make_outbox, tmp_path):
    first = await queue(store)
    in_backoff = await queue(store)
    # As a previous run left them: one waiting for a retry in an hour, one leased by a process that died.
    later = clock.iso(clock.now().replace(year=clock.now().year + 1))
    await store.write(lambda db: db["outbox"].update(in_backoff, {"next_attempt_at": later, "attempts": 3}))
    await store.write(lambda db: db["outbox"].update(first, {"next_attempt_at": later}))
    box = make_outbox(smtp_out(tmp_path, sink.port))
    started = asyncio.get_running_loop().time()
    await box.start()  # no wake(): the start itself looks at the table

    await status_is(store, first, "sent")
    await status_is(store, in_backoff, "sent")
    assert asyncio.get_running_loop().time() - started < 5
    assert len(sink.messages) == 2


async def test_many_messages_each_delivered_once(store, sink, make_outbox, tmp_path):
    box = make_outbox(smtp_out(tmp_path, sink.port))
    await box.start()
    ids = [await queue(store, recipients=[f"user{i}@example.org"]) for i in range(12)]
    box.wake()
    for outbox_id in ids:
        await status_is(store, outbox_id, "sent")
    await asyncio.sleep(0.2)
    assert sorted(rcpt[0] for _, rcpt, _ in sink.messages) == sorted(f"user{i}@example.org" for i in range(12))


async def test_worker_survives_an_unexpected_error(store, sink, make_outbox, tmp_path, monkeypatch):
    box = make_outbox(smtp_out(tmp_path, sink.port))
    calls = {"n": 0}
    real = box._send_smtp

    async def flaky(message, recipients):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return await real(message, recipients)

    monkeypatch.setattr(box, "_send_smtp", flaky)
    await box.start()
    outbox_id = await queue(store)
    box.wake()
    done = await status_is(store, outbox_id, "sent")
    assert done["attempts"] == 2 and len(sink.messages) == 1


async def test_stop_without_start_is_harmless(store, make_outbox, tmp_path):
    box = make_outbox(smtp_out(tmp_path))
    await box.stop()


# ------------------------------------------------------------------ Maildir


async def test_maildir_transport_writes_exactly_one_file(store, make_outbox, tmp_path):
    box = make_outbox(smtp_out(tmp_path, transport="maildir"))
    await box.start()
    msg = reply_message(text="Hello 日本語\n")
    outbox_id = await queue(store, msg)
    box.wake()

    await status_is(store, outbox_id, "sent")
    root = tmp_path / "mail"
    files = list((root / "new").iterdir())
    assert len(files) == 1
    assert list((root / "tmp").iterdir()) == []
    assert (root / "cur").is_dir()
    raw = files[0].read_bytes()
    assert b"\r\n" not in raw  # Maildir files use local line endings
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got["Message-ID"] == msg["Message-ID"]
    assert got.get_body(("plain",)).get_content() == "Hello 日本語\n"


def test_maildir_names_are_unique(tmp_path):
    names = {outbox_mod.deliver_maildir(tmp_path / "md", b"Subject: x\r\n\r\nbody\r\n").name for _ in range(50)}
    assert len(names) == 50
    assert len(list((tmp_path / "md" / "new").iterdir())) == 50


# ------------------------------------------------------------------ TLS


class Recorder:
    def __init__(self):
        self.sessions: list[bool] = []  # whether each delivery came over TLS

    async def handle_DATA(self, server, session, envelope):
        self.sessions.append(session.ssl is not None)
        return "250 2.0.0 OK"


@pytest.fixture(scope="module")
def tls(ca):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_starttls_with_a_trusted_ca(store, serve, make_outbox, tmp_path, tls):
    server_ctx, client_ctx = tls
    recorder = Recorder()
    port = await serve(recorder, tls_context=server_ctx, require_starttls=True)
    box = make_outbox(smtp_out(tmp_path, port, security="starttls"), tls_context=client_ctx)
    await box.start()
    outbox_id = await queue(store)
    box.wake()
    await status_is(store, outbox_id, "sent")
    assert recorder.sessions == [True]


async def test_starttls_with_an_untrusted_certificate_is_retried_not_sent(store, serve, make_outbox, tmp_path, tls):
    server_ctx, _ = tls
    recorder = Recorder()
    port = await serve(recorder, tls_context=server_ctx, require_starttls=True)
    box = make_outbox(smtp_out(tmp_path, port, security="starttls"))  # the system CAs do not know trustme's
    await box.start()
    outbox_id = await queue(store)
    box.wake()

    async def tried():
        r = await row(store, outbox_id)
        return r["attempts"] >= 1 and r

    r = await wait_for(tried)
    assert r["status"] == "pending" and "CERTIFICATE" in r["last_error"].upper()
    assert recorder.sessions == []


async def test_security_none_does_not_upgrade_when_starttls_is_offered(store, serve, make_outbox, tmp_path, tls):
    server_ctx, _ = tls
    recorder = Recorder()
    port = await serve(recorder, tls_context=server_ctx)
    box = make_outbox(smtp_out(tmp_path, port, security="none"))
    await box.start()
    outbox_id = await queue(store)
    box.wake()
    await status_is(store, outbox_id, "sent")
    assert recorder.sessions == [False]


async def test_recipients_and_subject_are_stored(store):
    msg = reply_message(to=["a@example.org", "b@example.org"], subject="Héllo")
    outbox_id = await queue(store, msg, kind="alert", recipients=["a@example.org", "b@example.org"])
    r = await row(store, outbox_id)
    assert json.loads(r["recipients"]) == ["a@example.org", "b@example.org"]
    assert r["subject"] == "Héllo" and r["kind"] == "alert" and r["status"] == "pending"
    assert r["next_attempt_at"] <= clock.iso()
    assert r["message"].startswith(b"From: ") and b"\r\n" in r["message"]


async def test_a_delivery_past_its_lease_is_not_claimed_again_by_its_own_process(store, tmp_path):
    """A slow server may hold one delivery past its lease: the next pass must not start a second copy."""
    first = await queue(store, recipients=["a@example.org"])
    second = await queue(store, recipients=["b@example.org"])
    claim = outbox_mod._claim
    taken = await store.write(lambda db: [r["id"] for r in claim(db, limit=10, lease=0)])
    assert taken == [first, second]
    again = await store.write(lambda db: [r["id"] for r in claim(db, limit=10, lease=0, busy=[first])])
    assert again == [second]


# ------------------------------------------------------------------ sessions kept open


class SessionLog:
    """A mail server's view of the outbox's sessions: each e-mail with its session, each QUIT; it may refuse
    (`answer`: 421 and the client closes, or another 4xx) the MAIL of a session's e-mail after the
    `hang_up_after`th."""

    def __init__(self, hang_up_after: int | None = None, answer: str = "421 4.7.0 Too many messages, closing"):
        self.hang_up_after = hang_up_after
        self.answer = answer
        self.mails: list[int] = []  # id() of the session each accepted e-mail came on
        self.quits = 0
        self._count: dict[int, int] = {}

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._count[id(session)] = self._count.get(id(session), 0) + 1
        if self.hang_up_after is not None and self._count[id(session)] > self.hang_up_after:
            return self.answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(id(session))
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"


async def deliver_one_by_one(store, box, count: int) -> list[dict]:
    done = []
    for _ in range(count):
        outbox_id = await queue(store)
        box.wake()
        done.append(await status_is(store, outbox_id, "sent"))
    return done


async def test_e_mails_one_after_another_share_one_session(store, serve, make_outbox, tmp_path):
    server = SessionLog()
    box = make_outbox(smtp_out(tmp_path, await serve(server)))
    await box.start()
    await deliver_one_by_one(store, box, 5)
    assert len(server.mails) == 5 and len(set(server.mails)) == 1  # one connect, EHLO and QUIT for five
    await box.stop()
    await wait_for(lambda: server.quits == 1)  # stopping says QUIT on the kept session


@pytest.mark.parametrize(
    "answer", ["421 4.7.0 Too many messages, closing", "452 4.5.3 Too many messages in this session"]
)
async def test_a_kept_session_the_server_refuses_is_replaced_at_once(store, serve, make_outbox, tmp_path, answer):
    server = SessionLog(hang_up_after=2, answer=answer)
    box = make_outbox(smtp_out(tmp_path, await serve(server)))
    await box.start()
    done = await deliver_one_by_one(store, box, 5)
    assert len(server.mails) == 5 and len(set(server.mails)) == 3  # 2 + 2 + 1 e-mails per session
    assert [row["attempts"] for row in done] == [1] * 5  # the refused MAIL cost no retry and no backoff
    assert all(row["last_error"] is None for row in done)


async def test_an_idle_session_is_closed_after_keep_open(store, serve, make_outbox, tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_mod, "KEEP_OPEN", 0.3)
    server = SessionLog()
    box = make_outbox(smtp_out(tmp_path, await serve(server)))
    await box.start()
    await deliver_one_by_one(store, box, 1)
    await wait_for(lambda: server.quits == 1)  # the loop wakes to close it, with no e-mail to send
    await deliver_one_by_one(store, box, 1)
    assert len(set(server.mails)) == 2  # the next e-mail opened a new one
