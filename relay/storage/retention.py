"""Retention: deleting old replies, receipts, sent e-mails and Message-IDs a batch at a time."""

from __future__ import annotations

from relay.storage.database import Connection, is_postgres

PURGE_BATCH = 100  # rows of each table per purge transaction: a few milliseconds of the write lock (500: 25-120 ms)


def purge_batch(db: Connection, *, cutoff: str, digests: list[str], limit: int = PURGE_BATCH) -> dict:
    """Delete up to `limit` replies, receipts and STOP events, sent e-mails and message ids from before `cutoff`.

    One short transaction's worth: the caller commits, lets other writers in, and calls again until every
    count is under `limit` (`purge_done`). Opt-outs stay: they are law. Each table is reached through an
    index on its date, so a batch reads only what it deletes (an outbox row's body is never read).
    The newest callback is always kept so ids never restart below a digest's watermark, and never what a
    digest has still to send: only ids at or under every current digest's watermark. `digests` are the
    digest subscriptions of the configuration: a removed one's watermark no longer holds anything back.
    """
    top = db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]
    watermark = None
    if digests:  # `IN ()` is SQLite's alone
        watermark = db.execute(
            f"SELECT min(last_callback_id) FROM digests WHERE name IN ({', '.join('?' * len(digests))})", digests
        ).fetchone()[0]
    highest = top - 1 if watermark is None else min(top - 1, watermark)
    # SQLite is told which index to walk (its planner chose scans here); PostgreSQL has no hints, and messages
    # has no rowid there: its key is its Message-ID.
    pg = is_postgres(db)
    by_received, by_created, messages_key, by_message_created = (
        ("", "", "message_id", "")
        if pg
        else (
            "INDEXED BY idx_callbacks_received_at",
            "INDEXED BY idx_outbox_status_created",
            "rowid",
            "INDEXED BY idx_messages_created_at",
        )
    )
    callbacks = db.execute(
        f"""DELETE FROM callbacks WHERE id IN (
               SELECT id FROM callbacks {by_received}
               WHERE received_at < ? AND routed = 1 AND id <= ? ORDER BY received_at LIMIT ?)""",
        [cutoff, highest, limit],
    ).rowcount
    outbox = db.execute(
        f"""DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox {by_created}
               WHERE status = 'sent' AND created_at < ? ORDER BY created_at LIMIT ?)""",
        [cutoff, limit],
    ).rowcount
    messages = db.execute(
        f"""DELETE FROM messages WHERE {messages_key} IN (
               SELECT {messages_key} FROM messages {by_message_created}
               WHERE created_at < ? ORDER BY created_at LIMIT ?)""",
        [cutoff, limit],
    ).rowcount
    return {"callbacks": callbacks, "outbox": outbox, "messages": messages}


def purge_done(counts: dict, limit: int = PURGE_BATCH) -> bool:
    """True when a batch found less than a full batch in every table: nothing older is left."""
    return all(n < limit for n in counts.values())
