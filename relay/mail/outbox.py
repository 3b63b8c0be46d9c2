"""The durable e-mail outbox: mail is committed with the state it belongs to, then a worker delivers it.

Delivery is at-least-once with a narrow window: a row is marked sent right
after the server accepts it, so a message the server accepted is never sent
again unless the process dies in between. Temporary failures (4xx, connection
errors, timeouts) are retried with `relay.backoff` until `max_age`; a 5xx
fails the message at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from functools import partial
from pathlib import Path

import aiosmtplib

from relay import backoff, clock
from relay.config import SmtpOut
from relay.mail.render import POLICY
from relay.metrics import Metrics
from relay.statuses import Delivery
from relay.storage import outbox as outbox_table
from relay.storage.database import Connection, Store
from relay.workers import Worker

log = logging.getLogger("relay.outbox")

CONCURRENCY = 4  # messages delivered at once, one SMTP connection each
# Seconds a claimed e-mail is hidden from other claims, renewed every third of it while its delivery lasts:
# a dead daemon's e-mails are taken over within a minute of its death (SPEC §8), a live one's never.
LEASE = 45.0
RENEW_EVERY = LEASE / 3
IDLE_WAIT = 60.0  # seconds between looks at the table when nothing is due (wake() cuts it short)
STOP_GRACE = 10.0  # seconds stop() lets deliveries in flight finish
KEEP_OPEN = 5.0  # seconds an idle session with the mail server is kept for the next e-mail


def serialise(msg: EmailMessage) -> bytes:
    """The message as SMTP sends it (CRLF); costly for a large digest, so callers may do it off the writer."""
    policy = msg.policy if isinstance(msg.policy, email.policy.EmailPolicy) else POLICY
    return msg.as_bytes(policy=policy.clone(linesep="\r\n"))


def queue_message(
    db: Connection, msg: EmailMessage, *, kind: str, recipients: Sequence[str], data: bytes | None = None
) -> int:
    """Queue `msg` for delivery; returns the outbox id.

    Synchronous on purpose: call it inside a `Store.write` function so the
    e-mail commits in the same transaction as the state it reports (a routed
    callback, an advanced digest watermark), never one without the other.
    `data` is `serialise(msg)` when the caller already made it.
    """
    return outbox_table.add_mail(
        db,
        kind=kind,
        recipients=list(recipients),
        message=data if data is not None else serialise(msg),
        message_id=str(msg.get("Message-ID", "")),
        subject=str(msg.get("Subject", "")),
        now=clock.iso(),
    )


# ------------------------------------------------------------------ delivery outcomes


@dataclass
class Outcome:
    """What one delivery attempt decided about its row."""

    status: Delivery
    error: str | None = None
    retry_recipients: list[str] | None = None  # on partial acceptance: only those still to try


def _response_error(code: int, message: str) -> str:
    return f"{code} {' '.join(str(message).split())}"


def _classify_refusals(refused: dict[str, tuple[int, str]], recipients: Sequence[str]) -> Outcome:
    """Some or all recipients were refused: retry only the 4xx ones, give up the 5xx ones."""
    temporary = [r for r in recipients if r in refused and 400 <= refused[r][0] < 500]
    detail = "; ".join(f"{r}: {_response_error(*refused[r])}" for r in recipients if r in refused)
    accepted = [r for r in recipients if r not in refused]
    if temporary:
        return Outcome(Delivery.RETRY, detail, temporary)
    if accepted:
        return Outcome(Delivery.SENT, f"refused: {detail}")
    return Outcome(Delivery.FAILED, detail)


# ------------------------------------------------------------------ sessions with the mail server


class Sessions:
    """Sessions with the outgoing mail server, kept open from one e-mail to the next, as MTAs keep theirs.

    A new session costs a TCP connect, the greeting, EHLO, STARTTLS and its TLS handshake, AUTH, and a QUIT at
    the end; a kept one costs MAIL, RCPT and DATA. There is at most one per delivery in flight (CONCURRENCY),
    and one idle for KEEP_OPEN seconds is closed: far sooner than a server drops an idle client (five
    minutes, RFC 5321 §4.5.3.2.7).
    """

    def __init__(self, config: SmtpOut, tls_context: ssl.SSLContext | None):
        self.config = config
        # Made once, not at every new session: loading the system's CA certificates takes milliseconds.
        if tls_context is None and config.security in ("tls", "starttls"):
            tls_context = ssl.create_default_context()
        self.tls_context = tls_context
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (session, time.monotonic() it was put back)
        self._closing: set[asyncio.Task] = set()

    async def take(self, *, new: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """An open session and whether it was kept from an earlier e-mail; `new`: never a kept one."""
        now = time.monotonic()
        while self._idle and not new:
            session, since = self._idle.pop()
            if session.is_connected and now - since < KEEP_OPEN:
                return session, True
            self._quit(session)
        cfg = self.config
        session = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username or None,
            password=cfg.password or None,
            use_tls=cfg.security == "tls",
            # False, not None: aiosmtplib would otherwise upgrade whenever the server offers it.
            start_tls=cfg.security == "starttls",
            tls_context=self.tls_context if cfg.security in ("tls", "starttls") else None,
            timeout=cfg.timeout,
        )
        try:
            await session.connect()
        except BaseException:  # a timeout or a cancel during the greeting, STARTTLS or AUTH: no open socket left
            session.close()
            raise
        return session, False

    def put_back(self, session: aiosmtplib.SMTP) -> None:
        self._idle.append((session, time.monotonic()))

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close_idle(self) -> None:
        """QUIT the sessions idle for KEEP_OPEN seconds (the outbox's loop calls it when it wakes)."""
        now = time.monotonic()
        kept = []
        for session, since in self._idle:
            if now - since < KEEP_OPEN:
                kept.append((session, since))
            else:
                self._quit(session)
        self._idle = kept

    async def close(self) -> None:
        for session, _ in self._idle:
            self._quit(session)
        self._idle = []
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _quit(self, session: aiosmtplib.SMTP) -> None:
        """Say QUIT in the background (a slow server must not hold a delivery), else just close."""
        if not session.is_connected:
            session.close()
            return
        task = asyncio.create_task(self._polite_quit(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _polite_quit(session: aiosmtplib.SMTP) -> None:
        try:
            async with asyncio.timeout(2):
                await session.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            session.close()


# ------------------------------------------------------------------ the worker


class Outbox(Worker):
    """Delivers queued e-mails through SMTP or into a Maildir, with retries, CONCURRENCY at a time."""

    name = "outbox"
    idle = IDLE_WAIT
    stop_grace = STOP_GRACE
    log = log

    def __init__(
        self,
        config: SmtpOut,
        store: Store,
        metrics: Metrics | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        only: Sequence[int] | None = None,
    ):
        super().__init__(store)
        self.config = config
        # A command (`octorelay digest`) delivers only its own rows: the daemon's are the daemon's.
        self.only = list(only) if only is not None else None
        self.metrics = metrics
        self.tls_context = tls_context
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self._released = False
        # E-mails claimed and not yet settled: their leases are renewed. Not `busy`, which holds a task until it
        # ends: a lease renewed after the settle would push a retry's backoff out to a whole lease.
        self._delivering: set[int] = set()
        self._envelope_from = email.utils.parseaddr(config.sender)[1] or config.sender
        self._sessions = Sessions(config, tls_context)

    # ------------------------------------------------------------ the loop

    async def stop(self, timeout: float | None = None) -> None:
        await super().stop(timeout)
        await self._sessions.close()

    async def run_once(self) -> float:
        self._sessions.close_idle()
        if not self._released and self.only is None:
            count = await self.store.write(_release)
            self._released = True
            if count:
                log.info("outbox: %d e-mails pending at start; delivering them now", count)
        if self._delivering:
            until = clock.iso(clock.now() + timedelta(seconds=LEASE))
            renew = partial(outbox_table.renew_claims, ids=sorted(self._delivering), until=until)
            await self.renew_leases(renew, RENEW_EVERY)
        free = CONCURRENCY - len(self._inflight)
        rows = []
        if free > 0:
            rows = await self.store.write(partial(_claim, limit=free, lease=LEASE, only=self.only, busy=self.busy))
        for row in rows:
            self._delivering.add(row["id"])
            self.spawn(row["id"], self._deliver(row))
        if rows and len(self._inflight) < CONCURRENCY:
            return 0  # there may be more due right now
        wait = self.idle
        if len(self._inflight) < CONCURRENCY:
            state = await self.store.read(_next_due)
            if self.metrics is not None:
                self.metrics.outbox_depth.set(state["pending"])
            if state["next"] is not None:
                wait = min(wait, max(0.0, (clock.parse_iso(state["next"]) - clock.now()).total_seconds()))
        if self._inflight:  # deliveries under way: back soon to renew their leases
            wait = min(wait, RENEW_EVERY)
        if self._sessions.idle:  # back to close the sessions no e-mail needed
            wait = min(wait, KEEP_OPEN)
        return wait

    # ------------------------------------------------------------ one message

    async def _deliver(self, row: dict) -> None:
        recipients = json.loads(row["recipients"])
        started = time.monotonic()
        try:
            outcome = await self._attempt(row, recipients)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or an odd error must not lose the message
            log.exception("outbox: e-mail %s: unexpected error; will retry", row["id"])
            outcome = Outcome(Delivery.RETRY, f"{type(exc).__name__}: {exc}")
        self._delivering.discard(row["id"])  # writes run in order: no renewal after this settle
        try:
            # Retried until it commits: the mail server's answer is kept in memory meanwhile, so a database
            # that is down for a while (a restart, a failover, a full disk) does not make a delivered e-mail go
            # again. Only a death of this process between the 250 and the commit still can (SPEC §8).
            final = await self.write_until_committed(
                partial(_settle, row_id=row["id"], outcome=outcome, max_age=self.config.max_age),
                f"outbox: e-mail {row['id']}: recording the outcome",
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the row keeps its lease and comes back after it
            log.exception("outbox: e-mail %s: cannot record the outcome", row["id"])
            return
        self._count(row, final, outcome, time.monotonic() - started)

    async def _attempt(self, row: dict, recipients: list[str]) -> Outcome:
        if self.config.transport == "maildir":
            try:
                await asyncio.to_thread(deliver_maildir, Path(self.config.maildir), row["message"])
            except OSError as exc:  # disk full, permissions: the operator can fix it, so keep the message
                return Outcome(Delivery.RETRY, f"{type(exc).__name__}: {exc}")
            return Outcome(Delivery.SENT)
        return await self._send_smtp(row["message"], recipients)

    async def _send_smtp(self, message: bytes, recipients: list[str]) -> Outcome:
        try:
            # aiosmtplib's timeout is per command; this bounds the whole delivery within the row's lease.
            async with asyncio.timeout(self.config.timeout * 4):
                refused = await self._sendmail(message, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _classify_refusals({e.recipient: (e.code, e.message) for e in exc.recipients}, recipients)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A configuration problem, not this message's: keep it until the operator fixes the credentials.
            return Outcome(Delivery.RETRY, f"authentication refused: {_response_error(exc.code, exc.message)}")
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                return Outcome(Delivery.FAILED, _response_error(exc.code, exc.message))
            return Outcome(Delivery.RETRY, _response_error(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused or lost, timeouts, TLS failures, STARTTLS not offered.
            return Outcome(Delivery.RETRY, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if refused:
            return _classify_refusals({r: (resp.code, resp.message) for r, resp in refused.items()}, recipients)
        return Outcome(Delivery.SENT)

    async def _sendmail(self, message: bytes, recipients: list[str]) -> dict:
        """Send on a kept session, else a new one; the refused recipients. A session that failed is closed,
        never kept.

        A kept session whose MAIL FROM the server refused for now (421 closing, or a 4xx such as "too many
        messages in this session") is replaced by a new one at once: nothing of the message was sent. Any
        other failure (a hang-up or a timeout after MAIL FROM: the server may have the message) is retried
        after the backoff, as on a new session. A session the server closed while it was idle is never
        taken: it reads as not connected.
        """
        session, kept = await self._sessions.take()
        while True:  # at most twice: a new session is not kept
            try:
                refused, _ = await session.sendmail(self._envelope_from, recipients, message)
            except BaseException as exc:
                session.close()
                if kept and isinstance(exc, aiosmtplib.SMTPSenderRefused) and 400 <= exc.code < 500:
                    session, kept = await self._sessions.take(new=True)
                    continue
                raise
            self._sessions.put_back(session)
            return refused

    def _count(self, row: dict, final: dict, outcome: Outcome, seconds: float) -> None:
        kind = row["kind"] or "other"
        where = "maildir" if self.config.transport == "maildir" else f"{self.config.host}:{self.config.port}"
        status = final["status"]
        if status == Delivery.GONE:
            return  # deleted meanwhile (db purge): nothing to count
        if status == Delivery.SENT:
            self.sent += 1
            log.info(
                "e-mail %s (%s) sent to %s via %s in %.2fs%s",
                row["id"],
                kind,
                ", ".join(json.loads(row["recipients"])),
                where,
                seconds,
                f" ({outcome.error})" if outcome.error else "",
            )
        elif status == Delivery.FAILED:
            self.failed += 1
            log.warning(
                "e-mail %s (%s) failed after %d attempts: %s", row["id"], kind, final["attempts"], final["last_error"]
            )
        else:
            self.retried += 1
            log.info(
                "e-mail %s (%s) not delivered (attempt %d): %s; next try at %s",
                row["id"],
                kind,
                final["attempts"],
                final["last_error"],
                final["next_attempt_at"],
            )
        if self.metrics is None:
            return
        if status == Delivery.SENT:
            self.metrics.emails_sent.labels(kind=kind).inc()
        elif status == Delivery.FAILED:
            self.metrics.emails_failed.labels(kind=kind).inc()
        else:
            self.metrics.emails_retried.inc()


# ------------------------------------------------------------------ database functions (run in the store's threads)


def _release(db: Connection) -> int:
    """At start, make every pending row due now: work pending at a restart (in backoff, or leased by a
    process that died mid-delivery) is picked up at once, as SPEC §4 asks."""
    return outbox_table.make_pending_due(db, clock.iso())


def _claim(
    db: Connection, *, limit: int, lease: float, only: list[int] | None = None, busy: list[int] | None = None
) -> list[outbox_table.ClaimedMail]:
    """Take up to `limit` due rows, oldest first, and hide them for `lease` seconds.

    The lease keeps a row from being claimed twice (by the next pass, or by a
    second process such as `octorelay digest`) while it is in flight; if the
    process dies, the row is due again once the lease ends (or at once at the
    next start, see `_release`). `busy` are this process's deliveries still in flight: never claimed again,
    even past their lease.
    """
    now = clock.now()
    until = clock.iso(now + timedelta(seconds=lease))
    return outbox_table.claim_due(db, now=clock.iso(now), until=until, limit=limit, only=only, busy=busy)


def _settle(db: Connection, *, row_id: int, outcome: Outcome, max_age: float) -> dict:
    """Record one attempt's outcome; a retry past `max_age` becomes a failure."""
    row = outbox_table.attempts_of(db, row_id)
    if row is None:
        return {"status": "gone", "attempts": 0, "last_error": None, "next_attempt_at": None}
    attempts = row.attempts + 1
    now = clock.now()
    status, error, next_at = outcome.status, outcome.error, None
    if status == "sent":
        outbox_table.record_delivered(db, row_id, attempts=attempts, error=error, at=clock.iso(now))
    elif status == "retry" and (now - clock.parse_iso(row.created_at)).total_seconds() > max_age:
        status = "failed"
        error = f"gave up after {attempts} attempts over {timedelta(seconds=int(max_age))}: {error}"
        outbox_table.record_failed(db, row_id, attempts=attempts, error=error)
    elif status == "retry":
        next_at = clock.iso(now + timedelta(seconds=backoff.delay(attempts)))
        outbox_table.record_retry(
            db, row_id, attempts=attempts, error=error, next_at=next_at, recipients=outcome.retry_recipients
        )
    else:
        outbox_table.record_failed(db, row_id, attempts=attempts, error=error)
    return {"status": status, "attempts": attempts, "last_error": error, "next_attempt_at": next_at}


_next_due = outbox_table.next_due


# ------------------------------------------------------------------ Maildir


_counter = 0


def deliver_maildir(root: Path, message: bytes) -> Path:
    """Write `message` into the Maildir `root` atomically: tmp/ first, fsync, then rename into new/.

    Not `mailbox.Maildir.add`: it does not fsync, and a relay that says
    "delivered" should mean it survives a power cut.
    """
    global _counter
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _counter += 1
    moment = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
    name = f"{int(moment)}.M{int(moment % 1 * 1e6)}P{os.getpid()}Q{_counter}R{secrets.token_hex(8)}.{host}"
    tmp, new = root / "tmp" / name, root / "new" / name
    # Maildir files use the local line ending, not SMTP's CRLF.
    data = message.replace(b"\r\n", b"\n")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, new)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dirfd = os.open(root / "new", os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    return new
