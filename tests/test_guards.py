"""Who may send, how much, and when (SPEC §5): logins bound to addresses, loops and repeats, the day's budget,
marketing hours. Real SMTP sessions (with and without AUTH over STARTTLS), the CLI as a subprocess, the web form.
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import ssl
import subprocess
import sys
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from relay import clock, marketing
from relay import config as config_mod
from relay.passwords import make_hash
from tests.conftest import wait_for, write_config

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.org"
FR1, FR2, FR3 = "+33612345678", "+33612345679", "+33612345670"
PARIS = ZoneInfo("Europe/Paris")


def rcpt(number: str) -> str:
    return f"{number}@sms.example.org"


def message(to: list[str], body: str = "Hello there", subject: str = "Test", sender: str = ALICE, **headers):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    message_id = headers.pop("message_id", "new")
    if message_id == "new":
        message_id = make_msgid(domain="example.org")
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def session(daemon, *, tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None) -> smtplib.SMTP:
    host, port = daemon.smtp.address
    s = smtplib.SMTP(host, port, timeout=10)
    s.ehlo()
    if tls is not None:
        s.starttls(context=tls)
        s.ehlo()
    if login:
        s.login(*login)
    return s


def deliver(daemon, msg: EmailMessage, to: list[str], *, sender: str = ALICE, **kwargs) -> tuple[int, str]:
    """One SMTP transaction; the final answer (code, text), whether it was a refusal or an acceptance."""
    with session(daemon, **kwargs) as s:
        code, text = s.mail(sender)
        if code != 250:
            return code, text.decode()
        for address in to:
            code, text = s.rcpt(address)
            if code != 250:
                return code, text.decode()
        code, text = s.data(msg.as_bytes(policy=SMTP_POLICY))
        return code, text.decode()


async def send(daemon, msg, to, **kwargs) -> tuple[int, str]:
    return await asyncio.to_thread(deliver, daemon, msg, to, **kwargs)


async def campaigns(daemon) -> list[dict]:
    return await daemon.store.read(lambda db: [dict(r) for r in db.query("SELECT * FROM campaigns ORDER BY id")])


@pytest.fixture
def tls_files(tmp_path, ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return cert_path, key_path, context


# ------------------------------------------------------------------ logins bound to addresses


async def test_a_login_sends_only_as_its_own_addresses_and_is_stored_and_shown(make_daemon, sink, tls_files):
    cert, key, tls = tls_files
    daemon = await make_daemon(
        f'[smtp_in]\nrequire_auth = true\ntls_cert = "{cert}"\ntls_key = "{key}"\nconfirm = "all"\n'
        f'[smtp_in.users]\nalice = {{ hash = "{make_hash("wonderland")}", senders = ["alice@example.org"] }}\n'
        f'bob = "{make_hash("builder")}"\n',
        smtp_port=sink.port,
    )
    to = [rcpt(FR1)]
    # alice logged in, writing as the CEO: refused at MAIL FROM, nothing stored.
    code, text = await send(
        daemon,
        message(to, sender="ceo@example.org"),
        to,
        sender="ceo@example.org",
        tls=tls,
        login=("alice", "wonderland"),
    )
    assert code == 550 and text.startswith("5.7.1") and "alice" in text and "ceo@example.org" in text
    # A glob match is case-insensitive, as addresses are.
    code, text = await send(daemon, message(to), to, sender="Alice@Example.org", tls=tls, login=("alice", "wonderland"))
    assert code == 250, text
    # bob's entry is a plain hash: any allowed sender.
    code, _ = await send(
        daemon, message(to, sender="ceo@example.org"), to, sender="ceo@example.org", tls=tls, login=("bob", "builder")
    )
    assert code == 250
    rows = await campaigns(daemon)
    assert [(r["sender_email"], r["login"]) for r in rows] == [
        ("Alice@Example.org", "alice"),
        ("ceo@example.org", "bob"),
    ]
    # Shown in the confirmation, the campaign pages and the API.
    await wait_for(lambda: len([m for m in sink.messages if m[2]["Subject"].startswith("SMS sent")]) == 2)
    confirmation = next(m[2] for m in sink.messages if "Alice@Example.org" in m[1])
    assert "(login alice)" in confirmation.get_body(("plain",)).get_content()
    async with aiohttp.ClientSession() as http:
        page = await (await http.get(f"{daemon.http_url}/campaigns/{rows[0]['id']}")).text()
        assert "login <code>alice</code>" in page
        assert "login bob" in await (await http.get(f"{daemon.http_url}/campaigns")).text()
        ticket = await daemon.store.read(
            lambda db: db.execute("SELECT ticket FROM sends WHERE campaign_id = 1").fetchone()[0]
        )
        api = await (await http.get(f"{daemon.http_url}/api/campaigns/{ticket}")).json()
        assert api["login"] == "alice" and api["sender_email"] == "Alice@Example.org"


async def test_without_auth_the_login_is_empty_and_allowed_senders_still_apply(make_daemon, sink):
    daemon = await make_daemon('[smtp_in]\nallowed_senders = ["*@example.org"]\n', smtp_port=sink.port)
    to = [rcpt(FR1)]
    code, text = await send(daemon, message(to, sender="eve@evil.test"), to, sender="eve@evil.test")
    assert code == 550 and text.startswith("5.7.1")
    code, _ = await send(daemon, message(to), to)
    assert code == 250
    assert [(r["sender_email"], r["login"]) for r in await campaigns(daemon)] == [(ALICE, None)]


def test_users_table_forms_are_checked(tmp_path):
    good = write_config(
        tmp_path / "a.toml",
        tmp_path,
        extra=f'[smtp_in.users]\nalice = {{ hash = "{make_hash("x")}", senders = ["alice@example.org", '
        '"*@ops.example.org"] }\n',
    )
    user = config_mod.load(good).smtp_in.users["alice"]
    assert user.senders == ("alice@example.org", "*@ops.example.org")
    for bad, key in [
        ('alice = { hash = "plain" }', "smtp_in.users.alice"),
        (f'alice = {{ hash = "{make_hash("x")}", senders = [] }}', "smtp_in.users.alice.senders"),
        (f'alice = {{ hash = "{make_hash("x")}", sender = ["a@b"] }}', "smtp_in.users.alice"),
        ("alice = 3", "smtp_in.users.alice"),
    ]:
        path = write_config(tmp_path / "b.toml", tmp_path, extra=f"[smtp_in.users]\n{bad}\n")
        with pytest.raises(config_mod.ConfigError, match=re.escape(key)):
            config_mod.load(path)


# ------------------------------------------------------------------ loops and repeats


async def test_mail_from_the_relay_itself_is_accepted_and_dropped(daemon):
    to = [rcpt(FR1)]
    own = "relay@sms.example.org"  # the tests' smtp_out.from
    cases = [
        (message(to, sender=own), own),  # envelope and header
        (message(to, sender=f"octorelay <{own}>"), ALICE),  # header From only
        (message(to), own),  # envelope only
        (message(to, message_id=make_msgid(domain="sms.example.org")), ALICE),  # a Message-ID in our domain
    ]
    for msg, envelope in cases:
        code, text = await send(daemon, msg, to, sender=envelope)
        assert code == 250 and "not sent as SMS" in text
    # A Message-ID the relay remembers having sent, whatever its domain.
    remembered = "<kept.1@old-domain.example>"
    await daemon.store.write(
        lambda db: db.execute(
            "INSERT INTO messages (message_id, number, direction, created_at) VALUES (?, '', 'out', ?)",
            [remembered, clock.iso()],
        )
    )
    code, text = await send(daemon, message(to, message_id=remembered), to)
    assert code == 250 and "not sent as SMS" in text
    assert await campaigns(daemon) == []
    metrics = await _metrics(daemon)
    assert 'octorelay_smtp_messages_total{outcome="dropped_automatic"} 5.0' in metrics


async def test_a_repeat_without_message_id_is_sent_once(daemon):
    to = [rcpt(FR1), rcpt(FR2)]
    first = await send(daemon, message(to, "Server down", message_id=None), to)
    again = await send(daemon, message(list(reversed(to)), "Server down", message_id=None), list(reversed(to)))
    assert first[0] == again[0] == 250 and "Already queued as campaign 1" in again[1]
    # Another text, another sender or other recipients are new campaigns.
    assert "Queued as campaign 2" in (await send(daemon, message(to, "Server up", message_id=None), to))[1]
    other = "bob@example.org"
    assert (
        "Queued as campaign 3"
        in (await send(daemon, message(to, "Server down", sender=other, message_id=None), to, sender=other))[1]
    )
    assert "Queued as campaign 4" in (await send(daemon, message(to[:1], "Server down", message_id=None), to[:1]))[1]
    await wait_for(lambda: len(daemon.emulator.sent) == 4)
    await asyncio.sleep(0.2)
    assert len(daemon.emulator.sent) == 4


async def _metrics(daemon) -> str:
    async with aiohttp.ClientSession() as http:
        return await (await http.get(f"{daemon.http_url}/metrics")).text()


# ------------------------------------------------------------------ spend


async def test_daily_budget_by_e_mail_names_the_limit_use_and_reset(make_daemon, sink):
    daemon = await make_daemon("[limits]\ndaily_sms = 5\n", smtp_port=sink.port)
    two = [rcpt(FR1), rcpt(FR2)]
    assert (await send(daemon, message(two, "first"), two))[0] == 250  # 2 numbers x 1 part
    long_text = "x" * 200  # 2 parts
    code, text = await send(daemon, message(two, long_text), two)  # 2 x 2 = 4 more: 6 > 5
    assert code == 550 and text.startswith("5.7.1")
    assert "daily_sms" in text and "2 of 5" in text and "needs 4" in text
    tomorrow = (clock.now().astimezone(PARIS).date()).toordinal() + 1
    assert datetime.fromordinal(tomorrow).strftime("%Y-%m-%d 00:00") in text
    assert (await send(daemon, message(two, "third"), two))[0] == 250  # 4 of 5
    metrics = await _metrics(daemon)
    assert 'octorelay_sms_used_today{limit="daily_sms"} 4.0' in metrics
    assert 'octorelay_sms_limit{limit="daily_sms"} 5.0' in metrics
    # A cancelled campaign gives its share back.
    await daemon.store.write(lambda db: db.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = 1"))
    assert (await send(daemon, message(two, "fourth"), two))[0] == 250


async def test_sender_budget_counts_each_e_mail_sender_alone(make_daemon, sink):
    daemon = await make_daemon("[limits]\nsender_daily_sms = 2\n", smtp_port=sink.port)
    two = [rcpt(FR1), rcpt(FR2)]
    assert (await send(daemon, message(two, "a"), two))[0] == 250
    code, text = await send(daemon, message(two[:1], "b"), two[:1])
    assert code == 550 and "sender_daily_sms for alice@example.org" in text and "2 of 2" in text
    bob = "bob@example.org"
    assert (await send(daemon, message(two, "c", sender=bob), two, sender=bob))[0] == 250
    assert 'octorelay_sms_used_today{limit="sender_daily_sms"} 2.0' in await _metrics(daemon)


async def test_countries_are_refused_at_rcpt_naming_the_number(make_daemon, sink):
    daemon = await make_daemon('[limits]\ncountries = ["FR", "BE"]\n', smtp_port=sink.port)
    us = "+12025550123"
    to = [rcpt(FR1), rcpt(us)]
    code, text = await send(daemon, message(to), to)
    assert code == 550 and text.startswith("5.7.1") and us in text and "US" in text and "FR, BE" in text
    assert (await send(daemon, message([rcpt("+32470123456")]), [rcpt("+32470123456")]))[0] == 250


async def test_two_e_mails_racing_for_the_last_sms_one_wins(make_daemon, sink):
    daemon = await make_daemon("[limits]\ndaily_sms = 3\n", smtp_port=sink.port)
    two = [rcpt(FR1), rcpt(FR2)]
    assert (await send(daemon, message(two, "first"), two))[0] == 250  # 2 of 3 used: one SMS left
    for _ in range(3):  # each round two e-mails want the last one at the same moment
        answers = await asyncio.gather(
            *(send(daemon, message([rcpt(FR3)], f"race {i}"), [rcpt(FR3)]) for i in range(2))
        )
        codes = sorted(code for code, _ in answers)
        assert codes in ([250, 550], [550, 550])
        if codes == [250, 550]:
            break
    used = await daemon.store.read(
        lambda db: db.execute("SELECT sum(sms_budget) FROM campaigns WHERE status != 'cancelled'").fetchone()[0]
    )
    assert used == 3


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    env.pop("OCTORELAY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "relay", "send", "-c", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


async def test_the_cli_counts_against_daily_sms_and_countries(tmp_path):
    path = write_config(
        tmp_path / "c.toml",
        tmp_path,
        extra='[octopush.emulator]\nreply_text = ""\n[limits]\ndaily_sms = 2\ncountries = ["FR"]\n',
    )
    first = await asyncio.to_thread(_cli, path, "--to", FR1, FR2, "--text", "hi")
    assert first.returncode == 0, first.stderr
    over = await asyncio.to_thread(_cli, path, "--to", FR3, "--text", "one more")
    assert over.returncode == 1 and "daily_sms" in over.stderr and "2 of 2" in over.stderr
    assert over.stderr.count("\n") == 1 and "Traceback" not in over.stderr
    abroad = await asyncio.to_thread(_cli, path, "--to", "+12025550123", "--text", "hi")
    assert abroad.returncode == 1 and "US" in abroad.stderr and "countries" in abroad.stderr


async def test_the_web_form_counts_against_daily_sms_and_countries(make_daemon):
    daemon = await make_daemon('[limits]\ndaily_sms = 1\ncountries = ["FR"]\n')

    async def answer(http, number: str, text: str) -> tuple[int, str]:
        page = await (await http.get(f"{daemon.http_url}/conversations/{number}")).text()
        fields = dict(re.findall(r'name="(csrf|key)" value="([^"]+)"', page))
        resp = await http.post(f"{daemon.http_url}/conversations/{number}", data={**fields, "text": text})
        return resp.status, await resp.text()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies for 127.0.0.1
        assert (await answer(http, FR1, "first"))[0] == 200
        status, page = await answer(http, FR2, "second")
        assert status == 400 and "daily_sms" in page and "1 of 1" in page
        status, page = await answer(http, "+12025550123", "abroad")
        assert status == 400 and "outside [limits] countries" in page


# ------------------------------------------------------------------ marketing hours


def _octopush(**settings) -> config_mod.Octopush:
    import dataclasses

    base = config_mod.load(None, env={}).octopush
    return dataclasses.replace(base, **settings)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-12-06 10:00", "2026-12-07 08:00"),  # a Sunday: Monday morning
        ("2026-12-04 21:00", "2026-12-05 08:00"),  # a Friday at 21:00: Saturday morning
        ("2026-12-05 21:00", "2026-12-07 08:00"),  # Saturday 21:00: not Sunday, Monday
        ("2026-12-07 07:59", "2026-12-07 08:00"),
        ("2026-12-07 08:00", None),
        ("2026-12-07 19:59", None),
        ("2026-12-24 20:00", "2026-12-26 08:00"),  # Christmas is a public holiday in France
        ("2026-07-13 22:00", "2026-07-15 08:00"),  # and so is 14 July
    ],
)
def test_next_allowed_marketing_time(local, expected):
    moment = datetime.fromisoformat(local).replace(tzinfo=PARIS)
    found = marketing.next_allowed(moment, _octopush(), "FR", PARIS)
    assert (found.astimezone(PARIS).strftime("%Y-%m-%d %H:%M") if found else None) == expected


def test_each_marketing_rule_can_be_lifted():
    sunday_night = datetime(2026, 12, 6, 23, 0, tzinfo=PARIS)
    christmas_noon = datetime(2026, 12, 25, 12, 0, tzinfo=PARIS)
    every_day = frozenset(range(7))
    assert (
        marketing.next_allowed(sunday_night, _octopush(marketing_hours=None, marketing_days=every_day), "FR", PARIS)
        is None
    )
    assert marketing.next_allowed(christmas_noon, _octopush(marketing_holidays=False), "FR", PARIS) is None
    assert marketing.next_allowed(christmas_noon, _octopush(), "FR", PARIS) is not None


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-sat", {0, 1, 2, 3, 4, 5}),
        ("mon-fri,sun", {0, 1, 2, 3, 4, 6}),
        ("mon-sun", set(range(7))),
        ("fri-mon", {4, 5, 6, 0}),
        ("Tuesday", {1}),
    ],
)
def test_marketing_days_take_names_and_ranges(tmp_path, text, days):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[octopush]\nmarketing_days = "{text}"\n')
    assert config_mod.load(path).octopush.marketing_days == days


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[octopush]\nmarketing_days = "mon-funday"\n', "octopush.marketing_days"),
        ('[octopush]\nmarketing_hours = "8h-20h"\n', "octopush.marketing_hours"),
        ('[octopush]\nmarketing_hours = "20:00-08:00"\n', "octopush.marketing_hours"),
        ('[limits]\ncountries = ["France"]\n', "limits.countries"),
        ("[limits]\ndaily_sms = -1\n", "limits.daily_sms"),
    ],
)
def test_bad_guard_settings_name_the_key(tmp_path, extra, key):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=extra)
    with pytest.raises(config_mod.ConfigError, match=re.escape(key)):
        config_mod.load(path)


MARKETING = '[octopush]\nmarketing_hours = "08:00-20:00"\nmarketing_days = "mon-sat"\nmarketing_holidays = true\n'


@pytest.mark.parametrize(
    ("now", "goes"),
    [
        (datetime(2031, 3, 9, 10, 0, tzinfo=PARIS), "2031-03-10 08:00"),  # a Sunday
        (datetime(2031, 3, 11, 21, 0, tzinfo=PARIS), "2031-03-12 08:00"),
    ],  # a Tuesday at 21:00
)
async def test_marketing_waits_for_its_window_and_an_alert_does_not(make_daemon, sink, monkeypatch, now, goes):
    monkeypatch.setattr(clock, "now", lambda: now.astimezone(ZoneInfo("UTC")))
    daemon = await make_daemon(MARKETING + '[smtp_in]\nconfirm = "all"\n', smtp_port=sink.port)
    to = [rcpt(FR1)]
    code, text = await send(daemon, message(to, "Sale -20% STOP au 30101", "[marketing] promo"), to)
    assert code == 250 and f"to go at {goes}" in text
    code, text = await send(daemon, message(to, "Server down", "[alert] db1"), to)
    assert code == 250 and "to go at" not in text
    await wait_for(lambda: len(daemon.emulator.sent) == 2)
    promo, alert = sorted(daemon.emulator.sent, key=lambda s: s["text"] != "Sale -20% STOP au 30101")
    assert datetime.fromisoformat(promo["send_at"]).astimezone(PARIS).strftime("%Y-%m-%d %H:%M") == goes
    assert not alert.get("send_at")
    await wait_for(lambda: any("promo" in m[2]["Subject"] for m in sink.messages))
    confirmation = next(m[2] for m in sink.messages if "promo" in m[2]["Subject"])
    assert f"Goes out at: {goes}" in confirmation.get_body(("plain",)).get_content()
