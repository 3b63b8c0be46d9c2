"""SMS → e-mail end to end: instant e-mails, digests, catch-up, outbox recovery (SPEC §4, §6)."""

from __future__ import annotations

import asyncio

import aiohttp

from relay import clock
from tests.conftest import wait_for

INSTANT = """
[[subscriptions]]
name = "team"
to = ["team@example.org"]
mode = "instant"
events = ["reply", "stop"]
"""

DIGEST = """
[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * *"
timezone = "Europe/Paris"
group_by = "{group_by}"
events = ["reply", "stop"]
"""


def reply(i: int, number: str = "+33600000001", **extra) -> dict:
    return {
        "message_id": "",
        "number": number,
        "text": f"reply {i}",
        "sim_card_number": "30101",
        "reception_date": f"2026-11-04 11:{i // 60:02d}:{i % 60:02d}",
        **extra,
    }


async def post(daemon, *bodies: dict) -> None:
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(f"{daemon.http_url}/octopush/{daemon.callback_token}", json=body) as resp:
                assert resp.status == 200


def to(sink, address: str) -> list:
    return [m for _, rcpt, m in sink.messages if rcpt == [address]]


async def test_one_instant_e_mail_per_reply_with_headers(make_daemon, sink):
    daemon = await make_daemon(INSTANT, smtp_port=sink.port)
    await post(daemon, reply(1), reply(2, number="+4915112345678"))
    mails = await wait_for(lambda: len(to(sink, "team@example.org")) == 2 and to(sink, "team@example.org"))
    first = next(m for m in mails if "+33 6 00 00 00 01" in m["Subject"])
    assert first["Subject"] == "SMS reply from +33 6 00 00 00 01"
    assert first["Reply-To"] == "+33600000001@sms.example.org"
    assert first["Auto-Submitted"] == "auto-generated"
    assert first["Message-ID"].endswith("@sms.example.org>")
    assert first["Date"] and first["From"] == "octorelay <relay@sms.example.org>"
    assert first.get_content_type() == "multipart/alternative"
    text = first.get_body(("plain",)).get_content()
    html = first.get_body(("html",)).get_content()
    assert "reply 1" in text and "France" in text and "+33 6 00 00 00 01" in text
    assert "reply 1" in html and "mailto:+33600000001@sms.example.org" in html
    german = next(m for m in mails if m is not first)
    assert "Germany" in german.get_body(("plain",)).get_content()
    remembered = await daemon.store.read(
        lambda db: db.execute(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND number = '+33600000001'"
        ).fetchone()[0]
    )
    assert remembered == 1


async def test_a_callback_no_one_gets_at_once_is_stored_routed(make_daemon, sink):
    daemon = await make_daemon(
        INSTANT.replace('mode = "instant"', 'mode = "instant"\ncountries = ["DE"]'), smtp_port=sink.port
    )
    await daemon.notifier.stop()  # what the 200 left behind, before any routing
    await post(daemon, reply(1), reply(2, number="+4915112345678"))
    routed = await daemon.store.read(
        lambda db: dict(db.execute("SELECT country, routed FROM callbacks WHERE kind = 'reply'").fetchall())
    )
    assert routed == {"FR": 1, "DE": 0}  # FR: no instant e-mail, so the notifier never reads it; digests show it
    await daemon.notifier.start()
    mail = (await wait_for(lambda: to(sink, "team@example.org")))[0]
    assert "Germany" in mail.get_body(("plain",)).get_content()
    await wait_for(
        lambda: daemon.store.read(
            lambda db: db.execute("SELECT count(*) FROM callbacks WHERE routed = 0").fetchone()[0] == 0
        )
    )
    assert len(to(sink, "team@example.org")) == 1


async def test_hostile_reply_text_is_escaped_and_intact(make_daemon, sink):
    daemon = await make_daemon(INSTANT, smtp_port=sink.port)
    nasty = "<script>alert(1)</script>\r\nBcc: evil@example.com\n日本語 العربية"
    await post(daemon, {**reply(1), "text": nasty})
    mail = (await wait_for(lambda: to(sink, "team@example.org")))[0]
    assert mail["Bcc"] is None and "evil@example.com" not in str(mail["Subject"])
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>alert(1)</script>" in text and "日本語 العربية" in text and "日本語 العربية" in html
    assert all(rcpt == ["team@example.org"] for _, rcpt, _ in sink.messages)


async def test_digest_holds_exactly_the_events_since_the_previous_run(make_daemon, sink):
    daemon = await make_daemon(DIGEST.format(group_by="country"), smtp_port=sink.port)
    await post(daemon, reply(1), reply(2, number="+4915112345678"), reply(3))
    msg = await daemon.notifier.run_digest("ops")
    assert msg["Subject"] == "3 SMS replies \u2014 ops"
    mail = (await wait_for(lambda: to(sink, "ops@example.org")))[0]
    text = mail.get_body(("plain",)).get_content()
    assert text.index("France") < text.index("Germany")  # bigger group first
    assert all(f"reply {i}" in text for i in (1, 2, 3))
    assert "mailto:+33600000001@sms.example.org" in mail.get_body(("html",)).get_content()
    # Nothing new: nothing sent.
    assert await daemon.notifier.run_digest("ops") is None
    await post(daemon, reply(4))
    msg = await daemon.notifier.run_digest("ops")
    assert msg["Subject"].startswith("1 SMS replies")
    await wait_for(lambda: len(to(sink, "ops@example.org")) == 2)
    second = to(sink, "ops@example.org")[1].get_body(("plain",)).get_content()
    assert "reply 4" in second and "reply 1" not in second


async def test_a_digest_run_before_the_daemon_saw_its_subscription_starts_from_now(make_daemon, sink):
    """Added to the file and run by hand before a reload: the history is not e-mailed."""
    daemon = await make_daemon(DIGEST.format(group_by="country"), smtp_port=sink.port)
    await daemon.store.write(lambda db: db.execute("DELETE FROM digests"))
    await post(daemon, reply(1), reply(2))
    assert await daemon.notifier.run_digest("ops") is None
    await post(daemon, reply(3))
    msg = await daemon.notifier.run_digest("ops")
    assert msg["Subject"].startswith("1 SMS replies")


async def test_digest_by_date_and_dry_run_cli(make_daemon, sink, capsys):
    from relay.cli import main

    daemon = await make_daemon(DIGEST.format(group_by="date"), smtp_port=sink.port)
    await post(daemon, reply(1))
    code = await asyncio.to_thread(main, ["digest", "ops", "--dry-run", "-c", daemon.config_path])
    out = capsys.readouterr().out
    assert code == 0 and "Wednesday 04 November 2026" in out and "1 SMS replies" in out
    assert sink.messages == []  # a dry run sends nothing and keeps the watermark
    assert (await daemon.notifier.run_digest("ops")) is not None


async def test_missed_digest_is_caught_up_once_at_start(make_daemon, sink):
    first = await make_daemon(DIGEST.format(group_by="country"), smtp_port=sink.port)
    await post(first, reply(1))
    two_days_ago = clock.ago(days=2)
    await first.store.write(lambda db: db.execute("UPDATE digests SET last_run_at = ?", [two_days_ago]))
    await first.stop()
    second = await make_daemon(DIGEST.format(group_by="country"), smtp_port=sink.port)
    mails = await wait_for(lambda: to(sink, "ops@example.org"))
    assert len(mails) == 1 and "reply 1" in mails[0].get_body(("plain",)).get_content()
    await asyncio.sleep(0.5)
    assert len(to(sink, "ops@example.org")) == 1
    assert second.scheduler.scheduler.get_job("digest-ops") is not None


async def test_smtp_451_then_recovery_delivers_exactly_once(make_daemon, sink):
    sink.fail_next = ["451 4.3.0 try later", "451 4.3.0 try later"]
    daemon = await make_daemon(INSTANT, smtp_port=sink.port)
    await post(daemon, reply(1))
    await wait_for(lambda: to(sink, "team@example.org"), timeout=20)
    await asyncio.sleep(0.5)
    assert len(to(sink, "team@example.org")) == 1
    assert sink.fail_next == []


async def test_smtp_down_then_back_delivers_exactly_once(make_daemon, sink):
    port = sink.port
    await sink.stop()
    daemon = await make_daemon(INSTANT, smtp_port=port)
    await post(daemon, reply(1), reply(2))
    await wait_for(
        lambda: daemon.store.read(lambda db: db.execute("SELECT sum(attempts) FROM outbox").fetchone()[0]), timeout=10
    )
    await sink.start(port)
    await wait_for(lambda: len(to(sink, "team@example.org")) == 2, timeout=20)
    await asyncio.sleep(0.5)
    assert len(to(sink, "team@example.org")) == 2


async def test_receipts_only_for_subscriptions_that_ask(make_daemon, sink):
    daemon = await make_daemon(
        INSTANT
        + INSTANT.replace('"team"', '"noc"').replace("team@", "noc@").replace('["reply", "stop"]', '["delivery"]'),
        smtp_port=sink.port,
    )
    receipt = {
        "channel": "sms",
        "message_id": "sms_x",
        "number": "+33600000001",
        "status": "DELIVERED",
        "delivery_date": "2026-11-04 11:11:45",
    }
    await post(daemon, receipt)
    mails = await wait_for(lambda: to(sink, "noc@example.org"))
    assert "DELIVERED" in mails[0]["Subject"]
    await asyncio.sleep(0.3)
    assert to(sink, "team@example.org") == []


async def test_low_credit_alert_once(make_daemon, sink):
    """The credit comes from Octopush's check-balance at start (no send needed); the alert is said once."""
    daemon = await make_daemon(
        "[octopush]\nlow_credit = 50\n[octopush.emulator]\ncredit = 12.5\n" + INSTANT, smtp_port=sink.port
    )
    mail = (await wait_for(lambda: to(sink, "team@example.org")))[0]
    body = mail.get_body(("plain",)).get_content()
    assert "credit" in mail["Subject"].lower() and "12.5 €" in body and "about 227 premium SMS to FR" in body
    assert [c["path"] for c in daemon.emulator.calls][:2] == ["/wallet/check-balance"] * 2
    assert await daemon.housekeeping.check_credit() == 12.5  # the same level: not said again
    await asyncio.sleep(0.3)
    assert len(to(sink, "team@example.org")) == 1


async def test_confirmation_left_by_a_crash_is_sent_at_the_next_start(make_daemon, sink, tmp_path):
    """A campaign that finished but whose confirmation was not queued yet (notified = 0) is confirmed at start."""
    from relay.octopush.client import Recipient
    from relay.sending import SendRequest, queue_campaign

    first = await make_daemon('[smtp_in]\nconfirm = "all"\n', smtp_port=sink.port)
    request = SendRequest(
        text="left behind",
        recipients=(Recipient("+33612345678"),),
        type="sms_premium",
        purpose="alert",
        origin="email",
        sender_email="alice@example.org",
        message_id="<crash@example.org>",
        label="Crash",
        confirm="all",
    )

    def finished_but_not_confirmed(db):
        campaign_id, _ = queue_campaign(db, request, retry_for=10)
        db.execute("UPDATE sends SET status = 'sent', ticket = 'sms_crash' WHERE campaign_id = ?", [campaign_id])
        db.execute("UPDATE campaigns SET status = 'sent', notified = 0 WHERE id = ?", [campaign_id])

    await first.stop()  # as if it died right after recording the send
    from relay.storage.database import Store

    store = Store(first.store.path)
    await store.start()
    await store.write(finished_but_not_confirmed)
    await store.stop()
    await make_daemon('[smtp_in]\nconfirm = "all"\n', smtp_port=sink.port)
    mail = (await wait_for(lambda: to(sink, "alice@example.org")))[0]
    assert mail["Subject"] == "SMS sent: Crash" and mail["In-Reply-To"] == "<crash@example.org>"
    await asyncio.sleep(0.3)
    assert len(to(sink, "alice@example.org")) == 1
