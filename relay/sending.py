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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from relay import backoff, clock, numbers
from relay.config import Config, Limits, Octopush
from relay.errors import CannotCancel, RelayError
from relay.octopush.client import Campaign, OctopushClient, Recipient, SendResult, split, validate
from relay.octopush.errors import OctopushError, TemporaryError
from relay.octopush.parts import count_parts
from relay.statuses import CampaignStatus, Confirm, Origin, Purpose, SendStatus
from relay.storage import callbacks, campaigns, guards, meta, queues
from relay.storage.database import Connection, Store, StoreError
from relay.workers import Worker

log = logging.getLogger("relay.sending")
WORKERS = 4
# How often a daemon renews its claims of the calls it is making (a call may retry for `retry_for`): well within
# the claim's lease, so that another node takes over only the calls of a daemon that stopped renewing (died).
RENEW_EVERY = campaigns.SEND_LEASE / 3
# SPEC §5: a scheduled campaign to fewer numbers than this goes to Octopush at once with its send_at (Octopush can
# cancel it until 10 minutes before); a larger one waits in our own queue until its time, cancellable until then.
HAND_OVER_BELOW = 3


class NothingToSend(RelayError):
    """Every recipient of a marketing send opted out with STOP."""


class LimitExceeded(RelayError):
    """A `[limits]` rule refuses this campaign (SMTP 550 5.7.1); the message names the limit."""


@dataclass(frozen=True)
class Guards:
    """The `[limits]` of the running configuration, and the time zone whose midnight starts a new day."""

    limits: Limits
    tz: ZoneInfo

    @classmethod
    def from_config(cls, config: Config) -> Guards:
        return cls(config.limits, clock.region_timezone(config.smtp_in.region))

    def day(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """Today's start and the next midnight, in the region's time zone."""
        local = (now or clock.now()).astimezone(self.tz)
        start = datetime.combine(local.date(), time(), self.tz)
        return start, datetime.combine(local.date() + timedelta(days=1), time(), self.tz)

    def check_countries(self, numbers: Sequence[str]) -> None:
        """`[limits] countries`: every number's country must be listed (when the list is not empty)."""
        allowed = self.limits.countries
        if not allowed:
            return
        for number in numbers:
            country = _country(number)
            if country not in allowed:
                raise LimitExceeded(
                    f"{number} is a number of {country or 'an unknown country'}, outside [limits] countries "
                    f"({', '.join(allowed)})"
                )

    def check_spend(self, db: Connection, req: SendRequest, needed: int) -> None:
        """`daily_sms` and `sender_daily_sms`, read in the same transaction as the insert that follows."""
        start, reset = self.day()
        since = clock.iso(start)
        resets = reset.strftime("%Y-%m-%d %H:%M %Z")
        rules = [("daily_sms", self.limits.daily_sms, None)]
        if req.origin == Origin.EMAIL and req.sender_email:
            rules.append(("sender_daily_sms", self.limits.sender_daily_sms, req.sender_email))
        for name, limit, sender in rules:
            if not limit:
                continue
            used = guards.used_since(db, since, sender=sender)
            if used + needed > limit:
                whose = f" for {sender}" if sender else ""
                raise LimitExceeded(
                    f"[limits] {name}{whose} would be exceeded: {used} of {limit} SMS used today, this campaign "
                    f"needs {needed}; it resets at {resets}"
                )

    def holds(self, req: SendRequest, numbers: int) -> bool:
        """An e-mail to more than `approve_over` numbers waits for its sender's approval."""
        return bool(self.limits.approve_over) and req.origin == Origin.EMAIL and numbers > self.limits.approve_over


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
    origin: Origin = Origin.CLI
    sender_email: str = ""
    login: str = ""  # the SMTP AUTH login that sent it, if any
    message_id: str = ""
    thread_refs: tuple[str, ...] = ()  # the asking e-mail's References (else its In-Reply-To), oldest first
    label: str = ""
    confirm: Confirm = Confirm.NONE
    trimmed: bool = False  # the e-mail held more than its new words: the confirmation says what was sent
    request_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_config(
        cls,
        octopush: Octopush,
        *,
        text: str,
        recipients: Iterable[Recipient],
        origin: Origin,
        type: str | None = None,
        purpose: str | None = None,
        sender: str | None = None,
        with_replies: bool | None = None,
        simulate: bool = False,
        **fields,
    ) -> SendRequest:
        """A request with `[octopush]`'s defaults for what its asker left unsaid (None): the one place an
        e-mail, `octorelay send` and the web form get them. In simulation mode every request is a simulation."""
        return cls(
            text=text,
            recipients=tuple(recipients),
            type=type or octopush.type,
            purpose=purpose or octopush.purpose,
            sender=octopush.sender if sender is None else sender,
            with_replies=octopush.with_replies if with_replies is None else with_replies,
            simulation=simulate or octopush.mode == "simulation",
            auto_optimize_text=octopush.auto_optimize_text,
            origin=origin,
            **fields,
        )

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


def request_key(message_id: str, numbers: Sequence[str], *, salt: str = "") -> str:
    """The idempotency key of an e-mail: its Message-ID (or what stands for it) and its recipients."""
    material = (salt + "\n" if salt else "") + message_id.strip() + "\n" + "\n".join(sorted(numbers))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def queue_campaign(
    db: Connection, req: SendRequest, *, retry_for: float, guards: Guards | None = None
) -> tuple[int, bool]:
    """Store a campaign and its Octopush calls (inside `Store.write`); returns (id, newly queued).

    A marketing send leaves out numbers that sent STOP; when none is left it
    raises NothingToSend and nothing is stored. With `guards`, `[limits]` are
    checked here, in the transaction that stores the campaign (LimitExceeded),
    and a campaign over `approve_over` numbers is stored `held`.
    """
    existing = campaigns.campaign_for_request(db, req.request_key)
    if existing:
        return existing.id, False
    recipients = list(req.recipients)
    removed: list[str] = []
    if req.purpose == Purpose.WHOLESALE:
        removed = [r.phone_number for r in recipients if callbacks.is_opted_out(db, r.phone_number)]
        recipients = [r for r in recipients if r.phone_number not in removed]
        if not recipients:
            raise NothingToSend(f"every recipient opted out with STOP ({', '.join(removed)}); nothing was sent")
    parts = count_parts(req.text)
    budget = parts.parts * len(recipients)
    held = False
    if guards is not None:
        guards.check_countries([r.phone_number for r in recipients])
        guards.check_spend(db, req, budget)
        held = guards.holds(req, len(recipients))
    now = clock.iso()
    campaign_id = campaigns.add_campaign(
        db,
        {
            "request_key": req.request_key,
            "origin": req.origin,
            "sender_email": req.sender_email,
            "login": req.login or None,
            "message_id": req.message_id,
            "thread_refs": " ".join(req.thread_refs) or None,
            "label": req.label,
            "text": req.text,
            "type": req.type,
            "purpose": req.purpose,
            "sender": req.sender,
            "send_at": clock.iso(req.send_at) if req.send_at else None,
            "with_replies": int(req.with_replies),
            "simulation": int(req.simulation),
            "status": CampaignStatus.HELD if held else CampaignStatus.QUEUED,
            "sms_budget": budget,
            "approve_by": clock.iso(clock.now() + timedelta(seconds=guards.limits.approve_within)) if held else None,
            "approval_mailed": 0 if held else 2,
            "contacts": len(recipients),
            "encoding": parts.encoding,
            "unicode_chars": "".join(parts.unicode_chars),
            "removed_optouts": json.dumps(removed),
            "confirm": req.confirm,
            "trimmed": int(req.trimmed),
            "created_at": now,
        },
    )
    # A scheduled campaign to HAND_OVER_BELOW numbers or more stays here until its time; its retries count from then.
    waits = req.send_at is not None and len(recipients) >= HAND_OVER_BELOW
    not_before = clock.iso(req.send_at) if waits else None
    deadline = clock.iso((req.send_at if waits else clock.now()) + timedelta(seconds=retry_for))
    # One Octopush call per 500 recipients. The request_id is the request's key and this campaign's id:
    # fixed for every retry of this campaign, new for a repeat sent as new after 24 h (whose older call may
    # have reached Octopush late, within its own 24 h). "-1", "-2"… are added when there are several calls.
    request_id = f"{req.request_key}-{campaign_id}"
    for index, call in enumerate(split(req.campaign(recipients, request_id=request_id)), start=1):
        send_id = campaigns.add_send(
            db,
            {
                "campaign_id": campaign_id,
                "chunk": index,
                "request_id": call.request_id,
                "status": SendStatus.HELD if held else SendStatus.PENDING,
                "deadline": deadline,
                "not_before": not_before,
                "created_at": now,
            },
        )
        campaigns.add_recipients(
            db,
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
        campaigns.remember_message(db, req.message_id, number=number, campaign_id=campaign_id, direction="in")
    return campaign_id, True


def _country(number: str) -> str:
    return numbers.normalise(number)[1]


class SendQueue(Worker):
    """Works through pending `sends` rows, WORKERS calls at a time; safe to restart at any point."""

    name = "send queue"
    stop_grace = 5.0  # within the daemon's 10 s
    log = log

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
        confirmation_owed: Callable[[campaigns.CampaignOutcome], bool] | None = None,
    ):
        super().__init__(store)
        self.client = client
        self.simulation = simulation
        self.auto_optimize_text = auto_optimize_text
        self.on_finished = on_finished
        self.confirmation_owed = confirmation_owed  # the notifier's policy, see `_record`
        # `octorelay send` works its own campaign only, and leaves the daemon's rows alone.
        self.only_campaign = only_campaign
        self.metrics = metrics
        self._slots = asyncio.Semaphore(WORKERS)
        self._finished: dict[int, asyncio.Future] = {}
        self._claimed: set[int] = set()  # calls this daemon claimed and is making now: their claims are renewed

    async def start(self) -> None:
        if self.only_campaign is None:
            # A send left "sending" by a crash goes again: its request_id makes that safe.
            await self.store.write(campaigns.requeue_interrupted_sends)
        await super().start()

    # stop(): a cancelled send stays `sending` and goes again at the next start, under the same request_id.

    async def wait(self, campaign_id: int) -> dict:
        """Wait until Octopush has a campaign or refused it, or one of its calls is set aside; returns its row."""
        while True:
            row = await self.store.read(partial(campaigns.campaign, campaign_id=campaign_id))
            if row and (
                row["stored_status"] in (CampaignStatus.SENT, CampaignStatus.FAILED, CampaignStatus.CANCELLED)
                or any(s["status"] == SendStatus.SET_ASIDE for s in row["sends"])
            ):
                return row
            future = self._finished.setdefault(campaign_id, asyncio.get_running_loop().create_future())
            self.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), 1.0)

    async def run_once(self) -> float:
        room = WORKERS * 2 - len(self._inflight)
        idle = self.idle
        if self._claimed:
            # Calls still in flight (a long retry) keep their claim. Only calls this daemon claimed: a row
            # waiting for a worker may be a dead node's, to take over.
            renew = partial(campaigns.renew_send_claims, send_ids=sorted(self._claimed), now=clock.iso())
            await self.renew_leases(renew, RENEW_EVERY)
        if room > 0:
            rows = await self.store.read(partial(_pending, exclude=self.busy, limit=room, campaign=self.only_campaign))
            for row in rows:
                self.spawn(row["id"], self._send(row["id"]))
        # A campaign held until its time is handed over then, not at the next 30 s look.
        due = await self.store.read(campaigns.next_scheduled_send)
        if due:
            idle = min(idle, max(0.05, (clock.parse_iso(due) - clock.now()).total_seconds()))
        if self._inflight:  # calls being made (or about to be): back soon to renew their claims
            idle = min(idle, RENEW_EVERY)
        return idle

    async def _send(self, send_id: int) -> None:
        try:
            async with self._slots:
                await self._send_one(send_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the queue alive; the row goes back, or is set aside
            log.exception("send #%d: unexpected error", send_id)
            await self._give_back(send_id, exc)

    async def _give_back(self, send_id: int, exc: Exception) -> None:
        """After an unexpected error: back to the queue after a pause, or set aside after MAX_FAILURES.

        Only the row's own failures count; the database's (a StoreError) never sets a row aside. Retrying is
        safe: the request_id is the same, and Octopush answers an earlier success with code 120.
        """
        failures = 0
        if not isinstance(exc, StoreError):
            counts = await self.note_failures("send", {send_id: f"{type(exc).__name__}: {exc}"}, insist=True)
            failures = counts.get(send_id, 0)
            if failures >= queues.MAX_FAILURES:
                self._wake_waiters()
                return
        await asyncio.sleep(backoff.row_pause(failures))
        await self._keep_trying(
            partial(campaigns.requeue_send, send_id=send_id),
            f"send #{send_id}: putting it back in the queue",
        )

    def _wake_waiters(self) -> None:
        """Wake whoever waits (`octorelay send`) on any campaign: they re-read their campaign's state."""
        for future in self._finished.values():
            if not future.done():
                future.set_result(None)
        self._finished.clear()

    async def _keep_trying(self, write, what: str):
        """A write this send cannot go on without, retried until it commits (the disk may be full for a while).

        Octopush's answer is kept in memory meanwhile, so a send that went out is recorded with its ticket
        instead of going again. Stopped meanwhile, the row stays `sending` and the next start re-queues it:
        the same request_id then gets code 120 and nothing is sent twice.
        """
        return await self.write_until_committed(write, what, small=True)

    async def _send_one(self, send_id: int) -> None:
        claimed = await self.store.write(partial(_claim, send_id=send_id), small=True)
        if claimed is None:
            return
        self._claimed.add(send_id)
        try:
            await self._make_call(send_id, claimed)
        finally:
            self._claimed.discard(send_id)

    async def _make_call(self, send_id: int, claimed: campaigns.ClaimedSend) -> None:
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
            partial(_record, send_id=send_id, result=result, error=error, confirmation_owed=self.confirmation_owed),
            f"send #{send_id}: recording the answer",
        )
        if self.metrics:
            if error is None:
                self.metrics.sms_sent.inc()
                if result.residual_credit is not None:  # fresher than the hourly check, between two checks
                    self.metrics.credit.set(result.residual_credit)
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


def _pending(db: Connection, *, exclude: list[int], limit: int, campaign: int | None = None) -> list[dict]:
    """The next pending calls, skipping those already waiting for a worker."""
    return [
        {"id": i} for i in campaigns.due_sends(db, now=clock.iso(), exclude=exclude, limit=limit, campaign=campaign)
    ]


def _claim(db: Connection, *, send_id: int) -> campaigns.ClaimedSend | None:
    return campaigns.claim_send(db, send_id=send_id, now=clock.iso())


def _record(
    db: Connection,
    *,
    send_id: int,
    result: SendResult | None,
    error,
    confirmation_owed: Callable[[campaigns.CampaignOutcome], bool] | None = None,
) -> tuple[int, bool] | None:
    """Store one call's answer; when it was the campaign's last, settle the campaign.

    Returns None while the campaign has calls left, else (campaign id, whether the notifier has an e-mail
    to consider). `confirmation_owed` is the notifier's policy (notify.confirmation_owed): a campaign that
    calls for no e-mail is marked notified here, sparing the notifier a sweep per campaign. Without it, the
    notifier's sweep looks at every finished campaign.
    """
    now = clock.iso()
    if result is not None:
        campaigns.record_send_sent(
            db,
            send_id,
            ticket=result.ticket,
            already_sent=result.already_sent,
            sms_needed=result.sms_needed,
            cost=result.total_cost,
            residual_credit=result.residual_credit,
            at=now,
        )
        if result.ticket:
            callbacks.apply_receipts(db, ticket=result.ticket)
        if result.residual_credit is not None:
            meta.meta_set(db, "residual_credit", str(result.residual_credit))
    else:
        campaigns.record_send_failed(db, send_id, code=getattr(error, "code", None), error=str(error))
    outcome = campaigns.campaign_outcome(db, send_id)
    if outcome is None:
        return None
    owed = confirmation_owed is None or confirmation_owed(outcome)
    campaigns.finish_campaign(db, outcome, at=now, notified=not owed)
    return outcome.campaign_id, owed


async def cancel_campaign(store: Store, client: OctopushClient | None, campaign_id: int, *, by: str) -> dict:
    """Cancel a scheduled or held campaign; returns its row as it was. CannotCancel says why not.

    A campaign still in our queue (held for approval, or scheduled to HAND_OVER_BELOW numbers or more) is
    cancelled here, in one transaction with its calls. One already handed to Octopush with its send_at is
    cancelled there first (DELETE /sms-campaign/cancel: until 10 minutes before), then here. Either way its
    status becomes "cancelled" and its sender is told by the notifier's sweep (`notified = 0`).
    """
    row = await store.read(partial(campaigns.campaign, campaign_id=campaign_id))
    if row is None:
        raise CannotCancel(f"there is no campaign {campaign_id}")
    if row["status"] == CampaignStatus.HELD:  # still in our queue, its share of the day's budget given back
        await store.write(partial(cancel_held, campaign_id=campaign_id, by=by))
        return row
    if row["status"] != CampaignStatus.SCHEDULED:
        raise CannotCancel(
            f"campaign {campaign_id} is {row['status']}, not held or scheduled: only those can be cancelled"
        )
    handed_over = [s for s in row["sends"] if s["status"] == SendStatus.SENT]
    cancelled_there = []
    for send in handed_over:
        if not send["ticket"]:
            raise CannotCancel(
                f"campaign {campaign_id} is at Octopush without a ticket (an earlier attempt went through, "
                "code 120), so it cannot be cancelled from here: cancel it in the Octopush interface"
            )
        if client is None:
            raise CannotCancel(f"campaign {campaign_id} is at Octopush, which this command cannot reach")
        try:
            await client.cancel(send["ticket"])
        except OctopushError as exc:
            raise CannotCancel(
                f"Octopush did not cancel campaign {campaign_id} (ticket {send['ticket']}): {exc.message} "
                "Octopush cancels a scheduled SMS only until 10 minutes before its time."
            ) from None
        except TemporaryError as exc:
            raise CannotCancel(f"campaign {campaign_id} was not cancelled: {exc}; try again") from None
        cancelled_there.append(send["id"])
    await store.write(partial(campaigns.cancel_campaign, campaign_id=campaign_id, by=by, at_octopush=cancelled_there))
    log.info("campaign #%d cancelled by %s", campaign_id, by)
    return row


# ------------------------------------------------------------------ approval (held campaigns)


class NotHeld(RelayError):
    """The campaign is not (or no longer) waiting for approval; the message says what it is."""


def approve_campaign(db: Connection, campaign_id: int, *, config: Config, by: str) -> dict:
    """Send a held campaign: its calls join the queue, retried from now for `retry_for` (inside `Store.write`).

    A marketing campaign approved outside the marketing windows waits for the next one, as it would have
    if it had been sent then.
    """
    from relay import marketing

    row = _held(db, campaign_id)
    guards.release(db, campaign_id, status=CampaignStatus.QUEUED)
    guards.set_deadline(db, campaign_id, clock.iso(clock.now() + timedelta(seconds=config.octopush.retry_for)))
    if row["purpose"] == Purpose.WHOLESALE:
        wanted = clock.parse_iso(row["send_at"]) if row["send_at"] else clock.now()
        region = config.smtp_in.region
        later = marketing.next_allowed(wanted, config.octopush, region, clock.region_timezone(region))
        if later is not None:
            guards.set_send_at(db, campaign_id, clock.iso(later))
            row["send_at"] = clock.iso(later)
    log.info("campaign #%d approved by %s", campaign_id, by)
    return row


def cancel_held(db: Connection, campaign_id: int, *, by: str) -> dict:
    """Cancel a held campaign for good: nothing is sent, and its share of the day's budget is given back."""
    row = _held(db, campaign_id)
    guards.release(db, campaign_id, status=CampaignStatus.CANCELLED)
    guards.cancelled_by(db, campaign_id, by=by)
    log.info("campaign #%d cancelled by %s", campaign_id, by)
    return row


def expire_held(db: Connection) -> list[int]:
    """Cancel the held campaigns whose `approve_within` has passed; their ids (their senders are told)."""
    expired = []
    for campaign_id in guards.expired_held(db, clock.iso()):
        # Only the daemon whose release moved it tells its sender (another may have expired it first).
        if guards.release(db, campaign_id, status=CampaignStatus.CANCELLED):
            guards.mark_expired(db, campaign_id)
            expired.append(campaign_id)
    if expired:
        log.info("held campaign(s) %s not approved in time: cancelled", ", ".join(f"#{i}" for i in expired))
    return expired


def _held(db: Connection, campaign_id: int) -> dict:
    row = guards.held_facts(db, campaign_id)
    if row is None:
        raise NotHeld(f"there is no campaign {campaign_id}")
    if row["status"] != CampaignStatus.HELD:
        raise NotHeld(f"campaign {campaign_id} is {row['status']}, not held for approval: nothing to do")
    return row


async def estimate_cost(client: OctopushClient, campaign: dict, *, timeout: float) -> float | None:
    """Octopush's price for a stored campaign: the same calls with simulation_mode, which send nothing."""
    request = Campaign(
        text=campaign["text"],
        recipients=tuple(
            Recipient(r["number"], r["first_name"] or "", r["last_name"] or "") for r in campaign["recipients"]
        ),
        type=campaign["type"],
        purpose=campaign["purpose"],
        sender=campaign["sender"] or "",
        with_replies=bool(campaign["with_replies"]),
        simulation_mode=True,
    )
    loop = asyncio.get_running_loop()
    costs = [(await client.send(call, deadline=loop.time() + timeout)).total_cost for call in split(request)]
    return None if any(c is None for c in costs) else round(sum(costs), 4)
