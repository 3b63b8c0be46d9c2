"""Octopush as octopush-api.md describes it, over real HTTP against the emulator: return codes, STOP mentions,
the account endpoints (balance, callback settings, cancel) and personalisation."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from relay.octopush.client import Campaign, OctopushClient, Recipient, check_placeholders, personalise
from relay.octopush.emulator import Emulator
from relay.octopush.errors import ADVICE, ALERT_CODES, OctopushError, TemporaryError, ValidationError
from tests.conftest import wait_for

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("fast_backoff")]

LOGIN, KEY = "ops@example.org", "secret-key-123"
FR, FR2, FR3 = "+33612345678", "+33698765432", "+33611223344"
SHARED = Path("/work/shared/octopush-api.md")
COPY = Path(__file__).parent / "data" / "octopush-api.md"


@pytest.fixture
async def emulator():
    emu = Emulator(credentials=(LOGIN, KEY), reply_text="", reply_after=0)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def client(emulator):
    c = OctopushClient(emulator.base_url, LOGIN, KEY, timeout=2, retry_for=5)
    await c.start()
    yield c
    await c.stop()


def campaign(**kw) -> Campaign:
    kw.setdefault("text", "Server db1 is down")
    kw.setdefault("recipients", (Recipient(FR),))
    return Campaign(**kw)


# --- the return-code table of octopush-api.md, walked -----------------------------------------


def code_table() -> list[tuple[int, str, str]]:
    """(code, meaning, reaction) for every code of the "Return codes" table (the shared page, else our copy)."""
    text = (SHARED if SHARED.exists() else COPY).read_text(encoding="utf-8")
    section = text[text.index("### Return codes") :]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"\d{3}( / \d{3})*", cells[0]):
            rows += [(int(code), cells[1], cells[2]) for code in re.findall(r"\d{3}", cells[0])]
    return rows


TABLE = code_table()


def test_the_table_was_read():
    codes = {code for code, _, _ in TABLE}
    assert {101, 103, 104, 105, 106, 107, 108, 109, 110, 113, 114, 117, 120, 121, 122, 152, 153} <= codes


@pytest.mark.parametrize(("code", "meaning", "reaction"), TABLE, ids=[str(row[0]) for row in TABLE])
async def test_every_documented_code_is_mapped_as_the_table_says(client, emulator, code, meaning, reaction):
    assert code in ADVICE, f"code {code} ({meaning}) has no advice"
    emulator.inject(f"code:{code}")
    if "temporary" in reaction:
        with pytest.raises(TemporaryError) as info:
            await client.send_once(campaign(request_id=f"r{code}"))
        assert info.value.code == code
        return
    if "not an error" in reaction:
        result = await client.send_once(campaign(request_id=f"r{code}"))
        assert result.already_sent
        return
    with pytest.raises(OctopushError) as info:
        await client.send_once(campaign(request_id=f"r{code}"))
    error = info.value
    assert (error.code, error.permanent, error.advice) == (code, True, ADVICE[code])
    assert (error.code in ALERT_CODES) is ("alert the operator" in reaction)
    if "suggest premium" in reaction:
        assert "premium" in error.advice
    if "name the field" in reaction:
        assert re.search(r"the field '(text|sender)'", error.advice)
    assert str(error).startswith(f"Octopush refused the campaign (code {code}): ")


async def test_an_unknown_code_shows_octopushs_own_message(client, emulator):
    emulator.inject("code:999")
    with pytest.raises(OctopushError) as info:
        await client.send_once(campaign())
    assert "Undocumented error 999." in str(info.value) and "code 999" in str(info.value)


async def test_153_is_retried_with_the_same_request_id(client, emulator):
    emulator.inject("code:153", "code:153")
    result = await client.send(campaign(request_id="congested"))
    assert result.ticket and len(emulator.sent) == 1
    assert [r["status"] for r in emulator.requests] == [400, 400, 201]
    assert {r["body"]["request_id"] for r in emulator.requests} == {"congested"}


async def test_purpose_is_always_sent_and_required_by_the_emulator(client, emulator):
    await client.send(campaign())
    assert emulator.requests[0]["body"]["purpose"] == "alert"
    body = campaign().payload()
    del body["purpose"]
    async with aiohttp.ClientSession() as session:
        headers = {"api-login": LOGIN, "api-key": KEY}
        async with session.post(f"{emulator.base_url}/sms-campaign/send", json=body, headers=headers) as resp:
            assert resp.status == 400 and "purpose" in (await resp.json())["message"]


# --- STOP mentions, exactly as Octopush checks them -------------------------------------------


@pytest.mark.parametrize(
    ("type", "text", "accepted"),
    [
        ("sms_premium", "Soldes -20% STOP au 30101", True),
        ("sms_premium", "Soldes -20% STOP au XXXXX", True),
        ("sms_premium", "Soldes -20% stop au 30101", False),
        ("sms_premium", "Soldes -20% STOP AU 30101", False),
        ("sms_premium", "Soldes -20% STOP to 30101", False),
        ("sms_premium", "Soldes -20% no PUB=STOP", False),
        ("sms_low_cost", "Soldes -20% no PUB=STOP", True),
        ("sms_low_cost", "Soldes -20% No PUB=STOP", False),
        ("sms_low_cost", "Soldes -20% no pub=stop", False),
        ("sms_low_cost", "Soldes -20% STOP au 30101", False),
    ],
)
async def test_stop_mentions_over_http(client, emulator, type, text, accepted):
    """The emulator refuses what Octopush refuses, and the client's own check agrees before any call."""
    c = campaign(type=type, purpose="wholesale", text=text)
    if accepted:
        assert (await client.send(c)).ticket
        return
    with pytest.raises(ValidationError) as local:
        await client.send(c)
    assert "exactly" in str(local.value)
    with pytest.raises(OctopushError) as remote:
        await client.send_once(c)
    assert remote.value.code == (121 if type == "sms_premium" else 122)
    assert "exactly" in remote.value.advice


async def test_alerts_need_no_mention(client):
    assert (await client.send(campaign(purpose="alert", text="db1 down"))).ticket


# --- account endpoints ------------------------------------------------------------------------


async def test_check_balance_in_euros_and_in_sms(client, emulator):
    emulator.credit = 12.5
    balance = await client.check_balance()
    assert (balance.amount, balance.unit) == (12.5, "euros")
    sms = await client.check_balance(product="sms_premium", country="FR")
    assert (sms.amount, sms.unit) == (227, "sms_premium")
    assert emulator.calls[-1]["query"] == {"with_details": "true", "country_code": "FR", "product_name": "sms_premium"}


async def test_account_endpoints_refuse_bad_credentials_and_unknown_fields(emulator):
    bad = OctopushClient(emulator.base_url, LOGIN, "wrong", timeout=2)
    await bad.start()
    try:
        with pytest.raises(OctopushError) as info:
            await bad.check_balance()
        assert info.value.code == 101 and "balance" in str(info.value) and "api_key" in info.value.advice
    finally:
        await bad.stop()
    good = OctopushClient(emulator.base_url, LOGIN, KEY, timeout=2)
    await good.start()
    try:
        with pytest.raises(OctopushError) as info:
            await good.set_callbacks({"callback_url_for_replies": "https://relay.example.org/octopush/x"})
        assert "Unknown field 'callbacks.callback_url_for_replies'" in str(info.value)
        with pytest.raises(OctopushError):
            await good._account("GET", "/wallet/check-balance", "the balance", params={"currency": "eur"})
    finally:
        await good.stop()


async def test_registered_callback_urls_are_where_callbacks_go(emulator, client):
    got: list[dict] = []

    async def handle(request):
        got.append({"path": request.path, **(await request.json())})
        return aiohttp.web.Response()

    app = aiohttp.web.Application()
    app.router.add_post("/octopush/{token}", handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/octopush/"
        urls = {
            "callback_url_for_inbounds": base + "replies",
            "callback_url_for_deliveries": base + "receipts",
            "callback_url_for_blacklisted_numbers": base + "stops",
        }
        settings = await client.set_callbacks(urls)
        assert {k: settings["callbacks"][k] for k in urls} == urls
        assert (await client.campaign_parameters())["callbacks"]["callback_url_for_inbounds"] == base + "replies"
        emulator.reply_text = "OK"
        await client.send(campaign())
        await wait_for(lambda: len(got) >= 2, 5)
        assert {g["path"] for g in got} == {"/octopush/receipts", "/octopush/replies"}
    finally:
        await runner.cleanup()


async def test_cancel_follows_octopushs_rules(client, emulator):
    later = datetime.now(UTC) + timedelta(hours=2)
    small = await client.send(campaign(recipients=(Recipient(FR), Recipient(FR2)), send_at=later))
    credit = emulator.credit
    await client.cancel(small.ticket)
    assert emulator.cancelled == [small.ticket] and emulator.credit > credit
    assert emulator.calls[-1]["status"] == 204
    refusals = {
        "three recipients": (campaign(recipients=(Recipient(FR), Recipient(FR2), Recipient(FR3)), send_at=later), "3"),
        "ten minutes": (campaign(send_at=datetime.now(UTC) + timedelta(minutes=9)), "10 minutes"),
        "not scheduled": (campaign(), "not scheduled"),
    }
    for what, (c, words) in refusals.items():
        ticket = (await client.send(c)).ticket
        with pytest.raises(OctopushError) as info:
            await client.cancel(ticket)
        assert words in info.value.message, what
        assert "cancellation" in str(info.value)
    with pytest.raises(OctopushError, match="Unknown ticket"):
        await client.cancel("sms_0000000000000")
    assert emulator.cancelled == [small.ticket]


async def test_check_credits_per_country(emulator):
    emulator.credit = 1.1
    headers = {"api-login": LOGIN, "api-key": KEY}
    async with aiohttp.ClientSession() as session:
        url = f"{emulator.base_url}/wallet/check-credits?country_codes[]=FR&country_codes[]=BE"
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "FR": {"premium_sms": 20, "low_cost_sms": 31},
                "BE": {"premium_sms": 20, "low_cost_sms": 31},
            }
        async with session.get(f"{emulator.base_url}/wallet/check-credits?country=FR", headers=headers) as resp:
            assert resp.status == 400 and "country" in (await resp.json())["message"]


async def test_at_most_1000_cancellations_a_month(client, emulator):
    ticket = (await client.send(campaign(send_at=datetime.now(UTC) + timedelta(hours=1)))).ticket
    emulator._cancels[datetime.now(UTC).strftime("%Y-%m")] = 1000
    with pytest.raises(OctopushError, match="1000"):
        await client.cancel(ticket)
    assert ticket in emulator.scheduled


async def test_a_cancelled_campaign_sends_no_callback(emulator, client):
    emulator.callback_url = "http://127.0.0.1:9/never"
    ticket = (await client.send(campaign(send_at=datetime.now(UTC) + timedelta(minutes=11)))).ticket
    await client.cancel(ticket)
    await asyncio.sleep(0.05)
    assert ticket not in emulator.scheduled and emulator.callbacks == []


# --- personalisation ----------------------------------------------------------------------------


def test_personalise_and_its_checks():
    ada = Recipient(FR, "Ada", "Lovelace", ("10h", "", "salle B"))
    assert personalise("Bonjour {first_name} {last_name}, {param1} {param3}{param2}.", ada) == (
        "Bonjour Ada Lovelace, 10h salle B."
    )
    check_placeholders("Code {x}: no placeholder, {first_name}", [ada])
    for typo, hint in [("{firstname}", "{first_name}"), ("{First_Name}", "{first_name}"), ("{param6}", "param5")]:
        with pytest.raises(ValidationError) as info:
            check_placeholders(f"Hi {typo}", [ada])
        assert hint in str(info.value)
    long = Recipient(FR, "A" * 51, source="groups.team (team.csv) line 3")
    with pytest.raises(ValidationError) as info:
        check_placeholders("Hi {first_name}", [ada, long])
    assert "groups.team (team.csv) line 3: first_name" in str(info.value) and "51" in str(info.value)
    check_placeholders("Hi {last_name}", [long])  # only the values the text uses
    with pytest.raises(ValidationError) as info:
        check_placeholders("Hi {first_name}", [ada, Recipient(FR2)])
    assert f"{FR2} has no values" in str(info.value) and "group" in str(info.value)


async def test_the_emulator_personalises_and_counts_parts_per_recipient(client, emulator):
    short, long = Recipient(FR, "Al"), Recipient(FR2, "B" * 50)
    result = await client.send(campaign(text="x" * 150 + " {first_name}", recipients=(short, long)))
    assert emulator.sent[0]["texts"] == {FR: "x" * 150 + " Al", FR2: "x" * 150 + " " + "B" * 50}
    assert result.sms_needed == 1 + 2
