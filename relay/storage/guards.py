"""The SQL of the guards between an e-mail and a paid SMS: the day's spend, and held campaigns' states.

Every function runs inside `Store.write` (or a read connection): the spend check
and the insert it allows share one write transaction, so two requests racing for
the last SMS of a budget cannot both pass.
"""

from __future__ import annotations

from typing import TypedDict

from relay.storage.database import Connection

# Campaigns that spend nothing: cancelled ones give their share back, failed ones sent nothing.
_SPENDING = "status NOT IN ('cancelled', 'failed')"


def used_since(db: Connection, since: str, *, sender: str | None = None) -> int:
    """SMS parts x numbers accepted since `since` (UTC ISO), by everyone or by one e-mail sender."""
    if sender is None:
        sql, params = (
            f"SELECT coalesce(sum(sms_budget), 0) FROM campaigns WHERE created_at >= ? AND {_SPENDING}",
            [since],
        )
    else:
        sql = (
            "SELECT coalesce(sum(sms_budget), 0) FROM campaigns WHERE lower(sender_email) = lower(?) "
            f"AND origin = 'email' AND created_at >= ? AND {_SPENDING}"
        )
        params = [sender, since]
    return db.execute(sql, params).fetchone()[0]


def top_sender_since(db: Connection, since: str) -> int:
    """The most any one e-mail sender used since `since` (for /metrics)."""
    row = db.execute(
        f"""SELECT coalesce(max(used), 0) FROM (SELECT sum(sms_budget) AS used FROM campaigns
            WHERE origin = 'email' AND created_at >= ? AND {_SPENDING} GROUP BY lower(sender_email)) AS per_sender""",
        [since],
    ).fetchone()
    return row[0]


def release(db: Connection, campaign_id: int, *, status: str, was: str = "held") -> bool:
    """Move a campaign from `was` to `status` ("queued" or "cancelled") with its calls; False if it was not `was`."""
    cur = db.execute("UPDATE campaigns SET status = ? WHERE id = ? AND status = ?", [status, campaign_id, was])
    if not cur.rowcount:
        return False
    calls = "pending" if status == "queued" else "cancelled"
    db.execute("UPDATE sends SET status = ? WHERE campaign_id = ? AND status = 'held'", [calls, campaign_id])
    # Answered: no approval e-mail is owed any more (an expiry sets it back to tell the sender).
    db.execute("UPDATE campaigns SET approval_mailed = 2 WHERE id = ?", [campaign_id])
    if status == "cancelled":
        db.execute("UPDATE campaigns SET finished_at = ? WHERE id = ?", [_now(), campaign_id])
    return True


def set_deadline(db: Connection, campaign_id: int, deadline: str) -> None:
    """An approved campaign's calls retry from now on, not from when it was held."""
    db.execute("UPDATE sends SET deadline = ? WHERE campaign_id = ? AND status = 'pending'", [deadline, campaign_id])


def approval_mail_due(db: Connection, limit: int = 20) -> list[int]:
    """Campaigns whose sender is owed an e-mail: held and not asked yet, or cancelled for want of an answer."""
    return [
        r[0]
        for r in db.execute(
            """SELECT id FROM campaigns WHERE approval_mailed < 2
               AND ((status = 'held' AND approval_mailed = 0) OR status = 'cancelled') ORDER BY id LIMIT ?""",
            [limit],
        )
    ]


def mark_mailed(db: Connection, campaign_id: int, *, done: bool) -> bool:
    """The approval e-mail (or, `done`, the expiry's) is queued; False when another sweep marked it first.

    A compare-and-set: the state only moves forward (0 asked-to-be -> 1 asked -> 2 nothing owed), so of two
    daemons sweeping at once, the second's update finds it moved and its e-mail can be left out.
    """
    state = 2 if done else 1
    cur = db.execute(
        "UPDATE campaigns SET approval_mailed = ? WHERE id = ? AND approval_mailed < ?", [state, campaign_id, state]
    )
    return cur.rowcount > 0


def expired_held(db: Connection, now: str) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaigns WHERE approval_mailed < 2 AND status = 'held' AND approve_by < ?", [now]
        )
    ]


def _now() -> str:
    from relay import clock

    return clock.iso()


def campaign_sender(db: Connection, *, campaign_id: int) -> str | None:
    """The e-mail address that sent a campaign ("" for the CLI and the web form); None when there is none."""
    row = db.execute("SELECT sender_email FROM campaigns WHERE id = ?", [campaign_id]).fetchone()
    return None if row is None else (row[0] or "")


class HeldFacts(TypedDict):
    """What approving or cancelling a campaign needs to know of it."""

    id: int
    status: str
    sender_email: str | None
    login: str | None
    purpose: str
    send_at: str | None


def held_facts(db: Connection, campaign_id: int) -> HeldFacts | None:
    rows = list(
        db.query("SELECT id, status, sender_email, login, purpose, send_at FROM campaigns WHERE id = ?", [campaign_id])
    )
    return HeldFacts(**rows[0]) if rows else None


def set_send_at(db: Connection, campaign_id: int, send_at: str) -> None:
    db.execute("UPDATE campaigns SET send_at = ? WHERE id = ?", [send_at, campaign_id])


def approval_work(db: Connection, now: str) -> tuple[bool, list[int]]:
    """One read for the notifier's sweep: whether a held campaign has expired, and who is owed an e-mail."""
    return bool(expired_held(db, now)), approval_mail_due(db)


def mark_expired(db: Connection, campaign_id: int) -> None:
    """Cancelled for want of an answer: the notifier owes its sender an e-mail saying so."""
    # The approval sweep's e-mail says so; the confirmations' sweep (`notified`) owes it nothing more.
    db.execute(
        "UPDATE campaigns SET error = 'not approved in time', approval_mailed = 1, notified = 1 WHERE id = ?",
        [campaign_id],
    )


def cancelled_by(db: Connection, campaign_id: int, *, by: str) -> None:
    """Who cancelled a held campaign, and when, as the campaign pages and the API show it."""
    now = _now()
    db.execute("UPDATE campaigns SET cancelled_by = ?, cancelled_at = ? WHERE id = ?", [by, now, campaign_id])
