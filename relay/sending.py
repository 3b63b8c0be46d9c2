"""The durable send queue: a request is committed first, then a worker calls Octopush.

Each Octopush call (at most 500 recipients) is a `sends` row with a fixed
`request_id`, so a retry after a timeout, a lost answer or a restart can never
send twice: Octopush answers code 120 and the relay counts it as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlite_utils import Database

from relay import backoff, clock
from relay.errors import RelayError
from relay.octopush.callbacks import normalise_number
from relay.octopush.client import Campaign, OctopushClient, Recipient, SendResult, split, validate
from relay.octopush.errors import OctopushError, TemporaryError
from relay.octopush.parts import count_parts
from relay.storage import queries
from relay.storage.database import Store, StoreError

log = logging.getLogger("relay.sending")
WORKERS = 4


class NothingToSend(RelayError):
    """Every recipient of a marketing send opted out with STOP."""


@dataclass(frozen=True)
class SendRequest:
    """What an e-mail, the `send` command or the web form asks for."""

    text: str
    recipients: tuple[Recipient, ...]
    type: str
    purpose: str
    sender: str = ""
    send_at: datetime | None = None
    with_replies: bool = True
    simulation: bool = False
    auto_optimize_text: bool = True
    origin: str = "cli"
    sender_email: str = ""
    message_id: str = ""
    label: str = ""
    confirm: str = "none"
    trimmed: bool = False  # the e-mail held more than its new words: the confirmation says what was sent
    request_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def campaign(self, recipients: Sequence[Recipient] | None = None, request_id: str | None = None) -> Campaign:
        return Campaign(
            text=self.text,
            recipients=tuple(self.recipients if recipients is None else recipients),
            type=self.type,
            purpose=self.purpose,
            sender=self.sender,
            send_at=self.send_at,
            with_replies=self.with_replies,
            simulation_mode=self.simulation,
            auto_optimize_text=self.auto_optimize_text,
            request_id=request_id,
        )

    def validate(self, now: datetime | None = None) -> None:
        """Octopush's rules, checked before anything is stored (ValidationError)."""
        for call in split(self.campaign()):
            validate(call, now)


def request_key(message_id: str, numbers: Sequence[str]) -> str:
    """The idempotency key of an e-mail: its Message-ID and its recipients."""
    material = message_id.strip() + "\n" + "\n".join(sorted(numbers))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def queue_campaign(db: Database, req: SendRequest, *, retry_for: float) -> tuple[int, bool]:
    """Store a campaign and its Octopush calls (inside `Store.write`); returns (id, newly queued).

    A marketing send leaves out numbers that sent STOP; when none is left it
    raises NothingToSend and nothing is stored.
    """
    existing = db.execute("SELECT id FROM campaigns WHERE request_key = ?", [req.request_key]).fetchone()
    if existing:
        return existing[0], False
    recipients = list(req.recipients)
    removed: list[str] = []
    if req.purpose == "wholesale":
        removed = [r.phone_number for r in recipients if queries.is_opted_out(db, r.phone_number)]
        recipients = [r for r in recipients if r.phone_number not in removed]
        if not recipients:
            raise NothingToSend(f"every recipient opted out with STOP ({', '.join(removed)}); nothing was sent")
    parts = count_parts(req.text)
    now = clock.iso()
    campaign_id = queries.insert(
        db,
        "campaigns",
        {
            "request_key": req.request_key,
            "origin": req.origin,
            "sender_email": req.sender_email,
            "message_id": req.message_id,
            "label": req.label,
            "text": req.text,
            "type": req.type,
            "purpose": req.purpose,
            "sender": req.sender,
            "send_at": clock.iso(req.send_at) if req.send_at else None,
            "with_replies": int(req.with_replies),
            "simulation": int(req.simulation),
            "status": "queued",
            "contacts": len(recipients),
            "encoding": parts.encoding,
            "unicode_chars": "".join(parts.unicode_chars),
            "removed_optouts": json.dumps(removed),
            "confirm": req.confirm,
            "trimmed": int(req.trimmed),
            "created_at": now,
        },
    )
    deadline = clock.iso(clock.now() + timedelta(seconds=retry_for))
    # One Octopush call per 500 recipients. The request_id is the request's key and this campaign's id:
    # fixed for every retry of this campaign, new for a repeat sent as new after 24 h (whose older call may
    # have reached Octopush late, within its own 24 h). "-1", "-2"… are added when there are several calls.
    request_id = f"{req.request_key}-{campaign_id}"
    for index, call in enumerate(split(req.campaign(recipients, request_id=request_id)), start=1):
        send_id = queries.insert(
            db,
            "sends",
            {
                "campaign_id": campaign_id,
                "chunk": index,
                "request_id": call.request_id,
                "status": "pending",
                "deadline": deadline,
                "created_at": now,
            },
        )
        queries.insert_many(
            db,
            "recipients",
            [
                {
                    "campaign_id": campaign_id,
                    "send_id": send_id,
                    "number": r.phone_number,
                    "country": _country(r.phone_number),
                    "first_name": r.first_name,
                    "last_name": r.last_name,
                    "params": json.dumps(list(r.params)),
                }
                for r in call.recipients
            ],
        )
    if req.message_id:
        number = recipients[0].phone_number if len(recipients) == 1 else ""
        queries.remember_message(db, req.message_id, number=number, campaign_id=campaign_id, direction="in")
    return campaign_id, True


def _country(number: str) -> str:
    return normalise_number(number)[1]


class SendQueue:
    """Works through pending `sends` rows; safe to restart at any point."""

    def __init__(
        self,
        store: Store,
        client: OctopushClient,
        *,
        simulation: bool = False,
        auto_optimize_text: bool = True,
        on_finished: Callable[[], object] | None = None,
        metrics=None,
        only_campaign: int | None = None,
    ):
        self.store = store
        self.client = client
        self.simulation = simulation
        self.auto_optimize_text = auto_optimize_text
        self.on_finished = on_finished
        # `octorelay send` works its own campaign only, and leaves the daemon's rows alone.
        self.only_campaign = only_campaign
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight: dict[int, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(WORKERS)
        self._finished: dict[int, asyncio.Future] = {}

    async def start(self) -> None:
        if self.only_campaign is None:
            # A send left "sending" by a crash goes again: its request_id makes that safe.
            await self.store.write(
                lambda db: db.execute("UPDATE sends SET status = 'pending' WHERE status = 'sending'")
            )
        self._task = asyncio.create_task(self._run(), name="send-queue")

    async def stop(self, timeout: float = 5.0) -> None:
        """Lets calls in flight finish for up to `timeout`, then cancels them (within the daemon's 10 s).

        A cancelled send stays `sending` and goes again at the next start, under the same request_id.
        """
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight.values()), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, campaign_id: int) -> dict:
        """Wait until a campaign is sent or failed; returns its row (for the `send` command)."""
        while True:
            row = await self.store.read(partial(queries.campaign, campaign_id=campaign_id))
            if row and row["status"] in ("sent", "failed"):
                return row
            future = self._finished.setdefault(campaign_id, asyncio.get_running_loop().create_future())
            self.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), 1.0)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            room = WORKERS * 2 - len(self._inflight)
            rows = []
            if room > 0:
                try:
                    rows = await self.store.read(
                        partial(_pending, exclude=list(self._inflight), limit=room, campaign=self.only_campaign)
                    )
                except Exception:  # noqa: BLE001 - a worker logs and goes on
                    log.exception("send queue: cannot read pending sends")
            for row in rows:
                if row["id"] not in self._inflight:
                    task = asyncio.create_task(self._send(row["id"]), name=f"send-{row['id']}")
                    self._inflight[row["id"]] = task
                    task.add_done_callback(lambda t, i=row["id"]: self._inflight.pop(i, None))
            await backoff.nap(self._wake, 30)

    async def _send(self, send_id: int) -> None:
        async with self._slots:
            try:
                await self._send_one(send_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the queue alive; the row goes back to pending
                log.exception("send #%d: unexpected error; will retry", send_id)
                await self._keep_trying(
                    lambda db: db.execute(
                        "UPDATE sends SET status = 'pending' WHERE id = ? AND status = 'sending'", [send_id]
                    ),
                    f"send #{send_id}: putting it back in the queue",
                )
            finally:
                self.wake()  # rows beyond the last read (LIMIT) are waiting for a free slot

    async def _keep_trying(self, write, what: str):
        """A write this send cannot go on without, retried until it commits (the disk may be full for a while).

        Octopush's answer is kept in memory meanwhile, so a send that went out is recorded with its ticket
        instead of going again. Stopped meanwhile, the row stays `sending` and the next start re-queues it:
        the same request_id then gets code 120 and nothing is sent twice.
        """
        attempt = 0
        while True:
            try:
                return await self.store.write(write, small=True)
            except StoreError as exc:
                attempt += 1
                wait = backoff.delay(attempt)
                log.error("%s failed (%s); retrying in %.0f s", what, exc, wait)
                await asyncio.sleep(wait)

    async def _send_one(self, send_id: int) -> None:
        claimed = await self.store.write(partial(_claim, send_id=send_id), small=True)
        if claimed is None:
            return
        campaign = Campaign(
            text=claimed["text"],
            recipients=tuple(
                Recipient(
                    r["number"], r["first_name"] or "", r["last_name"] or "", tuple(json.loads(r["params"] or "[]"))
                )
                for r in claimed["recipients"]
            ),
            type=claimed["type"],
            purpose=claimed["purpose"],
            sender=claimed["sender"] or "",
            send_at=_still_ahead(claimed["send_at"]),
            with_replies=bool(claimed["with_replies"]),
            simulation_mode=bool(claimed["simulation"]) or self.simulation,
            auto_optimize_text=self.auto_optimize_text,
            request_id=claimed["request_id"],
        )
        loop = asyncio.get_running_loop()
        remaining = (clock.parse_iso(claimed["deadline"]) - clock.now()).total_seconds()
        error: RelayError | None = None
        result: SendResult | None = None
        try:
            result = await self.client.send(campaign, deadline=loop.time() + max(0.0, remaining))
        except (OctopushError, TemporaryError) as exc:
            error = exc
        except RelayError as exc:  # a local validation error: this request can never go
            error = exc
        finished = await self._keep_trying(
            partial(_record, send_id=send_id, result=result, error=error), f"send #{send_id}: recording the answer"
        )
        if self.metrics:
            if error is None:
                self.metrics.sms_sent.inc()
            else:
                self.metrics.sms_failed.labels(str(getattr(error, "code", "") or "")).inc()
        if error is None:
            log.info(
                "send #%d sent: ticket %s, %d contacts, %d SMS%s",
                send_id,
                result.ticket or "(already sent)",
                result.contacts,
                result.sms_needed,
                " (simulation)" if campaign.simulation_mode else "",
            )
        else:
            log.warning("send #%d failed: %s", send_id, error)
        if finished is not None:
            campaign_id, to_notify = finished
            future = self._finished.pop(campaign_id, None)
            if future and not future.done():
                future.set_result(None)
            if to_notify and self.on_finished:
                self.on_finished()  # the notifier's sweep e-mails the sender


def _still_ahead(send_at: str | None) -> datetime | None:
    """A time checked when the request was accepted; if a backlog or a restart made us late, send now."""
    if not send_at:
        return None
    moment = clock.parse_iso(send_at)
    return moment if moment > clock.now() + timedelta(seconds=30) else None


def _pending(db: Database, *, exclude: list[int], limit: int, campaign: int | None = None) -> list[dict]:
    """The next pending calls, skipping those already waiting for a worker."""
    skip = f"AND id NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    mine = "AND campaign_id = ?" if campaign is not None else ""
    sql = f"SELECT id FROM sends WHERE status = 'pending' {skip} {mine} ORDER BY id LIMIT ?"
    return [dict(r) for r in db.query(sql, [*exclude, *([campaign] if campaign is not None else []), limit])]


def _claim(db: Database, *, send_id: int) -> dict | None:
    cur = db.execute(
        "UPDATE sends SET status = 'sending', attempts = attempts + 1 WHERE id = ? AND status = 'pending'", [send_id]
    )
    if not cur.rowcount:
        return None
    row = dict(
        next(
            db.query(
                """SELECT s.request_id, s.deadline, c.text, c.type, c.purpose, c.sender, c.send_at,
                          c.with_replies, c.simulation
                   FROM sends s JOIN campaigns c ON c.id = s.campaign_id WHERE s.id = ?""",
                [send_id],
            )
        )
    )
    row["recipients"] = [
        dict(r)
        for r in db.query(
            "SELECT number, first_name, last_name, params FROM recipients WHERE send_id = ? ORDER BY id", [send_id]
        )
    ]
    return row


def _record(db: Database, *, send_id: int, result: SendResult | None, error) -> tuple[int, bool] | None:
    """Store one call's answer; when it was the campaign's last, settle the campaign.

    Returns None while the campaign has calls left, else (campaign id, whether the notifier has an e-mail
    to consider). A campaign sent with `confirm` "none" or "errors" calls for no e-mail and is marked
    notified here, sparing the notifier a sweep per campaign.
    """
    now = clock.iso()
    if result is not None:
        db.execute(
            """UPDATE sends SET status = 'sent', ticket = ?, already_sent = ?, sms_needed = ?, cost = ?,
                                residual_credit = ?, sent_at = ? WHERE id = ?""",
            [
                result.ticket,
                int(result.already_sent),
                result.sms_needed,
                result.total_cost,
                result.residual_credit,
                now,
                send_id,
            ],
        )
        if result.ticket:
            queries.apply_receipts(db, ticket=result.ticket)
        if result.residual_credit is not None:
            queries.meta_set(db, "residual_credit", str(result.residual_credit))
    else:
        db.execute(
            "UPDATE sends SET status = 'failed', error_code = ?, error = ? WHERE id = ?",
            [getattr(error, "code", None), str(error), send_id],
        )
    campaign_id, confirm = db.execute(
        "SELECT s.campaign_id, c.confirm FROM sends s JOIN campaigns c ON c.id = s.campaign_id WHERE s.id = ?",
        [send_id],
    ).fetchone()
    states = [r[0] for r in db.execute("SELECT status FROM sends WHERE campaign_id = ?", [campaign_id])]
    if any(s in ("pending", "sending") for s in states):
        return None
    totals = db.execute(
        "SELECT sum(sms_needed), sum(cost), min(residual_credit) FROM sends WHERE campaign_id = ? AND status = 'sent'",
        [campaign_id],
    ).fetchone()
    failed = db.execute(
        "SELECT error_code, error FROM sends WHERE campaign_id = ? AND status = 'failed' ORDER BY id LIMIT 1",
        [campaign_id],
    ).fetchone()
    quiet = not failed and confirm != "all"
    db.execute(
        """UPDATE campaigns SET status = ?, sms_needed = ?, cost = ?, residual_credit = ?, error_code = ?,
                                error = ?, finished_at = ?, notified = ? WHERE id = ?""",
        [
            "failed" if failed else "sent",
            totals[0],
            totals[1],
            totals[2],
            failed[0] if failed else None,
            failed[1] if failed else None,
            now,
            int(quiet),
            campaign_id,
        ],
    )
    return campaign_id, not quiet
