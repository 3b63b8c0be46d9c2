"""The web interface over real HTTP: access rules, replies views, CSV export, conversations and the answer form.

The app is the daemon's own (`create_app`), built from the real narrow parts its handlers use: a real
config, a real Store in tmp_path and a real SendQueue talking to the Octopush emulator, so an answer sent
from the form really goes.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from aiohttp import web

from relay import clock, passwords
from relay import config as config_mod
from relay.guard import LoginGuard
from relay.housekeeping import Housekeeping
from relay.mail.outbox import Outbox
from relay.mail.render import Renderer
from relay.metrics import Metrics
from relay.notify import Notifier
from relay.octopush.callbacks import classify
from relay.octopush.client import OctopushClient, Recipient
from relay.octopush.emulator import Emulator
from relay.sending import SendQueue, SendRequest, queue_campaign
from relay.storage import callbacks
from relay.storage.database import Store
from relay.web.access import SECURITY_HEADERS
from relay.web.app import create_app

pytestmark = pytest.mark.timeout(30)


@dataclasses.dataclass
class Parts:
    """The real parts the app is built from (each handed to `create_app` under its own key)."""

    config: config_mod.Config
    store: Store
    sender: SendQueue
    emulator: Emulator
    client: OctopushClient
    notifier: Notifier
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    logins: LoginGuard = dataclasses.field(default_factory=LoginGuard)


def make_config(tmp_path: Path, *, users: dict[str, str] | None = None, templates_dir: Path | None = None):
    cfg = config_mod.load(None, env={})
    return config_mod.replace(
        cfg,
        storage=dataclasses.replace(cfg.storage, path=tmp_path / "octorelay.db"),
        http=dataclasses.replace(cfg.http, ui_users=users or {}),
        octopush=dataclasses.replace(cfg.octopush, retry_for=30, timeout=2),
        templates_dir=templates_dir,
    )


@pytest.fixture
async def make_relay(tmp_path):
    """Factory: a started store, emulator, client and send queue; everything is stopped afterwards."""
    stops = []

    async def factory(**config_changes) -> Parts:
        cfg = make_config(tmp_path, **config_changes)
        store = Store(cfg.storage.path)
        await store.start()
        stops.append(store.stop)
        emulator = Emulator(reply_text="", reply_after=0)
        await emulator.start()
        stops.append(emulator.stop)
        client = OctopushClient(emulator.base_url, "emulator", "emulator", timeout=2, retry_for=30)
        await client.start()
        stops.append(client.stop)
        sender = SendQueue(store, client)
        await sender.start()
        stops.append(sender.stop)
        smtp_out = dataclasses.replace(cfg.smtp_out, maildir=str(tmp_path / "mail"))
        # Not started: the pages only wake it; routing is tested in test_notify.py.
        notifier = Notifier(cfg, store, Outbox(smtp_out, store), Renderer(cfg.templates_dir), {})
        return Parts(cfg, store, sender, emulator, client, notifier)

    yield factory
    for stop in reversed(stops):
        await stop()


@pytest.fixture
async def make_client(make_relay, aiohttp_client):
    """Factory: (test client, relay) for the real app; `remote` fakes the peer address."""

    async def factory(*, remote: str | None = None, **config_changes):
        relay = await make_relay(**config_changes)
        app = create_app(
            config=lambda: relay.config,
            store=relay.store,
            metrics=relay.metrics,
            logins=relay.logins,
            callback_token="token-for-tests",
            sender=relay.sender,
            notifier=relay.notifier,
            octopush=relay.client,
            ready=lambda: True,
            gauges=Housekeeping(
                lambda: relay.config, relay.store, relay.metrics, relay.client, relay.notifier
            ).refresh_gauges,
        )
        if remote:

            @web.middleware
            async def from_elsewhere(request, handler):
                return await handler(request.clone(remote=remote))

            app.middlewares.insert(0, from_elsewhere)
        return await aiohttp_client(app), relay

    return factory


# ------------------------------------------------------------------ seeding through the real code paths


async def add_callback(relay: Parts, **fields) -> int:
    cb = classify(fields, raw=json.dumps(fields), content_type="application/json")
    stored = await relay.store.write(lambda db: callbacks.store_callback(db, cb))
    return stored.id


async def add_reply(relay: Parts, number: str, text: str, date: str, ticket: str = "") -> int:
    return await add_callback(relay, number=number, text=text, reception_date=date, message_id=ticket)


async def send_sms(relay: Parts, numbers: list[str], text: str, *, sender_email: str = "", label: str = "") -> dict:
    """Queue a campaign as an e-mail would and wait until the emulator accepted it."""
    req = SendRequest(
        text=text,
        recipients=tuple(Recipient(n) for n in numbers),
        type="sms_premium",
        purpose="alert",
        origin="email" if sender_email else "cli",
        sender_email=sender_email,
        label=label,
    )
    campaign_id, _ = await relay.store.write(partial(queue_campaign, req=req, retry_for=30))
    relay.sender.wake()
    return await relay.sender.wait(campaign_id)


FR1, FR2, DE, GB = "+33612345678", "+33698765432", "+4915112345678", "+447400123456"


async def seed(relay: Parts) -> dict:
    """Three French replies over two days, one German, one British; the first French answers an SMS."""
    sent = await send_sms(
        relay, [FR1, DE], "Server db1 is down, can you look?", sender_email="ops@example.org", label="db1 down"
    )
    ticket = sent["tickets"][0]
    await add_reply(relay, FR1, "On it, 10 minutes", "2026-03-02 09:15:00", ticket)
    await add_reply(relay, FR2, "<script>alert(1)</script> fixed", "2026-03-02 18:40:00")
    await add_reply(relay, FR1, "Done, back up", "2026-03-03 08:05:00")
    await add_reply(relay, DE, "Ich komme", "2026-03-02 10:00:00", ticket)
    await add_reply(relay, GB, '=HYPERLINK("http://evil")', "2026-03-01 23:30:00")
    return sent


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def entries(html: str) -> int:
    return html.count('<li class="entry">')


def section_titles(html: str) -> list[str]:
    return [
        re.sub(r"\s+", " ", t).strip() for t in re.findall(r'<section class="group"[^>]*>\s*<h2>(.*?)</h2>', html, re.S)
    ]


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


# ------------------------------------------------------------------ access


async def test_loopback_is_open_without_users(make_client):
    client, _ = await make_client()
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/replies"
    for path in ("/replies", "/campaigns", "/attention", "/replies.csv", f"/conversations/{FR1}", "/static/style.css"):
        resp = await client.get(path)
        assert resp.status == 200, path


async def test_outside_loopback_without_users_is_refused(make_client):
    client, _ = await make_client(remote="203.0.113.5")
    resp = await client.get("/replies")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="octorelay"')
    assert "+33" not in await resp.text()


async def test_a_page_rebound_to_loopback_is_refused(make_client):
    """DNS rebinding: the browser's request comes from loopback, but names the attacker's host."""
    client, _ = await make_client()
    foreign = {"Host": "attacker.example:8080"}
    for path in ("/replies", f"/conversations/{FR1}", "/api/replies"):
        resp = await client.get(path, headers=foreign)
        assert resp.status == 403, path
        assert "localhost" in await resp.text()
    resp = await client.post(f"/conversations/{FR1}", data={"text": "hi"}, headers=foreign)
    assert resp.status == 403
    for host in ("localhost:8080", "app.localhost", "127.0.0.1", "[::1]:8080"):
        resp = await client.get("/api/replies", headers={"Host": host})
        assert resp.status == 200, host


async def test_an_argon2_hash_made_elsewhere_is_accepted(make_client):
    import argon2

    client, _ = await make_client(users={"bob": argon2.PasswordHasher().hash("s3cret")})
    assert (await client.get("/replies", headers=basic("bob", "s3cret"))).status == 200
    assert (await client.get("/replies", headers=basic("bob", "wrong"))).status == 401


async def test_with_users_any_host_name_may_log_in(make_client):
    """Behind a reverse proxy, the Host is the public name: users (or the API token) are what guard it."""
    client, _ = await make_client(users={"alice": passwords.make_hash("s3cret")})
    resp = await client.get("/replies", headers={"Host": "relay.example.org", **basic("alice", "s3cret")})
    assert resp.status == 200


async def test_users_need_basic_auth(make_client):
    client, _ = await make_client(users={"alice": passwords.make_hash("s3cret")})
    for path in ("/replies", "/replies.csv", "/campaigns", "/static/style.css", f"/conversations/{FR1}"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="octorelay"')
    resp = await client.get("/replies", headers=basic("alice", "wrong"))
    assert resp.status == 401
    resp = await client.get("/replies", headers=basic("mallory", "s3cret"))
    assert resp.status == 401
    resp = await client.get("/replies", headers=basic("alice", "s3cret"))
    assert resp.status == 200
    assert '<span class="user">alice</span>' in await resp.text()
    resp = await client.post(f"/conversations/{FR1}", data={"text": "hi"})
    assert resp.status == 401


async def test_security_headers_on_pages_and_refusals(make_client):
    client, _ = await make_client(users={"alice": passwords.make_hash("pw")})
    refusals_and_pages = (
        await client.get("/replies"),
        await client.get("/no/such/page"),
        await client.get("/replies", headers=basic("alice", "pw")),
    )
    assert [r.status for r in refusals_and_pages] == [401, 404, 200]
    for resp in refusals_and_pages:
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value
    resp = await client.get("/replies", headers=basic("alice", "pw"))
    assert resp.headers["Cache-Control"] == "no-store"
    html = await resp.text()
    # The CSP forbids inline script and style: the pages must not need them.
    assert "<script" not in html and "style=" not in html and "<style" not in html


async def test_stylesheet_and_template_override(make_client, tmp_path):
    client, _ = await make_client()
    resp = await client.get("/static/style.css")
    assert resp.status == 200 and resp.content_type == "text/css"
    assert ".entry" in await resp.text()
    override = tmp_path / "custom"
    (override / "web").mkdir(parents=True)
    (override / "web" / "style.css").write_text("body { color: red; }\n")
    client, _ = await make_client(templates_dir=override)
    assert await (await client.get("/static/style.css")).text() == "body { color: red; }\n"
    # Pages not overridden still come from the packaged templates.
    assert (await client.get("/replies")).status == 200


# ------------------------------------------------------------------ replies


async def test_replies_by_date(make_client):
    client, relay = await make_client()
    await seed(relay)
    html = await (await client.get("/replies")).text()
    # Europe/Paris days, newest first; 2026-03-01 23:30 Paris stays on the 1st.
    assert section_titles(html) == [
        'Tuesday 03 March 2026 <span class="count">1 reply</span>',
        'Monday 02 March 2026 <span class="count">3 replies</span>',
        'Sunday 01 March 2026 <span class="count">1 reply</span>',
    ]
    assert entries(html) == 5
    assert "+33 6 12 34 56 78" in html  # international format
    assert 'href="/conversations/+33612345678"' in html
    assert "In answer to" in html and "Server db1 is down, can you look?" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; fixed" in html and "<script>" not in html
    assert ">09:15<" in html  # local time (08:15 UTC)


async def test_replies_by_country(make_client):
    client, relay = await make_client()
    await seed(relay)
    html = await (await client.get("/replies?view=country")).text()
    assert section_titles(html) == [
        'France (FR) <span class="count">3 replies</span>',
        'Germany (DE) <span class="count">1 reply</span>',
        'United Kingdom (GB) <span class="count">1 reply</span>',
    ]
    # The country menu offers every country with its count.
    assert '<option value="DE">Germany (1)</option>' in html


async def test_filters(make_client):
    client, relay = await make_client()
    await seed(relay)
    html = await (await client.get("/replies?country=de")).text()
    assert entries(html) == 1 and "Ich komme" in html
    assert '<option value="DE" selected>' in html
    # A national number is read with smtp_in.region.
    html = await (await client.get("/replies", params={"number": "06 12 34 56 78"})).text()
    assert entries(html) == 2 and "On it" in html and "Done, back up" in html
    html = await (await client.get("/replies", params={"q": "back up"})).text()
    assert entries(html) == 1 and "Done, back up" in html
    html = await (await client.get("/replies", params={"q": "nothing like this"})).text()
    assert entries(html) == 0 and "No replies match these filters." in html
    html = await (await client.get("/replies", params={"view": "country", "country": "FR", "q": "o"})).text()
    assert section_titles(html) == ['France (FR) <span class="count">2 replies</span>']


async def test_pagination_keeps_filters(make_client):
    client, relay = await make_client()
    for i in range(60):
        await add_reply(relay, FR1, f"reply number {i:02d}", f"2026-03-02 10:{i:02d}:00")
    await add_reply(relay, DE, "reply from Germany", "2026-03-02 12:00:00")
    html = await (await client.get("/replies", params={"country": "FR", "q": "reply"})).text()
    assert entries(html) == 50
    assert "reply number 59" in html and "reply number 10" in html and "reply number 09" not in html
    assert "Page 1 of 2" in html
    # The day's count covers every page, not only this one.
    assert 'Monday 02 March 2026 <span class="count">60 replies</span>' in section_titles(html)
    next_url = re.search(r'<a rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert next_url == "/replies?country=FR&q=reply&page=2"
    html = await (await client.get(next_url)).text()
    assert entries(html) == 10 and "reply number 09" in html and "reply number 00" in html
    assert '<a rel="prev" href="/replies?country=FR&amp;q=reply">' in html
    assert 'rel="next"' not in html
    html = await (await client.get("/replies?view=country&page=2")).text()
    assert section_titles(html) == [
        'France (FR) <span class="count">60 replies</span>',
        'Germany (DE) <span class="count">1 reply</span>',
    ]
    assert entries(html) == 11


async def test_csv_export(make_client):
    client, relay = await make_client()
    await seed(relay)
    for i in range(60):
        await add_reply(relay, FR2, f"-{i} or @x", f"2026-02-01 10:{i:02d}:00")
    resp = await client.get("/replies.csv", params={"country": "FR"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(
        r'attachment; filename="octorelay-replies-\d{8}-\d{4}\.csv"', resp.headers["Content-Disposition"]
    )
    body = await resp.read()
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    from relay.web.exports import COLUMNS

    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 1 + 3 + 60  # every page, only France
    first = rows[1]
    assert first[0] == "2026-03-03 08:05:00" and first[1] == "Europe/Paris" and first[2] == "'+33612345678"
    assert first[4] == "France" and first[5] == "Done, back up"
    assert {r[5] for r in rows[1:]} >= {"'-0 or '@x", "'-59 or '@x", "<script>alert(1)</script> fixed"}
    # A formula in a reply is neutralised.
    rows = list(
        csv.reader(io.StringIO((await (await client.get("/replies.csv?country=GB")).read()).decode("utf-8-sig")))
    )
    assert rows[1][5] == '\'=HYPERLINK("http://evil")'
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


# ------------------------------------------------------------------ conversations


async def test_conversation_merges_sent_and_received(make_client):
    client, relay = await make_client()
    number = "+33611223344"
    soon = clock.now() + timedelta(minutes=1)
    await add_reply(relay, number, "an old reply", "2026-01-05 10:00:00")
    sent = await send_sms(relay, [number], "Server db1 is down, can you look?", sender_email="ops@example.org")
    await add_reply(relay, number, "On it, 10 minutes", clock.to_octopush(soon), sent["tickets"][0])
    await add_callback(relay, number=number, stop_date=clock.to_octopush(soon + timedelta(minutes=1)), text="STOP")
    resp = await client.get(f"/conversations/{number}")
    assert resp.status == 200
    html = await resp.text()
    texts = re.findall(r'<li class="msg (\w+)[^"]*">\s*<p class="text">(.*?)</p>', html, re.S)
    assert [(d, t[:20]) for d, t in texts] == [
        ("in", "an old reply"),
        ("out", "Server db1 is down, "),
        ("in", "On it, 10 minutes"),
        ("in", "<strong>STOP</strong"),
    ]
    assert "sent by ops@example.org" in html
    assert "STOP since" in html
    # A number written with 00 lands on the E.164 page.
    resp = await client.get("/conversations/0033611223344", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == f"/conversations/{number}"


async def test_answer_needs_csrf_token(make_client):
    client, relay = await make_client()
    resp = await client.post(f"/conversations/{FR1}", data={"text": "hello", "csrf": "x", "key": "k" * 24})
    assert resp.status == 403
    html = await (await client.get(f"/conversations/{FR1}")).text()
    fields = form_fields(html)
    assert client.session.cookie_jar.filter_cookies(client.make_url("/"))["octorelay_session"]
    resp = await client.post(
        f"/conversations/{FR1}",
        data={**fields, "csrf": fields["csrf"][:-1] + ("1" if fields["csrf"].endswith("0") else "0"), "text": "hello"},
    )
    assert resp.status == 403
    # The token is bound to the session cookie: without it the same token is refused.
    client.session.cookie_jar.clear()
    resp = await client.post(f"/conversations/{FR1}", data={**fields, "text": "hello"})
    assert resp.status == 403
    count = await relay.store.read(lambda db: db.execute("SELECT count(*) FROM campaigns").fetchone()[0])
    assert count == 0


async def test_answer_validation_error_is_shown(make_client):
    client, relay = await make_client()
    fields = form_fields(await (await client.get(f"/conversations/{FR1}")).text())
    resp = await client.post(f"/conversations/{FR1}", data={**fields, "text": "   "})
    assert resp.status == 400
    assert "Not sent: the text is empty" in await resp.text()
    long = "x" * 1300
    resp = await client.post(f"/conversations/{FR1}", data={**fields, "text": long})
    html = await resp.text()
    assert resp.status == 400 and "the maximum is 1224" in html and f">{long}</textarea>" in html
    resp = await client.post("/conversations/+331234", data={**fields, "text": "hello"})
    assert resp.status == 404 and "not a phone number" in await resp.text()
    count = await relay.store.read(lambda db: db.execute("SELECT count(*) FROM campaigns").fetchone()[0])
    assert count == 0


async def test_answer_is_queued_and_sent_once(make_client):
    client, relay = await make_client()
    fields = form_fields(await (await client.get(f"/conversations/{FR1}")).text())
    resp = await client.post(f"/conversations/{FR1}", data={**fields, "text": "We are on it <3"}, allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    assert re.fullmatch(r"/conversations/\+33612345678\?queued=\d+#answer", location)
    rows = await relay.store.read(lambda db: [dict(r) for r in db.query("SELECT * FROM campaigns")])
    assert len(rows) == 1
    row = rows[0]
    assert (row["origin"], row["label"], row["text"], row["sender_email"], row["confirm"]) == (
        "web",
        f"web answer to {FR1}",
        "We are on it <3",
        "",
        "none",
    )
    assert (row["type"], row["purpose"]) == (relay.config.octopush.type, relay.config.octopush.purpose)
    done = await relay.sender.wait(row["id"])
    assert done["status"] == "sent"
    assert [r["phone_number"] for r in relay.emulator.sent[0]["recipients"]] == [FR1]
    html = await (await client.get(location)).text()
    assert "Your answer is queued" in html and "We are on it &lt;3" in html
    # The same form posted again (double click, resubmission) does not send twice.
    resp = await client.post(f"/conversations/{FR1}", data={**fields, "text": "We are on it <3"})
    assert resp.status == 200 and "This answer was already queued" in await resp.text()
    assert await relay.store.read(lambda db: db.execute("SELECT count(*) FROM campaigns").fetchone()[0]) == 1


# ------------------------------------------------------------------ campaigns and attention


async def test_campaigns_list_and_detail(make_client):
    client, relay = await make_client()
    sent = await seed(relay)
    html = await (await client.get("/campaigns")).text()
    assert "db1 down" in html and "ops@example.org" in html
    row = re.search(r"<tr>\s*<td><a href=\"/campaigns/(\d+)\">.*?</tr>", html, re.S).group(0)
    cells = [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells[4:7] == ["2", str(sent["sms_needed"]), f"{sent['cost']:.3f}".rstrip("0").rstrip(".")]
    assert cells[8] == "sent"
    html = await (await client.get(f"/campaigns/{sent['id']}")).text()
    assert "Server db1 is down, can you look?" in html
    assert "+49 1511 2345678" in html and "Ich komme" in html and "On it, 10 minutes" in html
    assert sent["tickets"][0] in html
    resp = await client.get("/campaigns/999")
    assert resp.status == 404 and "There is no campaign #999." in await resp.text()


async def test_attention_lists_what_needs_an_operator(make_client):
    client, relay = await make_client()
    await add_callback(relay, surprise="<b>odd</b>", number=FR1)

    def failed_mail(db):
        db["outbox"].insert(
            {
                "kind": "reply",
                "recipients": json.dumps(["ops@example.org"]),
                "message": b"...",
                "subject": "SMS reply from +33 6 12 34 56 78",
                "status": "failed",
                "attempts": 7,
                "last_error": "550 5.1.1 <ops@example.org>: user unknown",
                "created_at": "2026-03-02T08:00:00.000000+00:00",
            }
        )

    await relay.store.write(failed_mail)
    html = await (await client.get("/attention")).text()
    assert "&lt;b&gt;odd&lt;/b&gt;" in html and "<b>odd</b>" not in html
    assert "SMS reply from +33 6 12 34 56 78" in html and "ops@example.org" in html
    assert "550 5.1.1 &lt;ops@example.org&gt;: user unknown" in html


async def test_every_page_and_form_applies_the_access_rule(make_client):
    """Every route of the web interface (pages, forms, the export, the stylesheet) asks for a user when
    `ui_users` is set, and a user's form carries a token for that user: approving a campaign included."""
    client, relay = await make_client(users={"alice": passwords.make_hash("s3cret")})
    sent = await seed(relay)
    app = client.server.app
    # Every route but the callbacks, the API, health and metrics (they have rules of their own).
    others = {"callback_check", "callback", "healthz", "metrics", "api_replies", "api_campaign"}
    names = {r.name for r in app.router.routes() if r.name} - others
    assert {"replies", "replies_csv", "conversation_answer", "campaign_approve", "attention_retry"} <= names
    for route in app.router.routes():
        if route.name not in names:
            continue
        parts = {"id": str(sent["id"]), "number": FR1}
        path = str(route.resource.url_for(**{k: v for k, v in parts.items() if "{" + k in route.resource.canonical}))
        resp = await client.request(route.method, path, allow_redirects=False)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic"), (route.name, resp.status)
    auth = basic("alice", "s3cret")
    html = await (await client.get(f"/conversations/{FR1}", headers=auth)).text()  # one token a session and user
    csrf = form_fields(html)["csrf"]
    resp = await client.post(f"/campaigns/{sent['id']}/approve", data={"csrf": csrf}, headers=auth)
    assert resp.status == 409 and "Nothing done" in await resp.text()  # the token was accepted; it is not held
