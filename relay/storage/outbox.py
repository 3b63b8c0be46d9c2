"""The outbox: e-mails waiting for delivery, delivered or failed."""

from __future__ import annotations

import json
from typing import NamedTuple, TypedDict

from relay.storage.database import Connection, insert, is_postgres


def pending_mail_of(db: Connection, *, campaign_id: int, kind: str) -> list[int]:
    """Outbox ids of a campaign's e-mails of one kind still waiting for delivery."""
    return [
        r[0]
        for r in db.execute(
            """SELECT o.id FROM outbox o JOIN messages m ON m.message_id = o.message_id
               WHERE m.campaign_id = ? AND o.kind = ? AND o.status = 'pending'""",
            [campaign_id, kind],
        )
    ]


class FailedMail(TypedDict):
    id: int
    kind: str
    subject: str | None
    recipients: str  # a JSON list
    attempts: int
    last_error: str | None
    created_at: str


def failed_mails(db: Connection, *, limit: int) -> list[FailedMail]:
    """The latest `limit` e-mails that could not be delivered, newest first."""
    return [
        FailedMail(**r)
        for r in db.query(
            """SELECT id, kind, subject, recipients, attempts, last_error, created_at FROM outbox
               WHERE status = 'failed' ORDER BY id DESC LIMIT ?""",
            [limit],
        )
    ]


def add_mail(
    db: Connection, *, kind: str, recipients: list[str], message: bytes, message_id: str, subject: str, now: str
) -> int:
    """Queue one e-mail, due at once; its outbox id."""
    row = {
        "kind": kind,
        "recipients": json.dumps(recipients),
        "message": message,
        "message_id": message_id,
        "subject": subject,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    return insert(db, "outbox", row)


def make_pending_due(db: Connection, now: str) -> int:
    """Every pending e-mail due at `now` (those in backoff, or leased by a process that died); how many pend.

    On PostgreSQL a lease may be another running daemon's: only e-mails in backoff are made due (a dead
    daemon's leases run out by themselves).
    """
    leased = " AND claimed_by IS NULL" if is_postgres(db) else ""
    db.execute(
        f"UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' AND next_attempt_at > ?{leased}", [now, now]
    )
    return db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]


class ClaimedMail(TypedDict):
    id: int
    kind: str
    recipients: str  # a JSON list
    message: bytes
    attempts: int
    created_at: str


def claim_due(
    db: Connection, *, now: str, until: str, limit: int, only: list[int] | None = None, busy: list[int] | None = None
) -> list[ClaimedMail]:
    """Up to `limit` e-mails due at `now`, oldest first, hidden from other claims until `until`.

    `only`: among these ids alone; `busy`: never these (still in flight, even past their lease).
    On PostgreSQL the rows are locked as they are read, and rows another node is claiming at this moment are
    skipped (`FOR UPDATE SKIP LOCKED`): each e-mail goes to one node; the lease hides it after the commit.
    """
    if only is not None and not only:
        return []
    pg = is_postgres(db)
    node = getattr(db, "node", None)  # PostgreSQL's daemon name: its lease is not another daemon's to lift
    mine = f" AND id IN ({', '.join('?' * len(only))})" if only is not None else ""
    if busy:
        mine += f" AND id NOT IN ({', '.join('?' * len(busy))})"
    # The ids first, from an index in id order: no sort of every pending row, no body read for nothing.
    ids = [
        r[0]
        for r in db.execute(
            f"SELECT id FROM outbox {'' if pg else 'INDEXED BY idx_outbox_claim'}"
            " WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            f"{mine} ORDER BY id LIMIT ?{' FOR UPDATE SKIP LOCKED' if pg else ''}",
            [now, *(only or []), *(busy or []), limit],
        )
    ]
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    db.execute(f"UPDATE outbox SET next_attempt_at = ?, claimed_by = ? WHERE id IN ({marks})", [until, node, *ids])
    return [
        ClaimedMail(**r)
        for r in db.query(
            f"SELECT id, kind, recipients, message, attempts, created_at FROM outbox WHERE id IN ({marks}) ORDER BY id",
            ids,
        )
    ]


def renew_claims(db: Connection, ids: list[int], *, until: str) -> int:
    """Extend this daemon's leases on the e-mails it is delivering: another node takes over only a dead one's.

    Only rows still pending and claimed by this daemon (`node`, on PostgreSQL): a lease another node took
    over after this one ran out is not extended. (Issue 20, from the workers' side of the claims.)
    """
    if not ids:
        return 0
    marks = ", ".join("?" * len(ids))
    return db.execute(
        f"UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' AND id IN ({marks}) "
        "AND COALESCE(claimed_by, '') = ?",
        [until, *ids, getattr(db, "node", None) or ""],
    ).rowcount


class Attempts(NamedTuple):
    attempts: int
    created_at: str
    status: str


def attempts_of(db: Connection, mail_id: int) -> Attempts | None:
    """How often an e-mail was tried, since when it waits, and its status; None when it is gone (purged)."""
    row = db.execute("SELECT attempts, created_at, status FROM outbox WHERE id = ?", [mail_id]).fetchone()
    return Attempts(row[0] or 0, row[1], row[2]) if row else None


def record_delivered(db: Connection, mail_id: int, *, attempts: int, error: str | None, at: str) -> None:
    """Delivered: the body goes (kind, recipients, Message-ID, subject and dates stay, and the messages table
    threads answers); only what may still be sent, or what failed, keeps it."""
    db.execute(
        "UPDATE outbox SET attempts = ?, last_error = ?, status = 'sent', sent_at = ?, message = ?, "
        "next_attempt_at = NULL, claimed_by = NULL WHERE id = ?",
        [attempts, error, at, b"", mail_id],
    )


def record_failed(db: Connection, mail_id: int, *, attempts: int, error: str | None) -> None:
    """Failed for good: it stays, with its body, for the Attention page."""
    db.execute(
        "UPDATE outbox SET attempts = ?, last_error = ?, status = 'failed', claimed_by = NULL WHERE id = ?",
        [attempts, error, mail_id],
    )


def record_retry(
    db: Connection, mail_id: int, *, attempts: int, error: str | None, next_at: str, recipients: list[str] | None
) -> None:
    """Tried again at `next_at`; `recipients`: only these are left (the others accepted it)."""
    if recipients is None:
        db.execute(
            "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?, claimed_by = NULL WHERE id = ?",
            [attempts, error, next_at, mail_id],
        )
    else:
        db.execute(
            "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?, recipients = ?, claimed_by = NULL "
            "WHERE id = ?",
            [attempts, error, next_at, json.dumps(recipients), mail_id],
        )


class NextDue(TypedDict):
    pending: int
    next: str | None  # when the first pending e-mail is due


def next_due(db: Connection) -> NextDue:
    pending, first = db.execute("SELECT count(*), min(next_attempt_at) FROM outbox WHERE status = 'pending'").fetchone()
    return NextDue(pending=pending, next=first)


class Depth(TypedDict):
    pending: int
    failed: int
    oldest_pending_at: str | None


def depth(db: Connection) -> Depth:
    """E-mails waiting and failed, and since when the oldest waits: for /healthz and the metrics."""
    # IN, not != 'sent': an index range over the few unsent rows instead of a scan of every sent one.
    counts = dict(
        db.execute("SELECT status, count(*) FROM outbox WHERE status IN ('pending', 'failed') GROUP BY status")
    )
    oldest = db.execute("SELECT min(created_at) FROM outbox WHERE status = 'pending'").fetchone()[0]
    return Depth(pending=counts.get("pending", 0), failed=counts.get("failed", 0), oldest_pending_at=oldest)


class MailState(NamedTuple):
    id: int
    status: str
    last_error: str | None


def mail_state(db: Connection, *, message_id: str) -> MailState | None:
    """The outbox row of the e-mail with this Message-ID: its id, status and last error."""
    row = db.execute("SELECT id, status, last_error FROM outbox WHERE message_id = ?", [message_id]).fetchone()
    return MailState(*row) if row else None
