"""Rows that keep failing are set aside, never block their worker, and are retried by hand (issue 14, item 6).

Through the running daemon: a real template override that raises for one reply, a real send row whose
stored deadline is unreadable, the Attention page and its CSRF-protected Retry button over real HTTP.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from relay.mail.render import packaged_templates
from relay.octopush.client import Recipient
from relay.sending import SendRequest, queue_campaign
from relay.storage import campaigns, queues
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

REPLY = {
    "message_id": "",
    "number": "+33600000001",
    "sim_card_number": "30101",
    "reception_date": "2026-11-04 11:11:45",
}
BOMB = '{% if event.text == "boom" %}{{ this_is_not_defined }}{% endif %}\n'


def retry_forms(html: str) -> list[dict[str, str]]:
    forms = re.findall(r'<form method="post" action="/attention/retry">(.*?)</form>', html, re.S)
    return [dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form)) for form in forms]


async def health(http: aiohttp.ClientSession, daemon) -> dict:
    async with http.get(f"{daemon.http_url}/healthz") as resp:
        return await resp.json()


async def test_a_callback_whose_routing_always_fails_is_set_aside_and_retried_by_hand(
    make_daemon, sink, tmp_path: Path
):
    overrides = tmp_path / "templates"
    (overrides / "mail").mkdir(parents=True)
    reply_txt = overrides / "mail" / "reply.txt"
    reply_txt.write_text(BOMB + (packaged_templates() / "mail" / "reply.txt").read_text())
    daemon = await make_daemon(
        f'[templates]\ndir = "{overrides}"\n'
        '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "instant"\nevents = ["reply"]\n',
        smtp_port=sink.port,
    )
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    jar = aiohttp.CookieJar(unsafe=True)  # the daemon is on 127.0.0.1: keep its session cookie
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        for text in ("boom", "fine 1", "fine 2"):
            async with http.post(url, json={**REPLY, "text": text}) as resp:
                assert resp.status == 200
        # The bad row does not hold back the others, sent at once; it is tried a few times, then set aside.
        await wait_for(lambda: len(sink.messages) == 2)
        assert sorted(m["Subject"] for _, _, m in sink.messages) == ["SMS reply from +33 6 00 00 00 01"] * 2

        async def set_aside():
            return (await health(http, daemon))["set_aside"]["routing"] == 1

        await wait_for(set_aside, timeout=20)
        body = await health(http, daemon)
        assert body["status"] == "ok" and body["set_aside"] == {"routing": 1, "confirmation": 0, "send": 0}
        row = await daemon.store.read(
            lambda db: dict(next(db.query("SELECT routed, failures, last_failure FROM callbacks WHERE text = 'boom'")))
        )
        assert row["routed"] == -1 and row["failures"] == queues.MAX_FAILURES
        assert "this_is_not_defined" in row["last_failure"]
        # Later callbacks still go: the worker did not stop.
        async with http.post(url, json={**REPLY, "text": "fine 3"}) as resp:
            assert resp.status == 200
        await wait_for(lambda: len(sink.messages) == 3)

        async with http.get(f"{daemon.http_url}/attention") as resp:
            html = await resp.text()
        assert "Set aside after repeated failures" in html and "this_is_not_defined" in html
        (form,) = retry_forms(html)
        assert form["work"] == "routing"
        # The Retry button is CSRF-protected: a forged token changes nothing.
        async with http.post(f"{daemon.http_url}/attention/retry", data={**form, "csrf": "forged"}) as resp:
            assert resp.status == 403
        # The operator fixes the template, then retries: the reply is e-mailed once.
        reply_txt.write_text((packaged_templates() / "mail" / "reply.txt").read_text())
        async with http.post(f"{daemon.http_url}/attention/retry", data=form, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/attention?retried=routing"
        await wait_for(lambda: len(sink.messages) == 4)
        assert "boom" in sink.messages[-1][2].get_body(("plain",)).get_content()
        assert (await health(http, daemon))["set_aside"]["routing"] == 0


async def test_a_send_that_always_raises_is_set_aside_and_the_queue_goes_on(make_daemon, sink):
    daemon = await make_daemon('[octopush.emulator]\nreply_text = ""\n', smtp_port=sink.port)
    retry_for = daemon.config.octopush.retry_for

    def request(text: str) -> SendRequest:
        return SendRequest(
            text=text, recipients=(Recipient("+33612345678"),), type="sms_premium", purpose="alert", origin="cli"
        )

    def queue_broken(db):
        campaign_id, _ = queue_campaign(db, request("broken"), retry_for=retry_for)
        # A row the worker cannot read (here: its deadline), as a bug or an older version could leave one.
        db.execute("UPDATE sends SET deadline = 'not a time' WHERE campaign_id = ?", [campaign_id])
        return campaign_id

    broken = await daemon.store.write(queue_broken)
    good, _ = await daemon.store.write(partial(queue_campaign, req=request("fine"), retry_for=retry_for))
    daemon.sender.wake()
    sent = await daemon.sender.wait(good)
    assert sent["status"] == "sent"

    async def status_of_broken():
        row = await daemon.store.read(partial(campaigns.campaign, campaign_id=broken))
        return row["sends"][0]["status"] == "set_aside" and row

    row = await wait_for(status_of_broken, timeout=30)
    assert row["status"] == "queued"  # not failed: nothing told Octopush anything, it waits for a person
    assert row["sends"][0]["failures"] == queues.MAX_FAILURES
    assert "not a time" in row["sends"][0]["last_failure"]
    assert [s["text"] for s in daemon.emulator.sent] == ["fine"]

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        assert (await health(http, daemon))["set_aside"]["send"] == 1
        async with http.get(f"{daemon.http_url}/metrics") as resp:
            assert 'octorelay_set_aside{work="send"} 1.0' in await resp.text()
        async with http.get(f"{daemon.http_url}/attention") as resp:
            (form,) = retry_forms(await resp.text())
        assert form["work"] == "send"
        # A retry gives the send a new deadline, as a new request would: this one goes.
        async with http.post(f"{daemon.http_url}/attention/retry", data=form) as resp:
            assert resp.status == 200 and "Retried" in await resp.text()
    done = await daemon.sender.wait(broken)
    assert done["status"] == "sent"
    assert [s["text"] for s in daemon.emulator.sent] == ["fine", "broken"]


async def test_a_confirmation_that_always_fails_is_set_aside_and_retried_by_hand(make_daemon, sink, tmp_path: Path):
    overrides = tmp_path / "templates"
    (overrides / "mail").mkdir(parents=True)
    confirmation = overrides / "mail" / "confirmation.txt"
    original = (packaged_templates() / "mail" / "confirmation.txt").read_text()
    confirmation.write_text("{{ this_is_not_defined }}\n" + original)
    daemon = await make_daemon(
        f'[templates]\ndir = "{overrides}"\n[octopush.emulator]\nreply_text = ""\n', smtp_port=sink.port
    )
    retry_for = daemon.config.octopush.retry_for

    def request(text: str) -> SendRequest:
        return SendRequest(
            text=text,
            recipients=(Recipient("+33612345678"),),
            type="sms_premium",
            purpose="alert",
            origin="email",
            sender_email="alice@example.org",
            confirm="all",
        )

    campaign_id, _ = await daemon.store.write(partial(queue_campaign, req=request("hello"), retry_for=retry_for))
    daemon.sender.wake()

    async def set_aside():
        return await daemon.store.read(
            lambda db: db.execute("SELECT notified FROM campaigns WHERE id = ?", [campaign_id]).fetchone()[0] == -1
        )

    await wait_for(set_aside, timeout=20)
    assert sink.messages == []
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        assert (await health(http, daemon))["set_aside"]["confirmation"] == 1
        async with http.get(f"{daemon.http_url}/attention") as resp:
            (form,) = retry_forms(await resp.text())
        confirmation.write_text(original)
        async with http.post(f"{daemon.http_url}/attention/retry", data=form) as resp:
            assert resp.status == 200
    await wait_for(lambda: len(sink.messages) == 1)
    assert sink.messages[0][1] == ["alice@example.org"] and sink.messages[0][2]["Subject"].startswith("SMS sent")
