"""The outbox: e-mails waiting for delivery, delivered or failed."""

from __future__ import annotations

from typing import TypedDict

from relay.storage.database import Connection


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
