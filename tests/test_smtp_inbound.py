"""E-mail → SMS through real SMTP sessions against the running daemon (SPEC §5)."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from functools import partial

import aiosmtplib
import pytest

from relay import clock
from relay.mail.smtp_inbound import SELF_SIGNED_KEY, FairReader
from relay.passwords import make_hash
from relay.storage import meta
from tests.conftest import wait_for

FROM = "alice@example.org"


def message(to: str | list[str], body: str = "Hello there", subject: str = "Test", **headers) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = headers.pop("message_id", None) or make_msgid(domain="example.org")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


async def smtp_send(daemon, msg: EmailMessage, recipients: list[str], sender: str = FROM):
    """One real SMTP session; returns (code, text) of the final answer, or raises the refusal."""
    host, port = daemon.smtp.address
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
    await client.connect()
    try:
        errors, text = await client.send_message(msg, sender=sender, recipients=recipients)
        return errors, text
    finally:
        await client.quit()


def sync_session(daemon):
    host, port = daemon.smtp.address
    session = smtplib.SMTP(host, port, timeout=10)
    session.ehlo()
    return session


def sent(daemon) -> list[dict]:
    return daemon.emulator.sent


async def test_e_mail_becomes_one_campaign(daemon, sink):
    to = "+33612345678@sms.example.org"
    _, text = await smtp_send(daemon, message(to, "Rendez-vous à 10h"), [to])
    assert "Queued as campaign" in text
    await wait_for(lambda: sent(daemon))
    payload = sent(daemon)[0]
    assert payload["text"] == "Rendez-vous à 10h"
    assert payload["recipients"] == [{"phone_number": "+33612345678"}]
    assert payload["type"] == "sms_premium" and payload["purpose"] == "alert"


@pytest.mark.parametrize(
    "local",
    ["+33612345678", "0033612345678", "33612345678", "0612345678", "06.12.34.56.78"],
)
async def test_every_number_form(daemon, local):
    def session():
        with sync_session(daemon) as s:
            s.mail(FROM)
            return s.rcpt(f"{local}@SMS.Example.org")[0]

    assert await asyncio.to_thread(session) == 250


async def test_smtp_time_answers(make_daemon, sink):
    daemon = await make_daemon(
        '[smtp_in]\nallowed_senders = ["*@example.org"]\nmax_recipients = 2\nmax_size = 2000\n',
        smtp_port=sink.port,
    )

    def session():
        with sync_session(daemon) as s:
            assert s.mail("mallory@evil.test")[0] == 550
            assert s.mail("Alice@EXAMPLE.org")[0] == 250
            code, text = s.rcpt("+33612345678@other.example")
            assert (code, b"5.7.1" in text and b"relaying denied" in text) == (550, True)
            code, text = s.rcpt("hello@sms.example.org")
            assert code == 550 and b"5.1.1" in text and b"hello" in text
            assert s.rcpt("+33612345678@sms.example.org")[0] == 250
            assert s.rcpt("+33612345679@sms.example.org")[0] == 250
            code, text = s.rcpt("+33612345670@sms.example.org")
            assert code == 452 and b"4.5.3" in text
            code, text = s.data(("Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 40).encode())
            assert code == 552 and b"5.3.4" in text

    await asyncio.to_thread(session)


@pytest.mark.parametrize(
    ("subject", "body", "reason"),
    [
        ("Test", "", "no text"),
        ("Test", "\n".join(["x" * 49] * 26), "1224"),
        ("[simulte] Test", "hi", "simulate"),
        ("[sendr:ACME] Test", "hi", "sendr"),
        ("[sender:A] Test", "hi", "sender"),
        ("[at:2001-01-01 10:00] Test", "hi", "past"),
        ("[marketing] Promo", "Big sale today", "STOP"),
    ],
)
async def test_content_refusals_are_550_5_6_0(daemon, subject, body, reason):
    to = "+33612345678@sms.example.org"

    def session():
        with sync_session(daemon) as s:
            s.mail(FROM)
            s.rcpt(to)
            return s.data(message(to, body or "> only quoted text", subject).as_bytes(policy=SMTP_POLICY))

    code, text = await asyncio.to_thread(session)
    assert code == 550 and b"5.6.0" in text and reason.lower().encode() in text.lower(), text
    assert sent(daemon) == []


async def test_tags_set_campaign_fields(daemon):
    to = "+33612345678@sms.example.org"
    msg = message(
        to, "Soldes ce week-end, no PUB=STOP", "[EXTERNAL] [low-cost] [Marketing] [no-replies] [sender:ACME] Promo"
    )
    await smtp_send(daemon, msg, [to])
    await wait_for(lambda: sent(daemon))
    payload = sent(daemon)[0]
    assert payload["type"] == "sms_low_cost" and payload["purpose"] == "wholesale"
    assert payload["with_replies"] is False and payload["sender"] == "ACME"
    campaign = await daemon.store.read(lambda db: db.execute("SELECT label FROM campaigns").fetchone()[0])
    assert "[EXTERNAL]" in campaign and "Promo" in campaign


async def test_simulate_tag_sends_nothing(daemon):
    to = "+33612345678@sms.example.org"
    await smtp_send(daemon, message(to, "hi", "[simulate] dry run"), [to])
    await wait_for(lambda: daemon.emulator.requests)
    assert daemon.emulator.requests[0]["body"]["simulation_mode"] is True
    assert sent(daemon) == []


async def test_automatic_mail_is_accepted_and_dropped(daemon):
    to = "+33612345678@sms.example.org"
    for headers in ({"Auto_Submitted": "auto-replied"}, {"Precedence": "bulk"}, {"List_Id": "<x.example.org>"}):
        _, text = await smtp_send(daemon, message(to, "I am away", **headers), [to])
        assert "automatic" in text
    _, text = await smtp_send(daemon, message(to, "bounce"), [to], sender="")
    assert "automatic" in text
    await asyncio.sleep(0.2)
    assert await daemon.store.read(lambda db: db.execute("SELECT count(*) FROM campaigns").fetchone()[0]) == 0


async def test_same_message_id_is_sent_once(daemon):
    to = "+33612345678@sms.example.org"
    msg = message(to, "only once")
    await smtp_send(daemon, msg, [to])
    _, text = await smtp_send(daemon, msg, [to])
    assert "Already queued" in text
    await wait_for(lambda: sent(daemon))
    await asyncio.sleep(0.3)
    assert len(sent(daemon)) == 1


async def test_a_repeat_after_24_hours_is_a_new_send_with_a_new_request_id(daemon):
    """Sent as new after 24 h, even when Octopush saw the older call less than 24 h ago (it went out late)."""
    to = "+33612345678@sms.example.org"
    msg = message(to, "every other day")
    await smtp_send(daemon, msg, [to])
    await wait_for(lambda: sent(daemon))
    await daemon.store.write(lambda db: db.execute("UPDATE campaigns SET created_at = ?", [clock.ago(hours=25)]))
    _, text = await smtp_send(daemon, msg, [to])
    assert "Queued as campaign" in text
    await wait_for(lambda: len(sent(daemon)) == 2)
    request_ids = [r["body"]["request_id"] for r in daemon.emulator.requests if isinstance(r["body"], dict)]
    assert len(set(request_ids)) == 2


async def test_an_unparsable_message_id_is_still_accepted(daemon):
    """`Message-ID: <>` makes the stdlib's modern header parser raise: the e-mail is still one campaign."""
    to = "+33612345678@sms.example.org"
    raw = f"From: {FROM}\r\nTo: {to}\r\nSubject: odd id\r\nMessage-ID: <>\r\n\r\nHello despite the id\r\n".encode()

    def send():
        with sync_session(daemon) as session:
            return session.sendmail(FROM, [to], raw)

    assert await asyncio.to_thread(send) == {}
    await wait_for(lambda: sent(daemon))
    assert sent(daemon)[0]["text"] == "Hello despite the id"


async def test_bare_lf_dot_does_not_end_the_message(daemon):
    """SMTP smuggling: `<LF>.<CR><LF>` inside DATA is not the end of the message."""
    to = "+33612345678@sms.example.org"
    host, port = daemon.smtp.address
    reader, writer = await asyncio.open_connection(host, port)

    async def line():
        return (await reader.readline()).decode()

    async def command(text):
        writer.write(text.encode())
        await writer.drain()
        answer = await line()
        while answer[3:4] == "-":
            answer = await line()
        return answer

    await line()
    await command("EHLO test\r\n")
    await command(f"MAIL FROM:<{FROM}>\r\n")
    await command(f"RCPT TO:<{to}>\r\n")
    assert (await command("DATA\r\n")).startswith("354")
    smuggled = (
        f"From: {FROM}\r\nSubject: x\r\nMessage-ID: <smuggle@example.org>\r\n\r\nfirst part\n.\r\n"
        f"MAIL FROM:<{FROM}>\r\nRCPT TO:<{to}>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n"
    )
    answer = await command(smuggled)
    assert answer.startswith("250")
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    await wait_for(lambda: sent(daemon))
    await asyncio.sleep(0.3)
    assert len(sent(daemon)) == 1
    assert "smuggled" in sent(daemon)[0]["text"] or "first part" in sent(daemon)[0]["text"]


async def test_group_sends_with_contact_fields(make_daemon, sink, tmp_path):
    csv = tmp_path / "team.csv"
    csv.write_text("phone_number,first_name,last_name,param1\n0612345678,Ann,Lee,blue\n+33612345679,Bob,Ray,\n")
    daemon = await make_daemon(f'[groups]\nteam = "{csv}"\n', smtp_port=sink.port)
    to = "team@sms.example.org"
    await smtp_send(daemon, message(to, "Meeting at 10, {first_name} {last_name} ({param1})"), [to])
    await wait_for(lambda: sent(daemon))
    recipients = sent(daemon)[0]["recipients"]
    assert recipients[0] == {"phone_number": "+33612345678", "first_name": "Ann", "last_name": "Lee", "param1": "blue"}
    assert recipients[1] == {"phone_number": "+33612345679", "first_name": "Bob", "last_name": "Ray"}
    # Only the values the text uses leave the relay.
    await smtp_send(daemon, message(to, "Meeting at 11"), [to])
    await wait_for(lambda: len(sent(daemon)) == 2)
    assert [r["phone_number"] for r in sent(daemon)[1]["recipients"]] == ["+33612345678", "+33612345679"]
    assert all(set(r) == {"phone_number"} for r in sent(daemon)[1]["recipients"])


async def test_auth_only_after_starttls(make_daemon, sink, tmp_path, ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    daemon = await make_daemon(
        f'[smtp_in]\nrequire_auth = true\ntls_cert = "{cert_path}"\ntls_key = "{key_path}"\n'
        f'[smtp_in.users]\nalice = "{make_hash("wonderland")}"\n',
        smtp_port=sink.port,
    )
    to = "+33612345678@sms.example.org"

    def session():
        with sync_session(daemon) as s:
            s.ehlo()
            assert s.has_extn("starttls") and not s.has_extn("auth")
            assert s.mail(FROM)[0] == 550  # AUTH required
            context = ssl.create_default_context()
            ca.configure_trust(context)
            s.starttls(context=context)
            s.ehlo()
            assert s.has_extn("auth")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login("alice", "wrong")
            s.login("alice", "wonderland")
            s.sendmail(FROM, [to], message(to, "authenticated").as_bytes(policy=SMTP_POLICY))

    def login_mechanism():
        with sync_session(daemon) as s:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            s.starttls(context=context)
            s.ehlo()
            s.user, s.password = "alice", "nope"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            s.user, s.password = "alice", "wonderland"
            code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            assert code == 235

    def exchanges():
        """Each form of the two mechanisms, as aiosmtpd's own would answer them."""
        plain = base64.b64encode(b"\0alice\0wonderland").decode()
        with sync_session(daemon) as s:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            s.starttls(context=context)
            s.ehlo()
            assert s.docmd("AUTH", "PLAIN not-base64!")[0] == 501
            assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"no separators").decode())[0] == 501
            assert s.docmd("AUTH", "PLAIN")[0] == 334  # no initial response: an empty challenge
            assert s.docmd("*")[0] == 501  # the client cancels
            assert s.docmd("AUTH", "LOGIN " + base64.b64encode(b"alice").decode())[0] == 334  # the password
            assert s.docmd(base64.b64encode(b"wrong").decode())[0] == 535
            assert s.docmd("AUTH", "PLAIN")[0] == 334
            assert s.docmd(plain)[0] == 235
            assert s.docmd("AUTH", "PLAIN " + plain)[0] == 503  # already authenticated

    await asyncio.to_thread(login_mechanism)
    await asyncio.to_thread(exchanges)

    await asyncio.to_thread(session)
    await wait_for(lambda: sent(daemon))


async def test_self_signed_starttls_without_certificate(daemon):
    host, port = daemon.smtp.address
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, validate_certs=False)
    await client.connect()
    await client.starttls()
    to = "+33612345678@sms.example.org"
    await client.send_message(message(to, "over TLS"), sender=FROM, recipients=[to])
    await client.quit()
    await wait_for(lambda: sent(daemon))
    # Kept in the database, where every node sharing it finds the same one (SPEC §8), not in one node's files.
    pem = await daemon.store.read(partial(meta.meta_get, key=SELF_SIGNED_KEY))
    assert "PRIVATE KEY" in pem and "CERTIFICATE" in pem
    assert not list(daemon.config.storage.state_dir.glob("smtp-selfsigned*"))


async def test_marketing_to_opted_out_number(daemon, sink):
    from relay.octopush.callbacks import classify
    from relay.storage import callbacks

    stop = classify(
        {"number": "+33612345678", "text": "STOP", "stop_date": "2026-11-04 10:00:00"}, raw="{}", content_type=""
    )
    await daemon.store.write(lambda db: callbacks.store_callback(db, stop))
    to1, to2 = "+33612345678@sms.example.org", "+33612345679@sms.example.org"
    body = "Promo STOP au 30101"

    def session():
        with sync_session(daemon) as s:
            s.mail(FROM)
            s.rcpt(to1)
            return s.data(message(to1, body, "[marketing] promo").as_bytes(policy=SMTP_POLICY))

    code, text = await asyncio.to_thread(session)
    assert code == 550 and b"STOP" in text
    await smtp_send(daemon, message([to1, to2], body, "[marketing] promo 2"), [to1, to2])
    await wait_for(lambda: sent(daemon))
    assert [r["phone_number"] for r in sent(daemon)[0]["recipients"]] == ["+33612345679"]


async def test_the_configured_stop_mention_is_added_in_the_form_each_type_needs(make_daemon, sink):
    daemon = await make_daemon('[smtp_in]\nstop_mention = "STOP au 30101"\n', smtp_port=sink.port)
    to = "+33612345678@sms.example.org"
    await smtp_send(daemon, message(to, "Promo premium", "[marketing] a"), [to])
    await smtp_send(daemon, message(to, "Promo low cost", "[marketing] [low-cost] b"), [to])
    await wait_for(lambda: len(sent(daemon)) == 2)
    texts = sorted(s["text"] for s in sent(daemon))
    assert texts == ["Promo low cost\nno PUB=STOP", "Promo premium\nSTOP au 30101"]


async def test_confirmation_and_failure_e_mails(make_daemon, sink):
    daemon = await make_daemon(
        '[smtp_in]\nconfirm = "all"\n[octopush.emulator]\nreply_text = ""\n', smtp_port=sink.port
    )
    to = "+33612345678@sms.example.org"
    msg = message(to, "Café ☕ ready", "Coffee")
    await smtp_send(daemon, msg, [to])
    mail = await wait_for(lambda: [m for _, rcpt, m in sink.messages if m["Subject"].startswith("SMS sent")])
    confirmation = mail[0]
    assert confirmation["In-Reply-To"] == msg["Message-ID"]
    text = confirmation.get_body(("plain",)).get_content()
    assert "UCS-2" in text and "☕" in text and "sms_" in text
    daemon.emulator.credit = 0
    await smtp_send(daemon, message(to, "no credit left", "Broke"), [to])
    failure = await wait_for(lambda: [m for _, _, m in sink.messages if m["Subject"].startswith("SMS not sent")])
    body = failure[0].get_body(("plain",)).get_content()
    assert "104" in body or "105" in body


async def test_round_trip_reply_threads_and_answer_sends_new_words(daemon, sink):
    """E-mail → SMS → reply callback → threaded e-mail → answer by e-mail → a second SMS with only the new words."""
    to = "+33612345678@sms.example.org"
    original = message(to, "Are you coming tomorrow?", "[alert] Tomorrow")
    await smtp_send(daemon, original, [to])
    notes = await wait_for(lambda: [m for _, rcpt, m in sink.messages if rcpt == [FROM]], timeout=15)
    note = notes[0]
    assert note["In-Reply-To"] == original["Message-ID"]
    assert note["Subject"] == "Re: Tomorrow"
    assert note["Reply-To"] == "+33612345678@sms.example.org"
    assert note["Auto-Submitted"] == "auto-generated"
    assert note.get_content_type() == "multipart/alternative"
    text = note.get_body(("plain",)).get_content()
    assert "OK, thanks!" in text and "Are you coming tomorrow?" in text
    # The person answers the notification from their mail client, quoting it.
    answer = EmailMessage()
    answer["From"] = FROM
    answer["To"] = note["Reply-To"]
    answer["Subject"] = "Re: " + note["Subject"]
    answer["Message-ID"] = make_msgid(domain="example.org")
    answer["In-Reply-To"] = note["Message-ID"]
    answer["References"] = f"{original['Message-ID']} {note['Message-ID']}"
    quoted = "\n".join("> " + line for line in text.splitlines())
    answer.set_content(
        f"Great, see you at 9.\n\nOn Tue, 24 Nov 2026 at 10:00, octorelay <relay@sms.example.org> wrote:\n{quoted}\n"
    )
    await smtp_send(daemon, answer, [note["Reply-To"]])
    await wait_for(lambda: len(sent(daemon)) == 2)
    assert sent(daemon)[1]["text"] == "Great, see you at 9."
    second = await wait_for(
        lambda: [m for _, rcpt, m in sink.messages if rcpt == [FROM] and m["In-Reply-To"] == answer["Message-ID"]],
        timeout=15,
    )
    assert second[0]["Subject"].startswith("Re:")
    # The whole chain, not only the parent (RFC 5322 §3.6.4): the parent's References, then the parent.
    assert note["References"] == original["Message-ID"]
    assert second[0]["References"].split() == [original["Message-ID"], note["Message-ID"], answer["Message-ID"]]


async def test_the_confirmation_shows_what_the_sms_said_when_the_clean_up_left_text_out(make_daemon, sink):
    """SPEC §5 step 4, issue 16: a reply's quote is not sent, and the sender sees at once what the SMS said."""
    daemon = await make_daemon(
        '[smtp_in]\nconfirm = "all"\n[octopush.emulator]\nreply_text = ""\n', smtp_port=sink.port
    )
    to = "+33612345678@sms.example.org"
    quoted = "Le lun. 12 janv. 2026 à 09:41, Jean <jean@example.fr> a écrit :\n> Secret plan for tomorrow\n"
    await smtp_send(daemon, message(to, f"Rendez-vous à 9h.\n\n{quoted}", "Re: plan"), [to])
    await smtp_send(daemon, message(to, "Nothing to leave out", "plain"), [to])
    confirmations = lambda: [m for _, _, m in sink.messages if m["Subject"].startswith("SMS sent")]  # noqa: E731
    await wait_for(lambda: len(confirmations()) == 2)
    by_label = {m["Subject"]: m for m in confirmations()}
    trimmed = by_label["SMS sent: plan"]
    text = trimmed.get_body(("plain",)).get_content()
    html = trimmed.get_body(("html",)).get_content()
    assert "Only your new words went out" in text and "Only your new words went out" in html
    assert "  > Rendez-vous à 9h." in text
    assert "Secret plan" not in text and "Secret plan" not in html
    assert [s["text"] for s in sent(daemon) if "Rendez" in s["text"]] == ["Rendez-vous à 9h."]
    untouched = by_label["SMS sent: plain"].get_body(("plain",)).get_content()
    assert "Only your new words" not in untouched and "  > Nothing to leave out" in untouched


async def test_a_long_data_lets_the_loop_run_between_slices():
    """One socket read brings up to 256 KiB; aiosmtpd reads DATA from it line by line. The FairReader yields
    to the loop every SLICE bytes, so callbacks are served while a large e-mail comes in (issue 14, HIGH 1)."""
    reader = FairReader(limit=1001)
    line = b"x" * 76 + b"\r\n"
    count = 256 * 1024 // len(line)
    reader.feed_data(line * count + b".\r\n")
    turns = 0

    async def tick():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = turns
    lines = [await reader.readuntil(b"\r\n") for _ in range(count + 1)]
    ticker.cancel()
    assert lines[-1] == b".\r\n" and len(b"".join(lines)) == count * len(line) + 3
    assert turns - started >= count * len(line) // FairReader.SLICE - 1
