"""The web interface in headless Chromium against the whole daemon: browse, filter, export, answer by SMS.

It proves the pages work with a real browser under the real CSP (no script,
no inline style) and that an answer typed in the form reaches the Octopush
emulator. Screenshots are kept in $OCTORELAY_SCREENSHOTS (else tmp_path) so a
person can look at the pages.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from relay.octopush.callbacks import classify
from relay.octopush.client import Recipient
from relay.sending import SendRequest, queue_campaign
from relay.storage import callbacks
from tests.conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]

FR1, FR2, DE, GB = "+33612345678", "+33698765432", "+4915112345678", "+447400123456"


@pytest.fixture
def shots(tmp_path) -> Path:
    directory = Path(os.environ.get("OCTORELAY_SCREENSHOTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {directory}")
    return directory


@pytest.fixture
async def browser():
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def add_reply(daemon, number: str, text: str, date: str) -> None:
    fields = {"number": number, "text": text, "reception_date": date}
    cb = classify(fields, raw=json.dumps(fields), content_type="application/json")
    await daemon.store.write(lambda db: callbacks.store_callback(db, cb))


async def seed(daemon) -> None:
    """One e-mailed SMS to two numbers (the emulator answers both), plus older replies from elsewhere."""
    req = SendRequest(
        text="Backup of db1 failed tonight. Can someone check?",
        recipients=(Recipient(FR1), Recipient(DE)),
        type="sms_premium",
        purpose="alert",
        origin="email",
        sender_email="ops@example.org",
        label="db1 backup",
    )
    campaign_id, _ = await daemon.store.write(partial(queue_campaign, req=req, retry_for=30))
    daemon.sender.wake()
    await daemon.sender.wait(campaign_id)
    await add_reply(daemon, FR2, "Je regarde ça demain matin", "2026-11-20 18:40:00")
    await add_reply(daemon, GB, "Sorry, wrong number?", "2026-11-19 09:05:00")
    await add_reply(daemon, FR2, "C'est réparé 👍", "2026-11-21 08:12:00")
    # The emulator's canned replies ("OK, thanks!") come back through the real callback route.
    await wait_for(lambda: _count(daemon, 5), timeout=10)


async def _count(daemon, n: int) -> bool:
    return await daemon.store.read(partial(callbacks.count_replies)) >= n


async def test_browse_filter_export_and_answer(daemon, browser, shots):
    await seed(daemon)
    page = await browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # By date: a section per day, newest first.
    await page.goto(daemon.http_url + "/")
    assert page.url.endswith("/replies")
    assert await page.locator("section.group").count() == 4
    assert await page.locator("li.entry").count() == 5
    await page.screenshot(path=str(shots / "replies-by-date.png"), full_page=True)

    # By country, with counts.
    await page.click("nav.tabs >> text=By country")
    headings = await page.locator("section.group h2").all_inner_texts()
    assert [h.split("\n")[0].strip() for h in headings] == [
        "France (FR) 3 replies",
        "Germany (DE) 1 reply",
        "United Kingdom (GB) 1 reply",
    ]
    await page.screenshot(path=str(shots / "replies-by-country.png"), full_page=True)
    # The summary and the server-drawn chart sit above the sections; no script drew them.
    assert await page.locator("section.summary table tbody tr").count() == 3
    assert await page.locator("figure.chart svg rect").count() >= 4
    assert await page.locator("script").count() == 0

    # Filter by country and text; the view is kept.
    await page.select_option("select[name=country]", "FR")
    await page.fill("input[name=q]", "répar")
    await page.click("form.filters button[type=submit]")
    assert "view=country" in page.url and "country=FR" in page.url
    assert await page.locator("li.entry").count() == 1
    assert "C'est réparé 👍" in await page.locator("li.entry .text").inner_text()

    # Export the current filter.
    await page.select_option("select[name=country]", "")
    await page.fill("input[name=q]", "")
    await page.click("form.filters button[type=submit]")
    async with page.expect_download() as info:
        await page.click("text=Export CSV")
    download = await info.value
    assert download.suggested_filename.startswith("octorelay-replies-") and download.suggested_filename.endswith(".csv")
    text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["time", "timezone", "number"] and len(rows) == 6
    assert {row[2] for row in rows[1:]} == {"'" + n for n in (FR1, FR2, DE, GB)}

    # Open the conversation with the first French number and answer it.
    await page.goto(daemon.http_url + "/replies?view=date")
    await page.locator("li.entry", has_text="+33 6 12 34 56 78").first.locator("a.open").click()
    assert page.url.endswith("/conversations/+33612345678")
    assert await page.locator("li.msg.out").count() == 1 and await page.locator("li.msg.in").count() == 1
    await page.fill("textarea[name=text]", "Thanks, I restarted the backup job.")
    await page.click("form.answer button[type=submit]")
    await page.locator("p.flash").wait_for()
    assert "Your answer is queued" in await page.locator("p.flash").inner_text()
    await wait_for(lambda: any(s["text"] == "Thanks, I restarted the backup job." for s in daemon.emulator.sent))
    sent = next(s for s in daemon.emulator.sent if s["text"] == "Thanks, I restarted the backup job.")
    assert [r["phone_number"] for r in sent["recipients"]] == [FR1]
    # Reload: the answer is in the conversation with its delivery state, then the emulator's reply.
    await page.goto(daemon.http_url + "/conversations/+33612345678")
    await wait_for(lambda: _count(daemon, 6), timeout=10)
    await page.reload()
    classes = await page.locator("ol.chat > li").evaluate_all("items => items.map(i => i.className)")
    assert classes == ["msg out", "msg in", "msg out", "msg in"]
    await page.screenshot(path=str(shots / "conversation.png"), full_page=True)

    # An empty answer is refused with a message, nothing is queued.
    await page.evaluate("document.querySelector('textarea[name=text]').removeAttribute('required')")
    await page.fill("textarea[name=text]", "   ")
    await page.click("form.answer button[type=submit]")
    assert "Not sent: the text is empty" in await page.locator("p.flash.bad").inner_text()

    # Campaigns: the web answer is listed beside the e-mailed SMS.
    await page.click("header nav >> text=Campaigns")
    rows_text = await page.locator("table.list tbody tr").all_inner_texts()
    assert len(rows_text) == 2
    assert "web answer to +33612345678" in rows_text[0] and "web interface" in rows_text[0]
    assert "db1 backup" in rows_text[1] and "ops@example.org" in rows_text[1]
    await page.screenshot(path=str(shots / "campaigns.png"), full_page=True)
    await page.locator("table.list tbody tr").nth(1).locator("td.label a").click()
    assert await page.locator("table.list tbody tr").count() == 2
    # Two replies; the delivery receipts show as the recipients' states, not as replies.
    assert await page.locator("ol.entries > li").count() == 2
    assert await page.locator("table.list tbody .badge", has_text="DELIVERED").count() == 2
    await page.screenshot(path=str(shots / "campaign.png"), full_page=True)

    # A callback the relay cannot classify is shown raw, escaped, for an operator.
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"event": "<b>new-kind</b>", "number": FR1}) as resp,
    ):
        assert resp.status == 200
    await page.click("header nav >> text=Attention")
    assert await page.locator("h1").inner_text() == "Attention"
    assert '"<b>new-kind</b>"' in await page.locator("article.card pre").inner_text()
    assert await page.locator("article.card pre b").count() == 0
    await page.screenshot(path=str(shots / "attention.png"), full_page=True)
    # The CSP allows everything the pages use: the browser reported no violation.
    assert not [e for e in errors if "Content Security Policy" in e], errors


async def test_country_chart_is_readable_without_javascript(daemon, browser, shots):
    """Replies per day and per country over two weeks: stacked bars, a legend, day labels, drawn by the server."""
    countries = {
        "+33612345678": 5,
        "+4915112345678": 3,
        "+447400123456": 2,
        "+32470123456": 1,
        "+14155550123": 1,
        "+34612345678": 1,
        "+393123456789": 1,
    }
    for day in range(1, 15):
        for number, per_day in countries.items():
            for i in range((per_day * day) % 4 + (1 if day % 3 else 0)):
                await add_reply(daemon, number, f"reply {day}/{i}", f"2026-11-{day:02d} {8 + i:02d}:15:00")
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    await page.goto(daemon.http_url + "/replies?view=country")
    chart = page.locator("figure.chart")
    await chart.wait_for()
    box = await chart.locator("svg").first.bounding_box()
    assert box and box["width"] > 600 and box["height"] > 150  # drawn at a readable size
    legend = await chart.locator("ul.legend li").all_inner_texts()
    ranked = await page.locator("section.summary tbody tr td:first-child").all_inner_texts()
    assert [item.split()[0] for item in legend[:5]] == [r.split()[0] for r in ranked[:5]]
    assert len(legend) == 6 and legend[-1].strip().startswith("Other countries")
    assert "01 Nov" in await chart.locator("svg").first.inner_html()
    assert await chart.locator("svg rect title").count() >= 40
    await chart.screenshot(path=str(shots / "country-chart.png"))
    await page.screenshot(path=str(shots / "replies-by-country-chart.png"), full_page=False)
    await context.close()
