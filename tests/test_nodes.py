"""Several nodes on one database (SPEC §8): who answers, the state every node shares, and work done once.

These run on SQLite, whose one-writer transactions make the same questions (two sweeps, two digest runs, two
starts) as several PostgreSQL nodes do; the storage functions they rely on are single statements that decide
under the row's lock (insert-if-absent, compare-and-set), never a read and then a write.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from functools import partial

import aiohttp
import pytest

from relay import config as config_mod
from relay.errors import ConfigError
from relay.mail.smtp_inbound import SELF_SIGNED_KEY, make_self_signed
from relay.storage import meta
from tests.conftest import write_config


async def healthz(daemon) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http_url}/healthz") as resp:
        return resp.status, await resp.json()


async def test_healthz_names_the_node_that_answers(make_daemon, sink):
    daemon = await make_daemon('[http]\nnode_name = "relay-b"\n', smtp_port=sink.port)
    status, body = await healthz(daemon)
    assert status == 200 and body["status"] == "ok"
    assert body["node"] == "relay-b" and body["database"] == "ok"


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


async def test_shared_settings_are_set_once_by_whichever_writes_first(store):
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
