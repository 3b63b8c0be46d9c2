"""Routing of stored events to e-mail: the SMS's author, instant subscriptions, digests, confirmations.

A callback that needs an e-mail at once is stored with `routed = 0` on the fast
path; this worker renders its e-mails and, in one transaction, queues them in the
outbox and marks the callback routed, so a crash between the two never loses nor
doubles a mail. One that needs none is stored routed (`needs_mail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from relay import backoff, clock
from relay.config import Config, Subscription
from relay.mail.outbox import Outbox, queue_message, serialise
from relay.mail.parsing import strip_prefixes
from relay.mail.render import Renderer, build_message, country_label, intl, make_msgid
from relay.octopush.errors import ALERT_CODES
from relay.storage import queries
from relay.storage.database import Store

log = logging.getLogger("relay.notify")
BATCH = 50  # callbacks routed per transaction; small, so rendering never holds the loop long


MAIL_TIME = "%Y-%m-%d %H:%M %Z"


@dataclass
class Mail:
    """One e-mail to queue, with what to remember of it."""

    kind: str
    to: tuple[str, ...]
    message: object
    number: str = ""
    campaign_id: int | None = None
    data: bytes | None = None  # the serialised message, made off the writer thread


class Notifier:
    def __init__(
        self, config: Config, store: Store, outbox: Outbox, renderer: Renderer, contacts: dict[str, str], metrics=None
    ):
        self.config = config
        self.store = store
        self.outbox = outbox
        self.renderer = renderer
        self.contacts = contacts
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._digest_lock = asyncio.Lock()

    def reconfigure(self, config: Config, renderer: Renderer, contacts: dict[str, str]) -> None:
        self.config, self.renderer, self.contacts = config, renderer, contacts

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        if self._task:
            # Unrouted callbacks stay `routed = 0` in the database: the next start routes them.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ instant routing

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                while await self.route_pending() or await self.confirm_pending():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a worker logs and goes on
                log.exception("notifier: routing failed; will retry")
                await asyncio.sleep(2)
                continue
            await backoff.nap(self._wake, 30)

    async def route_pending(self) -> int:
        """Queue the e-mails of up to BATCH unrouted callbacks; returns how many were routed."""
        rows = await self.store.read(_unrouted)
        if not rows:
            return 0
        mails = await asyncio.to_thread(self._render_all, rows)
        ids = [r["id"] for r in rows]
        await self.store.write(partial(self._queue, mails=mails, routed=ids), small=not mails)
        self.outbox.wake()
        if self.metrics:
            now = clock.now()
            for row in rows:
                self.metrics.e2e_seconds.observe((now - clock.parse_iso(row["received_at"])).total_seconds())
        return len(rows)

    def _render_all(self, rows: list[dict]) -> list[Mail]:
        """Render a batch of notifications (in a worker thread: Jinja2 is CPU work)."""
        mails = [mail for row in rows for mail in self._mails_for(row)]
        for mail in mails:
            mail.data = serialise(mail.message)
        return mails

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
            "reply_to": f"{row['number']}@{domain}",
        }

    def needs_mail(self, row: dict) -> bool:
        """Whether a callback gets an e-mail at once: its SMS's author, or an instant subscription.

        Asked when a callback is stored (`row` has kind, country, campaign_origin and sender_email): one that
        needs none is stored already routed, and only the digests show it. The config of that moment decides.
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
            text, html = self.renderer.render("reply", event=event, subscription=None)
            original = row.get("message_id") or ""
            msg = build_message(
                sender=self.config.smtp_out.sender,
                to=[row["sender_email"]],
                subject=f"Re: {label}",
                text=text,
                html=html,
                message_id=make_msgid(domain),
                in_reply_to=original or None,
                references=[original] if original else [],
                reply_to=event["reply_to"],
            )
            mails.append(Mail("reply", (row["sender_email"],), msg, row["number"], row.get("campaign_id")))
        notified = {m.to[0].lower() for m in mails}  # the author already has the threaded e-mail
        for sub in self.config.subscriptions:
            if sub.mode != "instant" or not matches(sub, row):
                continue
            to = tuple(a for a in sub.to if a.lower() not in notified)
            if not to:
                continue
            event = self._event(row, sub.tz)
            text, html = self.renderer.render("reply", event=event, subscription=sub.name)
            who = intl(row["number"]) + (f" ({event['contact']})" if event["contact"] else "")
            subject = {
                "reply": f"SMS reply from {who}",
                "stop": f"STOP from {who}",
                "delivery": f"SMS {event['status']} to {who}",
            }[row["kind"]]
            msg = build_message(
                sender=self.config.smtp_out.sender,
                to=list(to),
                subject=subject,
                text=text,
                html=html,
                message_id=make_msgid(domain),
                reply_to=event["reply_to"] if row["kind"] != "delivery" else None,
            )
            mails.append(Mail("reply", to, msg, row["number"], row.get("campaign_id")))
        return mails

    @staticmethod
    def _queue(db: Database, *, mails: list[Mail], routed: list[int]) -> None:
        for mail in mails:
            remember(db, mail)
        db.execute(f"UPDATE callbacks SET routed = 1 WHERE id IN ({', '.join('?' * len(routed))})", routed)

    # ------------------------------------------------------------ confirmations

    async def confirm_pending(self) -> int:
        """E-mail senders about finished campaigns, as each campaign's `confirm` says; alert on account errors.

        A sweep over `notified = 0`, like the callbacks' `routed`: the e-mail and the mark commit together.
        """
        ids = await self.store.read(
            lambda db: [
                r[0]
                for r in db.execute(
                    "SELECT id FROM campaigns WHERE notified = 0 AND status IN ('sent', 'failed') ORDER BY id LIMIT ?",
                    [BATCH],
                )
            ]
        )
        if not ids:
            return 0
        campaigns = await self.store.read(lambda db: [queries.campaign(db, campaign_id=i) for i in ids])
        planned = self._planned(campaigns)
        # Rendering takes CPU time: in a worker thread, and only when some e-mail is due.
        mails = await asyncio.to_thread(self._render, planned) if planned else []

        def queue(db: Database) -> None:
            for mail in mails:
                remember(db, mail)
            db.execute(f"UPDATE campaigns SET notified = 1 WHERE id IN ({', '.join('?' * len(ids))})", ids)

        await self.store.write(queue, small=not mails)
        if mails:
            self.outbox.wake()
        return len(ids)

    def _planned(self, campaigns: list[dict]) -> list[tuple[str, dict]]:
        """The e-mails these finished campaigns call for: ("confirmation" | "alert", campaign)."""
        planned = []
        for campaign in campaigns:
            wanted = campaign.get("confirm") or "none"
            failed = campaign["status"] == "failed"
            if campaign.get("sender_email") and (wanted == "all" or (wanted == "errors" and failed)):
                planned.append(("confirmation", campaign))
            if failed and campaign.get("error_code") in ALERT_CODES and self.config.subscriptions:
                planned.append(("alert", campaign))
        return planned

    def _render(self, planned: list[tuple[str, dict]]) -> list[Mail]:
        mails = [
            self._confirmation(campaign) if kind == "confirmation" else self._alert(error=campaign.get("error"))
            for kind, campaign in planned
        ]
        for mail in mails:
            mail.data = serialise(mail.message)
        return mails

    def _campaign_context(self, campaign: dict) -> dict:
        return {
            "label": strip_prefixes(campaign.get("label") or "") or "SMS",
            "text": campaign["text"],
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
        }

    def _confirmation(self, campaign: dict) -> Mail:
        context = self._campaign_context(campaign)
        original = campaign.get("message_id") or ""
        if campaign["status"] == "failed":
            name = "failure"
            # The stored error already reads "Octopush refused … (code N): message. What to do."
            extra = {
                "error": {"code": campaign.get("error_code"), "message": campaign.get("error") or "", "advice": ""}
            }
            subject = f"SMS not sent: {context['label']}"
        else:
            name, extra = "confirmation", {}
            subject = f"SMS sent: {context['label']}"
        text, html = self.renderer.render(name, campaign=context, **extra)
        msg = build_message(
            sender=self.config.smtp_out.sender,
            to=[campaign["sender_email"]],
            subject=subject,
            text=text,
            html=html,
            message_id=make_msgid(self.config.smtp_in.domain),
            in_reply_to=original or None,
            references=[original] if original else [],
        )
        number = context["recipients"][0] if len(context["recipients"]) == 1 else ""
        return Mail(name, (campaign["sender_email"],), msg, number, campaign["id"])

    def _alert(self, *, error=None, residual_credit: float | None = None) -> Mail:
        sub = self.config.subscriptions[0]
        text, html = self.renderer.render(
            "alert",
            residual_credit=residual_credit,
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
        return Mail("alert", sub.to, msg)

    async def check_credit(self) -> bool:
        """Hourly: alert the first subscription once when the credit falls under `low_credit`."""
        threshold = self.config.octopush.low_credit
        if threshold <= 0 or not self.config.subscriptions:
            return False
        credit, alerted = await self.store.read(
            lambda db: (queries.meta_get(db, "residual_credit"), queries.meta_get(db, "low_credit_alerted"))
        )
        if credit is None or float(credit) >= threshold:
            if alerted:
                await self.store.write(lambda db: db.execute("DELETE FROM meta WHERE key = 'low_credit_alerted'"))
            return False
        if alerted == credit:
            return False  # already said for this credit
        mail = self._alert(residual_credit=float(credit))

        def queue(db: Database) -> None:
            remember(db, mail)
            queries.meta_set(db, "low_credit_alerted", credit)

        await self.store.write(queue)
        self.outbox.wake()
        return True

    # ------------------------------------------------------------ digests

    async def run_digest(self, name: str, *, dry_run: bool = False, now: datetime | None = None):
        """Build one digest of the events since the watermark; queue it and advance the watermark together.

        Returns the message (queued, or only built with dry_run), or None when the
        run was empty and `send_empty` is off.
        """
        sub = self.config.subscription(name)
        async with self._digest_lock:
            # A subscription the daemon has not seen yet (added, not yet reloaded) starts from now here too.
            await self.store.write(partial(queries.init_digests, names=[sub.name]))
            snapshot = await self.store.read(partial(_digest_events, sub=sub))
            until = now or clock.now()
            if not snapshot["rows"] and not sub.send_empty:
                if not dry_run:
                    await self.store.write(
                        partial(_advance, sub=sub.name, expected=snapshot["watermark"], to=snapshot["top"])
                    )
                return None
            # Ten thousand entries take CPU time to render: a worker thread keeps callbacks answered meanwhile.
            msg = await asyncio.to_thread(self._digest_message, sub, snapshot["rows"], snapshot["since"], until)
            if dry_run:
                return msg
            mail = Mail("digest", sub.to, msg, data=await asyncio.to_thread(serialise, msg))

            def queue(db: Database) -> bool:
                if not _advance(db, sub=sub.name, expected=snapshot["watermark"], to=snapshot["top"]):
                    return False  # another run moved the watermark first
                remember(db, mail)
                return True

            if await self.store.write(queue):
                self.outbox.wake()
                log.info("digest %s: %d events queued", sub.name, len(snapshot["rows"]))
                return msg
            return None

    def _digest_message(self, sub: Subscription, rows: list[dict], since: str | None, until: datetime):
        events = [self._event(row, sub.tz) for row in rows]
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
        text, html = self.renderer.render(
            "digest",
            name=sub.name,
            count=count,
            group_by=sub.group_by,
            groups=groups,
            since=clock.local(since, sub.tz, MAIL_TIME) if since else "the start",
            until=until.astimezone(sub.tz).strftime(MAIL_TIME),
        )
        return build_message(
            sender=self.config.smtp_out.sender,
            to=list(sub.to),
            subject=f"{count} SMS replies \u2014 {sub.name}",
            text=text,
            html=html,
            message_id=make_msgid(self.config.smtp_in.domain),
        )


def _author_gets(row: dict) -> bool:
    """A reply or STOP to an SMS sent by e-mail goes back to that e-mail's author, threaded."""
    return row["kind"] in ("reply", "stop") and row.get("campaign_origin") == "email" and bool(row.get("sender_email"))


def matches(sub: Subscription, row: dict) -> bool:
    return row["kind"] in sub.events and (not sub.countries or (row["country"] or "") in sub.countries)


def remember(db: Database, mail: Mail) -> None:
    """Queue the e-mail and remember its Message-ID with its conversation."""
    msg = mail.message
    queue_message(db, msg, kind=mail.kind, recipients=list(mail.to), data=mail.data)
    queries.remember_message(db, msg["Message-ID"], number=mail.number, campaign_id=mail.campaign_id, direction="out")


_EVENT_COLUMNS = """cb.id, cb.kind, cb.ticket, cb.number, cb.country, cb.text, cb.status, cb.occurred_at,
                    cb.received_at, cb.campaign_id, c.text AS answered, c.origin AS campaign_origin, c.sender_email,
                    c.message_id, c.label"""


def _unrouted(db: Database) -> list[dict]:
    return [
        dict(r)
        for r in db.query(
            f"""SELECT {_EVENT_COLUMNS} FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id
                WHERE cb.routed = 0 ORDER BY cb.id LIMIT ?""",
            [BATCH],
        )
    ]


def _digest_events(db: Database, *, sub: Subscription) -> dict:
    row = db.execute("SELECT last_callback_id, last_run_at FROM digests WHERE name = ?", [sub.name]).fetchone()
    watermark, since = (row[0], row[1]) if row else (0, None)
    top = db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]
    kinds = [k for k in sub.events]
    where = f"cb.id > ? AND cb.id <= ? AND cb.kind IN ({', '.join('?' * len(kinds))})"
    params: list = [watermark, top, *kinds]
    if sub.countries:
        where += f" AND cb.country IN ({', '.join('?' * len(sub.countries))})"
        params += list(sub.countries)
    rows = [
        dict(r)
        for r in db.query(
            f"SELECT {_EVENT_COLUMNS} FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id "
            f"WHERE {where} ORDER BY cb.occurred_at, cb.id",
            params,
        )
    ]
    return {"rows": rows, "watermark": watermark, "top": top, "since": since}


def _advance(db: Database, *, sub: str, expected: int, to: int) -> bool:
    """Move a digest's watermark from `expected` to `to`; False when someone else moved it."""
    row = db.execute("SELECT last_callback_id FROM digests WHERE name = ?", [sub]).fetchone()
    current = row[0] if row else 0
    if current != expected:
        return False
    db.execute(
        "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET last_callback_id = excluded.last_callback_id, "
        "last_run_at = excluded.last_run_at",
        [sub, to, clock.iso()],
    )
    return True
