"""Several nodes on one database (SPEC §8): who answers, the state every node shares, and work done once.

These run on SQLite, whose one-writer transactions make the same questions (two sweeps, two digest runs, two
starts) as several PostgreSQL nodes do; the storage functions they rely on are single statements that decide
under the row's lock (insert-if-absent, compare-and-set), never a read and then a write.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from relay import clock, sending
from relay import config as config_mod
from relay.errors import ConfigError
from relay.mail.smtp_inbound import SELF_SIGNED_KEY, make_self_signed
from relay.octopush.callbacks import classify
from relay.storage import callbacks, digests, guards, meta
from tests.conftest import wait_for, write_config
from tests.test_notify import post, to


async def healthz(daemon) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http_url}/healthz") as resp:
        return resp.status, await resp.json()


async def test_healthz_names_the_node_that_answers(make_daemon, sink, storage_toml):
    daemon = await make_daemon(storage_toml + '[http]\nnode_name = "relay-b"\n', smtp_port=sink.port)
    status, body = await healthz(daemon)
    assert status == 200 and body["status"] == "ok"
    assert body["node"] == "relay-b" and body["database"] == "ok"


async def test_a_node_on_postgresql_folds_the_counts_deltas(make_daemon, sink, storage_toml, storage_engine):
    """On PostgreSQL the counts' triggers append deltas (pg_schema m015) that a scheduled job folds; SQLite's
    triggers keep the counts themselves and have no such job."""
    daemon = await make_daemon(storage_toml, smtp_port=sink.port)
    jobs = {job.id for job in daemon.scheduler.scheduler.get_jobs()}
    assert ("fold-counts" in jobs) == (storage_engine == "postgresql")
    if "fold-counts" in jobs:  # this test folds itself: the job's first run must not take the delta first
        daemon.scheduler.scheduler.remove_job("fold-counts")
    body = {"message_id": "", "number": "+33600000001", "text": "Yes", "reception_date": "2026-11-04 11:11:45"}
    cb = classify(body, raw=repr(body), content_type="application/json")
    await daemon.store.write(partial(callbacks.store_callback, cb=cb))
    assert await daemon.store.read(callbacks.reply_counts) == [("FR", 1)]
    assert await daemon.housekeeping.fold_counts() == (1 if storage_engine == "postgresql" else 0)
    assert await daemon.store.read(callbacks.reply_counts) == [("FR", 1)]


async def test_the_node_is_the_host_name_by_default(daemon):
    _, body = await healthz(daemon)
    assert body["node"] == socket.gethostname()


@pytest.mark.parametrize("name", ["two words", "a/b", "x" * 65, "é"])
def test_a_node_name_that_cannot_be_a_label_is_refused(tmp_path, name):
    path = write_config(tmp_path / "c.toml", tmp_path, extra=f'[http]\nnode_name = "{name}"\n')
    with pytest.raises(ConfigError, match="node_name"):
        config_mod.load(path)


async def _presented_certificate(daemon) -> bytes:
    """The DER certificate the SMTP listener presents after STARTTLS, through a real client."""
    host, port = daemon.smtp.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()
        writer.write(b"EHLO client.example\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        writer.write(b"STARTTLS\r\n")
        assert (await reader.readline()).startswith(b"220")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        await writer.start_tls(context)
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----") :])


async def test_the_self_signed_certificate_is_shared_through_the_database(make_daemon, sink, tmp_path):
    """Made once and kept in `meta`: a node started later on the same database presents the same certificate,
    and nothing of it lies in one node's state directory."""
    first = await make_daemon(smtp_port=sink.port)
    stored = await first.store.read(partial(meta.meta_get, key=SELF_SIGNED_KEY))
    assert await _presented_certificate(first) == _der(stored)
    await first.stop()
    second = await make_daemon(smtp_port=sink.port, name="other.toml")
    assert await _presented_certificate(second) == _der(stored)
    assert not list(tmp_path.glob("smtp-selfsigned*"))


async def test_a_certificate_an_older_version_left_in_the_state_directory_is_kept(make_daemon, sink, tmp_path):
    pem = make_self_signed()
    cut = pem.index("-----BEGIN CERTIFICATE-----")
    (tmp_path / "smtp-selfsigned.key").write_text(pem[:cut])
    (tmp_path / "smtp-selfsigned.crt").write_text(pem[cut:])
    daemon = await make_daemon(smtp_port=sink.port)
    assert await daemon.store.read(partial(meta.meta_get, key=SELF_SIGNED_KEY)) == pem
    assert await _presented_certificate(daemon) == _der(pem)


async def test_the_private_key_never_reaches_the_log(make_daemon, sink, caplog):
    caplog.set_level("DEBUG")
    daemon = await make_daemon(smtp_port=sink.port)
    await _presented_certificate(daemon)
    assert "PRIVATE KEY" not in caplog.text


async def test_shared_settings_are_set_once_by_whichever_writes_first(engine_store):
    store = engine_store
    """Insert-if-absent and compare-and-set: what two nodes starting (or sweeping) at once would race on."""
    made = await asyncio.gather(*(store.write(partial(meta.meta_setdefault, key="k", value=str(i))) for i in range(8)))
    assert len(set(made)) == 1
    tokens = await asyncio.gather(*(store.write(meta.ensure_callback_token) for _ in range(8)))
    assert len(set(tokens)) == 1 and tokens[0] == await store.read(partial(meta.meta_get, key="callback_token"))

    swaps = await asyncio.gather(
        *(store.write(partial(meta.meta_replace, key="a", old=None, new="1")) for _ in range(5))
    )
    assert swaps.count(True) == 1
    assert await store.write(partial(meta.meta_replace, key="a", old="1", new="2"))
    assert not await store.write(partial(meta.meta_replace, key="a", old="1", new="3"))
    assert await store.write(partial(meta.meta_replace, key="a", old="2", new=None))
    assert await store.read(partial(meta.meta_get, key="a")) is None


# ------------------------------------------------------------ work done once, whichever node does it

DIGEST = """
[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * *"
timezone = "Europe/Paris"
events = ["reply", "stop"]
send_empty = true
"""


def _reply(i: int) -> dict:
    return {"number": "+33600000001", "text": f"reply {i}", "reception_date": f"2026-11-04 11:00:{i:02d}"}


def _second_notifier(daemon):
    """Another node's notifier: its own worker on the same database."""
    from relay.notify import Notifier

    return Notifier(daemon.config, daemon.store, daemon.outbox, daemon.renderer, {}, None)


async def test_two_digest_runs_at_once_send_one_e_mail(make_daemon, sink, storage_toml):
    daemon = await make_daemon(storage_toml + DIGEST, smtp_port=sink.port)
    await post(daemon, _reply(1), _reply(2))
    other = _second_notifier(daemon)
    first, second = await asyncio.gather(daemon.notifier.run_digest("ops"), other.run_digest("ops"))
    assert (first is None) != (second is None)  # one run sent it; the other found the watermark moved
    mail = (await wait_for(lambda: to(sink, "ops@example.org")))[0]
    assert mail["Subject"] == "2 SMS replies \u2014 ops"
    await asyncio.sleep(0.3)
    assert len(to(sink, "ops@example.org")) == 1


async def test_a_scheduled_slot_that_another_node_already_ran_sends_nothing(make_daemon, sink, storage_toml):
    """Every node fires the same cron slot; one that fires after another node's run has finished finds the
    run's time past the slot. Checked with `send_empty`, where an empty run still sends an e-mail."""
    daemon = await make_daemon(storage_toml + DIGEST, smtp_port=sink.port)
    two_days_ago = clock.iso(clock.now() - timedelta(days=2))
    await daemon.store.write(
        lambda db: db.execute("UPDATE digests SET last_run_at = ? WHERE name = 'ops'", [two_days_ago])
    )
    await daemon.scheduler._digest("ops")  # this node's run of today's 08:00 slot
    await daemon.scheduler._digest("ops")  # another node's, a little later: already sent
    await wait_for(lambda: to(sink, "ops@example.org"))
    await asyncio.sleep(0.3)
    assert len(to(sink, "ops@example.org")) == 1


async def test_octorelay_digest_beside_the_daemon_sends_once_and_exits_0(make_daemon, sink, tmp_path, storage_toml):
    """SPEC §8: a run started by hand while another runs sends nothing (or everything), exit 0 either way."""
    digest = DIGEST.replace("send_empty = true", "send_empty = false")
    daemon = await make_daemon(storage_toml + digest, smtp_port=sink.port)
    await post(daemon, _reply(1), _reply(2), _reply(3))
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's code, whatever is installed
    command = asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "digest", "ops", "-c", str(tmp_path / "octorelay.toml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    proc = await command
    await daemon.notifier.run_digest("ops")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    await wait_for(lambda: to(sink, "ops@example.org"))
    await asyncio.sleep(0.3)
    assert len(to(sink, "ops@example.org")) == 1, out.decode()


async def test_a_held_campaign_expires_once_and_its_sender_is_told_once(make_daemon, sink, storage_toml):
    from tests.test_approval import approval, held_campaign

    daemon = await make_daemon(storage_toml + approval(approve_within=1), smtp_port=sink.port)
    campaign_id, _ = await held_campaign(daemon, sink)
    await asyncio.sleep(1.1)  # approve_within passes
    other = _second_notifier(daemon)
    await asyncio.gather(daemon.notifier.approvals_pending(), other.approvals_pending(), other.approvals_pending())

    def notices():
        return [m for _, _, m in sink.messages if m["Subject"].startswith("SMS cancelled")]

    await wait_for(notices)
    await asyncio.sleep(0.3)
    assert len(notices()) == 1
    # A sweep that read the campaign before another cancelled it cancels nothing and marks nothing.
    assert await daemon.store.write(sending.expire_held) == []
    assert not await daemon.store.write(partial(guards.mark_mailed, campaign_id=campaign_id, done=True))


async def test_a_low_credit_alert_from_two_nodes_at_once_is_said_once(make_daemon, sink, storage_toml):
    daemon = await make_daemon(
        storage_toml + "[octopush]\nlow_credit = 50\n[octopush.emulator]\ncredit = 12.5\n"
        '[[subscriptions]]\nname = "t"\nto = ["team@example.org"]\nmode = "instant"\n',
        smtp_port=sink.port,
    )
    await wait_for(lambda: to(sink, "team@example.org"))  # the check at start
    other = _second_notifier(daemon)
    said = await asyncio.gather(*(n.check_credit(7.5) for n in (daemon.notifier, other, other)))
    assert said.count(True) == 1
    await wait_for(lambda: len(to(sink, "team@example.org")) == 2)
    await asyncio.sleep(0.3)
    assert len(to(sink, "team@example.org")) == 2


async def test_a_digest_watermark_moves_once_from_what_a_run_read(engine_store):
    store = engine_store
    """Two runs that read the same watermark: the first moves it, the second finds it moved, also when no
    callback came in between and only the run's time moved."""
    started = await store.write(partial(digests.init_digests, names=["d", "d"]))
    mark = await store.read(partial(digests.watermark, name="d"))
    assert started == {"d": mark.last_run_at}
    read = {"sub": "d", "expected": mark.last_callback_id, "since": mark.last_run_at, "to": mark.last_callback_id}
    results = await asyncio.gather(*(store.write(partial(digests.advance, **read)) for _ in range(4)))
    assert results.count(True) == 1
    assert await store.write(partial(digests.advance, sub="new", expected=0, since=None, to=5))
    assert not await store.write(partial(digests.advance, sub="new", expected=0, since=None, to=5))


async def test_the_csrf_secret_is_shared_so_a_form_from_one_node_posts_to_another(make_daemon, sink):
    from relay.web.forms import CSRF

    first = await make_daemon(smtp_port=sink.port)
    secret = first._runner.app[CSRF].secret
    assert secret.hex() == await first.store.read(partial(meta.meta_get, key="csrf_secret"))
    await first.stop()
    second = await make_daemon(smtp_port=sink.port, name="other.toml")
    assert second._runner.app[CSRF].secret == secret


async def test_the_load_balancers_health_check_matches_what_healthz_says(daemon):
    """deploy/haproxy.cfg keeps a node in rotation on `"database": "ok"` in its /healthz body, whatever else
    is degraded; the same pattern, on the body a real node answers."""
    import re
    from pathlib import Path

    cfg = (Path(__file__).parent.parent / "deploy" / "haproxy.cfg").read_text()
    pattern = re.search(r'http-check expect rstring "(.*)"', cfg).group(1).replace('\\"', '"')
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http_url}/healthz") as resp:
        body = await resp.text()
    assert re.search(pattern, body), body
    assert not re.search(pattern, body.replace('"database": "ok"', '"database": "unreachable: timeout"'))


async def test_two_nodes_started_at_once_share_one_certificate_token_and_csrf_secret(make_daemon, sink, pg_url):
    """Two daemons on one PostgreSQL database, started together: each piece of shared state is made once."""
    from relay.web.forms import CSRF
    from tests.conftest import PG_PASSWORD

    toml = f'[storage]\nurl = "{pg_url}"\npassword = "{PG_PASSWORD}"\n'
    a, b = await asyncio.gather(
        make_daemon(toml + '[http]\nnode_name = "a"\n', smtp_port=sink.port, name="a.toml"),
        make_daemon(toml + '[http]\nnode_name = "b"\n', smtp_port=sink.port, name="b.toml"),
    )
    assert a.callback_token == b.callback_token
    assert a._runner.app[CSRF].secret == b._runner.app[CSRF].secret
    assert await _presented_certificate(a) == await _presented_certificate(b)
    assert [(await healthz(node))[1]["node"] for node in (a, b)] == ["a", "b"]


async def test_a_call_retried_longer_than_its_lease_is_not_taken_over_by_another_node(
    make_daemon, sink, pg_url, monkeypatch
):
    """A daemon renews its claims of the calls it is making: another node (its own Octopush client, pointed at
    another emulator so that any call it makes shows) never takes over a live daemon's call, however long
    Octopush keeps answering 500."""
    from relay.connect import client_for, emulator_for
    from relay.notify import confirmation_owed
    from relay.sending import SendQueue
    from relay.storage import campaigns
    from tests.conftest import PG_PASSWORD
    from tests.test_guards import FR1, message, rcpt, send

    monkeypatch.setattr(campaigns, "SEND_LEASE", 1.5)
    monkeypatch.setattr(sending, "RENEW_EVERY", 0.4)
    daemon = await make_daemon(f'[storage]\nurl = "{pg_url}"\npassword = "{PG_PASSWORD}"\n', smtp_port=sink.port)
    other_octopush = emulator_for(daemon.config.octopush, replies=False)
    await other_octopush.start()
    other_client = client_for(daemon.config.octopush, other_octopush.base_url)
    await other_client.start()
    other = SendQueue(
        daemon.store, other_client, simulation=False, auto_optimize_text=True, on_finished=None,
        confirmation_owed=confirmation_owed,
    )  # fmt: skip
    status = "SELECT status FROM sends"

    async def status_is(wanted: str) -> bool:
        return await daemon.store.read(lambda db: (db.execute(status).fetchone() or [""])[0] == wanted)

    try:
        daemon.emulator.inject("500", "500", "500")  # about 2 + 4 s of retries: longer than the lease
        code, text = await send(daemon, message([rcpt(FR1)], "kept by its daemon"), [rcpt(FR1)])
        assert code == 250, text
        await wait_for(lambda: status_is("sending"))  # the daemon claimed the call; the other node starts now
        await other.start()
        for _ in range(30):
            other.wake()
            await asyncio.sleep(0.2)
        await wait_for(lambda: status_is("sent"), timeout=20)
        assert other_octopush.requests == []
        request_ids = {r["body"]["request_id"] for r in daemon.emulator.requests}
        assert len(request_ids) == 1 and len(daemon.emulator.requests) == 4
    finally:
        await other.stop()
        await other_client.stop()
        await other_octopush.stop()


async def test_an_e_mail_delivered_longer_than_its_lease_is_not_taken_over_by_another_node(
    make_daemon, sink, pg_url, monkeypatch
):
    """The outbox renews its leases while a delivery lasts: a slow mail server (4 s for DATA, leases of 1.5 s)
    gets the e-mail once, although another node's outbox looks for due e-mails all along."""
    from relay.mail import outbox as outbox_mod
    from tests.conftest import PG_PASSWORD

    monkeypatch.setattr(outbox_mod, "LEASE", 1.5)
    monkeypatch.setattr(outbox_mod, "RENEW_EVERY", 0.4)
    real_data = sink.handle_DATA

    async def slow_data(server, session, envelope):
        await asyncio.sleep(4)
        return await real_data(server, session, envelope)

    sink.handle_DATA = slow_data
    instant = '[[subscriptions]]\nname = "t"\nto = ["team@example.org"]\nmode = "instant"\nevents = ["reply"]\n'
    daemon = await make_daemon(
        f'[storage]\nurl = "{pg_url}"\npassword = "{PG_PASSWORD}"\n[smtp_out]\ntimeout = 10\n' + instant,
        smtp_port=sink.port,
    )
    await post(daemon, _reply(1))
    pending = "SELECT count(*) FROM outbox WHERE status = 'pending' AND claimed_by IS NOT NULL"
    await wait_for(lambda: daemon.store.read(lambda db: db.execute(pending).fetchone()[0]))  # being delivered
    other = outbox_mod.Outbox(daemon.config.smtp_out, daemon.store)
    await other.start()
    try:
        for _ in range(25):
            other.wake()
            await asyncio.sleep(0.2)
        await wait_for(lambda: to(sink, "team@example.org"), timeout=15)
        await asyncio.sleep(1)
        assert len(to(sink, "team@example.org")) == 1
    finally:
        await other.stop()


def test_the_haproxy_recipe_is_a_valid_configuration(tmp_path, ca):
    """`haproxy -c` accepts deploy/haproxy.cfg as shipped, with a test certificate in place of the real one
    (CI installs haproxy; the test skips without it)."""
    import shutil
    import subprocess

    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not haproxy:
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    pem = tmp_path / "cert.pem"
    ca.issue_cert("sms-relay.example.org").private_key_and_cert_chain_pem.write_to_path(str(pem))
    cfg = (Path(__file__).parent.parent / "deploy" / "haproxy.cfg").read_text()
    cfg = cfg.replace("/etc/haproxy/certs/sms-relay.example.org.pem", str(pem))
    (tmp_path / "haproxy.cfg").write_text(cfg)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
