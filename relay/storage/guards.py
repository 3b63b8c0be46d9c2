"""The SQL of the guards between an e-mail and a paid SMS: the day's spend, and held campaigns' states.

Every function runs inside `Store.write` (or a read connection): the spend check
and the insert it allows share one write transaction, so two requests racing for
the last SMS of a budget cannot both pass.
"""

from __future__ import annotations

from sqlite_utils import Database

# Campaigns that spend nothing: cancelled ones give their share back, failed ones sent nothing.
_SPENDING = "status NOT IN ('cancelled', 'failed')"


def used_since(db: Database, since: str, *, sender: str | None = None) -> int:
    """SMS parts x numbers accepted since `since` (UTC ISO), by everyone or by one e-mail sender."""
    if sender is None:
        sql, params = (
            f"SELECT coalesce(sum(sms_budget), 0) FROM campaigns WHERE created_at >= ? AND {_SPENDING}",
            [since],
        )
    else:
        sql = (
            "SELECT coalesce(sum(sms_budget), 0) FROM campaigns WHERE sender_email = ? COLLATE NOCASE "
            f"AND origin = 'email' AND created_at >= ? AND {_SPENDING}"
        )
        params = [sender, since]
    return db.execute(sql, params).fetchone()[0]


def top_sender_since(db: Database, since: str) -> int:
    """The most any one e-mail sender used since `since` (for /metrics)."""
    row = db.execute(
        f"""SELECT coalesce(max(used), 0) FROM (SELECT sum(sms_budget) AS used FROM campaigns
            WHERE origin = 'email' AND created_at >= ? AND {_SPENDING} GROUP BY lower(sender_email))""",
        [since],
    ).fetchone()
    return row[0]


def release(db: Database, campaign_id: int, *, status: str, was: str = "held") -> bool:
    """Move a campaign from `was` to `status` ("queued" or "cancelled") with its calls; False if it was not `was`."""
    cur = db.execute("UPDATE campaigns SET status = ? WHERE id = ? AND status = ?", [status, campaign_id, was])
    if not cur.rowcount:
        return False
    calls = "pending" if status == "queued" else "cancelled"
    db.execute("UPDATE sends SET status = ? WHERE campaign_id = ? AND status = 'held'", [calls, campaign_id])
    if status == "cancelled":
        db.execute("UPDATE campaigns SET finished_at = ? WHERE id = ?", [_now(), campaign_id])
    return True


def set_deadline(db: Database, campaign_id: int, deadline: str) -> None:
    """An approved campaign's calls retry from now on, not from when it was held."""
    db.execute("UPDATE sends SET deadline = ? WHERE campaign_id = ? AND status = 'pending'", [deadline, campaign_id])


def held_to_mail(db: Database, limit: int = 20) -> list[dict]:
    """Held campaigns whose sender has not been sent the approval e-mail yet."""
    return [
        dict(r)
        for r in db.query(
            "SELECT id FROM campaigns WHERE status = 'held' AND approval_mailed = 0 ORDER BY id LIMIT ?", [limit]
        )
    ]


def mark_mailed(db: Database, campaign_id: int) -> None:
    db.execute("UPDATE campaigns SET approval_mailed = 1 WHERE id = ?", [campaign_id])


def expired_held(db: Database, now: str) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM campaigns WHERE status = 'held' AND approve_by < ?", [now])]


def _now() -> str:
    from relay import clock

    return clock.iso()
