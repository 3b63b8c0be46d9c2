"""The command line against the emulator: in-process (mode emulator) and over real HTTP (mode live)."""

from __future__ import annotations

import asyncio

import pytest

from relay.cli import main
from tests.conftest import live_mode, write_config


def run(*args: str) -> int:
    return main(list(args))


async def test_send_with_the_in_process_emulator_prints_a_ticket(tmp_path, capsys):
    path = write_config(tmp_path / "c.toml", tmp_path, extra='[octopush.emulator]\nreply_text = ""\n')
    code = await asyncio.to_thread(run, "send", "--to", "+33612345678", "--text", "hi", "-c", str(path))
    out = capsys.readouterr().out
    assert code == 0 and "ticket sms_" in out and "1 SMS" in out and "GSM 7-bit" in out


async def test_send_in_live_mode_goes_over_real_http(tmp_path, capsys, octopush):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=live_mode(octopush.base_url))
    args = ["send", "--to", "0612345678", "+33612345679", "--text", "Réunion à 10h", "--type", "low-cost"]
    code = await asyncio.to_thread(run, *args, "--sender", "ACME", "-c", str(path))
    assert code == 0
    sent = octopush.sent[0]
    assert [r["phone_number"] for r in sent["recipients"]] == ["+33612345678", "+33612345679"]
    assert sent["type"] == "sms_low_cost" and sent["sender"] == "ACME" and sent["text"] == "Réunion à 10h"
    assert octopush.requests[0]["headers"]["api-key"] == "test-key-123"
    assert "ticket " + sent["ticket"] in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "+33612345678", "--text", "x" * 1300], "1224"),
        (["--to", "12", "--text", "hi"], "12"),
        (["--to", "+33612345678", "--text", "hi", "--sender", "A"], "sender"),
        (["--to", "+33612345678", "--text", "hi", "--at", "2001-01-01 10:00"], "past"),
        (["--to", "+33612345678", "--text", "promo", "--purpose", "marketing"], "STOP"),
    ],
)
def test_send_validation_errors_are_one_line_exit_1(tmp_path, capsys, args, message):
    path = write_config(tmp_path / "c.toml", tmp_path)
    assert run("send", *args, "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.lower() in err.lower() and "Traceback" not in err


@pytest.mark.parametrize("command", [["replies"], ["callback-url"], ["db", "purge", "--older-than", "3"]])
def test_a_database_that_cannot_be_opened_is_one_line_exit_1(tmp_path, capsys, command):
    (tmp_path / "a-file").write_text("")
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[storage]\npath = "{tmp_path / "a-file" / "x.db"}"\n')
    assert run(*command, "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "storage.path" in err and "Traceback" not in err


def test_send_refused_by_octopush_is_exit_1(tmp_path, capsys):
    path = write_config(tmp_path / "c.toml", tmp_path, extra="[octopush.emulator]\ncredit = 0\n")
    assert run("send", "--to", "+33612345678", "--text", "hi", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert "not sent" in err and ("104" in err or "105" in err)


def test_callback_url_and_replies_formats(tmp_path, capsys):
    from relay.storage import meta
    from relay.storage.database import connect, migrate

    path = write_config(tmp_path / "c.toml", tmp_path, extra='[http]\npublic_url = "https://relay.example.org"\n')
    migrate(tmp_path / "octorelay.db")
    db = connect(tmp_path / "octorelay.db")
    with db.atomic():
        token = meta.ensure_callback_token(db)
    db.close()
    assert run("callback-url", "-c", str(path)) == 0
    assert capsys.readouterr().out.strip() == f"https://relay.example.org/octopush/{token}"
    for fmt in ("table", "json", "csv"):
        assert run("replies", "--format", fmt, "-c", str(path)) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith('"time","timezone","number"')
    assert run("replies", "--since", "tomorrowish", "-c", str(path)) == 1


def test_hash_password_from_stdin(monkeypatch, capsys):
    import io

    from relay.passwords import verify

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert run("hash-password") == 0
    assert verify("correct horse battery", capsys.readouterr().out.strip())
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n"))
    assert run("hash-password") == 1
    assert "too short" in capsys.readouterr().err


def test_config_option_before_or_after_the_command(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[http]\nlisten = 1\n")
    assert run("-c", str(path), "check-config") == 1
    assert run("check-config", "-c", str(path)) == 1
    assert "http.listen" in capsys.readouterr().err


def test_backup_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    from relay.storage.database import migrate

    path = write_config(tmp_path / "c.toml", tmp_path)
    migrate(tmp_path / "octorelay.db")
    assert run("db", "backup", str(tmp_path / "no" / "such" / "dir" / "b.db"), "-c", str(path)) == 1
    assert "cannot write the backup" in capsys.readouterr().err


async def test_send_leaves_the_daemons_pending_rows_alone(tmp_path, capsys, octopush):
    """`octorelay send` works its own campaign only: another pending send is the daemon's to make."""
    import sqlite3

    from relay.octopush.client import Recipient
    from relay.sending import SendRequest, queue_campaign
    from relay.storage.database import connect, migrate

    path = write_config(tmp_path / "c.toml", tmp_path, extra=live_mode(octopush.base_url))
    migrate(tmp_path / "octorelay.db")
    db = connect(tmp_path / "octorelay.db")
    with db.atomic():
        request = SendRequest(
            text="daemon's", recipients=(Recipient("+33612345670"),), type="sms_premium", purpose="alert"
        )
        queue_campaign(db, request, retry_for=60)
    db.close()
    assert await asyncio.to_thread(run, "send", "--to", "+33612345678", "--text", "mine", "-c", str(path)) == 0
    assert [s["text"] for s in octopush.sent] == ["mine"]
    conn = sqlite3.connect(tmp_path / "octorelay.db")
    assert conn.execute("SELECT status FROM sends ORDER BY id").fetchall() == [("pending",), ("sent",)]
