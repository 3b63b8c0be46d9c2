"""Campaigns, their Octopush calls (`sends`) and recipients, and the Message-IDs of their conversations."""

from __future__ import annotations

import json
from typing import TypedDict

from relay import clock
from relay.errors import CannotCancel
from relay.storage.database import Connection


class _CampaignColumns(TypedDict):
    """A `campaigns` row but `removed_optouts` (stored as JSON, read as a list)."""

    id: int
    request_key: str
    origin: str  # "email" | "cli" | "web"
    sender_email: str | None  # who asked ("" for the command line and the web form)
    login: str | None  # the SMTP AUTH login, when there was one
    message_id: str | None
    thread_refs: str | None
    label: str | None
    text: str
    type: str
    purpose: str
    sender: str | None
    send_at: str | None
    with_replies: int
    simulation: int
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
        "INSERT OR IGNORE INTO messages (message_id, number, campaign_id, direction, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
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
