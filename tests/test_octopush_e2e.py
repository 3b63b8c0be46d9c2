"""The Octopush account from the daemon and the command line, over real HTTP: setup, balance, the credit check,
scheduled campaigns (shown, handed over, cancelled both ways) and personalisation from an e-mail."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import aiohttp
import pytest

from relay import clock
from relay.cli import main
from tests.conftest import live_mode, wait_for, write_config
from tests.test_smtp_inbound import message, smtp_send

pytestmark = pytest.mark.timeout(40)

FR, FR2, FR3 = "+33612345678", "+33698765432", "+33611223344"
DOMAIN = "sms.example.org"
PUBLIC = '[http]\npublic_url = "https://relay.example.org"\n'


def run(*args: str) -> int:
    return main(list(args))


def at(delta: timedelta) -> str:
    return (clock.now() + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def mails_to(sink, address: str) -> list:
    return [msg for _, rcpts, msg in sink.messages if address in rcpts]


def plain(msg) -> str:
    return msg.get_body(("plain",)).get_content()


async def web(daemon):
    return aiohttp.ClientSession(base_url=daemon.http_url, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def csrf(session, campaign_id: int) -> str:
    html = await (await session.get(f"/campaigns/{campaign_id}")).text()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def api(daemon, key: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{daemon.http_url}/api/campaigns/{key}") as resp:
        return await resp.json()


async def api_known(daemon, key: str) -> dict | None:
    """The campaign once the relay has stored it under `key` (its ticket is stored after Octopush answers)."""
    body = await api(daemon, key)
    return body if "status" in body else None


async def e_mail(daemon, numbers: list[str], text: str, subject: str) -> int:
    to = [f"{n}@{DOMAIN}" for n in numbers]
    _, answer = await smtp_send(daemon, message(to, text, subject), to)
    return int(re.search(r"campaign (\d+)", answer).group(1))


# --- octorelay octopush setup / balance -------------------------------------------------------------


def test_setup_dry_run_and_balance_create_no_state(tmp_path, capsys):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=PUBLIC)
    assert run("octopush", "setup", "--dry-run", "-c", str(path)) == 0
    out = capsys.readouterr().out
    for name in ("inbounds", "deliveries", "blacklisted_numbers"):
        assert f"callback_url_for_{name} = https://relay.example.org/octopush/<TOKEN>" in out
    assert run("octopush", "balance", "-c", str(path)) == 0
    assert "credit: 100 € (about 1818 premium SMS to FR)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # no database, no token, no state dir


async def test_balance_as_a_real_process_reads_a_running_daemons_emulator(make_daemon, tmp_path):
    """A subprocess, as an operator runs it: it asks the daemon's own stand-in Octopush, and writes nothing."""
    import os
    import sys
    from pathlib import Path

    daemon = await make_daemon()
    await e_mail(daemon, [FR], "x" * 200, "Two parts")  # 2 premium SMS: 0.11 € of the emulated 100 €
    await wait_for(lambda: daemon.emulator.credit < 100)
    db = tmp_path / "octorelay.db"
    before = db.stat().st_mtime_ns
    root = str(Path(__file__).resolve().parent.parent)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "octopush",
        "balance",
        "-c",
        str(tmp_path / "octorelay.toml"),
        env={**os.environ, "PYTHONPATH": root},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("credit: 99.89 € (about 1816 premium SMS to FR)")
    assert db.stat().st_mtime_ns == before


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_setup_refuses_a_loopback_public_url_in_live_mode(tmp_path, capsys, dry_run):
    live = live_mode("https://api.octopush.com/v1/public")
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "https://relay.localhost", "http://[::1]:80"):
        path = write_config(tmp_path / "c.toml", tmp_path, extra=live + f'[http]\npublic_url = "{url}"\n')
        assert run("octopush", "setup", *dry_run, "-c", str(path)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "http.public_url" in err and "cannot reach" in err
    assert not (tmp_path / "octorelay.db").exists()


async def test_setup_registers_the_callback_url_in_the_account(tmp_path, capsys, octopush):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=live_mode(octopush.base_url) + PUBLIC)
    assert await asyncio.to_thread(run, "octopush", "setup", "-c", str(path)) == 0
    out = capsys.readouterr().out
    assert await asyncio.to_thread(run, "callback-url", "-c", str(path)) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://relay.example.org/octopush/")
    callbacks = octopush.settings["callbacks"]
    assert [callbacks[k] for k in ("callback_url_for_inbounds", "callback_url_for_deliveries")] == [url, url]
    assert callbacks["callback_url_for_blacklisted_numbers"] == url
    assert f"callback_url_for_inbounds = {url}" in out and "test@example.org" in out
    [call] = [c for c in octopush.calls if c["method"] == "PATCH"]
    assert call["path"] == "/user/campaign-parameters/edit" and call["headers"]["api-key"] == "test-key-123"
    # The token is stored now: the dry run shows the same URL, read-only.
    assert await asyncio.to_thread(run, "octopush", "setup", "--dry-run", "-c", str(path)) == 0
    assert f"callback_url_for_deliveries = {url}" in capsys.readouterr().out


async def test_balance_over_http_and_a_refusal(tmp_path, capsys, octopush):
    octopush.credit = 4.4
    path = write_config(tmp_path / "c.toml", tmp_path, extra=live_mode(octopush.base_url, type='"sms_low_cost"'))
    assert await asyncio.to_thread(run, "octopush", "balance", "-c", str(path)) == 0
    assert capsys.readouterr().out.strip() == "credit: 4.4 € (about 125 low-cost SMS to FR)"
    assert [c["path"] for c in octopush.calls] == ["/wallet/check-balance"] * 2
    assert not (tmp_path / "octorelay.db").exists()
    octopush.credentials = ("test@example.org", "another-key")
    assert await asyncio.to_thread(run, "octopush", "balance", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "code 101" in err and "api_key" in err


# --- the credit on /metrics ---------------------------------------------------------------------------


async def test_metrics_export_the_credit(daemon):
    async def scrape():
        async with aiohttp.ClientSession() as s, s.get(f"{daemon.http_url}/metrics") as resp:
            text = await resp.text()
        return "octorelay_octopush_credit_euros 100.0" in text and "octorelay_octopush_credit_sms 1818.0" in text

    await wait_for(scrape)


# --- scheduled campaigns ----------------------------------------------------------------------------


async def test_two_numbers_go_to_octopush_with_send_at_and_are_cancelled_there(make_daemon, sink):
    daemon = await make_daemon(smtp_port=sink.port)
    campaign_id = await e_mail(daemon, [FR, FR2], "Rendez-vous demain", f"[at:{at(timedelta(hours=2))}] Rappel")
    [sent] = await wait_for(lambda: daemon.emulator.sent)
    assert sent["send_at"].startswith(at(timedelta(hours=2))[:13])
    shown = await wait_for(lambda: api_known(daemon, sent["ticket"]))
    assert (shown["status"], shown["id"]) == ("scheduled", campaign_id) and shown["send_at"]
    async with await web(daemon) as session:
        html = await (await session.get("/campaigns")).text()
        assert "scheduled" in html
        html = await (await session.get(f"/campaigns/{campaign_id}")).text()
        assert "Scheduled for" in html and "Cancel this campaign" in html and "Octopush holds it" in html
        resp = await session.post(f"/campaigns/{campaign_id}/cancel", data={"csrf": "forged"})
        assert resp.status == 403 and daemon.emulator.cancelled == []
        token = await csrf(session, campaign_id)
        resp = await session.post(f"/campaigns/{campaign_id}/cancel", data={"csrf": token})
        assert resp.status == 200 and "is cancelled" in await resp.text()
    assert daemon.emulator.cancelled == [sent["ticket"]]
    assert (await api(daemon, str(campaign_id)))["status"] == "cancelled"
    [mail] = await wait_for(lambda: mails_to(sink, "alice@example.org"))
    assert mail["Subject"] == "SMS cancelled: Rappel"
    assert "was cancelled by the web interface" in plain(mail) and "Nothing was sent" in plain(mail)
    await asyncio.sleep(0.3)
    assert not [c for c in daemon.emulator.callbacks if c["body"].get("message_id") == sent["ticket"]]


async def test_octopush_refuses_to_cancel_within_ten_minutes(make_daemon, sink, tmp_path, capsys):
    daemon = await make_daemon(smtp_port=sink.port)
    campaign_id = await e_mail(daemon, [FR], "Bientot", f"[at:{at(timedelta(minutes=5))}] Soon")
    await wait_for(lambda: daemon.emulator.sent)
    async with await web(daemon) as session:
        resp = await session.post(f"/campaigns/{campaign_id}/cancel", data={"csrf": await csrf(session, campaign_id)})
        html = await resp.text()
    assert resp.status == 409 and "Not cancelled" in html and "10 minutes before" in html
    code = await asyncio.to_thread(run, "campaign", "cancel", str(campaign_id), "-c", str(tmp_path / "octorelay.toml"))
    assert code == 1 and "10 minutes" in capsys.readouterr().err
    assert (await api(daemon, str(campaign_id)))["status"] == "scheduled"


async def test_three_numbers_wait_in_our_queue_and_are_cancelled_there(make_daemon, sink, tmp_path, capsys):
    daemon = await make_daemon(smtp_port=sink.port)
    config = str(tmp_path / "octorelay.toml")
    campaign_id = await e_mail(daemon, [FR, FR2, FR3], "Inventaire", f"[at:{at(timedelta(days=3))}] Stock")
    shown = await api(daemon, str(campaign_id))
    assert shown["status"] == "scheduled" and shown["tickets"] == [] and shown["send_at"]
    async with await web(daemon) as session:
        assert "The relay holds it until" in await (await session.get(f"/campaigns/{campaign_id}")).text()
    assert await asyncio.to_thread(run, "campaign", "cancel", str(campaign_id), "-c", config) == 0
    out = capsys.readouterr().out
    assert f"campaign {campaign_id} cancelled (it was scheduled for" in out and "alice@example.org is told" in out
    [mail] = await wait_for(lambda: mails_to(sink, "alice@example.org"))
    assert mail["Subject"] == "SMS cancelled: Stock" and "(octorelay campaign cancel)" in plain(mail)
    assert (await api(daemon, str(campaign_id)))["status"] == "cancelled"
    # Again: refused with the reason; the daemon's sweep never sends a second e-mail.
    assert await asyncio.to_thread(run, "campaign", "cancel", str(campaign_id), "-c", config) == 1
    assert "is cancelled" in capsys.readouterr().err
    daemon.notifier.wake()
    await asyncio.sleep(0.5)
    assert len(mails_to(sink, "alice@example.org")) == 1 and daemon.emulator.requests == []
    assert await asyncio.to_thread(run, "campaign", "cancel", "999", "-c", config) == 1
    assert "no campaign 999" in capsys.readouterr().err


async def test_three_numbers_are_handed_over_at_their_time(make_daemon, sink):
    daemon = await make_daemon(smtp_port=sink.port)
    when = clock.now() + timedelta(seconds=3)
    subject = f"[at:{when.strftime('%Y-%m-%dT%H:%M:%SZ')}] Bientot"
    campaign_id = await e_mail(daemon, [FR, FR2, FR3], "Dans un instant", subject)
    assert (await api(daemon, str(campaign_id)))["status"] == "scheduled"
    await asyncio.sleep(1)
    assert daemon.emulator.requests == []
    [sent] = await wait_for(lambda: daemon.emulator.sent, timeout=10)
    assert clock.now() >= when.replace(microsecond=0) and "send_at" not in sent and len(sent["recipients"]) == 3
    assert (await wait_for(lambda: api_known(daemon, sent["ticket"])))["status"] == "sent"


async def test_send_at_from_the_command_line(make_daemon, sink, tmp_path, capsys):
    daemon = await make_daemon(smtp_port=sink.port)
    config = str(tmp_path / "octorelay.toml")
    later = at(timedelta(hours=5))
    args = ["send", "--to", FR, FR2, FR3, "--text", "Plus tard", "--at", later, "-c", config]
    assert await asyncio.to_thread(run, *args) == 0
    out = capsys.readouterr().out
    held = int(re.search(r"campaign (\d+) scheduled for", out).group(1))
    assert "held by the relay" in out and "ticket" not in out and daemon.emulator.requests == []
    args = ["send", "--to", FR, "--text", "Plus tard", "--at", later, "-c", config]
    assert await asyncio.to_thread(run, *args) == 0
    out = capsys.readouterr().out
    handed = int(re.search(r"campaign (\d+) scheduled for", out).group(1))
    # With the daemon running, the command used its emulator: the campaign it holds can be cancelled from here.
    [sent] = daemon.emulator.sent
    assert f"ticket {sent['ticket']}" in out and "until 10 minutes before" in out
    for campaign_id in (held, handed):
        assert await asyncio.to_thread(run, "campaign", "cancel", str(campaign_id), "-c", config) == 0
    assert daemon.emulator.cancelled == [sent["ticket"]]


# --- personalisation, end to end from an e-mail -------------------------------------------------------


async def test_placeholders_reach_each_group_recipient(make_daemon, sink, tmp_path):
    team = tmp_path / "team.csv"
    team.write_text(
        "phone_number,first_name,last_name,param1,param2\n"
        f"{FR},Ada,Lovelace,10h,salle B\n"
        f"{FR2},Alan,Turing,11h,\n"
        f"{FR3},{'G' * 51},Hopper,12h,\n"
    )
    short = tmp_path / "short.csv"
    short.write_text(team.read_text().rsplit("\n", 2)[0] + "\n")
    daemon = await make_daemon(
        f'[smtp_in]\nconfirm = "all"\n[groups]\nteam = "{team}"\nshort = "{short}"\n', smtp_port=sink.port
    )
    text = "Bonjour {first_name} {last_name}, RDV a {param1} {param2}"
    await e_mail(daemon, ["short"], text, "Rendez-vous")
    [sent] = await wait_for(lambda: daemon.emulator.sent)
    assert sent["text"] == text
    assert sent["texts"] == {FR: "Bonjour Ada Lovelace, RDV a 10h salle B", FR2: "Bonjour Alan Turing, RDV a 11h "}
    assert sent["recipients"][1] == {"phone_number": FR2, "first_name": "Alan", "last_name": "Turing", "param1": "11h"}
    [mail] = await wait_for(lambda: mails_to(sink, "alice@example.org"))
    assert "As +33 6 12 34 56 78, the first recipient, reads it:" in plain(mail)
    assert "Bonjour Ada Lovelace, RDV a 10h salle B" in plain(mail)
    # A value over Octopush's 50 characters, in a column the text uses: refused, naming the row and column.
    to = [f"team@{DOMAIN}"]
    with pytest.raises(Exception) as info:
        await smtp_send(daemon, message(to, text, "Rendez-vous"), to)
    assert "550" in str(info.value) and "line 4" in str(info.value) and "first_name" in str(info.value)
    await e_mail(daemon, ["team"], "Bonjour {last_name}", "Nom seulement")  # the long column is not used
    with pytest.raises(Exception) as info:
        await smtp_send(daemon, message(to, "Bonjour {firstname}", "Typo"), to)
    assert "550" in str(info.value) and "{first_name}" in str(info.value)
    # A number written directly has no values: refused rather than sent as "Bonjour ,".
    both = [f"short@{DOMAIN}", f"{FR3}@{DOMAIN}"]
    with pytest.raises(Exception) as info:
        await smtp_send(daemon, message(both, "Bonjour {first_name}", "Mixte"), both)
    assert "550" in str(info.value) and f"{FR3} has no values" in str(info.value)


# --- STOP mentions from an e-mail ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mention", "ok"),
    [("STOP au 30101", True), ("STOP au XXXXX", True), ("no PUB=STOP", True), ("stop au 30101", False)],
)
def test_stop_mention_setting_follows_octopushs_rules(tmp_path, capsys, mention, ok):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[smtp_in]\nstop_mention = "{mention}"\n')
    assert run("check-config", "-c", str(path)) == (0 if ok else 1)
    if not ok:
        err = capsys.readouterr().err
        assert "smtp_in.stop_mention" in err and "exactly" in err


async def test_marketing_e_mails_and_the_stop_mention(make_daemon, sink):
    daemon = await make_daemon(smtp_port=sink.port)
    to = [f"{FR}@{DOMAIN}"]
    for body, subject, words in [
        ("Soldes! stop au 30101", "[marketing] Promo", "'STOP au '"),
        ("Soldes! STOP to 30101", "[marketing] Promo", "'STOP au XXXXX'"),
        ("Soldes! No PUB=STOP", "[marketing] [low-cost] Promo", "'no PUB=STOP', written exactly so"),
    ]:
        with pytest.raises(Exception) as info:
            await smtp_send(daemon, message(to, body, subject), to)
        assert "550 5.6.0" in str(info.value) or "5.6.0" in str(info.value)
        assert words in str(info.value)
    await e_mail(daemon, [FR], "Soldes! STOP au XXXXX", "[marketing] Promo")
    await e_mail(daemon, [FR], "Soldes! no PUB=STOP", "[marketing] [low-cost] Promo")
    await wait_for(lambda: len(daemon.emulator.sent) == 2)
    assert [s["purpose"] for s in daemon.emulator.sent] == ["wholesale", "wholesale"]


async def test_the_configured_mention_is_added_as_written(make_daemon, sink):
    daemon = await make_daemon('[smtp_in]\nstop_mention = "STOP au XXXXX"\n', smtp_port=sink.port)
    await e_mail(daemon, [FR], "Soldes!", "[marketing] Promo")
    await e_mail(daemon, [FR2], "Soldes!", "[marketing] [low-cost] Promo")
    await wait_for(lambda: len(daemon.emulator.sent) == 2)
    assert sorted(s["text"] for s in daemon.emulator.sent) == ["Soldes!\nSTOP au XXXXX", "Soldes!\nno PUB=STOP"]


async def test_the_confirmation_says_when_a_scheduled_sms_goes(make_daemon, sink):
    daemon = await make_daemon('[smtp_in]\nconfirm = "all"\n', smtp_port=sink.port)
    when = clock.now() + timedelta(hours=3)
    await e_mail(daemon, [FR], "Plus tard", f"[at:{when.strftime('%Y-%m-%dT%H:%M:%SZ')}] Rappel")
    [mail] = await wait_for(lambda: mails_to(sink, "alice@example.org"))
    local = when.astimezone(clock.region_timezone("FR")).strftime("%Y-%m-%d %H:%M")
    assert mail["Subject"] == "SMS scheduled: Rappel"
    assert f"it goes out on {local}" in plain(mail) and "octorelay campaign cancel" in plain(mail)
