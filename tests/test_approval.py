"""Campaigns over `[limits] approve_over` numbers wait for their sender's approval (SPEC §5 "Spend"): the
approval e-mail, answers by e-mail, the campaign page's buttons, `octorelay campaign approve|cancel`, expiry.
Real SMTP sessions, the daemon's outbox to a real SMTP sink, the Octopush emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import wait_for
from tests.test_guards import ALICE, FR1, FR2, FR3, message, rcpt, send

pytestmark = pytest.mark.timeout(60)

THREE = [rcpt(FR1), rcpt(FR2), rcpt(FR3)]


def approval(**limits) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return f'[limits]\napprove_over = 2\n{extra}[smtp_in]\nconfirm = "none"\n'


APPROVAL = approval()


def real_sends(daemon) -> list[dict]:
    return [
        r["body"]
        for r in daemon.emulator.requests
        if isinstance(r["body"], dict) and "recipients" in r["body"] and not r["body"].get("simulation_mode")
    ]


async def held_campaign(daemon, sink) -> tuple[int, object]:
    """Send an e-mail to three numbers; returns its campaign id and the approval e-mail its sender got."""
    code, text = await send(daemon, message(THREE, "Storm warning: stay home", "storm"), THREE)
    assert code == 250 and "held for approval" in text, text
    campaign_id = int(re.search(r"campaign (\d+)", text).group(1))
    mail = await wait_for(
        lambda: next((m[2] for m in sink.messages if m[2]["Subject"].startswith("Approve this SMS?")), None)
    )
    return campaign_id, mail


async def status(daemon, campaign_id: int) -> str:
    return await daemon.store.read(
        lambda db: db.execute("SELECT status FROM campaigns WHERE id = ?", [campaign_id]).fetchone()[0]
    )


async def test_held_then_yes_sends_exactly_once(make_daemon, sink):
    daemon = await make_daemon(APPROVAL, smtp_port=sink.port)
    campaign_id, mail = await held_campaign(daemon, sink)
    assert await status(daemon, campaign_id) == "held"
    assert mail["To"] == ALICE and mail["Reply-To"] == f"approve-{campaign_id}@sms.example.org"
    body = mail.get_body(("plain",)).get_content()
    assert "Storm warning: stay home" in body and "Numbers:     3" in body and "GSM 7-bit" in body
    assert re.search(r"Cost:\s+about \d", body), body  # Octopush's estimate, from a simulation_mode call
    assert real_sends(daemon) == []
    async with aiohttp.ClientSession() as http:  # no ticket yet: the API finds it by its relay id
        api = await (await http.get(f"{daemon.http_url}/api/campaigns/{campaign_id}")).json()
        assert api["status"] == "held" and api["sender_email"] == ALICE and api["approve_by"]
    # The answer, as a mail client writes it: "Yes" on top, the approval e-mail quoted under it.
    answer = message([mail["Reply-To"]], "Yes, send it.\n\nOn Monday octorelay wrote:\n> Approve this SMS?", "Re: x")
    code, text = await send(daemon, answer, [mail["Reply-To"]])
    assert code == 250 and "approved" in text
    await wait_for(lambda: real_sends(daemon))
    await asyncio.sleep(0.3)
    sent = real_sends(daemon)
    assert len(sent) == 1 and len(sent[0]["recipients"]) == 3 and sent[0]["text"] == "Storm warning: stay home"
    # The answer itself was no SMS, and a second "yes" changes nothing.
    code, text = await send(daemon, message([mail["Reply-To"]], "ok"), [mail["Reply-To"]])
    assert code == 250 and "Nothing done" in text
    await asyncio.sleep(0.2)
    assert len(real_sends(daemon)) == 1


async def test_no_cancels_and_gives_the_budget_back(make_daemon, sink):
    daemon = await make_daemon(approval(daily_sms=4), smtp_port=sink.port)
    campaign_id, mail = await held_campaign(daemon, sink)
    address = mail["Reply-To"]
    # Held, it counts: one more than the day's 4 would be refused.
    code, _ = await send(daemon, message([rcpt(FR1), rcpt(FR2)], "two more"), [rcpt(FR1), rcpt(FR2)])
    assert code == 550
    # Someone else cannot answer for alice; an answer that is neither yes nor no is refused.
    code, text = await send(
        daemon, message([address], "yes", sender="bob@example.org"), [address], sender="bob@example.org"
    )
    assert code == 550 and text.startswith("5.7.1") and "only the sender" in text
    code, text = await send(daemon, message([address], "maybe later"), [address])
    assert code == 550 and "yes" in text
    # An answer to the approval address goes alone.
    code, _ = await send(daemon, message([address, rcpt(FR1)], "yes"), [address, rcpt(FR1)])
    assert code == 550
    code, text = await send(daemon, message([address], "Non merci"), [address])
    assert code == 250 and "cancelled" in text
    assert await status(daemon, campaign_id) == "cancelled"
    code, _ = await send(daemon, message([rcpt(FR1), rcpt(FR2)], "two more"), [rcpt(FR1), rcpt(FR2)])
    assert code == 250
    await wait_for(lambda: real_sends(daemon))
    await asyncio.sleep(0.3)
    assert [len(s["recipients"]) for s in real_sends(daemon)] == [2]


async def test_not_approved_in_time_is_cancelled_and_the_sender_told(make_daemon, sink):
    daemon = await make_daemon(approval(approve_within=1), smtp_port=sink.port)
    campaign_id, _ = await held_campaign(daemon, sink)

    def told():
        daemon.notifier.wake()  # its sweep runs at least every 30 s; the test does not wait that long
        return next((m[2] for m in sink.messages if m[2]["Subject"].startswith("SMS cancelled")), None)

    notice = await wait_for(told, timeout=15)
    assert notice["To"] == ALICE and "nothing was sent" in notice.get_body(("plain",)).get_content()
    assert await status(daemon, campaign_id) == "cancelled"
    code, text = await send(
        daemon, message([f"approve-{campaign_id}@sms.example.org"], "yes"), [f"approve-{campaign_id}@sms.example.org"]
    )
    assert code == 250 and "Nothing done" in text
    assert real_sends(daemon) == []


async def test_the_campaign_page_approves_with_a_csrf_token(make_daemon, sink):
    daemon = await make_daemon(APPROVAL, smtp_port=sink.port)
    campaign_id, _ = await held_campaign(daemon, sink)
    url = f"{daemon.http_url}/campaigns/{campaign_id}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        page = await (await http.get(url)).text()
        assert "Held for approval" in page and "Approve and send" in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        resp = await http.post(f"{url}/approve", data={"csrf": "forged"}, allow_redirects=False)
        assert resp.status == 403
        resp = await http.post(f"{url}/approve", data={"csrf": csrf}, allow_redirects=False)
        assert resp.status == 303
        await wait_for(lambda: real_sends(daemon))
        resp = await http.post(f"{url}/cancel", data={"csrf": csrf})
        assert resp.status == 409 and "not held" in await resp.text()
    assert len(real_sends(daemon)) == 1


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("OCTORELAY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "relay", *args, "-c", str(config)], capture_output=True, text=True, env=env, timeout=30
    )


async def test_the_command_line_approves_and_cancels(make_daemon, sink):
    daemon = await make_daemon(APPROVAL, smtp_port=sink.port)
    config = Path(daemon.config_path)
    first, _ = await held_campaign(daemon, sink)
    done = await asyncio.to_thread(_cli, config, "campaign", "cancel", str(first))
    assert done.returncode == 0 and "cancelled" in done.stdout
    again = await asyncio.to_thread(_cli, config, "campaign", "approve", str(first))
    assert again.returncode == 1 and "cancelled, not held" in again.stderr and "Traceback" not in again.stderr
    missing = await asyncio.to_thread(_cli, config, "campaign", "approve", "999")
    assert missing.returncode == 1 and "no campaign 999" in missing.stderr
    code, text = await send(daemon, message(THREE, "second storm", "storm 2"), THREE)
    second = int(re.search(r"campaign (\d+)", text).group(1))
    done = await asyncio.to_thread(_cli, config, "campaign", "approve", str(second))
    assert done.returncode == 0
    daemon.sender.wake()  # the daemon's queue would find it at its next sweep (30 s at most)
    await wait_for(lambda: real_sends(daemon))
    assert [s["text"] for s in real_sends(daemon)] == ["second storm"]


async def test_marketing_approved_after_hours_waits_for_the_next_window(make_daemon, sink, monkeypatch):
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from relay import clock

    paris = ZoneInfo("Europe/Paris")
    now = {"at": datetime(2031, 3, 8, 19, 0, tzinfo=paris)}  # a Saturday, inside the marketing hours
    monkeypatch.setattr(clock, "now", lambda: now["at"].astimezone(UTC))
    windows = '[octopush]\nmarketing_hours = "08:00-20:00"\nmarketing_days = "mon-sat"\nmarketing_holidays = true\n'
    daemon = await make_daemon(APPROVAL + windows, smtp_port=sink.port)
    code, text = await send(daemon, message(THREE, "Sale STOP au 30101", "[marketing] sale"), THREE)
    assert code == 250 and "held for approval" in text and "to go at" not in text
    now["at"] = datetime(2031, 3, 8, 21, 0, tzinfo=paris)  # approved at 21:00: it goes on Monday morning
    address = "approve-1@sms.example.org"
    assert (await send(daemon, message([address], "oui"), [address]))[0] == 250
    await wait_for(lambda: real_sends(daemon))
    goes = datetime.fromisoformat(real_sends(daemon)[0]["send_at"]).astimezone(paris)
    assert goes.strftime("%Y-%m-%d %H:%M") == "2031-03-10 08:00"
