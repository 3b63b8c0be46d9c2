"""Octopush client against the in-process emulator: answers, refusals, faults and callbacks."""

import asyncio
import dataclasses
import json
import logging
import re
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import pytest
from aiohttp import web

from relay.octopush.client import (
    Campaign,
    OctopushClient,
    Recipient,
    SendResult,
    has_stop_mention,
    split,
    validate,
)
from relay.octopush.emulator import Emulator
from relay.octopush.errors import ALERT_CODES, OctopushError, TemporaryError, ValidationError
from tests.conftest import wait_for

pytestmark = [pytest.mark.timeout(15), pytest.mark.usefixtures("fast_backoff")]

LOGIN, KEY = "ops@example.org", "secret-key-123"
FR = "+33612345678"
FR2 = "+33698765432"
TICKET = re.compile(r"sms_[0-9a-f]{13}")


@pytest.fixture
async def emulator():
    emu = Emulator(credentials=(LOGIN, KEY), reply_after=0.3)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def make_client(emulator):
    clients = []

    async def make(login=LOGIN, key=KEY, call_timeout=1.0, retry_for=5.0):
        c = OctopushClient(emulator.base_url, login, key, timeout=call_timeout, retry_for=retry_for)
        await c.start()
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.stop()


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
async def receiver():
    """A tiny callback receiver: records every POST body; answers the queued statuses first, then 200."""
    received: list[dict] = []
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/octopush/token", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield {"url": f"http://127.0.0.1:{port}/octopush/token", "received": received, "statuses": statuses}
    await runner.cleanup()


def campaign(**kw) -> Campaign:
    kw.setdefault("text", "Server db1 is down")
    kw.setdefault("recipients", (Recipient(FR),))
    return Campaign(**kw)


# --- payload and local validation ------------------------------------------------------------


def test_payload_omits_empty_optional_fields():
    assert campaign(request_id=None).payload() == {
        "text": "Server db1 is down",
        "recipients": [{"phone_number": FR}],
        "type": "sms_premium",
        "purpose": "alert",
        "with_replies": True,
        "auto_optimize_text": True,
    }


def test_payload_full():
    c = campaign(
        text="Hi {first_name}, {param1}{param3}",
        recipients=(Recipient(FR, "Ada", "Lovelace", ("x", "", "z", "unused")),),
        type="sms_low_cost",
        purpose="wholesale",
        sender="ACME",
        send_at=datetime(2030, 10, 3, 7, 42, 39, 123456, tzinfo=timezone(timedelta(hours=-7))),
        with_replies=False,
        simulation_mode=True,
        auto_optimize_text=False,
        request_id="abc",
    )
    assert c.payload() == {
        "text": "Hi {first_name}, {param1}{param3}",
        "recipients": [{"phone_number": FR, "first_name": "Ada", "param1": "x", "param3": "z"}],
        "type": "sms_low_cost",
        "purpose": "wholesale",
        "sender": "ACME",
        "send_at": "2030-10-03T07:42:39-07:00",
        "with_replies": False,
        "simulation_mode": True,
        "auto_optimize_text": False,
        "request_id": "abc",
    }


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"text": "x" * 1300}, "text", "the text is 1300 characters; the maximum is 1224"),
        ({"text": "  "}, "text", "empty"),
        ({"sender": "AB"}, "sender", "sender 'AB' must be 3 to 11 letters or digits, without space"),
        ({"sender": "ACME 2"}, "sender", "without space, accent or punctuation (Octopush's code 106)"),
        ({"sender": "ACME-CORP"}, "sender", "3 to 11"),
        ({"type": "sms_cheap"}, "type", "sms_premium"),
        ({"purpose": "marketing"}, "purpose", "wholesale"),
        ({"send_at": datetime(2020, 1, 1, tzinfo=UTC)}, "send_at", "in the past"),
        ({"send_at": datetime(2099, 1, 1)}, "send_at", "time zone"),
        ({"recipients": ()}, "recipients", "no recipient"),
        ({"recipients": (Recipient("+331234"),)}, "recipients", "'+331234' is not a valid number"),
        ({"recipients": (Recipient("0612345678"),)}, "recipients", "international format"),
        ({"recipients": (Recipient(FR),) * 501}, "recipients", "501 recipients"),
        ({"purpose": "wholesale"}, "text", "STOP au 30101"),
        ({"purpose": "wholesale", "type": "sms_low_cost", "text": "Sale! STOP au 30101"}, "text", "no PUB=STOP"),
    ],
)
def test_local_validation(changes, field, words):
    with pytest.raises(ValidationError) as info:
        validate(campaign(**changes))
    assert info.value.field == field
    assert words in str(info.value)


def test_validation_accepts_good_campaigns():
    validate(campaign(sender="ACME2", send_at=datetime.now(UTC) + timedelta(hours=1)))
    validate(campaign(purpose="wholesale", text="Sale -20%! STOP au 30101"))
    validate(campaign(purpose="wholesale", type="sms_low_cost", text="Sale -20%! no PUB=STOP"))
    validate(campaign(purpose="wholesale", text="Sale -20%! STOP au XXXXX"))


@pytest.mark.parametrize(
    ("text", "type", "expected"),
    [
        ("Promo STOP au 30101", "sms_premium", True),
        ("Promo STOP au XXXXX", "sms_premium", True),  # Octopush fills in the short number
        ("Promo stop au 30101", "sms_premium", False),  # Octopush checks the case
        ("Promo STOP AU 30101", "sms_premium", False),
        ("Promo STOP to 30101", "sms_premium", False),  # the seed example's wording: no API source confirms it
        ("Promo STOP au xxxxx", "sms_premium", False),
        ("Promo STOP  au 30101", "sms_premium", False),
        ("Promo STOP au", "sms_premium", False),
        ("Promo no PUB=STOP", "sms_premium", False),
        ("Promo no PUB=STOP", "sms_low_cost", True),
        ("Promo no pub=stop", "sms_low_cost", False),
        ("Promo No PUB=STOP", "sms_low_cost", False),
        ("Promo no PUB = STOP", "sms_low_cost", False),
        ("Promo STOP au 30101", "sms_low_cost", False),
    ],
)
def test_has_stop_mention(text, type, expected):
    assert has_stop_mention(text, type) is expected


def test_split_1201_recipients():
    recipients = tuple(Recipient(f"+336123{i:05d}") for i in range(1201))
    chunks = split(campaign(recipients=recipients, request_id="mail-42"))
    assert [len(c.recipients) for c in chunks] == [500, 500, 201]
    assert [c.request_id for c in chunks] == ["mail-42-1", "mail-42-2", "mail-42-3"]
    assert sum((c.recipients for c in chunks), ()) == recipients
    single = campaign(request_id="mail-43")
    assert split(single) == [single]


# --- answers from the emulator ---------------------------------------------------------------


async def test_success(client, emulator):
    text = "a" * 161  # two parts
    result = await client.send(campaign(text=text, recipients=(Recipient(FR), Recipient(FR2)), request_id="r1"))
    assert TICKET.fullmatch(result.ticket)
    assert (result.contacts, result.sms_needed, result.already_sent) == (2, 4, False)
    assert result.total_cost == pytest.approx(0.22)
    assert result.residual_credit == pytest.approx(100 - 0.22)
    assert emulator.credit == pytest.approx(100 - 0.22)
    [sent] = emulator.sent
    assert sent["ticket"] == result.ticket and sent["request_id"] == "r1" and sent["text"] == text
    [request] = emulator.requests
    assert request["status"] == 201
    assert request["headers"]["api-login"] == LOGIN and request["headers"]["api-key"] == KEY
    assert client.last_call["ok"] is True and client.last_call["error"] is None


async def test_request_id_generated_once(client, emulator):
    emulator.inject("500")
    await client.send(campaign())
    first, second = (r["body"]["request_id"] for r in emulator.requests)
    assert first == second and re.fullmatch(r"[0-9a-f]{32}", first)


async def test_wrong_credentials_is_101(make_client, emulator):
    client = await make_client(key="wrong")
    with pytest.raises(OctopushError) as info:
        await client.send(campaign())
    error = info.value
    assert (error.code, error.http_status, error.permanent) == (101, 401, True)
    assert "api_key" in error.advice and error.code in ALERT_CODES
    assert len(emulator.requests) == 1  # never retried
    assert client.last_call["ok"] is False and "code 101" in client.last_call["error"]


@pytest.mark.parametrize(
    ("changes", "code", "advice"),
    [
        ({"recipients": ()}, 110, "recipient"),
        ({"sender": "AB"}, 106, "3 to 11"),
        ({"text": ""}, 107, "text"),
        ({"recipients": (Recipient("+3312"), Recipient("+1555"))}, 117, "+33612345678"),
        ({"purpose": "wholesale", "text": "Sale!"}, 121, "STOP au 30101"),
        ({"purpose": "wholesale", "type": "sms_low_cost", "text": "Sale!"}, 122, "no PUB=STOP"),
    ],
)
async def test_refusals_map_to_octopush_error(client, emulator, changes, code, advice):
    with pytest.raises(OctopushError) as info:
        await client.send_once(campaign(**changes))  # send_once skips the local checks on purpose
    error = info.value
    assert (error.code, error.http_status, error.permanent) == (code, 400, True)
    assert advice in error.advice
    assert str(error).startswith(f"Octopush refused the campaign (code {code}): ")
    assert error.advice in str(error)
    assert emulator.sent == []


async def test_121_message(client):
    with pytest.raises(OctopushError) as info:
        await client.send_once(campaign(purpose="wholesale", text="Sale!"))
    assert str(info.value).startswith(
        "Octopush refused the campaign (code 121): STOP mention ([STOP au 30101]) is missing from your text. Add "
    )


async def test_missing_recipients_field_is_103(emulator):
    body = {"text": "hi", "type": "sms_premium", "purpose": "alert", "with_replies": False}
    status, answer = await post_raw(emulator, body)
    assert (status, answer["code"]) == (400, 103)


@pytest.mark.parametrize(("credit", "code"), [(0.0, 104), (0.01, 105)])
async def test_out_of_credit(client, emulator, credit, code):
    emulator.credit = credit
    with pytest.raises(OctopushError) as info:
        await client.send(campaign())
    assert info.value.code == code and info.value.permanent
    assert "credit" in info.value.advice and code in ALERT_CODES
    assert emulator.sent == [] and len(emulator.requests) == 1


async def test_same_request_id_is_120_already_sent(client, emulator):
    first = await client.send(campaign(request_id="dup"))
    again = await client.send(campaign(request_id="dup"))
    assert again == SendResult(
        ticket=None, contacts=1, sms_needed=1, residual_credit=None, total_cost=None, already_sent=True
    )
    assert first.ticket and len(emulator.sent) == 1
    assert [r["status"] for r in emulator.requests] == [201, 400]
    assert emulator.requests[1]["body"]["request_id"] == "dup"


async def test_simulation_sends_nothing(client, emulator, receiver):
    emulator.callback_url = receiver["url"]
    result = await client.send(campaign(simulation_mode=True, request_id="sim"))
    assert TICKET.fullmatch(result.ticket) and result.sms_needed == 1
    assert emulator.sent == [] and emulator.credit == 100.0
    await asyncio.sleep(0.2)  # receipts would come after 0.1 s
    assert receiver["received"] == []
    assert not (await client.send(campaign(request_id="sim"))).already_sent  # the id was not used up


# --- faults: retried with the same request_id, sent once -------------------------------------


@pytest.mark.parametrize("fault", ["500", "429", "reset"])
async def test_temporary_fault_then_success(client, emulator, fault):
    emulator.inject(fault)
    result = await client.send(campaign(request_id="r-" + fault))
    assert TICKET.fullmatch(result.ticket) and not result.already_sent
    assert [r["body"]["request_id"] for r in emulator.requests] == ["r-" + fault] * 2
    assert emulator.requests[0]["status"] == (None if fault == "reset" else int(fault))
    assert len(emulator.sent) == 1


async def test_timeout_then_success(make_client, emulator):
    client = await make_client(call_timeout=0.3)
    emulator.inject("timeout")
    result = await client.send(campaign(request_id="slow"))
    assert result.ticket and len(emulator.requests) == 2 and len(emulator.sent) == 1


async def test_lost_answer_then_120(client, emulator):
    emulator.inject("lost")
    result = await client.send(campaign(request_id="lost-1"))
    assert result.already_sent and result.ticket is None
    assert len(emulator.sent) == 1
    assert [r["status"] for r in emulator.requests] == [None, 400]


async def test_deadline_reraises_temporary_error(client, emulator):
    emulator.inject(*["500"] * 100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TemporaryError) as info:
        await client.send(campaign(), deadline=started + 0.3)
    assert info.value.http_status == 500
    assert 0.3 <= loop.time() - started < 2.0
    assert len(emulator.requests) >= 2 and emulator.sent == []
    assert client.last_call["ok"] is False


async def test_retry_for_is_the_default_deadline(make_client, emulator):
    client = await make_client(retry_for=0.2)
    emulator.inject(*["429"] * 100)
    with pytest.raises(TemporaryError):
        await client.send(campaign())


async def test_connection_refused_is_temporary():
    client = OctopushClient("http://127.0.0.1:9/v1/public", LOGIN, KEY, timeout=0.3)
    await client.start()
    try:
        with pytest.raises(TemporaryError):
            await client.send_once(campaign())
    finally:
        await client.stop()


async def test_api_key_never_logged(client, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    emulator.inject("500", "reset")
    await client.send(campaign())
    with pytest.raises(OctopushError):
        await client.send_once(campaign(sender="AB"))
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(client)


# --- the emulator's strictness ---------------------------------------------------------------


async def post_raw(emulator, body, content_type="application/json"):
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {"api-login": LOGIN, "api-key": KEY, "Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.base_url}/sms-campaign/send", data=data, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"xyz": 1}, "Unknown field 'xyz'."),
        ({"recipients": [{"phone_number": FR, "nickname": "Bo"}]}, "Unknown field 'recipients[0].nickname'."),
        ({"with_replies": "yes"}, "Field 'with_replies' must be of type bool."),
        ({"text": 12}, "Field 'text' must be of type str."),
        ({"send_at": "2030-01-01 10:00"}, "offset"),
        ({"type": "sms_cheap"}, "'type'"),
    ],
)
async def test_emulator_refuses_undocumented_or_mistyped(emulator, extra, words):
    body = campaign().payload() | extra
    status, answer = await post_raw(emulator, body)
    assert status == 400 and answer["code"] == 1 and words in answer["message"]
    assert emulator.sent == []


async def test_emulator_accepts_every_documented_optional_field(emulator):
    body = campaign(sender="ACME", request_id="x").payload() | {
        "auto_remove_blacklisted_numbers": True,
        "list_name": "ops",
        "recipient_tracking": False,
        "simulation_mode": False,
    }
    status, answer = await post_raw(emulator, body)
    assert status == 201 and answer["number_of_contacts"] == 1


async def test_emulator_refuses_non_json(emulator):
    status, answer = await post_raw(emulator, "text=hi", "application/x-www-form-urlencoded")
    assert (status, answer["code"]) == (400, 1)
    assert emulator.requests[0]["body"] == "text=hi"


async def test_emulator_requires_credential_headers():
    emu = Emulator()  # no credentials configured: any non-empty pair passes
    await emu.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{emu.base_url}/sms-campaign/send"
            async with session.post(url, json=campaign().payload()) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == 101
            headers = {"api-login": "a", "api-key": "b"}
            async with session.post(url, json=campaign().payload(), headers=headers) as resp:
                assert resp.status == 201
    finally:
        await emu.stop()


def test_inject_refuses_unknown_fault():
    with pytest.raises(ValueError, match="unknown fault"):
        Emulator().inject("boom")


# --- callbacks -------------------------------------------------------------------------------

OCTOPUSH_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


async def test_receipt_and_reply_callbacks(client, emulator, receiver):
    emulator.callback_url = receiver["url"]
    result = await client.send(campaign(recipients=(Recipient(FR), Recipient(FR2))))
    received = receiver["received"]
    await wait_for(lambda: len(received) == 4)
    receipts = [r for r in received if "status" in r]
    replies = [r for r in received if "reception_date" in r]
    assert {r["number"] for r in receipts} == {r["number"] for r in replies} == {FR, FR2}
    for receipt in receipts:
        assert set(receipt) == {"channel", "message_id", "number", "status", "delivery_date"}
        assert (receipt["channel"], receipt["message_id"], receipt["status"]) == ("sms", result.ticket, "DELIVERED")
        assert OCTOPUSH_DATE.fullmatch(receipt["delivery_date"])
    for reply in replies:
        assert set(reply) == {"message_id", "number", "text", "sim_card_number", "reception_date"}
        assert (reply["message_id"], reply["text"], reply["sim_card_number"]) == (result.ticket, "OK, thanks!", "30101")
        assert OCTOPUSH_DATE.fullmatch(reply["reception_date"])
    assert received.index(receipts[0]) < received.index(replies[0])


async def test_no_reply_without_with_replies_and_no_receipt_for_low_cost(client, emulator, receiver):
    emulator.callback_url = receiver["url"]
    await client.send(campaign(type="sms_low_cost", with_replies=False))
    await asyncio.sleep(0.5)  # past both the receipt (0.1 s) and the reply (0.3 s)
    assert receiver["received"] == []


async def test_send_at_delays_callbacks(client, emulator, receiver):
    emulator.callback_url = receiver["url"]
    at = (datetime.now(UTC) + timedelta(seconds=1.5)).replace(microsecond=0)  # whole seconds go on the wire
    await client.send(campaign(send_at=at, with_replies=False))
    await wait_for(lambda: receiver["received"])
    assert datetime.now(UTC) >= at


async def test_failed_callback_is_retried(client, emulator, receiver):
    emulator.callback_url = receiver["url"]
    receiver["statuses"].extend([500, 503])
    await client.send(campaign(with_replies=False))
    # The emulator records each answer after the receiver has counted the request: wait for the record.
    await wait_for(lambda: len(emulator.callbacks) == 3)
    assert [c["status"] for c in emulator.callbacks] == [500, 503, 200]


async def test_unreachable_callback_url_does_not_break_the_emulator(client, emulator):
    emulator.callback_url = "http://127.0.0.1:9/octopush/token"
    await client.send(campaign(with_replies=False))
    await wait_for(lambda: emulator.callbacks)
    assert (await client.send(campaign())).ticket  # still answering


async def test_one_wiring_gives_the_daemon_and_the_commands_their_octopush(tmp_path):
    """relay/connect.py: live mode calls the API; emulator mode a running daemon's emulator, else a
    stand-in of this process (or, for a campaign cancel, nothing that answers: only the daemon's holds campaigns)."""
    from relay import config as config_mod
    from relay import connect

    live = config_mod.load(env={"OCTOPUSH_API_KEY": "k"}).octopush
    live = dataclasses.replace(live, mode="live", api_login="a@example.org", base_url="https://api.example.org/v1")
    async with connect.connect(live, emulator_url="http://127.0.0.1:1") as (client, emulator):
        assert client.base_url == "https://api.example.org/v1" and emulator is None
        assert (client.api_login, client._api_key) == ("a@example.org", "k")
    demo = config_mod.load(env={}).octopush
    daemons = connect.emulator_for(demo)
    await daemons.start()
    try:
        async with connect.connect(demo, emulator_url=daemons.base_url) as (client, emulator):
            assert client.base_url == daemons.base_url and emulator is None  # the running daemon's answers
            assert (client.api_login, client._api_key) == ("emulator", "emulator")
    finally:
        await daemons.stop()
    async with connect.connect(demo, emulator_url=daemons.base_url) as (client, emulator):
        assert emulator is not None and client.base_url == emulator.base_url  # it is gone: a stand-in
        assert emulator.reply_text == ""  # a stand-in account answers no SMS unless asked to
        assert (await client.check_balance()).amount == demo.emulator.credit
    async with connect.connect(demo, emulator_url=None, stand_in=False) as (client, emulator):
        assert emulator is None and client.base_url == connect.UNREACHABLE
