"""The SMTP listener: aiosmtpd on the daemon's loop turning authorised e-mails into queued campaigns.

The handler rejects early (MAIL, RCPT), parses at DATA, commits the request,
and only then answers 250; a worker makes the Octopush call. Reply codes are
the SPEC §5 table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay import clock, passwords
from relay.config import Config
from relay.errors import RelayError
from relay.mail.offload import ChildParser
from relay.mail.parsing import (
    Body,
    NotOurDomain,
    Rejected,
    Tags,
    extract_text,
    header_text,
    is_automatic,
    parse_message,
    parse_recipient,
    parse_subject,
    sender_glob_allows,
)
from relay.octopush.client import Recipient, with_stop_mention
from relay.octopush.errors import ValidationError
from relay.sending import NothingToSend, SendRequest, queue_campaign, request_key

log = logging.getLogger("relay.smtp")

OK = "250 OK"
SENDER_REFUSED = "550 5.7.1 Sender not allowed to send SMS through this relay"
AUTH_NEEDED = "550 5.7.1 Authentication required (STARTTLS, then AUTH)"
RELAY_DENIED = "550 5.7.1 relaying denied"
TOO_MANY = "452 4.5.3 Too many recipients"
NO_RECIPIENT = "554 5.5.1 No valid recipients"
TRY_LATER = "451 4.3.0 The relay cannot store this message now; try again later"
DUPLICATE_WINDOW = timedelta(hours=24)
# Up to this size an e-mail is parsed on the event loop (0.2-1 ms for real clients' mail; 8 ms for the worst
# HTML we found): a worker thread's hand-off cost more. A larger one (HTML to text) is parsed in a thread,
# and one over CHILD_PARSE in a child process (relay/mail/offload.py says why).
INLINE_PARSE = 4 * 1024
CHILD_PARSE = 256 * 1024
# Up to this many recipients, queueing a campaign is a small write (Store.write): it may run on the event loop.
SMALL_WRITE_RECIPIENTS = 50


def ascii_line(text: str) -> str:
    """SMTP replies are one line of ASCII (RFC 5321): fold accents and dashes, drop the rest."""
    text = text.replace("\u2014", "-").replace("\u2013", "-").replace("\u2019", "'")
    folded = unicodedata.normalize("NFKD", " ".join(text.split())).encode("ascii", "ignore").decode()
    return folded


def bad_recipient(reason: str) -> str:
    return f"550 5.1.1 {ascii_line(reason)}"


def refused(reason: str) -> str:
    return f"550 5.6.0 {ascii_line(reason)}"


@dataclass
class Pending:
    """What RCPT collected for this envelope: numbers with their contact fields."""

    recipients: dict[str, Recipient] = field(default_factory=dict)


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with the size refusal in the SPEC's words (552 5.3.4), and password checks in a thread.

    aiosmtpd calls the authenticator synchronously; a hash check costs ~40 ms of CPU, which repeated AUTH
    attempts would take from the event loop. So the mechanisms' own parsing runs as usual, `_authenticate`
    only captures the credentials, and the check runs in a worker thread.
    """

    _captured: tuple[str, LoginPassword] | None = None

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and status.startswith("552 Error"):  # AUTH challenges come as bytes
            status = f"552 5.3.4 Message too big for this relay (at most {self.data_size_limit} bytes)"
        await super().push(status)

    def _authenticate(self, mechanism: str, auth_data) -> AuthResult:
        self._captured = (mechanism, auth_data)
        return AuthResult(success=False, handled=False)  # replaced by the real answer in _checked

    async def _checked(self, result: AuthResult) -> AuthResult:
        captured, self._captured = self._captured, None
        if captured is None:  # the mechanism answered by itself (bad base64, cancelled)
            return result
        return await asyncio.to_thread(self._authenticator, self, self.session, self.envelope, *captured)

    async def auth_PLAIN(self, server, args) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server, args) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(server, args))


class Handler:
    """Only the hooks it needs: MAIL, RCPT, DATA."""

    def __init__(self, listener: SmtpListener):
        self.listener = listener

    @property
    def config(self) -> Config:
        return self.listener.daemon.config

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options) -> str:
        cfg = self.config.smtp_in
        if cfg.require_auth and not session.authenticated:
            return AUTH_NEEDED
        null_sender = address.strip("<> ") == ""  # bounces: accepted, then dropped at DATA
        if not null_sender and not sender_glob_allows(cfg.allowed_senders, address):
            self.listener.count("sender_refused")
            log.info("MAIL FROM refused: %s is not an allowed sender", address)
            return SENDER_REFUSED
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.pending = Pending()  # type: ignore[attr-defined]
        return OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options) -> str:
        cfg = self.config.smtp_in
        if cfg.require_auth and not session.authenticated:
            return AUTH_NEEDED
        pending: Pending = getattr(envelope, "pending", None) or Pending()
        envelope.pending = pending  # type: ignore[attr-defined]
        groups = self.listener.daemon.groups
        try:
            target = parse_recipient(address, domain=cfg.domain, region=cfg.region, groups=groups)
        except NotOurDomain:
            return RELAY_DENIED
        except Rejected as exc:  # UnknownRecipient: the reason names the local part
            return bad_recipient(exc.reason)
        members = groups[target.value] if target.kind == "group" else (Recipient(target.value),)
        new = [r for r in members if r.phone_number not in pending.recipients]
        if len(pending.recipients) + len(new) > cfg.max_recipients:
            return TOO_MANY
        for r in new:
            pending.recipients[r.phone_number] = r
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return await self._data(envelope)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the edge: log, answer temporary, lose nothing
            log.exception("unexpected error handling a message; answered 451")
            return TRY_LATER

    async def _data(self, envelope: Envelope) -> str:
        daemon = self.listener.daemon
        cfg = self.config.smtp_in
        pending: Pending = getattr(envelope, "pending", None) or Pending()
        if not pending.recipients:
            return NO_RECIPIENT
        data = envelope.original_content or envelope.content
        if len(data) <= INLINE_PARSE:
            parsed = read_message(data, envelope.mail_from or "", cfg.region)
        elif len(data) <= CHILD_PARSE:  # a large e-mail (HTML to text) takes CPU time: off the event loop
            parsed = await asyncio.to_thread(read_message, data, envelope.mail_from or "", cfg.region)
        else:
            parsed = await self.listener.child.run(read_message, data, envelope.mail_from or "", cfg.region)
        if parsed.automatic:
            self.listener.count("dropped_automatic")
            log.info("accepted and dropped (%s) from %s", parsed.automatic, envelope.mail_from or "<>")
            return "250 2.0.0 Accepted (automatic message: not sent as SMS)"
        if parsed.rejected:
            self.listener.count("refused")
            return refused(parsed.rejected)
        tags, body = parsed.tags, parsed.body
        o = self.config.octopush
        text = body.text
        purpose = tags.purpose or o.purpose
        sms_type = tags.type or o.type
        if purpose == "wholesale":
            try:
                text = with_stop_mention(text, sms_type, cfg.stop_mention)
            except ValidationError as exc:
                self.listener.count("refused")
                return refused(str(exc))
        message_id = parsed.message_id
        numbers = list(pending.recipients)
        request = SendRequest(
            text=text,
            recipients=tuple(pending.recipients.values()),
            type=sms_type,
            purpose=purpose,
            sender=tags.sender if tags.sender is not None else o.sender,
            send_at=tags.send_at,
            with_replies=o.with_replies if tags.with_replies is None else tags.with_replies,
            simulation=tags.simulate or o.mode == "simulation",
            auto_optimize_text=o.auto_optimize_text,
            origin="email",
            sender_email=envelope.mail_from.strip("<> "),
            message_id=message_id,
            label=tags.label or await self._thread_label(parsed.references),
            confirm=cfg.confirm,
            trimmed=body.trimmed,
            request_key=request_key(message_id, numbers) if message_id else uuid.uuid4().hex,
        )
        try:
            request.validate()
        except RelayError as exc:
            self.listener.count("refused")
            return refused(str(exc))
        try:
            campaign_id, new = await daemon.store.write(
                partial(_queue_once, req=request, retry_for=o.retry_for),
                small=len(request.recipients) <= SMALL_WRITE_RECIPIENTS,
            )
        except NothingToSend as exc:
            self.listener.count("refused")
            return refused(str(exc))
        except Exception as exc:  # noqa: BLE001 - the store failed: a temporary answer, the sender retries
            log.error("message not stored, answered 451: %s", exc)
            return TRY_LATER
        if new:
            daemon.sender.wake()
            self.listener.count("queued")
            log.info("campaign #%d queued from %s to %d number(s)", campaign_id, envelope.mail_from, len(numbers))
            return f"250 2.0.0 Queued as campaign {campaign_id}"
        self.listener.count("duplicate")
        return f"250 2.0.0 Already queued as campaign {campaign_id}"

    async def _thread_label(self, refs: list[str]) -> str:
        """An answer with an empty subject keeps the label of the conversation it answers."""
        if not refs:
            return ""

        def lookup(db):
            for ref in reversed(refs):
                row = db.execute(
                    "SELECT c.label FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE m.message_id = ?",
                    [ref],
                ).fetchone()
                if row and row[0]:
                    return row[0]
            return ""

        return await self.listener.daemon.store.read(lookup)


@dataclass
class Parsed:
    """What DATA needs from the message."""

    message_id: str = ""
    references: list[str] = field(default_factory=list)  # In-Reply-To and References, oldest first
    automatic: str | None = None
    rejected: str | None = None
    tags: Tags | None = None
    body: Body | None = None


def read_message(data: bytes, mail_from: str, region: str) -> Parsed:
    msg = parse_message(data)
    automatic = is_automatic(msg, mail_from)
    if automatic:
        return Parsed(automatic=automatic)
    parsed = Parsed(
        message_id=header_text(msg, "Message-ID"),
        references=f"{header_text(msg, 'In-Reply-To')} {header_text(msg, 'References')}".split(),
    )
    try:
        parsed.tags = parse_subject(header_text(msg, "Subject"), region=region)
        parsed.body = extract_text(msg)
    except Rejected as exc:
        parsed.rejected = exc.reason
    return parsed


def _queue_once(db, *, req: SendRequest, retry_for: float) -> tuple[int, bool]:
    """The same Message-ID to the same recipients within 24 h is sent once."""
    row = db.execute("SELECT id, created_at FROM campaigns WHERE request_key = ?", [req.request_key]).fetchone()
    if row:
        if clock.parse_iso(row[1]) > clock.now() - DUPLICATE_WINDOW:
            return row[0], False
        # Older than 24 h: Octopush has forgotten the request_id too; send it as new.
        db.execute("UPDATE campaigns SET request_key = request_key || '-' || id WHERE id = ?", [row[0]])
    return queue_campaign(db, req, retry_for=retry_for)


class SmtpListener:
    """Binds the SMTP port on the daemon's loop; STARTTLS always offered, AUTH only after it."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.handler = Handler(self)
        self.child = ChildParser()
        self._server: asyncio.base_events.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.address: tuple[str, int] | None = None

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def count(self, outcome: str) -> None:
        self.daemon.metrics.smtp_in.labels(outcome).inc()

    async def start(self) -> None:
        cfg = self.daemon.config.smtp_in
        self._tls = await asyncio.to_thread(
            tls_context, cfg.tls_cert, cfg.tls_key, self.daemon.config.storage.state_dir
        )
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._protocol, host=cfg.listen.host, port=cfg.listen.port)
        except OSError as exc:
            raise RelayError(f"smtp_in.listen: cannot listen on {cfg.listen}: {exc.strerror}") from None
        self.address = self._server.sockets[0].getsockname()[:2]

    def _protocol(self) -> SMTP:
        cfg = self.daemon.config.smtp_in
        return RelaySMTP(
            self.handler,
            data_size_limit=cfg.max_size,
            enable_SMTPUTF8=True,
            hostname=cfg.domain,
            ident="octorelay ESMTP",
            tls_context=self._tls,
            require_starttls=False,
            auth_required=False,
            auth_require_tls=True,
            authenticator=self._authenticate,
            # Per command; RCPT may come once per recipient, so its own bound follows max_recipients.
            command_call_limit={"*": cfg.max_commands, "RCPT": max(cfg.max_commands, cfg.max_recipients + 50)},
            timeout=60,
        )

    def _authenticate(self, server, session, envelope, mechanism: str, auth_data) -> AuthResult:
        users = self.daemon.config.smtp_in.users
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        hashed = users.get(login)
        ok = hashed is not None and passwords.verify(auth_data.password.decode("utf-8", "replace"), hashed)
        if not ok:
            log.info("AUTH %s failed for %r", mechanism, login)
        return AuthResult(success=ok, handled=False)

    def reconfigure(self, config: Config) -> None:
        """Allowed senders, users and groups come from daemon.config at each command: nothing to rebind."""

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        await self.child.close()


def tls_context(cert: str, key: str, state_dir: Path) -> ssl.SSLContext:
    """The configured certificate, else a self-signed one made once and kept in the state directory."""
    if not cert:
        cert_path, key_path = state_dir / "smtp-selfsigned.crt", state_dir / "smtp-selfsigned.key"
        if not (cert_path.exists() and key_path.exists()):
            make_self_signed(cert_path, key_path)
        cert, key = str(cert_path), str(key_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"smtp_in.tls_cert: cannot load {cert} / {key}: {exc}") from None
    return context


def make_self_signed(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "octorelay")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
