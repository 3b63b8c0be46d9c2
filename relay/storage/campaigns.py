"""Campaigns, their Octopush calls (`sends`) and recipients, and the Message-IDs of their conversations."""

from __future__ import annotations

import json

from relay import clock
from relay.errors import CannotCancel
from relay.storage.database import Connection


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


def campaign(db: Connection, *, ticket: str | None = None, campaign_id: int | None = None) -> dict | None:
    """One campaign with its calls, recipients (delivery states) and replies."""
    if ticket is not None:
        row = db.execute("SELECT campaign_id FROM sends WHERE ticket = ?", [ticket]).fetchone()
        if not row:
            return None
        campaign_id = row[0]
    rows = list(db.query("SELECT * FROM campaigns WHERE id = ?", [campaign_id]))
    if not rows:
        return None
    result = dict(rows[0])
    result["stored_status"] = result["status"]
    result["status"] = public_status(result["status"], result.get("send_at"))
    result["removed_optouts"] = json.loads(result.get("removed_optouts") or "[]")
    result["sends"] = [
        dict(r) for r in db.query("SELECT * FROM sends WHERE campaign_id = ? ORDER BY chunk", [campaign_id])
    ]
    result["tickets"] = [s["ticket"] for s in result["sends"] if s["ticket"]]
    result["recipients"] = [
        dict(r)
        for r in db.query(
            "SELECT number, country, first_name, last_name, params, status, status_at FROM recipients "
            "WHERE campaign_id = ? ORDER BY id",
            [campaign_id],
        )
    ]
    result["replies"] = [
        dict(r)
        for r in db.query(
            """SELECT id, kind, number, country, text, status, date_raw, occurred_at FROM callbacks
               WHERE campaign_id = ? ORDER BY occurred_at, id""",
            [campaign_id],
        )
    ]
    return result


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
