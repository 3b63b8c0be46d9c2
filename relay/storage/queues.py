"""The workers' queues as a whole: their depths, each row's failures, and the rows set aside after too many."""

from __future__ import annotations

from typing import TypedDict

from relay.storage import outbox
from relay.storage.database import Connection


class Depths(TypedDict):
    """Every queue's backlog at a glance, for /healthz and the metrics."""

    outbox_pending: int
    outbox_failed: int
    outbox_oldest_pending: str | None
    send_queue_pending: int
    send_queue_failed: int
    unrecognised_callbacks: int
    set_aside: dict[str, int]


def depths(db: Connection) -> Depths:
    mail = outbox.depth(db)
    # IN, not != 'sent': an index range over the few unsent rows instead of a scan of every sent one.
    sends = dict(db.execute("SELECT status, count(*) FROM sends WHERE status IN ('pending', 'failed') GROUP BY status"))
    unrecognised = db.execute("SELECT count(*) FROM callbacks WHERE kind = 'unrecognised'").fetchone()[0]
    return Depths(
        outbox_pending=mail["pending"],
        outbox_failed=mail["failed"],
        outbox_oldest_pending=mail["oldest_pending_at"],
        send_queue_pending=sends.get("pending", 0),
        send_queue_failed=sends.get("failed", 0),
        unrecognised_callbacks=unrecognised,
        set_aside=count_set_aside(db),
    )


MAX_FAILURES = 5  # a row that fails this often is set aside instead of being tried again and again


# Each worker's rows: (table, the column that says where a row is, its value while a worker has it, when set
# aside, when waiting for a worker).
_WORK = {
    "routing": ("callbacks", "routed", 0, -1, 0),
    "confirmation": ("campaigns", "notified", 0, -1, 0),
    "send": ("sends", "status", "sending", "set_aside", "pending"),
}


def note_failures(db: Connection, *, work: str, failures: dict[int, str]) -> dict[int, int]:
    """Count one more failure for each row ({id: reason}); at MAX_FAILURES a row is set aside.

    Returns each row's failures so far (MAX_FAILURES or more: it is set aside now).
    """
    table, column, working, aside, _ = _WORK[work]
    counts = {}
    for row_id, reason in failures.items():
        row = db.execute(
            f"UPDATE {table} SET failures = failures + 1, last_failure = ? WHERE id = ? AND {column} = ? "
            "RETURNING failures",
            [reason[:2000], row_id, working],
        ).fetchone()
        if row is None:
            continue
        counts[row_id] = row[0]
        if row[0] >= MAX_FAILURES:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", [aside, row_id])
    return counts


def retry_set_aside(db: Connection, *, work: str, row_id: int, deadline: str | None = None) -> bool:
    """An operator's retry: the row waits for its worker again, with a fresh count; False if it was not aside."""
    table, column, _, aside, waiting = _WORK[work]
    sets = f"{column} = ?, failures = 0" + (", deadline = ?" if deadline else "")
    params = [waiting, *([deadline] if deadline else []), row_id, aside]
    return db.execute(f"UPDATE {table} SET {sets} WHERE id = ? AND {column} = ?", params).rowcount > 0


class AsideCallback(TypedDict):
    id: int
    kind: str
    number: str | None
    text: str | None
    received_at: str
    failures: int
    last_failure: str | None


class AsideConfirmation(TypedDict):
    id: int  # the campaign's
    label: str | None
    status: str
    sender_email: str | None
    finished_at: str | None
    failures: int
    last_failure: str | None


class AsideSend(TypedDict):
    id: int
    campaign_id: int
    chunk: int
    label: str | None
    origin: str
    sender_email: str | None
    created_at: str | None
    failures: int
    last_failure: str | None


class SetAside(TypedDict):
    routing: list[AsideCallback]
    confirmation: list[AsideConfirmation]
    send: list[AsideSend]


def set_aside(db: Connection, *, limit: int = 200) -> SetAside:
    """The rows set aside, newest first, for the Attention page."""
    return SetAside(
        routing=[
            AsideCallback(**r)
            for r in db.query(
                """SELECT id, kind, number, text, received_at, failures, last_failure FROM callbacks
                   WHERE routed = -1 ORDER BY id DESC LIMIT ?""",
                [limit],
            )
        ],
        confirmation=[
            AsideConfirmation(**r)
            for r in db.query(
                """SELECT id, label, status, sender_email, finished_at, failures, last_failure FROM campaigns
                   WHERE notified = -1 ORDER BY id DESC LIMIT ?""",
                [limit],
            )
        ],
        send=[
            AsideSend(**r)
            for r in db.query(
                """SELECT s.id, s.campaign_id, s.chunk, c.label, c.origin, c.sender_email, s.created_at, s.failures,
                          s.last_failure
                   FROM sends s JOIN campaigns c ON c.id = s.campaign_id
                   WHERE s.status = 'set_aside' ORDER BY s.id DESC LIMIT ?""",
                [limit],
            )
        ],
    )


def count_set_aside(db: Connection) -> dict[str, int]:
    return {
        "routing": db.execute("SELECT count(*) FROM callbacks WHERE routed = -1").fetchone()[0],
        "confirmation": db.execute("SELECT count(*) FROM campaigns WHERE notified = -1").fetchone()[0],
        "send": db.execute("SELECT count(*) FROM sends WHERE status = 'set_aside'").fetchone()[0],
    }


def mark_done(db: Connection, *, work: str, ids: list[int]) -> set[int]:
    """The notifier queues these rows' e-mails: routed callbacks, or notified campaigns. Returns the rows this
    call marked; one already marked (by another process's sweep) is left out, so its e-mails are not queued twice."""
    table, column = _WORK[work][:2]
    sql = f"UPDATE {table} SET {column} = 1 WHERE id = ? AND {column} = 0"
    return {row_id for row_id in ids if db.execute(sql, [row_id]).rowcount}
