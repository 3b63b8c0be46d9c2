"""`octorelay db copy --to URL` (SPEC §1, §8): a real SQLite database made by a real daemon, copied by the real
command into a real PostgreSQL database, then served from there by a daemon on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import PG_PASSWORD, wait_for
from tests.test_guards import FR1, message, rcpt, send

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


async def octorelay(*args: str, cwd: Path, env: dict | None = None) -> tuple[int, str, str]:
    """The command as a real subprocess: (exit code, stdout, stderr)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environ.pop("OCTORELAY_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, cwd=cwd, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


def counts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables if t != "_sqlite_migrations"}
    finally:
        db.close()


async def single_node_with_data(make_daemon, sink) -> object:
    """A daemon on SQLite that sent an SMS from an e-mail, got its reply and e-mailed it, and stored callbacks."""
    daemon = await make_daemon(smtp_port=sink.port)
    code, text = await send(daemon, message([rcpt(FR1)], "Hello from the old node"), [rcpt(FR1)])
    assert code == 250, text
    await wait_for(lambda: any("OK, thanks" in str(m[2].get_body(("plain",))) for m in sink.messages), timeout=15)
    async with aiohttp.ClientSession() as http:
        for i in range(25):
            body = {"number": f"+3361234{i:04d}", "text": f"old reply {i}", "reception_date": "2026-11-04 11:00:00"}
            async with http.post(f"{daemon.http_url}/octopush/{daemon.callback_token}", json=body) as resp:
                assert resp.status == 200
    return daemon


async def test_copy_moves_everything_and_a_postgresql_node_serves_it(make_daemon, sink, pg_url, tmp_path):
    old = await single_node_with_data(make_daemon, sink)
    token = old.callback_token
    await old.stop()
    before = counts(tmp_path / "octorelay.db")
    assert before["callbacks"] >= 26 and before["campaigns"] == 1 and before["outbox"] >= 1

    code, out, err = await octorelay(
        "db", "copy", "--to", pg_url, "-c", str(tmp_path / "octorelay.toml"),
        cwd=tmp_path, env={"OCTORELAY_DB_PASSWORD": PG_PASSWORD},
    )  # fmt: skip
    assert code == 0, err
    for table, n in before.items():  # every table printed with both counts
        assert any(line.split()[:3] == [table, f"{n:,}", f"{n:,}"] for line in out.splitlines()), (table, out)
    assert "every count verified" in out and PG_PASSWORD not in out + err

    # A node on PostgreSQL: the same token, the old replies, and new rows numbered after the copied ones.
    new = await make_daemon(
        f'[storage]\nurl = "{pg_url}"\npassword = "{PG_PASSWORD}"\n', smtp_port=sink.port, name="pg.toml"
    )
    assert new.callback_token == token
    async with aiohttp.ClientSession() as http:
        body = {"number": "+33699999999", "text": "new reply", "reception_date": "2026-11-05 09:00:00"}
        async with http.post(f"{new.http_url}/octopush/{token}", json=body) as resp:
            assert resp.status == 200
        replies = (await (await http.get(f"{new.http_url}/api/replies?limit=1000")).json())["replies"]
    texts = {r["text"] for r in replies}
    assert {f"old reply {i}" for i in range(25)} <= texts and "new reply" in texts and "OK, thanks!" in texts
    newest = max(replies, key=lambda r: r["id"])
    assert newest["text"] == "new reply" and newest["id"] > before["callbacks"]

    # Not empty any more: a second copy is refused, and changes nothing.
    code, out, err = await octorelay(
        "db", "copy", "--to", pg_url, "-c", str(tmp_path / "octorelay.toml"),
        cwd=tmp_path, env={"OCTORELAY_DB_PASSWORD": PG_PASSWORD},
    )  # fmt: skip
    assert code == 1 and "not empty" in err and "Traceback" not in err


async def test_copy_refuses_while_the_daemon_runs(make_daemon, sink, pg_url, tmp_path):
    await make_daemon(smtp_port=sink.port)
    code, out, err = await octorelay(
        "db", "copy", "--to", pg_url, "-c", str(tmp_path / "octorelay.toml"),
        cwd=tmp_path, env={"OCTORELAY_DB_PASSWORD": PG_PASSWORD},
    )  # fmt: skip
    assert code == 1 and "daemon stopped" in err and "pid" in err and "Traceback" not in err


async def test_the_password_may_come_in_the_url_and_is_never_shown(make_daemon, sink, pg_url, tmp_path):
    daemon = await make_daemon(smtp_port=sink.port)
    await daemon.stop()
    with_password = pg_url.replace("octorelay@", f"octorelay:{PG_PASSWORD}@")
    code, out, err = await octorelay(
        "db", "copy", "--to", with_password, "-c", str(tmp_path / "octorelay.toml"), cwd=tmp_path
    )
    assert code == 0, err
    assert PG_PASSWORD not in out + err and pg_url in out


async def test_a_database_with_other_tables_or_a_wrong_password_is_refused(make_daemon, sink, postgres, tmp_path):
    daemon = await make_daemon(smtp_port=sink.port)
    await daemon.stop()
    url = postgres.create_database()
    postgres.admin("CREATE TABLE invoices (id int)", dbname=url.rsplit("/", 1)[1])
    config = str(tmp_path / "octorelay.toml")
    code, _, err = await octorelay(
        "db", "copy", "--to", url, "-c", config, cwd=tmp_path, env={"OCTORELAY_DB_PASSWORD": PG_PASSWORD}
    )
    assert code == 1 and "invoices" in err and "not octorelay's" in err and "Traceback" not in err
    code, _, err = await octorelay(
        "db", "copy", "--to", url, "-c", config, cwd=tmp_path, env={"OCTORELAY_DB_PASSWORD": "wrong-password"}
    )
    assert code == 1 and "password" in err and "wrong-password" not in err and "Traceback" not in err
    code, _, err = await octorelay("db", "copy", "--to", "mysql://x@y/z", "-c", config, cwd=tmp_path)
    assert code == 1 and "postgresql://" in err and "Traceback" not in err
