"""Sender proof without a login (`sender_check = "dkim"`): DKIM signatures made in the test with dkimpy and a
fresh key, whose TXT records a real DNS server on loopback (dnslib) serves; Authentication-Results from the
trusted MTA and from elsewhere. Mail arrives over real SMTP sessions.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import subprocess
import sys
from email.utils import make_msgid

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from relay import config as config_mod
from relay.mail.proof import aligned, organisational_domain
from tests.conftest import wait_for, write_config

pytestmark = pytest.mark.timeout(60)

TO = "+33612345678@sms.example.org"


class Zone(BaseResolver):
    """TXT records by name; anything else is NXDOMAIN."""

    def __init__(self) -> None:
        self.txt: dict[str, bytes] = {}

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if request.q.qtype == QTYPE.TXT and name in self.txt:
            value = self.txt[name]
            chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def dns():
    zone = Zone()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error"))
    server.start_thread()
    zone.port = server.server.server_address[1]
    yield zone
    server.stop()
    server.server.server_close()


class Signer:
    """A DKIM key for `domain`, published in the zone under `selector`."""

    def __init__(self, zone: Zone, domain: str, selector: str = "s1"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        zone.txt[f"{selector}._domainkey.{domain}"] = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        self.domain, self.selector = domain, selector

    def sign(self, raw: bytes) -> bytes:
        signature = dkim.sign(
            raw,
            self.selector.encode(),
            self.domain.encode(),
            self.pem,
            include_headers=[b"from", b"to", b"subject", b"message-id"],
        )
        return signature + raw


def raw_message(author: str = "alice@example.org", body: str = "Signed hello", headers: str = "") -> bytes:
    text = (
        f"From: Alice <{author}>\r\nTo: {TO}\r\nSubject: proof\r\nMessage-ID: {make_msgid(domain='example.org')}\r\n"
        f"{headers}\r\n{body}\r\n"
    )
    return text.encode()


async def deliver(daemon, raw: bytes, envelope: str = "bounces@example.org") -> tuple[int, str]:
    def go():
        host, port = daemon.smtp.address
        with smtplib.SMTP(host, port, timeout=20) as s:
            s.ehlo()
            s.mail(envelope)
            s.rcpt(TO)
            code, text = s.data(raw)
            return code, text.decode()

    return await asyncio.to_thread(go)


def dkim_config(zone: Zone, extra: str = "") -> str:
    return (
        f'[smtp_in]\nsender_check = "dkim"\nresolver = "127.0.0.1:{zone.port}"\n'
        f'allowed_senders = ["*@example.org", "*@*.example.org"]\n{extra}'
    )


async def sender_of_last(daemon) -> str:
    return await daemon.store.read(
        lambda db: db.execute("SELECT sender_email FROM campaigns ORDER BY id DESC LIMIT 1").fetchone()[0]
    )


async def test_a_dkim_signature_from_the_from_domain_proves_the_sender(make_daemon, sink, dns):
    daemon = await make_daemon(dkim_config(dns), smtp_port=sink.port)
    signer = Signer(dns, "example.org")
    code, text = await deliver(daemon, signer.sign(raw_message()))
    assert code == 250, text
    # The proven header From is the campaign's sender (and gets the replies), not the envelope's bounce address.
    assert await sender_of_last(daemon) == "alice@example.org"
    await wait_for(lambda: daemon.emulator.sent)
    # Relaxed alignment: a subdomain's signature proves the organisational domain's From, and back.
    sub = Signer(dns, "mail.example.org")
    assert (await deliver(daemon, sub.sign(raw_message(body="from a subdomain"))))[0] == 250
    assert (await deliver(daemon, signer.sign(raw_message("ops@eu.example.org", "the other way"))))[0] == 250


async def test_what_does_not_prove_the_sender_is_refused_naming_it(make_daemon, sink, dns):
    daemon = await make_daemon(dkim_config(dns), smtp_port=sink.port)
    signer = Signer(dns, "example.org")
    # Tampered: the body changed after signing.
    signed = signer.sign(raw_message(body="Meet at 10"))
    code, text = await deliver(daemon, signed.replace(b"Meet at 10", b"Meet at 11"))
    assert code == 550 and text.startswith("5.7.1") and "no valid DKIM signature from example.org" in text
    # A valid signature, but from another domain.
    evil = Signer(dns, "evil.test")
    code, text = await deliver(daemon, evil.sign(raw_message()))
    assert code == 550 and "from evil.test, not from example.org" in text
    # No signature at all.
    code, text = await deliver(daemon, raw_message())
    assert code == 550 and "no valid DKIM signature" in text
    # A signature whose key is not in DNS.
    unknown = Signer(Zone(), "example.org", "gone")
    code, text = await deliver(daemon, unknown.sign(raw_message()))
    assert code == 550 and "no valid DKIM signature" in text
    # A From outside allowed_senders, however well signed.
    code, text = await deliver(daemon, evil.sign(raw_message("eve@evil.test")))
    assert code == 550 and "eve@evil.test is not an allowed sender" in text
    assert await daemon.store.read(lambda db: db.execute("SELECT count(*) FROM campaigns").fetchone()[0]) == 0


async def test_authentication_results_count_only_from_the_trusted_mta(make_daemon, sink, dns):
    daemon = await make_daemon(dkim_config(dns, 'trusted_authserv_id = "mx.example.org"\n'), smtp_port=sink.port)
    trusted = "Authentication-Results: mx.example.org;\r\n dkim=pass header.d=example.org header.s=s1\r\n"
    assert (await deliver(daemon, raw_message(headers=trusted)))[0] == 250
    dmarc = "Authentication-Results: MX.example.org; spf=fail; dmarc=pass header.from=example.org\r\n"
    assert (await deliver(daemon, raw_message(body="dmarc", headers=dmarc)))[0] == 250
    elsewhere = "Authentication-Results: mx.evil.test; dkim=pass header.d=example.org\r\n"
    code, text = await deliver(daemon, raw_message(body="forged", headers=elsewhere))
    assert code == 550 and text.startswith("5.7.1")
    failed = "Authentication-Results: mx.example.org; dkim=fail header.d=example.org\r\n"
    assert (await deliver(daemon, raw_message(body="failed", headers=failed)))[0] == 550
    other_domain = "Authentication-Results: mx.example.org; dkim=pass header.d=evil.test\r\n"
    assert (await deliver(daemon, raw_message(body="other", headers=other_domain)))[0] == 550
    garbage = "Authentication-Results: ;;;= =\r\n"
    assert (await deliver(daemon, raw_message(body="garbage", headers=garbage)))[0] == 550


def test_organisational_domains():
    assert organisational_domain("mail.example.co.uk") == "example.co.uk"
    assert aligned("mail.example.org", "example.org") and aligned("example.org", "eu.example.org")
    assert not aligned("example.co.uk", "other.co.uk") and not aligned("", "example.org")


def test_a_public_listener_needs_auth_or_dkim_and_check_config_warns_about_envelope(tmp_path):
    public = '[smtp_in]\nlisten = "0.0.0.0:2525"\n'
    with pytest.raises(config_mod.ConfigError, match="smtp_in.require_auth"):
        config_mod.load(write_config(tmp_path / "a.toml", tmp_path, extra=public))
    config_mod.load(write_config(tmp_path / "b.toml", tmp_path, extra=public + 'sender_check = "dkim"\n'))
    path = write_config(tmp_path / "c.toml", tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30
    ).stdout
    assert 'warning: sender_check = "envelope" trusts MAIL FROM' in out
