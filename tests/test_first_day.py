"""The operator's first day (issue 19): the CLI as a real subprocess, the pages and API over real HTTP.

Read-only commands create nothing and need no secret they do not use; numbers in any form are found
everywhere; times take ISO 8601 and relative forms; one CSV for CLI and web, safe for every delimiter;
digests count each kind; config errors help; the listener greets with its domain; the pages name a reply's
campaign and sender and draw a per-country chart without JavaScript.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import smtplib
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from relay.octopush.client import Recipient
from relay.sending import SendRequest, queue_campaign
from relay.web.exports import COLUMNS, neutralise
from tests.conftest import wait_for, write_config

ROOT = Path(__file__).resolve().parent.parent
FORMULA = ("=", "+", "-", "@", "\t", "\r")

DIGEST = """
[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * *"
timezone = "Europe/Paris"
group_by = "country"
events = ["reply", "delivery"]

[[subscriptions]]
name = "team"
to = ["team@example.org"]
mode = "instant"
events = ["stop"]
"""


def octorelay(*args: str, cwd: Path, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m relay ARGS` as a real process, the checked-out code first on its path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("OCTORELAY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def run_cli(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(partial(octorelay, *args, cwd=cwd, **kwargs))


async def post(daemon, *bodies: dict) -> None:
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(f"{daemon.http_url}/octopush/{daemon.callback_token}", json=body) as resp:
                assert resp.status == 200


def reply(number: str, text: str, date: str, **extra) -> dict:
    return {"number": number, "text": text, "reception_date": date, "sim_card_number": "30101", **extra}


# ------------------------------------------------------------------ item 2: read-only commands


def test_read_only_commands_create_nothing_and_need_no_unused_secret(tmp_path):
    """On a server whose api_key_file is a systemd credential the admin cannot read, in an empty directory."""
    here = tmp_path / "empty"
    here.mkdir()
    config = tmp_path / "octorelay.toml"
    config.write_text(
        '[octopush]\nmode = "live"\napi_login = "ops@example.org"\n'
        'api_key_file = "/run/credentials/octorelay.service/octopush_api_key"\n'
        '[smtp_out]\npassword_file = "/run/credentials/octorelay.service/smtp_password"\n'
        '[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\nmode = "digest"\n'
    )
    for args in (
        ["replies"],
        ["replies", "--format", "csv"],
        ["check-config"],
        ["digest", "ops", "--dry-run"],
    ):
        result = octorelay(*args, "-c", str(config), cwd=here, env={"OCTOPUSH_API_KEY": ""})
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr and "cannot read /run" not in result.stderr
    check = octorelay("check-config", "-c", str(config), cwd=here)
    assert "api_key (in a file this user cannot read)" in check.stdout
    assert "note: cannot read octopush.api_key_file" in check.stdout
    # Without a database there is nothing to read: a clear line, and still nothing created.
    for args in (["callback-url"], ["db", "backup", str(tmp_path / "copy.db")]):
        result = octorelay(*args, "-c", str(config), cwd=here)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr and "cannot read /run" not in result.stderr
    assert "daemon makes one at its first start" in octorelay("callback-url", "-c", str(config), cwd=here).stderr
    assert list(here.iterdir()) == [] and not (tmp_path / "copy.db").exists()
    # The daemon itself does need the key: it is not hidden from `run`.
    result = octorelay("run", "-c", str(config), cwd=here)
    assert result.returncode == 1 and "api_key_file" in result.stderr
    assert list(here.iterdir()) == []


async def test_read_only_commands_read_an_existing_database_without_writing_it(make_daemon, sink, tmp_path):
    daemon = await make_daemon(DIGEST, smtp_port=sink.port)
    await post(daemon, reply("+33611111111", "hello", "2026-11-04 11:00:00"))
    db_path = daemon.config.storage.path
    before = sqlite3.connect(db_path).execute("SELECT count(*), max(id) FROM callbacks").fetchone()
    marks = sqlite3.connect(db_path).execute("SELECT * FROM digests").fetchall()
    result = await run_cli("callback-url", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("/octopush/" + daemon.callback_token)
    result = await run_cli("digest", "ops", "--dry-run", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sqlite3.connect(db_path).execute("SELECT * FROM digests").fetchall() == marks
    assert sqlite3.connect(db_path).execute("SELECT count(*), max(id) FROM callbacks").fetchone() == before


# ------------------------------------------------------------------ item 3: numbers in every form


async def test_numbers_in_national_or_spaced_form_are_found_everywhere(make_daemon, sink, tmp_path):
    daemon = await make_daemon(smtp_port=sink.port)
    await post(
        daemon,
        reply("+33611111111", "first", "2026-11-04 11:00:00"),
        reply("+33611111111", "second", "2026-11-04 12:00:00"),
        reply("+32470123456", "from Belgium", "2026-11-04 13:00:00"),
    )
    for form in ("0611111111", "0033611111111", "+33 6 11 11 11 11", "06.11.11.11.11"):
        result = await run_cli("replies", "--number", form, "--format", "json", "-c", daemon.config_path, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count('"+33611111111"') == 2, form
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.http_url}/api/replies", params={"number": "0611111111"}) as resp:
            assert resp.status == 200 and (await resp.json())["count"] == 2
        async with http.get(f"{daemon.http_url}/api/replies", params={"country": "Belgium"}) as resp:
            assert [r["text"] for r in (await resp.json())["replies"]] == ["from Belgium"]
        async with http.get(f"{daemon.http_url}/api/replies", params={"number": "hello"}) as resp:
            assert resp.status == 400 and "not a phone number" in await resp.text()
        for form in ("0611111111", "0033611111111", "+33%206%2011%2011%2011%2011"):
            async with http.get(f"{daemon.http_url}/conversations/{form}", allow_redirects=False) as resp:
                assert resp.status == 301 and resp.headers["Location"] == "/conversations/+33611111111", form
        async with http.get(f"{daemon.http_url}/conversations/0611111111") as resp:
            page = await resp.text()
            assert resp.status == 200 and "first" in page and "second" in page
        for bad in ("hello", "+999", "12"):
            async with http.get(f"{daemon.http_url}/conversations/{bad}") as resp:
                assert resp.status == 404 and "Answer by SMS" not in await resp.text(), bad
        async with http.get(f"{daemon.http_url}/replies", params={"number": "0611111111"}) as resp:
            page = await resp.text()
            assert "first" in page and "second" in page and "from Belgium" not in page
    result = await run_cli(
        "replies", "--country", "Belgium", "--format", "json", "-c", daemon.config_path, cwd=tmp_path
    )
    assert result.returncode == 0 and "from Belgium" in result.stdout and "first" not in result.stdout
    result = await run_cli("replies", "--country", "be", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 0 and "from Belgium" in result.stdout
    result = await run_cli("replies", "--country", "Narnia", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 1 and "--country: 'Narnia' is not a country code or English name" in result.stderr
    result = await run_cli("replies", "--number", "hello", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 1 and "not a phone number" in result.stderr


# ------------------------------------------------------------------ item 6 + issue 14 item 8: one CSV, safe


ATTACKS = [
    "=cmd|'/C calc'!A0",
    "ok;=cmd|'/C calc'!A0",
    "ok,=1+1",
    'fine\t=HYPERLINK("http://evil")',
    "a|@SUM(A1)",
    "+1 and -1",
    "\t=tab first",
    "\r=cr first",
    "x\n=newline",
    'say "hi";@evil',
]


@pytest.mark.parametrize("text", ATTACKS)
def test_neutralised_cells_start_no_formula_for_any_delimiter(text):
    cell = neutralise(text)
    for delimiter in (",", ";", "\t", "|", " ", ":", "\n", "\r", '"'):
        for piece in cell.split(delimiter):
            assert not piece.lstrip(" ").startswith(FORMULA[:4]), (delimiter, piece)
            assert not piece.startswith(("\t", "\r")) or delimiter in "\t\r", (delimiter, piece)


def test_words_inside_a_text_stay_as_written():
    assert neutralise("x=1, a-b, e@mail.org") == "x=1, a-b, e@mail.org"
    assert neutralise("Rendez-vous à 10h") == "Rendez-vous à 10h"
    assert neutralise(None) == "" and neutralise(42) == "42"


async def test_cli_and_web_csv_have_the_same_columns_and_neutralise_attacks(make_daemon, sink, tmp_path):
    daemon = await make_daemon(smtp_port=sink.port)
    await post(daemon, *[reply("+33611111111", text, f"2026-11-04 11:00:{i:02d}") for i, text in enumerate(ATTACKS)])
    cli = await run_cli("replies", "--format", "csv", "-c", daemon.config_path, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http_url}/replies.csv") as resp:
        web_text = (await resp.read()).decode("utf-8-sig")
    for text in (cli.stdout, web_text):
        rows = list(csv.reader(io.StringIO(text)))
        assert tuple(rows[0]) == COLUMNS
        assert len(rows) == 1 + len(ATTACKS)
        assert rows[1][1] == "Europe/Paris" and rows[1][2] == "'+33611111111"
        for delimiter in (";", "\t", "|"):
            # A reader with another delimiter splits the raw lines its own way: no piece is a formula.
            for line in text.splitlines():
                for piece in line.split(delimiter):
                    assert not piece.strip('" ').startswith(("=", "+", "@")), (delimiter, piece)
    assert cli.stdout.splitlines()[0] == web_text.splitlines()[0]


async def test_replies_table_has_a_header_and_local_time_with_its_zone(make_daemon, sink, tmp_path):
    daemon = await make_daemon(smtp_port=sink.port)
    await post(daemon, reply("+33611111111", "hello there", "2026-07-04 11:00:00"))
    result = await run_cli("replies", "-c", daemon.config_path, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(Europe/Paris)", "NUMBER", "CC", "TEXT", "CAMPAIGN", "SENT", "BY"]
    # Octopush's 11:00 is Paris time, shown as such (not 09:00 UTC).
    assert lines[1].startswith("2026-07-04 11:00 CEST  +33 6 11 11 11 11  FR") and "hello there" in lines[1]


# ------------------------------------------------------------------ item 6: time options


async def test_send_at_takes_relative_and_iso_forms_and_explains_a_bad_one(tmp_path):
    path = write_config(tmp_path / "c.toml", tmp_path, extra='[octopush.emulator]\nreply_text = ""\n')
    for when in ("2h", "1d", "2099-01-01 10:00", "2099-01-01T10:00:00+01:00"):
        result = await run_cli(
            "send", "--to", "0612345678", "--text", "hi", "--at", when, "-c", str(path), cwd=tmp_path
        )
        assert result.returncode == 0, (when, result.stderr)
    rows = sqlite3.connect(tmp_path / "octorelay.db").execute("SELECT send_at FROM campaigns ORDER BY id").fetchall()
    assert [r[0] for r in rows][2:] == ["2099-01-01T09:00:00.000000+00:00"] * 2
    result = await run_cli("send", "--to", "0612345678", "--text", "hi", "--at", "soon", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "--at" in result.stderr and "2h" in result.stderr and "Europe/Paris" in result.stderr
    assert "tag" not in result.stderr and "subject" not in result.stderr and " FR " not in result.stderr
    result = await run_cli(
        "send", "--to", "0612345678", "--text", "hi", "--at", "2001-01-01", "-c", str(path), cwd=tmp_path
    )
    assert result.returncode == 1 and "in the past" in result.stderr


async def test_db_purge_older_than_takes_days_relative_and_iso_forms(tmp_path):
    from relay.storage.database import migrate

    path = write_config(tmp_path / "c.toml", tmp_path)
    migrate(tmp_path / "octorelay.db")
    for age in ("30", "7d", "4w", "12h", "2020-01-01"):
        result = await run_cli("db", "purge", "--older-than", age, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("purged"), (age, result.stderr)
    for age in ("0", "10m", "soon", "2099-01-01"):
        result = await run_cli("db", "purge", "--older-than", age, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 1 and "--older-than" in result.stderr and "Traceback" not in result.stderr, age


# ------------------------------------------------------------------ item 4: digests


async def test_digest_counts_each_kind_and_reads_well(make_daemon, sink, tmp_path):
    daemon = await make_daemon(DIGEST, smtp_port=sink.port)
    req = SendRequest(
        text="Server down?",
        recipients=tuple(Recipient(f"+3361111111{i}") for i in range(7)),
        type="sms_premium",
        purpose="alert",
        origin="cli",
        label="octorelay send",
    )
    campaign_id, _ = await daemon.store.write(partial(queue_campaign, req=req, retry_for=30))
    daemon.sender.wake()
    # The emulator sends a receipt and a reply for each number.
    await wait_for(
        lambda: daemon.store.read(
            lambda db: (
                db.execute("SELECT count(*) FROM callbacks WHERE kind IN ('reply', 'delivery')").fetchone()[0] == 14
            )
        ),
        timeout=20,
    )
    preview = await run_cli("digest", "ops", "--dry-run", "-c", daemon.config_path, cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    out = preview.stdout
    assert "Subject: 7 SMS replies, 7 delivery reports \u2014 ops" in out
    assert "Content-Transfer-Encoding" not in out and "=E2=80" not in out and "quoted-printable" not in out
    assert "Delivery: DELIVERED" in out and "OK, thanks!" in out
    msg = await daemon.notifier.run_digest("ops")
    assert msg["Subject"] == "7 SMS replies, 7 delivery reports \u2014 ops"
    html = msg.get_body(("html",)).get_content()
    assert "DELIVEREDIn answer" not in html and "DELIVERED</b></div>" in html
    result = await run_cli("digest", "team", "-c", daemon.config_path, cwd=tmp_path)
    assert result.returncode == 1 and "'team' is instant, not a digest" in result.stderr


# ------------------------------------------------------------------ item 7: config errors, passwords


def test_config_errors_help(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[smtp_in]\nallowed_sender = ["*@example.org"]\n')
    result = octorelay("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1 and "did you mean 'smtp_in.allowed_senders'?" in result.stderr
    path.write_text('[groups]\nteam = "no/such/team.csv"\n')
    result = octorelay("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith(f"octorelay: {path}: groups.team: cannot read")
    result = octorelay("hash-password", cwd=tmp_path, stdin="abc\n")
    assert result.returncode == 1 and "too short" in result.stderr and result.stdout == ""
    result = octorelay("hash-password", cwd=tmp_path, stdin="correct horse battery staple\n")
    assert result.returncode == 0 and result.stdout.startswith("scrypt")


# ------------------------------------------------------------------ item 8: the SMTP banner


async def test_smtp_listener_greets_with_its_domain(make_daemon, sink):
    daemon = await make_daemon(smtp_port=sink.port)
    host, port = daemon.smtp.address[:2]

    def greet() -> tuple:
        client = smtplib.SMTP()
        banner = client.connect(host, port)
        ehlo = client.ehlo("client.example.org")
        client.quit()
        return banner, ehlo

    banner, ehlo = await asyncio.to_thread(greet)
    assert banner[0] == 220 and banner[1].decode().startswith("sms.example.org ")
    assert ehlo[1].decode().splitlines()[0] == "sms.example.org"


# ------------------------------------------------------------------ item 9: the pages


async def test_pages_name_the_campaign_and_its_sender_and_chart_countries(make_daemon, sink):
    daemon = await make_daemon(smtp_port=sink.port)
    req = SendRequest(
        text="Are you on call?",
        recipients=(Recipient("+33611111111"),),
        type="sms_premium",
        purpose="alert",
        origin="email",
        sender_email="alice@example.org",
        label="On call tonight",
    )
    await daemon.store.write(partial(queue_campaign, req=req, retry_for=30))
    cli_req = SendRequest(
        text="Test",
        recipients=(Recipient("+4915112345678"),),
        type="sms_premium",
        purpose="alert",
        origin="cli",
        label="octorelay send",
    )
    await daemon.store.write(partial(queue_campaign, req=cli_req, retry_for=30))
    daemon.sender.wake()
    await wait_for(
        lambda: daemon.store.read(
            lambda db: db.execute("SELECT count(*) FROM callbacks WHERE kind = 'reply'").fetchone()[0] == 2
        ),
        timeout=20,
    )
    await post(daemon, reply("+32470123456", "older", "2026-11-01 10:00:00"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.http_url}/replies") as resp:
            page = await resp.text()
        assert "“On call tonight”" in page and "sent by alice@example.org" in page
        assert "“octorelay send”" in page and "sent by command line" in page
        async with http.get(f"{daemon.http_url}/replies", params={"view": "country"}) as resp:
            page = await resp.text()
        assert '<section class="summary"' in page and "<svg" in page and "<script" not in page
        assert "Replies per day and per country" in page
        for name in ("France", "Germany", "Belgium"):
            assert name in page
        async with http.get(f"{daemon.http_url}/conversations/+4915112345678") as resp:
            assert "sent by command line" in await resp.text()
        async with http.get(f"{daemon.http_url}/campaigns") as resp:
            campaigns = await resp.text()
        assert "command line" in campaigns and "alice@example.org" in campaigns and "cli<" not in campaigns


async def test_send_posts_the_emulators_callbacks_only_to_a_daemon_of_its_database(tmp_path):
    """Where no daemon ever ran, the emulator's receipt and reply go nowhere (not to whatever owns http.listen)."""
    from aiohttp import web

    received: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        path = write_config(
            tmp_path / "c.toml",
            tmp_path,
            extra=f'[http]\nlisten = "127.0.0.1:{port}"\n[octopush.emulator]\nreply_after = 0\n',
        )
        result = await run_cli("send", "--to", "0612345678", "--text", "hi", "-c", str(path), cwd=tmp_path)
        assert result.returncode == 0 and "ticket sms_" in result.stdout, result.stderr
        await asyncio.sleep(0.5)
        assert received == []
    finally:
        await runner.cleanup()
