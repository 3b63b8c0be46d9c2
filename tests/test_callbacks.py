"""Octopush callbacks over real HTTP against the running daemon (SPEC §3)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from relay.storage import callbacks
from tests.conftest import wait_for

REPLY = {
    "message_id": "sms_5fa275dbf21dc",
    "number": "+33600000001",
    "text": "some reply",
    "sim_card_number": "30101",
    "reception_date": "2026-11-04 11:11:45",
}


def url(daemon, token: str | None = None) -> str:
    return f"{daemon.http_url}/octopush/{token or daemon.callback_token}"


async def count(daemon, kind: str | None = None) -> int:
    where = "WHERE kind = ?" if kind else ""
    return await daemon.store.read(
        lambda db: db.execute(f"SELECT count(*) FROM callbacks {where}", [kind] if kind else []).fetchone()[0]
    )


async def test_reply_json_is_stored_before_an_empty_200(daemon):
    async with aiohttp.ClientSession() as http, http.post(url(daemon), json=REPLY) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    rows = await daemon.store.read(lambda db: callbacks.replies(db))
    assert len(rows) == 1
    row = rows[0]
    assert row["number"] == "+33600000001" and row["country"] == "FR" and row["text"] == "some reply"
    assert row["date_raw"] == "2026-11-04 11:11:45"
    assert row["occurred_at"] == "2026-11-04T10:11:45.000000+00:00"  # Paris is UTC+1 in November


async def test_form_body_and_answer_date_are_accepted(daemon):
    form = {**REPLY, "answer_date": REPLY["reception_date"]}
    del form["reception_date"]
    async with aiohttp.ClientSession() as http, http.post(url(daemon), data=form) as resp:
        assert resp.status == 200
    assert await count(daemon, "reply") == 1


async def test_a_loosely_encoded_form_is_stored_not_refused(daemon):
    """A trailing "&" or a field without "=" is still a form: stored, never a 400 that would lose it."""
    from urllib.parse import urlencode

    form = "flag&" + urlencode(REPLY) + "&"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as http, http.post(url(daemon), data=form, headers=headers) as resp:
        assert resp.status == 200
    assert await count(daemon, "reply") == 1


async def test_kinds_are_told_apart(daemon):
    receipt = {
        "channel": "sms",
        "message_id": "sms_x",
        "number": "+33600000001",
        "status": "DELIVERED",
        "delivery_date": "2026-11-04 11:11:45",
    }
    stop = {"message_id": "sms_x", "number": "+33600000002", "text": "stop", "stop_date": "2026-11-04 11:12:00"}
    async with aiohttp.ClientSession() as http:
        for body in (REPLY, receipt, stop, {"hello": "world"}):
            async with http.post(url(daemon), json=body) as resp:
                assert resp.status == 200
    assert [await count(daemon, k) for k in ("reply", "delivery", "stop", "unrecognised")] == [1, 1, 1, 1]
    assert await daemon.store.read(lambda db: callbacks.is_opted_out(db, "+33600000002"))


async def test_repeated_callback_is_stored_once(daemon):
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(url(daemon), json=REPLY) as resp:
                assert resp.status == 200
    assert await count(daemon) == 1


async def test_bad_requests(daemon):
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon, "wrong-token"), json=REPLY) as resp:
            assert resp.status == 404 and resp.headers["X-Frame-Options"] == "DENY"
            assert "wrong-token" not in await resp.text()
        async with http.post(
            url(daemon), data=b"\x00\x01binary", headers={"Content-Type": "application/octet-stream"}
        ) as resp:
            assert resp.status == 400
            assert len((await resp.text()).strip().splitlines()) == 1
        async with http.post(url(daemon), data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
        async with http.post(url(daemon), json={"text": "x" * 70000}) as resp:
            assert resp.status == 413
        async with http.get(url(daemon)) as resp:
            assert resp.status == 200 and await resp.read() == b""
        async with http.get(url(daemon, "nope")) as resp:
            assert resp.status == 404
        for method, path in (("PUT", url(daemon)), ("GET", url(daemon) + "/more")):
            async with http.request(method, path) as resp:  # aiohttp's own 405 and 404 pages
                assert resp.status in (404, 405) and resp.headers["X-Frame-Options"] == "DENY"
                assert daemon.callback_token not in await resp.text()
    assert await count(daemon) == 0


async def test_token_is_made_once_and_kept(make_daemon):
    first = await make_daemon()
    token = first.callback_token
    assert len(token) >= 24
    await first.stop()
    second = await make_daemon()
    assert second.callback_token == token


async def test_token_never_logged_nor_in_metrics(daemon, caplog):
    caplog.set_level(logging.DEBUG)  # a stored callback's access line is at DEBUG
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=REPLY) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.http_url}/metrics") as resp:
            metrics = await resp.text()
    assert daemon.callback_token not in caplog.text
    assert "/octopush/***" in caplog.text
    assert daemon.callback_token not in metrics
    assert 'octorelay_callbacks_total{kind="reply",outcome="stored"} 1.0' in metrics


async def test_access_log_keeps_refused_callbacks_at_info(daemon, caplog):
    caplog.set_level(logging.INFO, logger="relay.http")
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=REPLY) as resp:
            assert resp.status == 200
        async with http.post(url(daemon), data=b"not a callback") as resp:
            assert resp.status == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.http" and r.levelno == logging.INFO]
    assert len(lines) == 1 and " 400 " in lines[0] and "/octopush/***" in lines[0]


async def test_reply_links_to_campaign_and_receipt_out_of_order(daemon):
    """A receipt for a ticket not yet known is kept and applied when the ticket arrives."""
    from relay.octopush.client import Recipient
    from relay.sending import SendRequest, queue_campaign

    early = {
        "channel": "sms",
        "message_id": "sms_future",
        "number": "+33600000003",
        "status": "DELIVERED",
        "delivery_date": "2026-11-04 11:11:45",
    }
    async with aiohttp.ClientSession() as http, http.post(url(daemon), json=early) as resp:
        assert resp.status == 200
    request = SendRequest(text="hello", recipients=(Recipient("+33600000003"),), type="sms_premium", purpose="alert")

    def queue_and_fake_send(db):
        campaign_id, _ = queue_campaign(db, request, retry_for=10)
        db.execute("UPDATE sends SET status = 'sent', ticket = 'sms_future' WHERE campaign_id = ?", [campaign_id])
        db.execute("UPDATE campaigns SET status = 'sent' WHERE id = ?", [campaign_id])
        callbacks.apply_receipts(db, ticket="sms_future")
        return campaign_id

    campaign_id = await daemon.store.write(queue_and_fake_send)
    status = await daemon.store.read(
        lambda db: db.execute("SELECT status FROM recipients WHERE campaign_id = ?", [campaign_id]).fetchone()[0]
    )
    assert status == "DELIVERED"
    # A reply without a ticket joins the latest campaign to that number.
    reply = {**REPLY, "message_id": "", "number": "+33600000003"}
    async with aiohttp.ClientSession() as http, http.post(url(daemon), json=reply) as resp:
        assert resp.status == 200
    rows = await daemon.store.read(lambda db: callbacks.replies(db, number="+33600000003"))
    assert rows[0]["campaign_id"] == campaign_id and rows[0]["answered"] == "hello"


async def test_api_replies_and_campaign(daemon):
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=REPLY) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.http_url}/api/replies?country=FR&limit=5") as resp:
            data = await resp.json()
        assert data["count"] == 1 and data["replies"][0]["text"] == "some reply"
        async with http.get(f"{daemon.http_url}/api/replies?country=DE") as resp:
            assert (await resp.json())["count"] == 0
        for since in ("yesterday", "9999999d"):
            async with http.get(f"{daemon.http_url}/api/replies?since={since}") as resp:
                assert resp.status == 400, since
        async with http.get(f"{daemon.http_url}/campaigns/99999999999999999999999") as resp:
            assert resp.status == 404
        async with http.get(f"{daemon.http_url}/api/campaigns/sms_unknown") as resp:
            assert resp.status == 404


async def test_healthz_ok(daemon):
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http_url}/healthz") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok" and body["database"] == "ok"
    assert "outbox_pending" in body and "send_queue_pending" in body


async def test_concurrent_callbacks_share_commits(daemon):
    bodies = [{**REPLY, "text": f"reply {i}"} for i in range(200)]
    before = daemon.store.commits
    async with aiohttp.ClientSession() as http:

        async def post(body):
            async with http.post(url(daemon), json=body) as resp:
                return resp.status

        statuses = await asyncio.gather(*(post(b) for b in bodies))
    assert statuses == [200] * 200
    assert await count(daemon, "reply") == 200
    assert daemon.store.commits - before < 200
    await wait_for(
        lambda: daemon.store.read(
            lambda db: db.execute("SELECT count(*) = 0 FROM callbacks WHERE routed = 0").fetchone()[0]
        )
    )


async def test_api_token_is_required_from_everyone_once_set(make_daemon):
    """SPEC §3: with api_token (and ui_users) set, loopback and a same-host proxy's Host prove nothing."""
    from relay import passwords

    daemon = await make_daemon(
        f'[http]\napi_token = "s3cret-token-xyz"\nui_users = {{ ops = "{passwords.make_hash("pw-long-enough")}" }}\n'
    )
    api = f"{daemon.http_url}/api/replies"
    port = daemon.http_url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for headers in (
            {},
            {"Host": f"127.0.0.1:{port}"},
            {"Host": "sms.example.org"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic b3BzOnB3LWxvbmctZW5vdWdo"},
            {"Authorization": "s3cret-token-xyz"},
        ):
            async with http.get(api, headers=headers) as resp:
                assert resp.status == 401, headers
                assert "api_token is set" in await resp.text()
        for scheme in ("Bearer", "bearer"):
            async with http.get(api, headers={"Authorization": f"{scheme} s3cret-token-xyz"}) as resp:
                assert resp.status == 200, scheme


async def test_untrusted_fields_are_stored_answered_200_and_never_mailed_to(make_daemon, sink):
    """SPEC §3: a number that is not a phone number, a date out of range, invalid Unicode: stored, 200, never a
    500 nor a 400, never lost, routed only with a phone number, never an e-mail to an address from a callback."""
    daemon = await make_daemon(
        '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "instant"\n'
        'events = ["reply", "stop", "delivery"]\n'
        '[[subscriptions]]\nname = "daily"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n'
        'events = ["reply", "stop", "delivery"]\n',
        smtp_port=sink.port,
    )
    receipt = {"channel": "sms", "message_id": "sms_x", "number": "+33600000001", "status": "DELIVERED"}
    json_type = {"Content-Type": "application/json"}
    unroutable = [
        {"json": {**REPLY, "number": "spy@evil.example,x", "text": "spy 1"}},
        {"json": {**REPLY, "number": "+spy@evil.example", "text": "spy 2"}},
        {"data": {**REPLY, "number": "spy@evil.example", "text": "spy 3"}},
        {
            "json": {
                "message_id": "",
                "number": "<spy@evil.example>",
                "text": "stop",
                "stop_date": "2026-11-04 11:11:45",
            }
        },
        {"json": {**receipt, "number": "spy@evil.example", "delivery_date": "2026-11-04 11:11:45"}},
    ]
    routable = [
        {"json": {**REPLY, "text": "year one", "reception_date": "0001-01-01 00:00:00"}},
        {"json": {**REPLY, "text": "far future", "reception_date": "9999-12-31 23:59:59"}},
        {"json": {**receipt, "delivery_date": "0001-01-01 00:00:00"}},
        {
            "data": b'{"number": "+33600000001", "text": "lone \\ud83d", "reception_date": "2026-11-04 11:11:45"}',
            "headers": json_type,
        },
        {
            "data": b'{"number": "+33600000001", "text": "bad \xff utf-8", "reception_date": "2026-11-04 11:11:45"}',
            "headers": json_type,
        },
    ]
    async with aiohttp.ClientSession() as http:
        for case in unroutable + routable:
            async with http.post(url(daemon), **case) as resp:
                assert resp.status == 200, (case, await resp.text())
        # What neither parser can read stays a 400, also nested deeper than Python's recursion limit.
        async with http.post(url(daemon), data=b"[" * 60000, headers=json_type) as resp:
            assert resp.status == 400
    assert await count(daemon) == len(unroutable) + len(routable)
    assert await count(daemon, "unrecognised") == len(unroutable)
    await wait_for(lambda: len(sink.messages) == len(routable))
    digest = await daemon.notifier.run_digest("daily", dry_run=True)
    texts = [m.as_string() for _, _, m in sink.messages] + [digest.as_string()]
    assert not any("evil" in text for text in texts)
    for _, rcpts, msg in sink.messages:
        assert rcpts == ["ops@example.org"]
        assert msg["Reply-To"] in (None, "+33600000001@sms.example.org")
    stored = await daemon.store.read(
        lambda db: {r[0]: r[1] for r in db.execute("SELECT text, occurred_at FROM callbacks WHERE kind = 'reply'")}
    )
    assert stored.keys() == {"year one", "far future", "lone \ufffd", "bad \ufffd utf-8"}
    assert all(when.startswith("2") for when in stored.values())  # an unreadable date: the time it arrived
