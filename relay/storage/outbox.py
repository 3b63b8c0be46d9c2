"""The outbox: e-mails waiting for delivery, delivered or failed."""

from __future__ import annotations

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
