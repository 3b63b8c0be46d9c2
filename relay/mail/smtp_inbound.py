"""The SMTP listener: aiosmtpd on the daemon's loop turning authorised e-mails into queued campaigns.

The handler rejects early (MAIL, RCPT), parses at DATA, commits the request,
and only then answers 250; a worker makes the Octopush call. Reply codes are
the SPEC §5 table.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import ssl
import tempfile
import unicodedata
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from relay import clock, marketing, passwords
from relay.config import Config, ConfigSource
from relay.errors import RelayError
from relay.guard import ConnectionCap, LoginGuard, printable
from relay.mail import proof
from relay.mail.offload import ChildParser
from relay.mail.parsing import (
    NotOurDomain,
    Rejected,
    extract_text,
    parse_message,
    parse_recipient,
    sender_glob_allows,
)
from relay.mail.proof import NotProven
from relay.mail.reading import address_of, read_message
from relay.metrics import Metrics
from relay.octopush.client import Recipient, with_stop_mention
from relay.octopush.errors import ValidationError
from relay.sending import (
    Guards,
    LimitExceeded,
    NotHeld,
    NothingToSend,
    SendRequest,
    approve_campaign,
    cancel_held,
    queue_campaign,
    request_key,
)
from relay.statuses import Origin, Purpose
from relay.storage import campaigns, guards, meta
from relay.storage.database import Store

log = logging.getLogger("relay.smtp")

SELF_SIGNED_KEY = "smtp_selfsigned_pem"  # meta: the STARTTLS key and certificate made when tls_cert is empty
OK = "250 OK"
SENDER_REFUSED = "550 5.7.1 Sender not allowed to send SMS through this relay"
NOT_YOUR_ADDRESS = "550 5.7.1 Login {login} may not send as {address}: use one of its own addresses"
AUTH_NEEDED = "550 5.7.1 Authentication required (STARTTLS, then AUTH)"
RELAY_DENIED = "550 5.7.1 relaying denied"
TOO_MANY = "452 4.5.3 Too many recipients"
ALONE = "550 5.5.1 An answer to an approval e-mail goes to its approve- address alone"
NO_RECIPIENT = "554 5.5.1 No valid recipients"
TRY_LATER = "451 4.3.0 The relay cannot store this message now; try again later"
SESSION_OVER = "421 4.4.2 This session has lasted too long; reconnect to go on"
TOO_MANY_SESSIONS = b"421 4.7.0 Too many connections to this relay; try again later\r\n"
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


def unreadable(reason: str) -> str:
    return f"554 5.6.0 The relay cannot read this message: {reason}"


def too_big(max_size: int) -> str:
    return f"552 5.3.4 Message too big for this relay (at most {max_size} bytes)"


def auth_blocked(seconds: float) -> str:
    return f"454 4.7.0 Too many failed logins from your address; try again in {seconds:.0f} s"


def transparency_bound(max_size: int) -> int:
    """What aiosmtpd may receive for a message of `max_size` bytes: dot-stuffing (RFC 5321 §4.5.2) adds a dot
    to lines starting with one, at most one byte per 3 (`.` CR LF). The exact size is checked after DATA."""
    return max_size + (max_size + 2) // 3


async def _base64_argument(server: SMTP, text: str) -> bytes | None:
    """An AUTH command's initial response, decoded; None (and 501 answered) when it is not base64."""
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Can't decode base64")
        return None


def bad_recipient(reason: str) -> str:
    return f"550 5.1.1 {ascii_line(reason)}"


def refused(reason: str) -> str:
    return f"550 5.6.0 {ascii_line(reason)}"


def not_allowed(reason: str) -> str:
    return f"550 5.7.1 {ascii_line(reason)}"


@dataclass
class Pending:
    """What MAIL and RCPT collected for this envelope: the login, numbers with their contact fields."""

    recipients: dict[str, Recipient] = field(default_factory=dict)
    login: str = ""
    approval: int | None = None  # an answer to an approval e-mail: the campaign it names


class FairReader(asyncio.StreamReader):
    """A StreamReader that lets the loop run between slices of a long DATA.

    aiosmtpd reads DATA a line at a time from what one socket read brought (256 KiB, ~3,300 lines, ~15 ms of
    work): the loop ran nothing else meanwhile, and a callback that needs a few turns of the loop waited
    several such slices while a 5 MB e-mail came in. Yielding every 32 KiB bounds a slice to ~2 ms.
    """

    SLICE = 32768

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unyielded = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await super().readuntil(separator)
        self._unyielded += len(line)
        if self._unyielded >= self.SLICE:
            self._unyielded = 0
            await asyncio.sleep(0)
        return line


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with the SPEC's refusals, bounds and logging.

    - Every 4xx/5xx answer logged with the peer and the envelope sender (SPEC §3), including aiosmtpd's own
      (syntax, command limits); a size refusal in the SPEC's words (552 5.3.4) whoever made it: aiosmtpd
      refuses a message beyond its own bound (`transparency_bound`) with 552 and text of its own, and has no
      option for that text, so a 552 is worded here by its code.
    - A whole-session bound: `command_timeout` cuts a silent or dripping client, `command_call_limit` a
      loop of one command, and `session_limit` a session that keeps busy with harmless commands.
    """

    answer_sender: str | None = None  # the envelope sender of the DATA answer about to be pushed

    def __init__(self, handler: Handler, *, listener: SmtpListener, **kwargs):
        super().__init__(handler, **kwargs)
        # The same protocol, reading from a FairReader instead of the plain StreamReader aiosmtpd made.
        asyncio.StreamReaderProtocol.__init__(
            self, FairReader(limit=self.line_length_limit, loop=self.loop), self._cb_client_connected, self.loop
        )
        self.listener = listener
        self._session_timer: asyncio.TimerHandle | None = None
        listener.cap.held += 1  # counted from its creation, so a burst of accepts cannot overshoot the cap
        self._counted = True

    @property
    def peer_host(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer or "unknown")

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self._session_timer is None:  # not again for the TLS transport after STARTTLS
            limit = self.listener.config().smtp_in.session_limit
            self._session_timer = self.loop.call_later(limit, self._session_over, limit)

    def connection_lost(self, error) -> None:
        if self._counted:
            self.listener.cap.held -= 1
            self._counted = False
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    def _session_over(self, limit: float) -> None:
        if self.transport is None:
            return
        log.info("SMTP session from %s closed: it lasted %.0f s (smtp_in.session_limit)", self.peer_host, limit)
        self.transport.write(SESSION_OVER.encode() + b"\r\n")
        self.transport.close()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):  # AUTH challenges come as bytes
            if status[:4] == "552 ":  # every 552 is a size refusal: aiosmtpd's and the handler's alike
                status = too_big(self.listener.config().smtp_in.max_size)
            if status[:1] in ("4", "5"):
                sender = (self.envelope.mail_from if self.envelope else None) or self.answer_sender
                log.info("SMTP refused %s (sender %s): %s", self.peer_host, sender or "-", status)
            self.answer_sender = None
        await super().push(status)


class Handler:
    """Only the hooks it needs: EHLO (SIZE), AUTH (the limiter and two mechanisms), MAIL, RCPT, DATA.

    What MAIL and RCPT collect for an envelope is kept here, by envelope (aiosmtpd makes a new one at RSET and
    after DATA), not as an attribute added to aiosmtpd's `Envelope`.
    """

    def __init__(self, listener: SmtpListener):
        self.listener = listener
        self._pending: weakref.WeakKeyDictionary[Envelope, Pending] = weakref.WeakKeyDictionary()

    @property
    def config(self) -> Config:
        return self.listener.config()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        """Advertise `max_size` as SIZE: aiosmtpd's own limit is larger, to allow for dot-stuffing."""
        session.host_name = hostname
        size = f"250-SIZE {self.config.smtp_in.max_size}"
        return [size if line.startswith("250-SIZE ") else line for line in responses]

    async def handle_AUTH(self, server: RelaySMTP, session: Session, envelope: Envelope, args):
        """An address with too many failed logins gets 454 before any password is checked."""
        left = self.listener.logins.refused(server.peer_host, "SMTP AUTH")
        return auth_blocked(left) if left else MISSING

    # The two mechanisms, as aiosmtpd takes them from a handler (`auth_<NAME>(server, args)`): the same
    # exchange as aiosmtpd's own, with the password checked in a worker thread, since a hash check costs
    # ~40 ms of CPU that repeated AUTH attempts would take from the event loop. aiosmtpd offers them only
    # over TLS (`auth_require_tls`).

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:  # cancelled or not base64: challenge_auth has answered
                return AuthResult(success=False)
        else:
            blob = await _base64_argument(server, args[1])
            if blob is None:
                return AuthResult(success=False, handled=True)
        try:
            # "{authz_id}\x00{login}\x00{password}"; the authorisation identity is ignored (RFC 4616)
            _, login, password = blob.split(b"\x00")
        except ValueError:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check_login(server, "PLAIN", login, password)

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            login = await _base64_argument(server, args[1])
            if login is None:
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        return await self._check_login(server, "LOGIN", login, password)

    async def _check_login(self, server: RelaySMTP, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        """The password against `smtp_in.users`, off the loop; a failure counts towards the peer's failed logins.

        On success the login rides on the session (`session.auth_data`) to MAIL FROM, which binds it to its
        addresses.
        """
        name = login.decode("utf-8", "replace")
        user = self.config.smtp_in.users.get(name)
        secret = password.decode("utf-8", "replace")
        ok = user is not None and await asyncio.to_thread(passwords.verify, secret, user.hash)
        if not ok:
            self.listener.logins.failed(server.peer_host, f"SMTP AUTH {mechanism} as {printable(name)}")
        return AuthResult(success=ok, handled=False, auth_data=name if ok else None)

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options) -> str:
        cfg = self.config.smtp_in
        server.answer_sender = address  # a refused MAIL sets no envelope: the log line names it from here
        if cfg.require_auth and not session.authenticated:
            return AUTH_NEEDED
        for option in options:
            name, _, value = option.partition("=")
            if name.upper() == "SIZE" and value.isdigit() and int(value) > cfg.max_size:
                return too_big(cfg.max_size)
        null_sender = address.strip("<> ") == ""  # bounces: accepted, then dropped at DATA
        if not null_sender and not sender_glob_allows(cfg.allowed_senders, address):
            self.listener.count("sender_refused")
            return SENDER_REFUSED
        login = str(session.auth_data or "") if session.authenticated else ""
        if login and not null_sender:
            # A login sends only as its own addresses (SPEC §5 "Who sends"); a plain hash, as any allowed sender.
            user = cfg.users.get(login)
            if user is None or (user.senders is not None and not sender_glob_allows(user.senders, address)):
                self.listener.count("sender_refused")
                log.info("MAIL FROM refused: login %r may not send as %s", login, address)
                return NOT_YOUR_ADDRESS.format(login=ascii_line(login), address=ascii_line(address))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self._pending[envelope] = Pending(login=login)
        return OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options) -> str:
        cfg = self.config.smtp_in
        if cfg.require_auth and not session.authenticated:
            return AUTH_NEEDED
        pending = self._pending.setdefault(envelope, Pending())
        approval = approval_campaign(address, cfg.domain)
        if approval is not None or pending.approval is not None:
            if pending.recipients or pending.approval is not None:
                return ALONE
            pending.approval = approval
            envelope.rcpt_tos.append(address)
            return OK
        groups = self.listener.groups()
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
        try:
            if self.config.limits.countries:
                Guards.from_config(self.config).check_countries([r.phone_number for r in new])
        except LimitExceeded as exc:
            self.listener.count("limit_refused")
            log.info("RCPT refused for %s: %s", envelope.mail_from, exc)
            return not_allowed(str(exc))
        for r in new:
            pending.recipients[r.phone_number] = r
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        server.answer_sender = envelope.mail_from  # aiosmtpd resets the envelope before it pushes the answer
        try:
            return await self._data(envelope)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the edge: log, answer temporary, lose nothing
            log.exception("unexpected error handling a message from %s; answered 451", server.peer_host)
            return TRY_LATER

    async def _data(self, envelope: Envelope) -> str:
        listener = self.listener
        cfg = self.config.smtp_in
        pending = self._pending.get(envelope) or Pending()
        if not pending.recipients and pending.approval is None:
            return NO_RECIPIENT
        data = envelope.original_content or envelope.content
        if len(data) > cfg.max_size:  # counted as received, dots unstuffed (RFC 1870 §3)
            return too_big(cfg.max_size)
        read = partial(
            read_message,
            data,
            envelope.mail_from or "",
            cfg.region,
            own_address=address_of(self.config.smtp_out.sender),
            own_domain=cfg.domain,
        )
        if len(data) <= INLINE_PARSE:
            parsed = read()
        elif len(data) <= CHILD_PARSE:  # a large e-mail (HTML to text) takes CPU time: off the event loop
            parsed = await asyncio.to_thread(read)
        else:  # a child process: its GIL cannot delay callbacks (relay/mail/offload.py)
            parsed = await self.listener.child.run(read)
        if parsed.unreadable:
            self.listener.count("unreadable")
            return unreadable(parsed.unreadable)
        if parsed.automatic:
            return self._dropped(parsed.automatic, envelope)
        if pending.approval is not None:
            return await self._approval_answer(envelope, pending, data)
        if parsed.rejected:
            self.listener.count("refused")
            return refused(parsed.rejected)
        sender_email = envelope.mail_from.strip("<> ")
        if not pending.login and cfg.sender_check == "dkim":
            try:  # DNS queries and RSA: in a thread. The proven header From is who sent it and gets the replies.
                sender_email = await asyncio.to_thread(proof.prove, data, cfg)
            except NotProven as exc:
                self.listener.count("sender_refused")
                log.info("refused from %s: %s", envelope.mail_from, exc)
                return not_allowed(str(exc))
        tags, body = parsed.tags, parsed.body
        o = self.config.octopush
        text = body.text
        purpose = tags.purpose or o.purpose
        sms_type = tags.type or o.type
        if purpose == Purpose.WHOLESALE:
            try:
                text = with_stop_mention(text, sms_type, cfg.stop_mention)
            except ValidationError as exc:
                self.listener.count("refused")
                return refused(str(exc))
        message_id = parsed.message_id
        numbers = list(pending.recipients)
        if message_id:
            key = request_key(message_id, numbers)
        else:  # SPEC §5: a repeat without Message-ID is known by its sender, recipients and text
            key = request_key(f"{sender_email.lower()}\n{text}", numbers, salt="no-message-id")
        request = SendRequest.from_config(
            o,
            text=text,
            recipients=pending.recipients.values(),
            type=sms_type,
            purpose=purpose,
            sender=tags.sender,
            send_at=tags.send_at,
            with_replies=tags.with_replies,
            simulate=tags.simulate,
            origin=Origin.EMAIL,
            sender_email=sender_email,
            login=pending.login,
            message_id=message_id,
            thread_refs=tuple(parsed.thread),
            label=tags.label or await self._thread_label(parsed.references),
            confirm=cfg.confirm,
            trimmed=body.trimmed,
            request_key=key,
        )
        request, delayed = marketing.schedule(request, o, cfg.region)
        guards_now = Guards.from_config(self.config)
        try:
            request.validate()
        except RelayError as exc:
            self.listener.count("refused")
            return refused(str(exc))
        try:
            campaign_id, new = await listener.store.write(
                partial(_queue_once, req=request, retry_for=o.retry_for, guards=guards_now),
                small=len(request.recipients) <= SMALL_WRITE_RECIPIENTS,
            )
        except LimitExceeded as exc:
            self.listener.count("limit_refused")
            log.info("refused from %s: %s", sender_email, exc)
            return not_allowed(str(exc))
        except MailLoop as exc:
            return self._dropped(str(exc), envelope)
        except NothingToSend as exc:
            self.listener.count("refused")
            return refused(str(exc))
        except Exception as exc:  # noqa: BLE001 - the store failed: a temporary answer, the sender retries
            log.error("message not stored, answered 451: %s", exc)
            return TRY_LATER
        if not new:
            self.listener.count("duplicate")
            log.info("repeat of campaign #%d from %s: not sent again", campaign_id, sender_email)
            return f"250 2.0.0 Already queued as campaign {campaign_id}"
        listener.wake_sender()
        self.listener.count("queued")
        who = f"{sender_email} (login {pending.login})" if pending.login else sender_email
        log.info("campaign #%d queued from %s to %d number(s)", campaign_id, who, len(numbers))
        answer = f"250 2.0.0 Queued as campaign {campaign_id}"
        if guards_now.holds(request, len(numbers)):
            listener.wake_notifier()  # it e-mails the sender the question
            answer += f", held for approval: see the e-mail sent to {ascii_line(sender_email)}"
        elif delayed:
            when = request.send_at.astimezone(clock.region_timezone(cfg.region)).strftime("%Y-%m-%d %H:%M %Z")
            answer += f", to go at {when} (outside marketing hours)"
        return answer

    async def _approval_answer(self, envelope: Envelope, pending: Pending, data: bytes) -> str:
        """ "yes" / "oui" / "ok" sends a held campaign, "no" / "non" cancels it; only its own sender may answer."""
        listener, cfg = self.listener, self.config.smtp_in
        campaign_id = pending.approval
        sender = envelope.mail_from.strip("<> ")
        if not pending.login and cfg.sender_check == "dkim":
            try:
                sender = await asyncio.to_thread(proof.prove, data, cfg)
            except NotProven as exc:
                self.listener.count("sender_refused")
                return not_allowed(str(exc))
        owner = await listener.store.read(partial(guards.campaign_sender, campaign_id=campaign_id))
        if owner is None:
            return bad_recipient(f"there is no campaign {campaign_id} to approve")
        if owner.lower() != sender.lower():
            self.listener.count("sender_refused")
            log.info("approval of campaign #%d refused: %s is not its sender", campaign_id, sender)
            return not_allowed(f"only the sender of campaign {campaign_id} can approve or cancel it")
        try:
            word = first_word(extract_text(parse_message(data)).text)
        except Rejected:
            word = ""
        who = f"{sender} (login {pending.login})" if pending.login else sender
        if word in APPROVE_WORDS:
            change = partial(approve_campaign, campaign_id=campaign_id, config=self.config, by=who)
        elif word in CANCEL_WORDS:
            change = partial(cancel_held, campaign_id=campaign_id, by=who)
        else:
            return refused(f'answer "yes" to send campaign {campaign_id} or "no" to cancel it, as the first word')
        try:
            await listener.store.write(change)
        except NotHeld as exc:
            return f"250 2.0.0 Nothing done: {ascii_line(str(exc))}"
        listener.wake_sender()
        self.listener.count("approved" if word in APPROVE_WORDS else "cancelled")
        return f"250 2.0.0 Campaign {campaign_id} {'approved: it goes now' if word in APPROVE_WORDS else 'cancelled'}"

    def _dropped(self, why: str, envelope: Envelope) -> str:
        """Bounces, auto-replies, lists and loops: accepted, so no one retries them, and never an SMS."""
        self.listener.count("dropped_automatic")
        log.info("accepted and dropped (%s) from %s", why, envelope.mail_from or "<>")
        return "250 2.0.0 Accepted (automatic message: not sent as SMS)"

    async def _thread_label(self, refs: list[str]) -> str:
        """An answer with an empty subject keeps the label of the conversation it answers."""
        if not refs:
            return ""

        def lookup(db):
            for ref in reversed(refs):
                label = campaigns.label_of_message(db, ref)
                if label:
                    return label
            return ""

        return await self.listener.store.read(lookup)


_APPROVAL = re.compile(r"approve-([0-9]{1,18})")
APPROVE_WORDS = {"yes", "oui", "ok", "okay"}
CANCEL_WORDS = {"no", "non"}


def approval_campaign(address: str, domain: str) -> int | None:
    """The campaign an `approve-N@domain` recipient names, else None."""
    local, _, rcpt_domain = address.strip().strip("<>").rpartition("@")
    if rcpt_domain.strip().rstrip(".").lower() != domain:
        return None
    match = _APPROVAL.fullmatch(local.strip().lower())
    return int(match.group(1)) if match else None


def first_word(text: str) -> str:
    """The answer's first word, lower-case, without punctuation: "Yes!" and "OK," read as yes and ok."""
    words = text.split(maxsplit=1)
    return words[0].strip(".,;:!?()\"'").lower() if words else ""


class MailLoop(RelayError):
    """The e-mail carries a Message-ID the relay put on one it sent: a loop, dropped."""


def _queue_once(db, *, req: SendRequest, retry_for: float, guards: Guards | None = None) -> tuple[int, bool]:
    """The same Message-ID to the same recipients within 24 h is sent once; one the relay made, never.

    The loop check reads the messages table here, in the write it guards, instead of a read of its own.
    """
    if req.message_id and campaigns.made_here(db, message_id=req.message_id):
        raise MailLoop("a Message-ID this relay made (mail loop)")
    seen = campaigns.campaign_for_request(db, req.request_key)
    if seen:
        if clock.parse_iso(seen.created_at) > clock.now() - DUPLICATE_WINDOW:
            return seen.id, False
        # Older than 24 h: Octopush has forgotten the request_id too; send it as new.
        campaigns.retire_request_key(db, seen.id)
    return queue_campaign(db, req, retry_for=retry_for, guards=guards)


class SmtpListener:
    """Binds the SMTP port on the daemon's loop; STARTTLS always offered, AUTH only after it.

    It gets only what the handler uses: the running configuration and groups (asked for at each command, so
    a reload applies at once), the store, the login limiter, the metrics and the two workers' `wake`.
    """

    def __init__(
        self,
        config: ConfigSource,
        store: Store,
        *,
        groups: Callable[[], Mapping[str, Sequence[Recipient]]],
        logins: LoginGuard,
        metrics: Metrics,
        wake_sender: Callable[[], None],
        wake_notifier: Callable[[], None],
    ):
        self.config, self.store, self.groups = config, store, groups
        self.logins, self.metrics = logins, metrics
        self.wake_sender, self.wake_notifier = wake_sender, wake_notifier
        self.handler = Handler(self)
        self.child = ChildParser()
        self._server: asyncio.base_events.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.address: tuple[str, int] | None = None
        cfg = config().smtp_in
        self.cap = ConnectionCap("SMTP", "smtp_in.max_connections", cfg.max_connections, TOO_MANY_SESSIONS)

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def count(self, outcome: str) -> None:
        self.metrics.smtp_in.labels(outcome).inc()

    async def start(self) -> None:
        config = self.config()
        cfg = config.smtp_in
        if cfg.tls_cert:
            self._tls = await asyncio.to_thread(tls_context, cfg.tls_cert, cfg.tls_key)
        else:
            self._tls = await asyncio.to_thread(pem_context, await self._self_signed(config.storage.state_dir))
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._protocol, host=cfg.listen.host, port=cfg.listen.port)
        except OSError as exc:
            raise RelayError(f"smtp_in.listen: cannot listen on {cfg.listen}: {exc.strerror}") from None
        self.address = self._server.sockets[0].getsockname()[:2]

    async def _self_signed(self, state_dir: Path) -> str:
        """The self-signed key and certificate every node shares: made once, by whichever node starts first,
        and kept in the database (SPEC §8: all nodes agree; §5 kept it in the state directory, which one
        node's disk cannot be for the others). A certificate an older version left in the state directory is
        taken over. The database is as private as the files were (0600), and the key is never logged."""
        pem = await self.store.read(partial(meta.meta_get, key=SELF_SIGNED_KEY))
        if pem:
            return pem
        made = await asyncio.to_thread(legacy_self_signed, state_dir) or await asyncio.to_thread(make_self_signed)
        # Insert-if-absent: when two nodes start at once, both end up with the first one's.
        return await self.store.write(partial(meta.meta_setdefault, key=SELF_SIGNED_KEY, value=made))

    def _protocol(self) -> asyncio.Protocol:
        cfg = self.config().smtp_in
        self.cap.limit = cfg.max_connections  # a reload may change it
        if self.cap.full:
            return self.cap.refuse()
        return RelaySMTP(
            self.handler,
            listener=self,
            data_size_limit=transparency_bound(cfg.max_size),
            enable_SMTPUTF8=True,
            hostname=cfg.domain,
            ident="octorelay ESMTP",
            tls_context=self._tls,
            require_starttls=False,
            auth_required=False,
            auth_require_tls=True,
            # Per command; RCPT may come once per recipient, so its own bound follows max_recipients.
            command_call_limit={"*": cfg.max_commands, "RCPT": max(cfg.max_commands, cfg.max_recipients + 50)},
            # Reset by each valid command only: a silent or dripping client is cut after this long.
            timeout=cfg.command_timeout,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        await self.child.close()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The configured certificate and key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"smtp_in.tls_cert: cannot load {cert} / {key}: {exc}") from None
    return context


def pem_context(pem: str) -> ssl.SSLContext:
    """A context from a stored key and certificate (one PEM text). `ssl` loads a chain only from a file: a
    private file in a private temporary directory, gone once loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="octorelay-tls-") as folder:  # 0700
        path = Path(folder) / "selfsigned.pem"
        _write_private(path, pem.encode("ascii"))
        try:
            context.load_cert_chain(path)
        except (OSError, ssl.SSLError) as exc:
            # Never the PEM itself: it holds the private key.
            raise RelayError(
                f"the self-signed STARTTLS certificate stored in the database cannot be loaded ({exc}); "
                "set smtp_in.tls_cert/tls_key, or delete the meta key 'smtp_selfsigned_pem' to make a new one"
            ) from None
    return context


def legacy_self_signed(state_dir: Path) -> str | None:
    """The key and certificate an older version made in the state directory, so that an upgrade keeps them."""
    cert_path, key_path = state_dir / "smtp-selfsigned.crt", state_dir / "smtp-selfsigned.key"
    try:
        return key_path.read_text("ascii") + cert_path.read_text("ascii")
    except (OSError, UnicodeDecodeError):
        return None


def make_self_signed() -> str:
    """A new EC key and a ten-year self-signed certificate for it, as one PEM text (key first)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (key_pem + certificate.public_bytes(serialization.Encoding.PEM)).decode("ascii")


def _write_private(path: Path, data: bytes) -> None:
    """0600 whatever the umask (SPEC §8), also over a file left with wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)
        handle.write(data)
