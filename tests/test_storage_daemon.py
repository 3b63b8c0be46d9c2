"""The whole daemon on PostgreSQL (`[storage] url`): the loop end to end, its pages, and the server going away.

Each test starts a real daemon on a new database of the session's throwaway cluster (`postgres` in conftest),
logging in with a password over TCP as a deployment would.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from relay.storage import callbacks, digests
from tests.conftest import PG_PASSWORD, wait_for
from tests.test_smtp_inbound import message, smtp_send

pytestmark = pytest.mark.timeout(60)

FR = "+33612345678"
DOMAIN = "sms.example.org"


def on_postgres(url: str, extra: str = "") -> str:
    return f'[storage]\nurl = "{url}"\npassword = "{PG_PASSWORD}"\n{extra}'


def mails_to(sink, address: str) -> list:
    return [msg for _, rcpts, msg in sink.messages if address in rcpts]


async def test_an_e_mail_becomes_an_sms_and_its_reply_comes_back_by_e_mail(make_daemon, sink, pg_url):
    """E-mail -> campaign -> Octopush (the emulator) -> reply callback -> stored -> e-mailed, threaded."""
    daemon = await make_daemon(on_postgres(pg_url), smtp_port=sink.port)
    assert daemon.lock is None and daemon.store.path == pg_url  # no file lock; the URL holds no password
    to = [f"{FR}@{DOMAIN}"]
    _, answer = await smtp_send(daemon, message(to, "Are you coming?", "Tomorrow"), to)
    campaign_id = int(re.search(r"campaign (\d+)", answer).group(1))
    [sent] = await wait_for(lambda: daemon.emulator.sent)
    assert sent["text"].startswith("Are you coming?")
    [reply] = await wait_for(
        lambda: (
            mails_to(sink, "alice@example.org")
            and [m for m in mails_to(sink, "alice@example.org") if m["Subject"].startswith("Re: Tomorrow")]
        )
    )
    assert "OK, thanks!" in reply.get_body(("plain",)).get_content()
    stored = await daemon.store.read(lambda db: callbacks.replies(db))
    assert [(r["number"], r["campaign_id"], r["answered"]) for r in stored] == [(FR, campaign_id, sent["text"])]
    async with aiohttp.ClientSession(base_url=daemon.http_url) as http:
        for page in (
            "/",
            "/?by=country",
            f"/conversations/{FR}",
            "/campaigns",
            f"/campaigns/{campaign_id}",
            "/attention",
            "/api/replies?country=FR&number=3361",
            f"/api/campaigns/{campaign_id}",
        ):
            async with http.get(page) as resp:
                assert resp.status == 200, page
        async with http.get("/replies.csv?text=ok") as resp:
            assert resp.status == 200 and "OK, thanks!" in await resp.text()


async def test_a_callback_is_stored_once_and_mailed_to_a_subscription(make_daemon, sink, pg_url):
    daemon = await make_daemon(
        on_postgres(pg_url, '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "instant"\n'),
        smtp_port=sink.port,
    )
    reply = {
        "message_id": "sms_x",
        "number": "+32470000001",
        "text": "Bonjour",
        "reception_date": "2026-11-04 11:11:45",
    }
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(http.post(url, json=reply) for _ in range(8)))
        assert [r.status for r in answers] == [200] * 8
    [mail] = await wait_for(lambda: mails_to(sink, "ops@example.org"))
    assert "Bonjour" in mail.get_body(("plain",)).get_content()
    assert len(await daemon.store.read(lambda db: callbacks.replies(db))) == 1
    await asyncio.sleep(0.3)
    assert len(mails_to(sink, "ops@example.org")) == 1


async def test_two_digest_runs_at_once_send_one_e_mail(make_daemon, sink, pg_url):
    daemon = await make_daemon(
        on_postgres(
            pg_url,
            '[[subscriptions]]\nname = "daily"\nto = ["ops@example.org"]\nmode = "digest"\nschedule = "0 8 * * *"\n',
        ),
        smtp_port=sink.port,
    )
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            reply = {
                "message_id": "",
                "number": f"+3361234560{i}",
                "text": f"r{i}",
                "reception_date": "2026-11-04 11:11:45",
            }
            assert (await http.post(url, json=reply)).status == 200
    await asyncio.gather(*(daemon.notifier.run_digest("daily") for _ in range(4)))
    [digest] = await wait_for(lambda: mails_to(sink, "ops@example.org"))
    assert digest["Subject"].startswith("3 SMS replies")
    mark = await daemon.store.read(lambda db: digests.watermark(db, "daily"))
    assert mark.last_callback_id == await daemon.store.read(callbacks.newest_id)
    await asyncio.sleep(0.3)
    assert len(mails_to(sink, "ops@example.org")) == 1


async def test_while_the_server_is_down_callbacks_get_503_and_then_200_again(make_daemon, postgres, pg_url):
    daemon = await make_daemon(on_postgres(pg_url))
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"

    def reply(i: int) -> dict:
        return {"message_id": "", "number": "+33612345670", "text": f"n{i}", "reception_date": "2026-11-04 11:11:45"}

    async with aiohttp.ClientSession() as http:
        assert (await http.post(url, json=reply(0))).status == 200
        await asyncio.to_thread(postgres.stop)
        try:
            async with http.post(url, json=reply(1)) as resp:
                assert resp.status == 503  # never a 200 for what is not stored
            async with http.get(f"{daemon.http_url}/healthz") as resp:
                assert resp.status == 503 and (await resp.json())["status"] == "degraded"
        finally:
            await asyncio.to_thread(postgres.start)

        async def stored_again() -> bool:
            async with http.post(url, json=reply(2)) as resp:
                return resp.status == 200

        await wait_for(stored_again, timeout=20, interval=0.2)
        async with http.get(f"{daemon.http_url}/healthz") as resp:
            assert (await resp.json())["status"] == "ok"
    texts = sorted(r["text"] for r in await daemon.store.read(lambda db: callbacks.replies(db)))
    assert texts == ["n0", "n2"]


async def test_the_commands_use_the_postgresql_database(make_daemon, pg_url, tmp_path, capsys):
    """`replies`, `callback-url`, `db purge`, `campaign approve` on `[storage] url`; `db backup` says to use
    pg_dump; a database no daemon has set up is read without creating anything."""
    from relay.cli import main
    from tests.conftest import write_config

    async def run(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, [*args, "-c", str(config)])
        out, err = capsys.readouterr()
        return code, out, err

    config = write_config(tmp_path / "cli.toml", tmp_path, extra=on_postgres(pg_url))
    code, out, _ = await run("replies")
    assert code == 0 and "no replies (no database yet at postgresql://" in out
    daemon = await make_daemon(on_postgres(pg_url))
    url = f"{daemon.http_url}/octopush/{daemon.callback_token}"
    async with aiohttp.ClientSession() as http:
        body = {"message_id": "", "number": "+33612345678", "text": "from pg", "reception_date": "2026-11-04 11:11:45"}
        assert (await http.post(url, json=body)).status == 200
    code, out, _ = await run("replies", "--format", "json")
    assert code == 0 and "from pg" in out
    code, out, _ = await run("callback-url")
    assert code == 0 and out.strip().endswith(f"/octopush/{daemon.callback_token}")
    code, out, _ = await run("db", "purge", "--older-than", "30d")
    assert code == 0 and "purged 0 callbacks" in out
    code, _, err = await run("campaign", "approve", "999")
    assert code == 1 and "999" in err and "Traceback" not in err
    code, _, err = await run("db", "backup", str(tmp_path / "copy.db"))
    assert code == 1 and "pg_dump" in err
    assert PG_PASSWORD not in out + err


async def test_a_database_that_cannot_be_reached_is_one_line_without_the_password(tmp_path, postgres):
    from relay import config as config_mod
    from relay.daemon import Daemon
    from relay.errors import RelayError
    from tests.conftest import write_config

    wrong = f"postgresql://octorelay:wrong-password-42@127.0.0.1:{postgres.port}/t1"
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[storage]\nurl = "{wrong}"\n')
    daemon = Daemon(config_mod.load(path, env={}), config_path=str(path))
    with pytest.raises(RelayError) as caught:
        await daemon.start()
    await daemon.stop()
    message = str(caught.value)
    assert message.startswith("storage.url: cannot open the database postgresql://octorelay:***@127.0.0.1:")
    assert "wrong-password-42" not in message and "\n" not in message
