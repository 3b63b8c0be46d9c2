"""Campaigns, their Octopush calls (`sends`) and recipients, and the Message-IDs of their conversations."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import NamedTuple, TypedDict

from relay import clock
from relay.errors import CannotCancel
from relay.storage.database import Connection, insert, insert_many, is_postgres

# Seconds a daemon's claim of a send holds on PostgreSQL. Past it another daemon takes the call over: the same
# request_id, so Octopush answers an earlier success with code 120 and nothing is sent twice (SPEC §8: a dead
# node's work within 60 s). A daemon working longer on one call renews it (`renew_send_claims`).
SEND_LEASE = 45


class _Sms(TypedDict):
    """The columns of a `campaigns` row that an Octopush call sends."""

    text: str
    type: str
    purpose: str
    sender: str | None
    send_at: str | None
    with_replies: int
    simulation: int


class _Asked(_Sms):
    """The columns of a `campaigns` row that say what was asked, and by whom."""

    request_key: str
    origin: str  # "email" | "cli" | "web"
    sender_email: str | None  # who asked ("" for the command line and the web form)
    login: str | None  # the SMTP AUTH login, when there was one
    message_id: str | None
    thread_refs: str | None
    label: str | None


class _CampaignColumns(_Asked):
    """A `campaigns` row but `removed_optouts` (stored as JSON, read as a list)."""

    id: int
    status: str
    error_code: int | None
    error: str | None
    contacts: int | None
    sms_needed: int | None
    cost: float | None
    residual_credit: float | None
    encoding: str | None
    unicode_chars: str | None
    confirm: str | None
    trimmed: int
    sms_budget: int
    approve_by: str | None
    approval_mailed: int
    notified: int
    failures: int
    last_failure: str | None
    cancelled_by: str | None
    cancelled_at: str | None
    created_at: str
    finished_at: str | None


class ListedCampaign(_CampaignColumns):
    """A campaign of the campaigns page; `status` as stored (see `public_status`)."""

    removed_optouts: str  # a JSON list
    recipient_count: int


class Send(TypedDict):
    """One Octopush call of a campaign (at most 500 recipients)."""

    id: int
    campaign_id: int
    chunk: int
    request_id: str
    status: str
    attempts: int
    deadline: str | None
    not_before: str | None
    ticket: str | None
    already_sent: int
    sms_needed: int | None
    cost: float | None
    residual_credit: float | None
    error_code: int | None
    error: str | None
    failures: int
    last_failure: str | None
    created_at: str | None
    sent_at: str | None


class CampaignRecipient(TypedDict):
    number: str
    country: str | None
    first_name: str | None
    last_name: str | None
    params: str | None  # a JSON list
    status: str | None  # its last delivery state
    status_at: str | None


class CampaignReply(TypedDict):
    """A callback linked to the campaign: a reply, STOP or delivery receipt."""

    id: int
    kind: str
    number: str | None
    country: str | None
    text: str | None
    status: str | None
    date_raw: str | None
    occurred_at: str | None


class Campaign(_CampaignColumns):
    """One campaign with its calls, recipients and replies; `status` as people see it (`public_status`)."""

    stored_status: str
    removed_optouts: list[str]
    sends: list[Send]
    tickets: list[str]
    recipients: list[CampaignRecipient]
    replies: list[CampaignReply]


def remember_message(db: Connection, message_id: str, *, number: str, campaign_id: int | None, direction: str) -> None:
    """Keep a Message-ID with its conversation, so an answer to it finds the number and campaign."""
    db.execute(
        "INSERT INTO messages (message_id, number, campaign_id, direction, created_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [message_id, number, campaign_id, direction, clock.iso()],
    )


def made_here(db: Connection, *, message_id: str) -> bool:
    """A Message-ID the relay put on an e-mail it sent."""
    row = db.execute("SELECT 1 FROM messages WHERE message_id = ? AND direction = 'out'", [message_id]).fetchone()
    return row is not None


def campaign(db: Connection, *, ticket: str | None = None, campaign_id: int | None = None) -> Campaign | None:
    """One campaign, by its relay id or one of its tickets, with its calls, recipients (delivery states) and
    replies."""
    if ticket is not None:
        row = db.execute("SELECT campaign_id FROM sends WHERE ticket = ?", [ticket]).fetchone()
        if not row:
            return None
        campaign_id = row[0]
    rows = list(db.query("SELECT * FROM campaigns WHERE id = ?", [campaign_id]))
    if not rows:
        return None
    result = rows[0]
    result["stored_status"] = result["status"]
    result["status"] = public_status(result["status"], result.get("send_at"))
    result["removed_optouts"] = json.loads(result.get("removed_optouts") or "[]")
    result["sends"] = [
        Send(**r) for r in db.query("SELECT * FROM sends WHERE campaign_id = ? ORDER BY chunk", [campaign_id])
    ]
    result["tickets"] = [s["ticket"] for s in result["sends"] if s["ticket"]]
    result["recipients"] = [
        CampaignRecipient(**r)
        for r in db.query(
            "SELECT number, country, first_name, last_name, params, status, status_at FROM recipients "
            "WHERE campaign_id = ? ORDER BY id",
            [campaign_id],
        )
    ]
    result["replies"] = [
        CampaignReply(**r)
        for r in db.query(
            """SELECT id, kind, number, country, text, status, date_raw, occurred_at FROM callbacks
               WHERE campaign_id = ? ORDER BY occurred_at, id""",
            [campaign_id],
        )
    ]
    return Campaign(**result)


def public_status(stored: str, send_at: str | None, now: str | None = None) -> str:
    """A campaign's status as people see it (SPEC §3): one whose send time is still ahead is "scheduled".

    Stored, it stays "queued" while its calls wait in our queue and "sent" once Octopush holds it with its
    send_at; either way nothing has reached a phone yet.
    """
    if stored in ("queued", "sent") and send_at and send_at > (now or clock.iso()):
        return "scheduled"
    return stored


def next_scheduled_send(db: Connection) -> str | None:
    """When the earliest call held in our queue until its time is due (None: none is waiting)."""
    return db.execute(
        "SELECT min(not_before) FROM sends WHERE status = 'pending' AND not_before > ?", [clock.iso()]
    ).fetchone()[0]


def cancel_campaign(db: Connection, *, campaign_id: int, by: str, at_octopush: list[int]) -> None:
    """Mark a campaign cancelled with its calls still in our queue (and those Octopush has just cancelled).

    Checked again here, in the transaction: the send queue may have claimed a call since the caller looked.
    The campaign's sender is told by the notifier's sweep (`notified = 0`).
    """
    row = db.execute("SELECT status, send_at FROM campaigns WHERE id = ?", [campaign_id]).fetchone()
    if row is None:
        raise CannotCancel(f"there is no campaign {campaign_id}")
    status = public_status(row[0], row[1])
    if status not in ("held", "scheduled"):
        raise CannotCancel(f"campaign {campaign_id} is {status}, not held or scheduled: only those can be cancelled")
    for send_id, state in db.execute("SELECT id, status FROM sends WHERE campaign_id = ?", [campaign_id]).fetchall():
        if state == "sending" or (state == "sent" and send_id not in at_octopush):
            raise CannotCancel(f"campaign {campaign_id} is being handed to Octopush right now; it cannot be cancelled")
    marks = ", ".join("?" * len(at_octopush))
    db.execute(
        f"""UPDATE sends SET status = 'cancelled'
            WHERE campaign_id = ? AND (status = 'pending' {f"OR id IN ({marks})" if at_octopush else ""})""",
        [campaign_id, *at_octopush],
    )
    now = clock.iso()
    db.execute(
        """UPDATE campaigns SET status = 'cancelled', cancelled_by = ?, cancelled_at = ?, finished_at = ?,
                                notified = 0 WHERE id = ?""",
        [by, now, now, campaign_id],
    )


class SentSms(TypedDict):
    """One SMS of a campaign to one number, as its conversation shows it."""

    campaign_id: int
    text: str
    label: str | None
    origin: str
    sender_email: str | None
    campaign_status: str  # as stored: see `public_status`
    error: str | None
    created_at: str
    send_at: str | None
    sent_at: str | None
    ticket: str | None
    status: str | None  # the recipient's delivery state
    status_at: str | None
    first_name: str | None
    last_name: str | None


def sent_to(db: Connection, *, number: str, limit: int) -> list[SentSms]:
    """The latest `limit` SMS asked for `number`, newest first, sent or not yet."""
    return [
        SentSms(**r)
        for r in db.query(
            """SELECT c.id AS campaign_id, c.text, c.label, c.origin, c.sender_email, c.status AS campaign_status,
                      c.error, c.created_at, c.send_at, s.sent_at, s.ticket, r.status, r.status_at,
                      r.first_name, r.last_name
               FROM recipients r JOIN campaigns c ON c.id = r.campaign_id LEFT JOIN sends s ON s.id = r.send_id
               WHERE r.number = ? ORDER BY r.id DESC LIMIT ?""",
            [number, limit],
        )
    ]


def count_campaigns(db: Connection) -> int:
    return db.execute("SELECT count(*) FROM campaigns").fetchone()[0]


def latest_campaigns(db: Connection, *, limit: int, offset: int) -> list[ListedCampaign]:
    """A page of campaigns, newest first, each with its number of recipients."""
    return [
        ListedCampaign(**r)
        for r in db.query(
            """SELECT c.*, (SELECT count(*) FROM recipients r WHERE r.campaign_id = c.id) AS recipient_count
               FROM campaigns c ORDER BY c.id DESC LIMIT ? OFFSET ?""",
            [limit, offset],
        )
    ]


def delivery_counts(db: Connection, campaign_ids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """Each campaign's recipients by delivery state ('' before any receipt), most common first."""
    result: dict[int, list[tuple[str, int]]] = {}
    if not campaign_ids:
        return result
    marks = ", ".join("?" * len(campaign_ids))
    states = db.execute(
        f"""SELECT campaign_id, coalesce(status, ''), count(*) FROM recipients
            WHERE campaign_id IN ({marks}) GROUP BY 1, 2 ORDER BY 1, 3 DESC""",
        list(campaign_ids),
    )
    for campaign_id, status, count in states.fetchall():
        result.setdefault(campaign_id, []).append((status, count))
    return result


class FailedCampaign(TypedDict):
    id: int
    label: str | None
    origin: str
    sender_email: str | None
    error_code: int | None
    error: str | None
    created_at: str
    finished_at: str | None


def failed_campaigns(db: Connection, *, limit: int) -> list[FailedCampaign]:
    """The latest `limit` campaigns Octopush refused, newest first."""
    return [
        FailedCampaign(**r)
        for r in db.query(
            """SELECT id, label, origin, sender_email, error_code, error, created_at, finished_at FROM campaigns
               WHERE status = 'failed' ORDER BY id DESC LIMIT ?""",
            [limit],
        )
    ]


# ------------------------------------------------------------------ the send queue


class RequestSeen(NamedTuple):
    id: int
    created_at: str


def campaign_for_request(db: Connection, request_key: str) -> RequestSeen | None:
    """The campaign already stored for this idempotency key, if any."""
    row = db.execute("SELECT id, created_at FROM campaigns WHERE request_key = ?", [request_key]).fetchone()
    return RequestSeen(*row) if row else None


def retire_request_key(db: Connection, campaign_id: int) -> None:
    """Free a campaign's key for a new request (the same e-mail sent again after the idempotency window)."""
    db.execute("UPDATE campaigns SET request_key = request_key || '-' || id WHERE id = ?", [campaign_id])


class NewCampaign(_Asked):
    """A campaign about to be stored: what was asked, and what the relay decided of it."""

    status: str  # "queued", or "held" for approval
    sms_budget: int
    approve_by: str | None
    approval_mailed: int
    contacts: int
    encoding: str
    unicode_chars: str
    removed_optouts: str  # a JSON list
    confirm: str | None
    trimmed: int
    created_at: str


class NewSend(TypedDict):
    campaign_id: int
    chunk: int
    request_id: str
    status: str  # "pending", or "held" with its campaign
    deadline: str
    not_before: str | None
    created_at: str


class NewRecipient(TypedDict):
    campaign_id: int
    send_id: int
    number: str
    country: str
    first_name: str
    last_name: str
    params: str  # a JSON list


def add_campaign(db: Connection, row: NewCampaign) -> int:
    """Store a campaign; its id."""
    return insert(db, "campaigns", row)


def add_send(db: Connection, row: NewSend) -> int:
    """Store one Octopush call of a campaign; its id."""
    return insert(db, "sends", row)


def add_recipients(db: Connection, rows: list[NewRecipient]) -> None:
    """Store a call's recipients."""
    insert_many(db, "recipients", rows)


def requeue_interrupted_sends(db: Connection) -> None:
    """At start: a call left `sending` by a crash goes again (its request_id makes that safe).

    On PostgreSQL other daemons may be sending right now: only calls whose claim ran out go back to the queue.
    """
    if is_postgres(db):
        db.execute(
            "UPDATE sends SET status = 'pending' "
            "WHERE status = 'sending' AND (claimed_until IS NULL OR claimed_until < ?)",
            [clock.iso()],
        )
        return
    db.execute("UPDATE sends SET status = 'pending' WHERE status = 'sending'")


def requeue_send(db: Connection, send_id: int) -> None:
    """A call this process was making goes back to the queue."""
    db.execute("UPDATE sends SET status = 'pending' WHERE id = ? AND status = 'sending'", [send_id])


def due_sends(db: Connection, *, now: str, exclude: list[int], limit: int, campaign: int | None = None) -> list[int]:
    """The next pending calls due at `now`, in id order, but those in `exclude`; of one campaign, or all."""
    skip = f"AND id NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    mine = "AND campaign_id = ?" if campaign is not None else ""
    due = "status = 'pending' AND (not_before IS NULL OR not_before <= ?)"
    params = [now]
    if is_postgres(db):  # and the calls of a daemon that died: their claim ran out
        due = f"({due} OR (status = 'sending' AND claimed_until < ?))"
        params.append(now)
    sql = f"SELECT id FROM sends WHERE {due} {skip} {mine} ORDER BY id LIMIT ?"
    params += [*exclude, *([campaign] if campaign is not None else []), limit]
    return [r[0] for r in db.execute(sql, params)]


class ClaimedRecipient(TypedDict):
    number: str
    first_name: str | None
    last_name: str | None
    params: str | None  # a JSON list


class ClaimedSend(_Sms):
    """What one Octopush call needs: its request_id and deadline, the campaign's fields, its recipients."""

    request_id: str
    deadline: str
    recipients: list[ClaimedRecipient]


def claim_send(db: Connection, *, send_id: int, now: str) -> ClaimedSend | None:
    """Mark a pending call due at `now` as being sent (one more attempt); None when it is not (any more).

    One UPDATE that checks the status: of two daemons claiming the same call, the second waits for the first's
    commit and then finds it taken. On PostgreSQL the claim names its daemon and holds for SEND_LEASE; a call
    whose claim ran out (its daemon died) may be claimed again.
    """
    pg = is_postgres(db)
    until = clock.iso(clock.parse_iso(now) + timedelta(seconds=SEND_LEASE))
    taken_over = " OR (status = 'sending' AND claimed_until < ?)" if pg else ""
    cur = db.execute(
        f"""UPDATE sends SET status = 'sending', attempts = attempts + 1, claimed_by = ?, claimed_until = ?
            WHERE id = ? AND ((status = 'pending' AND (not_before IS NULL OR not_before <= ?)){taken_over})""",
        [getattr(db, "node", None), until, send_id, now, *([now] if pg else [])],
    )
    if not cur.rowcount:
        return None
    row = next(
        db.query(
            """SELECT s.request_id, s.deadline, c.text, c.type, c.purpose, c.sender, c.send_at,
                      c.with_replies, c.simulation
               FROM sends s JOIN campaigns c ON c.id = s.campaign_id WHERE s.id = ?""",
            [send_id],
        )
    )
    row["recipients"] = [
        ClaimedRecipient(**r)
        for r in db.query(
            "SELECT number, first_name, last_name, params FROM recipients WHERE send_id = ? ORDER BY id", [send_id]
        )
    ]
    return ClaimedSend(**row)


def renew_send_claims(db: Connection, send_ids: list[int], *, now: str) -> int:
    """Extend this daemon's claims on calls it is still making (a long retry): another daemon leaves them alone."""
    if not send_ids:
        return 0
    until = clock.iso(clock.parse_iso(now) + timedelta(seconds=SEND_LEASE))
    marks = ", ".join("?" * len(send_ids))
    mine, node = ("AND claimed_by = ?", [db.node]) if is_postgres(db) else ("", [])
    return db.execute(
        f"UPDATE sends SET claimed_until = ? WHERE status = 'sending' AND id IN ({marks}) {mine}",
        [until, *send_ids, *node],
    ).rowcount


def record_send_sent(
    db: Connection,
    send_id: int,
    *,
    ticket: str | None,
    already_sent: bool,
    sms_needed: int | None,
    cost: float | None,
    residual_credit: float | None,
    at: str,
) -> None:
    db.execute(
        # A ticket already recorded stays: a call taken over from a daemon thought dead gets code 120 and none.
        """UPDATE sends SET status = 'sent', ticket = coalesce(ticket, ?), already_sent = ?, sms_needed = ?, cost = ?,
                            residual_credit = ?, sent_at = ? WHERE id = ?""",
        [ticket, int(already_sent), sms_needed, cost, residual_credit, at, send_id],
    )


def record_send_failed(db: Connection, send_id: int, *, code: int | None, error: str) -> None:
    db.execute("UPDATE sends SET status = 'failed', error_code = ?, error = ? WHERE id = ?", [code, error, send_id])


class CampaignOutcome(NamedTuple):
    """A campaign whose every call is answered: what it cost, and the first refusal if one failed."""

    campaign_id: int
    confirm: str | None  # what its sender asked to hear: "all" | "errors" | "none"
    failed: bool
    sms_needed: int | None
    cost: float | None
    residual_credit: float | None
    error_code: int | None
    error: str | None


def campaign_outcome(db: Connection, send_id: int) -> CampaignOutcome | None:
    """The outcome of the campaign of this call, once none of its calls waits any more; None before."""
    campaign_id, confirm = db.execute(
        "SELECT s.campaign_id, c.confirm FROM sends s JOIN campaigns c ON c.id = s.campaign_id WHERE s.id = ?",
        [send_id],
    ).fetchone()
    states = [r[0] for r in db.execute("SELECT status FROM sends WHERE campaign_id = ?", [campaign_id])]
    if any(s in ("pending", "sending", "set_aside") for s in states):
        return None
    totals = db.execute(
        "SELECT sum(sms_needed), sum(cost), min(residual_credit) FROM sends WHERE campaign_id = ? AND status = 'sent'",
        [campaign_id],
    ).fetchone()
    failed = db.execute(
        "SELECT error_code, error FROM sends WHERE campaign_id = ? AND status = 'failed' ORDER BY id LIMIT 1",
        [campaign_id],
    ).fetchone()
    return CampaignOutcome(
        campaign_id,
        confirm,
        failed is not None,
        totals[0],
        totals[1],
        totals[2],
        failed[0] if failed else None,
        failed[1] if failed else None,
    )


def finish_campaign(db: Connection, outcome: CampaignOutcome, *, at: str, notified: bool) -> None:
    """Settle a campaign as sent or failed; `notified`: no e-mail is owed for it, the notifier need not look."""
    db.execute(
        """UPDATE campaigns SET status = ?, sms_needed = ?, cost = ?, residual_credit = ?, error_code = ?,
                                error = ?, finished_at = ?, notified = ? WHERE id = ?""",
        [
            "failed" if outcome.failed else "sent",
            outcome.sms_needed,
            outcome.cost,
            outcome.residual_credit,
            outcome.error_code,
            outcome.error,
            at,
            int(notified),
            outcome.campaign_id,
        ],
    )


def unconfirmed(db: Connection, *, limit: int) -> list[int]:
    """Finished campaigns (sent, failed or cancelled) the notifier has not considered yet, oldest first."""
    return [
        r[0]
        for r in db.execute(
            """SELECT id FROM campaigns WHERE notified = 0 AND status IN ('sent', 'failed', 'cancelled')
               ORDER BY id LIMIT ?""",
            [limit],
        )
    ]


def label_of_message(db: Connection, message_id: str) -> str | None:
    """The label of the campaign a Message-ID belongs to (None: no campaign, or none known)."""
    row = db.execute(
        "SELECT c.label FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE m.message_id = ?",
        [message_id],
    ).fetchone()
    return row[0] if row else None
