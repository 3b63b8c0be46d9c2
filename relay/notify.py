"""Routing of stored events to e-mail: the SMS's author, instant subscriptions, digests, confirmations.

A callback that needs an e-mail at once is stored with `routed = 0` on the fast
path; this worker renders its e-mails and, in one transaction, queues them in the
outbox and marks the callback routed, so a crash between the two never loses nor
doubles a mail. One that needs none is stored routed (`needs_mail`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypedDict
from zoneinfo import ZoneInfo

from relay import backoff, clock, sending
from relay.config import Config, Subscription
from relay.mail.outbox import Outbox, queue_message, serialise
from relay.mail.parsing import strip_prefixes
from relay.mail.render import Renderer, build_message, compose, country_label, intl, make_msgid
from relay.octopush.callbacks import Callback, is_e164
from relay.octopush.client import personalise, placeholders, stored_recipient
from relay.octopush.errors import ALERT_CODES
from relay.octopush.parts import count_parts
from relay.statuses import CallbackKind, CampaignStatus, Confirm, MailKind, Origin, SmsType
from relay.storage import callbacks, campaigns, digests, guards, meta, queues
from relay.storage.callbacks import Stored
from relay.storage.campaigns import CampaignOutcome
from relay.storage.database import Connection, Store, StoreError
from relay.workers import Worker

log = logging.getLogger("relay.notify")
BATCH = 50  # callbacks routed per transaction; small, so rendering never holds the loop long


MAIL_TIME = "%Y-%m-%d %H:%M %Z"
DIGEST_PART = 2000  # events per digest e-mail: ~2 MB of mail, tens of MB of memory to build


@dataclass
class Mail:
    """One e-mail to queue, with what to remember of it."""

    kind: MailKind
    to: tuple[str, ...]
    message: object
    number: str = ""
    campaign_id: int | None = None
    data: bytes | None = None  # the serialised message, made off the writer thread


class Notifier(Worker):
    """Routes stored callbacks, confirms finished campaigns and asks for approvals, a batch at a time."""

    name = "notifier"
    log = log

    def __init__(
        self, config: Config, store: Store, outbox: Outbox, renderer: Renderer, contacts: dict[str, str], metrics=None
    ):
        super().__init__(store)
        self.config = config
        self.outbox = outbox
        self.renderer = renderer
        self.contacts = contacts
        self.metrics = metrics
        self._digest_lock = asyncio.Lock()
        self._retry_soon = 0  # the most failures of a row still waiting: it is tried again after a short pause
        # Octopush's estimate of a held campaign's cost (a simulation_mode call), set by the daemon.
        self.estimate: Callable[[dict], Awaitable[float]] | None = None

    def reconfigure(self, config: Config, renderer: Renderer, contacts: dict[str, str]) -> None:
        self.config, self.renderer, self.contacts = config, renderer, contacts

    # stop(): unrouted callbacks stay `routed = 0` in the database, and the next start routes them.

    # ------------------------------------------------------------ instant routing

    async def run_once(self) -> float:
        self._retry_soon = 0
        while await self.route_pending() or await self.confirm_pending() or await self.approvals_pending():
            pass
        # A row that failed and is not yet set aside is tried again soon, without waiting for a wake.
        return backoff.row_pause(self._retry_soon) if self._retry_soon else self.idle

    async def route_pending(self) -> int:
        """Queue the e-mails of up to BATCH unrouted callbacks; returns how many left the queue.

        A callback whose e-mails cannot be made is counted and, after a few failures, set aside (the
        Attention page): the others of its batch are routed all the same.
        """
        rows = await self.store.read(_unrouted)
        if not rows:
            return 0
        mails, failed = await asyncio.to_thread(self._render_all, rows)
        done = await self._commit("routing", mails, failed)
        if self.metrics:
            now = clock.now()
            for row in rows:
                if row["id"] in mails:
                    self.metrics.e2e_seconds.observe((now - clock.parse_iso(row["received_at"])).total_seconds())
        return done

    def _render_all(self, rows: list[dict]) -> tuple[dict[int, list[Mail]], dict[int, str]]:
        """Render a batch of notifications (one worker thread hop per batch: rendering is CPU work), each e-mail
        made as its bytes at once (`compose`): ({id: mails}, {id: why not})."""
        mails: dict[int, list[Mail]] = {}
        failed: dict[int, str] = {}
        for row in rows:
            try:
                mails[row["id"]] = self._mails_for(row)
            except Exception as exc:  # noqa: BLE001 - this row's failure, counted by _commit
                log.warning("notifier: callback #%d: cannot make its e-mails", row["id"], exc_info=True)
                mails.pop(row["id"], None)
                failed[row["id"]] = describe(exc)
        return mails, failed

    async def _commit(self, work: str, mails: dict[int, list[Mail]], failed: dict[int, str]) -> int:
        """Queue each row's e-mails and mark it done, in one transaction; count the failures. Returns how many
        rows left the queue (done, or set aside now).

        When one row's write raises, each row is written alone, so that one alone fails. A StoreError (the
        database's own fault) propagates: the whole batch is tried again.
        """
        try:
            await self.store.write(partial(_queue, work=work, mails=mails), small=not any(mails.values()))
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - find the row at fault below
            for row_id, row_mails in list(mails.items()):
                try:
                    await self.store.write(partial(_queue, work=work, mails={row_id: row_mails}))
                except StoreError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this row's failure
                    log.warning("notifier: %s #%d: cannot queue its e-mails", work, row_id, exc_info=True)
                    failed[row_id] = describe(exc)
                    del mails[row_id]
        if any(mails.values()):
            self.outbox.wake()
        aside = 0
        if failed:
            for count in (await self.note_failures(work, failed)).values():
                if count >= queues.MAX_FAILURES:
                    aside += 1
                else:
                    self._retry_soon = max(self._retry_soon, count)
        return len(mails) + aside

    def _event(self, row: dict, tz: ZoneInfo) -> dict:
        domain = self.config.smtp_in.domain
        return {
            "id": row["id"],
            "kind": row["kind"],
            "number": row["number"],
            "contact": self.contacts.get(row["number"], ""),
            "country": row["country"] or "",
            "country_name": country_label(row["country"]),
            "local_time": clock.local(row["occurred_at"], tz, MAIL_TIME),
            "text": row["text"] or "",
            "status": row["status"] or "",
            "answered": row.get("answered"),
            "ticket": row["ticket"] or "",
            # Only a phone number makes an address: a row stored before numbers were checked may hold anything.
            "reply_to": f"{row['number']}@{domain}" if is_e164(row["number"]) else "",
        }

    def store_callback(self, db: Connection, cb: Callback) -> Stored:
        """Store a callback and whether it gets an e-mail at once (run inside `Store.write`): see `store_callback`."""
        return store_callback(db, cb, needs_mail=self.needs_mail)

    def needs_mail(self, row: RoutingFacts) -> bool:
        """Whether a callback gets an e-mail at once: its SMS's author, or an instant subscription.

        Asked when a callback is stored: one that needs none is stored already routed, and only the digests
        show it. The config of that moment decides.
        """
        return _author_gets(row) or any(
            sub.mode == "instant" and matches(sub, row) for sub in self.config.subscriptions
        )

    def _mails_for(self, row: dict) -> list[Mail]:
        mails = []
        domain = self.config.smtp_in.domain
        if _author_gets(row):
            tz = clock.region_timezone(self.config.smtp_in.region)
            event = self._event(row, tz)
            label = strip_prefixes(row.get("label") or "") or "your SMS"
            text, html = self.renderer.render_event("reply", event, None)
            original = row.get("message_id") or ""
            msg = compose(
                sender=self.config.smtp_out.sender,
                to=[row["sender_email"]],
                subject=f"Re: {label}",
                text=text,
                html=html,
                message_id=make_msgid(domain),
                in_reply_to=original or None,
                references=thread(row.get("thread_refs"), original),
                reply_to=event["reply_to"],
            )
            mails.append(
                Mail(MailKind.REPLY, (row["sender_email"],), msg, row["number"], row.get("campaign_id"), msg.data)
            )
        notified = {m.to[0].lower() for m in mails}  # the author already has the threaded e-mail
        for sub in self.config.subscriptions:
            if sub.mode != "instant" or not matches(sub, row):
                continue
            to = tuple(a for a in sub.to if a.lower() not in notified)
            if not to:
                continue
            event = self._event(row, sub.tz)
            text, html = self.renderer.render_event("reply", event, sub.name)
            who = intl(row["number"]) + (f" ({event['contact']})" if event["contact"] else "")
            subject = {
                CallbackKind.REPLY: f"SMS reply from {who}",
                CallbackKind.STOP: f"STOP from {who}",
                CallbackKind.DELIVERY: f"SMS {event['status']} to {who}",
            }[row["kind"]]
            msg = compose(
                sender=self.config.smtp_out.sender,
                to=list(to),
                subject=subject,
                text=text,
                html=html,
                message_id=make_msgid(domain),
                reply_to=event["reply_to"] if row["kind"] != CallbackKind.DELIVERY else None,
            )
            mails.append(Mail(MailKind.REPLY, to, msg, row["number"], row.get("campaign_id"), msg.data))
        return mails

    # ------------------------------------------------------------ confirmations

    async def confirm_pending(self) -> int:
        """E-mail senders about finished campaigns, as each campaign's `confirm` says; alert on account errors.

        A sweep over `notified = 0`, like the callbacks' `routed`: the e-mail and the mark commit together,
        and only for a campaign still unmarked then, so a command (`campaign cancel`) sweeping at the same time
        as the daemon never doubles an e-mail; a campaign whose e-mail keeps failing is set aside like a callback.
        """
        ids = await self.store.read(partial(campaigns.unconfirmed, limit=BATCH))
        if not ids:
            return 0
        finished = await self.store.read(lambda db: [campaigns.campaign(db, campaign_id=i) for i in ids])
        planned = self._planned(finished)
        mails: dict[int, list[Mail]] = {i: [] for i in ids}
        failed: dict[int, str] = {}
        if planned:
            # Rendering takes CPU time: in a worker thread, and only when some e-mail is due.
            for campaign_id, result in (await asyncio.to_thread(self._render, planned)).items():
                if isinstance(result, str):
                    failed[campaign_id] = result
                    mails.pop(campaign_id, None)
                else:
                    mails[campaign_id] += result
        return await self._commit("confirmation", mails, failed)

    def _planned(self, finished: list[dict]) -> list[tuple[str, dict]]:
        """The e-mails these finished campaigns call for: (CONFIRMATION | CANCELLED | ALERT, campaign).

        The send queue marks a campaign that can call for none notified as it settles it (`confirmation_owed`).
        """
        planned = []
        for campaign in finished:
            wanted = campaign.get("confirm") or Confirm.NONE
            failed = campaign["status"] == CampaignStatus.FAILED
            if campaign["status"] == CampaignStatus.CANCELLED:
                if campaign.get("sender_email"):  # whatever `confirm` says: they asked for an SMS that will not go
                    planned.append((MailKind.CANCELLED, campaign))
                continue
            if campaign.get("sender_email") and (wanted == Confirm.ALL or (wanted == Confirm.ERRORS and failed)):
                planned.append((MailKind.CONFIRMATION, campaign))
            if failed and campaign.get("error_code") in ALERT_CODES and self.config.subscriptions:
                planned.append((MailKind.ALERT, campaign))
        return planned

    def _render(self, planned: list[tuple[str, dict]]) -> dict[int, list[Mail] | str]:
        """Each campaign's e-mails, or why they cannot be made."""
        out: dict[int, list[Mail] | str] = {}
        for kind, campaign in planned:
            if isinstance(out.get(campaign["id"]), str):
                continue
            try:
                # A confirmation or a cancellation: _confirmation reads the campaign's status.
                mail = (
                    self._alert(error=campaign.get("error")) if kind == MailKind.ALERT else self._confirmation(campaign)
                )
                mail.data = serialise(mail.message)
            except Exception as exc:  # noqa: BLE001 - this campaign's failure, counted by _commit
                log.warning("notifier: campaign #%d: cannot make its %s", campaign["id"], kind, exc_info=True)
                out[campaign["id"]] = describe(exc)
                continue
            out.setdefault(campaign["id"], []).append(mail)
        return out

    def _campaign_context(self, campaign: dict) -> dict:
        recipients = campaign.get("recipients") or []
        tz = clock.region_timezone(self.config.smtp_in.region)
        return {
            "label": strip_prefixes(campaign.get("label") or "") or "SMS",
            "text": campaign["text"],
            # With placeholders, the text as its first recipient reads it once Octopush has filled them in.
            "first_text": personalise(campaign["text"], stored_recipient(recipients[0]))
            if recipients and placeholders(campaign["text"])
            else "",
            "first_number": recipients[0]["number"] if recipients else "",
            "send_at": clock.local(campaign.get("send_at"), tz, MAIL_TIME),
            "scheduled": campaign["status"] == CampaignStatus.SCHEDULED,
            "cancelled_by": campaign.get("cancelled_by") or "",
            "tickets": campaign.get("tickets") or [],
            "contacts": campaign.get("contacts") or 0,
            "sms_needed": campaign.get("sms_needed") or 0,
            "cost": campaign.get("cost") or 0,
            "residual_credit": campaign.get("residual_credit"),
            "encoding": campaign.get("encoding") or "",
            "unicode_chars": list(campaign.get("unicode_chars") or ""),
            "removed_optouts": campaign.get("removed_optouts") or [],
            "simulation": bool(campaign.get("simulation")),
            "trimmed": bool(campaign.get("trimmed")),
            "recipients": [r["number"] for r in campaign.get("recipients", [])],
            "sender_email": campaign.get("sender_email") or "",
            "login": campaign.get("login") or "",
        }

    def _confirmation(self, campaign: dict) -> Mail:
        context = self._campaign_context(campaign)
        original = campaign.get("message_id") or ""
        if campaign["status"] == CampaignStatus.CANCELLED:
            name, extra = MailKind.CANCELLED, {}
            subject = f"SMS cancelled: {context['label']}"
        elif campaign["status"] == CampaignStatus.FAILED:
            name = MailKind.FAILURE
            # The stored error already reads "Octopush refused … (code N): message. What to do."
            extra = {
                "error": {"code": campaign.get("error_code"), "message": campaign.get("error") or "", "advice": ""}
            }
            subject = f"SMS not sent: {context['label']}"
        else:
            name, extra = MailKind.CONFIRMATION, {}
            subject = f"SMS {'scheduled' if context['scheduled'] else 'sent'}: {context['label']}"
        text, html = self.renderer.render(name, campaign=context, **extra)
        msg = build_message(
            sender=self.config.smtp_out.sender,
            to=[campaign["sender_email"]],
            subject=subject,
            text=text,
            html=html,
            message_id=make_msgid(self.config.smtp_in.domain),
            in_reply_to=original or None,
            references=thread(campaign.get("thread_refs"), original),
        )
        number = context["recipients"][0] if len(context["recipients"]) == 1 else ""
        return Mail(name, (campaign["sender_email"],), msg, number, campaign["id"])

    def _alert(self, *, error=None, residual_credit: float | None = None, sms: float | None = None) -> Mail:
        sub = self.config.subscriptions[0]
        text, html = self.renderer.render(
            MailKind.ALERT,
            residual_credit=residual_credit,
            sms=int(sms) if sms is not None else None,
            sms_kind="premium" if self.config.octopush.type == SmsType.PREMIUM else "low-cost",
            region=self.config.smtp_in.region,
            threshold=self.config.octopush.low_credit,
            error=str(error) if error else "",
        )
        subject = "octorelay: Octopush account needs attention" if error else "octorelay: Octopush credit is low"
        msg = build_message(
            sender=self.config.smtp_out.sender,
            to=list(sub.to),
            subject=subject,
            text=text,
            html=html,
            message_id=make_msgid(self.config.smtp_in.domain),
        )
        return Mail(MailKind.ALERT, sub.to, msg)

    async def check_credit(self, credit: float, sms: float | None = None) -> bool:
        """Alert the first subscription once when the credit (euros, from check-balance) is under `low_credit`.

        `sms` is roughly how many SMS that is (Octopush's count for the default type and region), when known.
        The alert is said once per credit level; back over the threshold, the next fall alerts again.
        """
        threshold = self.config.octopush.low_credit
        level = repr(float(credit))
        alerted = await self.store.read(lambda db: meta.meta_get(db, "low_credit_alerted"))
        if threshold <= 0 or credit >= threshold or not self.config.subscriptions:
            if alerted:
                await self.store.write(partial(meta.meta_delete, key="low_credit_alerted"))
            return False
        if alerted == level:
            return False  # already said for this credit
        mail = self._alert(residual_credit=float(credit), sms=sms)
        mail.data = serialise(mail.message)

        def queue(db: Connection) -> bool:
            # Compare-and-set on what was read: of several nodes checking the same credit, one says it.
            if not meta.meta_replace(db, "low_credit_alerted", old=alerted, new=level):
                return False
            remember(db, mail)
            return True

        if not await self.store.write(queue):
            return False
        self.outbox.wake()
        return True

    # ------------------------------------------------------------ approvals

    async def approvals_pending(self) -> int:
        """Ask the senders of held campaigns, cancel those not approved in time and tell their senders.

        The e-mail and its mark commit together, like confirmations; runs at every sweep (at most 30 s apart).
        """
        expired, ids = await self.store.read(partial(guards.approval_work, now=clock.iso()))
        if expired:
            await self.store.write(sending.expire_held)
            ids = await self.store.read(guards.approval_mail_due)
        for campaign_id in ids:
            campaign = await self.store.read(partial(campaigns.campaign, campaign_id=campaign_id))
            expired = campaign["status"] == CampaignStatus.CANCELLED
            estimate = {"cost": None, "error": ""}
            if not expired:
                try:
                    estimate["cost"] = await self.estimate(campaign) if self.estimate else None
                    if estimate["cost"] is None:
                        estimate["error"] = "no Octopush client here"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the estimate is a courtesy: the question goes anyway
                    estimate["error"] = str(exc)
            mail = await asyncio.to_thread(self._approval, campaign, estimate, expired)

            def queue(db: Connection, mail=mail, campaign_id=campaign_id, expired=expired) -> None:
                # Another daemon on the same database (PostgreSQL) may have swept it first: then no second e-mail.
                if guards.mark_mailed(db, campaign_id, done=expired):
                    remember(db, mail)

            await self.store.write(queue)
            self.outbox.wake()
        return len(ids)

    def _approval(self, campaign: dict, estimate: dict, expired: bool) -> Mail:
        tz = clock.region_timezone(self.config.smtp_in.region)
        context = self._campaign_context(campaign)
        parts = count_parts(campaign["text"])
        context.update(id=campaign["id"], parts=parts.parts, contacts=campaign["contacts"])
        text, html = self.renderer.render(
            "approval",
            campaign=context,
            estimate=estimate,
            expired=expired,
            approve_by=clock.local(campaign.get("approve_by"), tz, MAIL_TIME),
        )
        original = campaign.get("message_id") or ""
        domain = self.config.smtp_in.domain
        label = context["label"]
        msg = build_message(
            sender=self.config.smtp_out.sender,
            to=[campaign["sender_email"]],
            subject=f"SMS cancelled, not approved in time: {label}" if expired else f"Approve this SMS? {label}",
            text=text,
            html=html,
            message_id=make_msgid(domain),
            in_reply_to=original or None,
            references=[original] if original else [],
            reply_to=None if expired else approval_address(campaign["id"], domain),
        )
        return Mail(MailKind.APPROVAL, (campaign["sender_email"],), msg, "", campaign["id"], serialise(msg))

    # ------------------------------------------------------------ digests

    async def run_digest(
        self,
        name: str,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        due: Callable[[str | None], bool] | None = None,
    ):
        """Build the digest of the events since the watermark; queue it and advance the watermark together.

        More than `DIGEST_PART` events (a catch-up after weeks) go in several e-mails, "(part 2 of 7)", each
        queued with the watermark advanced to its last event: memory and e-mail size stay bounded, and a
        crash between two parts sends neither one twice nor skips one. Returns the first message (queued,
        or only built with dry_run, which builds the first part only), or None when the run was empty and
        `send_empty` is off, or when another run (another node) moved the watermark first.

        `due(last_run_at)` is a scheduled run's question "is a run still owed since then?": nodes that all
        fire the same cron slot send it once, also when one fires after another has finished.
        """
        sub = self.config.subscription(name)
        async with self._digest_lock:
            # A subscription the daemon has not seen yet (added, not yet reloaded) starts from now here too.
            await self.store.write(partial(digests.init_digests, names=[sub.name]))
            snapshot = await self.store.read(partial(_digest_events, sub=sub))
            until = now or clock.now()
            if due is not None and not due(snapshot["since"]):
                log.info("digest %s: this scheduled run was already sent (by another node)", sub.name)
                return None
            if not snapshot["rows"] and not sub.send_empty:
                if not dry_run:
                    await self.store.write(
                        partial(
                            digests.advance,
                            sub=sub.name,
                            expected=snapshot["watermark"],
                            since=snapshot["since"],
                            to=snapshot["top"],
                        )
                    )
                return None
            parts = max(1, -(-snapshot["total"] // DIGEST_PART))
            first = None
            for part in range(1, parts + 1):
                if part > 1:
                    snapshot = await self.store.read(
                        partial(_digest_events, sub=sub, top=snapshot["top"], total=snapshot["total"])
                    )
                if part == parts:
                    snapshot["end"] = snapshot["top"]  # the events of other kinds after the last one are done too
                label = f" (part {part} of {parts})" if parts > 1 else ""
                # Thousands of entries take CPU time to render: a worker thread keeps callbacks answered meanwhile.
                msg = await asyncio.to_thread(
                    self.digest_message, sub, snapshot["rows"], snapshot["since"], until, label
                )
                if dry_run:
                    return msg
                if not await self._queue_digest(sub, msg, snapshot):
                    return first  # another run moved the watermark first
                first = first or msg
            return first

    async def _queue_digest(self, sub: Subscription, msg, snapshot: dict) -> bool:
        mail = Mail(MailKind.DIGEST, sub.to, msg, data=await asyncio.to_thread(serialise, msg))

        def queue(db: Connection) -> bool:
            moved = digests.advance(
                db, sub=sub.name, expected=snapshot["watermark"], since=snapshot["since"], to=snapshot["end"]
            )
            if not moved:
                return False
            remember(db, mail)
            return True

        if await self.store.write(queue):
            self.outbox.wake()
            log.info("digest %s: %d events queued", sub.name, len(snapshot["rows"]))
            return True
        return False

    def digest_message(self, sub: Subscription, rows: list[dict], since: str | None, until: datetime, part=""):
        events = [self._event(row, sub.tz) for row in sorted(rows, key=lambda r: (r["occurred_at"] or "", r["id"]))]
        buckets: dict[str, list[dict]] = defaultdict(list)
        for event in events:
            if sub.group_by == "country":
                key = f"{event['country_name']} ({event['country']})" if event["country"] else "Unknown country"
            else:
                key = event["local_time"][:10]
            buckets[key].append(event)
        if sub.group_by == "date":
            order = sorted(buckets)
            titles = {
                k: datetime.strptime(k, "%Y-%m-%d").strftime("%A %d %B %Y") if k else "Unknown day" for k in order
            }
        else:
            order = sorted(buckets, key=lambda k: (-len(buckets[k]), k))
            titles = {k: k for k in order}
        groups = [{"title": titles[k], "count": len(buckets[k]), "entries": buckets[k]} for k in order]
        count = len(events)
        summary = digest_summary(events)
        text, html = self.renderer.render(
            "digest",
            name=sub.name,
            count=count,
            summary=summary,
            group_by=sub.group_by,
            groups=groups,
            since=clock.local(since, sub.tz, MAIL_TIME) if since else "the start",
            until=until.astimezone(sub.tz).strftime(MAIL_TIME),
        )
        return build_message(
            sender=self.config.smtp_out.sender,
            to=list(sub.to),
            subject=f"{summary} \u2014 {sub.name}{part}",
            text=text,
            html=html,
            message_id=make_msgid(self.config.smtp_in.domain),
        )


class RoutingFacts(TypedDict):
    """What deciding a callback's e-mails needs, known before it is stored (a stored row has these fields too)."""

    kind: str
    country: str | None
    campaign_origin: str | None
    sender_email: str | None


def store_callback(db: Connection, cb: Callback, *, needs_mail: Callable[[RoutingFacts], bool]) -> Stored:
    """Store a callback once, linked to the campaign it answers, and route it in the same transaction.

    `needs_mail` (the notifier's) says whether it gets an e-mail at once; when it does not, the callback is
    stored already routed and the notifier never reads it again. Committed before its 200 (SPEC §3), so a
    callback is stored once and routed once, whichever process routes it.
    """
    if cb.kind == "unrecognised":  # nothing to route: an operator reads these in the UI
        return callbacks.store_callback(db, cb, link=None, routed=True)
    link = callbacks.campaign_answered(db, cb.ticket, cb.number) if cb.kind in ("reply", "stop") else None
    facts = RoutingFacts(
        kind=cb.kind,
        country=cb.country,
        campaign_origin=link.origin if link else None,
        sender_email=link.sender_email if link else None,
    )
    return callbacks.store_callback(db, cb, link=link, routed=not needs_mail(facts))


def confirmation_owed(outcome: CampaignOutcome) -> bool:
    """Whether a campaign Octopush has just answered may call for an e-mail (SPEC §5, `confirm`).

    A failure may (its sender's failure e-mail, an account alert), and so may a success whose sender asked
    for "all"; `Notifier._planned` decides which e-mails exactly. The send queue (`sending._record`) marks any
    other campaign notified as it settles it, so the notifier's sweep never reads it.
    """
    return outcome.failed or outcome.confirm == "all"


def describe(exc: BaseException) -> str:
    """An error as the Attention page shows it."""
    return f"{type(exc).__name__}: {exc}"


def _queue(db: Connection, *, work: str, mails: dict[int, list[Mail]]) -> None:
    """Queue rows' e-mails and mark the rows done (routed callbacks, or notified campaigns), together; a row that
    another process (a command sweeping beside the daemon) marked first gets no second e-mail."""
    marked = queues.mark_done(db, work=work, ids=list(mails))
    for row_id, row_mails in mails.items():
        if row_id in marked:
            for mail in row_mails:
                remember(db, mail)


_KIND_NAMES = {
    CallbackKind.REPLY: ("SMS replies", "SMS replies"),  # SPEC §4's subject: "<count> SMS replies — <name>", 1 included
    CallbackKind.DELIVERY: ("delivery report", "delivery reports"),
    CallbackKind.STOP: ("STOP", "STOPs"),
}


def digest_summary(events: list[dict]) -> str:
    """What a digest holds, each kind counted apart (SPEC §4): "3 SMS replies, 7 delivery reports, 1 STOP"."""
    counts = Counter(event["kind"] for event in events)
    parts = [f"{counts[kind]} {names[counts[kind] != 1]}" for kind, names in _KIND_NAMES.items() if counts[kind]]
    return ", ".join(parts) or "0 SMS replies"


def thread(parent_refs: str | None, parent: str) -> list[str]:
    """A reply's References (RFC 5322 §3.6.4): its parent's References followed by the parent's Message-ID."""
    if not parent:
        return []
    return [ref for ref in (parent_refs or "").split() if ref != parent] + [parent]


def approval_address(campaign_id: int, domain: str) -> str:
    """Where an answer to an approval e-mail goes: it names the campaign (SPEC §5 "Spend")."""
    return f"approve-{campaign_id}@{domain}"


def _author_gets(row: dict) -> bool:
    """A reply or STOP to an SMS sent by e-mail goes back to that e-mail's author, threaded."""
    return (
        row["kind"] in (CallbackKind.REPLY, CallbackKind.STOP)
        and row.get("campaign_origin") == Origin.EMAIL
        and bool(row.get("sender_email"))
    )


def matches(sub: Subscription, row: dict) -> bool:
    return row["kind"] in sub.events and (not sub.countries or (row["country"] or "") in sub.countries)


def remember(db: Connection, mail: Mail) -> None:
    """Queue the e-mail and remember its Message-ID with its conversation."""
    msg = mail.message
    queue_message(db, msg, kind=mail.kind, recipients=list(mail.to), data=mail.data)
    campaigns.remember_message(db, msg["Message-ID"], number=mail.number, campaign_id=mail.campaign_id, direction="out")


def _unrouted(db: Connection) -> list[callbacks.Event]:
    return callbacks.unrouted(db, limit=BATCH)


def pending_digest(db: Connection, *, sub: Subscription) -> dict | None:
    """What the next run of `sub` holds, read only (`digest --dry-run`: its first part); None when it has never
    run: it starts then."""
    if digests.watermark(db, sub.name) is None:
        return None
    return _digest_events(db, sub=sub)


def _digest_events(db: Connection, *, sub: Subscription, top: int | None = None, total: int | None = None) -> dict:
    """The next `DIGEST_PART` events after the watermark (up to `top`, the newest id when the run began).

    `end` is where the watermark goes once they are sent: the last one's id, or `top` with the last part.
    """
    mark = digests.watermark(db, sub.name)
    watermark, since = (mark.last_callback_id, mark.last_run_at) if mark else (0, None)
    if top is None:
        top = callbacks.newest_id(db)
    which = {"after": watermark, "upto": top, "kinds": list(sub.events), "countries": list(sub.countries)}
    if total is None:
        total = digests.count_events(db, **which)
    rows = digests.events(db, **which, limit=DIGEST_PART)
    end = rows[-1]["id"] if len(rows) == DIGEST_PART else top
    return {"rows": rows, "watermark": watermark, "top": top, "end": end, "total": total, "since": since}
