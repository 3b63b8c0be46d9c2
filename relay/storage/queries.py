"""The SQL octorelay runs: write functions (run inside `Store.write`) and read functions.

Each function takes a sqlite-utils `Database`, so the same code serves the
daemon's writer (on the event loop or in its thread), its readers and the command line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from sqlite_utils import Database

from relay import clock
from relay.errors import CannotCancel
from relay.octopush.callbacks import Callback

LINK_WINDOW_DAYS = 30
NO_COUNTRY = "-"  # `country` filter value for callbacks whose number has no country


# ------------------------------------------------------------------ meta


def meta_get(db: Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def meta_set(db: Database, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def ensure_callback_token(db: Database) -> str:
    """The stored callback token, made once at first start."""
    token = meta_get(db, "callback_token")
    if not token:
        token = secrets.token_urlsafe(24)
        meta_set(db, "callback_token", token)
    return token


def _insert_sql(verb: str, table: str, columns) -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def insert(db: Database, table: str, row: dict, *, or_ignore: bool = False) -> int | None:
    """A plain INSERT; its id, or None when `or_ignore` met a conflict.

    sqlite-utils' insert() reads the schema on every call, which the hot paths feel.
    """
    cur = db.execute(_insert_sql("INSERT OR IGNORE" if or_ignore else "INSERT", table, row), list(row.values()))
    return cur.lastrowid if cur.rowcount else None


def insert_many(db: Database, table: str, rows: list[dict]) -> None:
    """Plain INSERTs of rows that all have the same keys."""
    if rows:
        db.conn.executemany(_insert_sql("INSERT", table, rows[0]), [list(r.values()) for r in rows])


def remember_message(db: Database, message_id: str, *, number: str, campaign_id: int | None, direction: str) -> None:
    """Keep a Message-ID with its conversation, so an answer to it finds the number and campaign."""
    db.execute(
        "INSERT OR IGNORE INTO messages (message_id, number, campaign_id, direction, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [message_id, number, campaign_id, direction, clock.iso()],
    )


def made_here(db: Database, *, message_id: str) -> bool:
    """A Message-ID the relay put on an e-mail it sent."""
    row = db.execute("SELECT 1 FROM messages WHERE message_id = ? AND direction = 'out'", [message_id]).fetchone()
    return row is not None


# ------------------------------------------------------------------ callbacks


class Stored(NamedTuple):
    id: int
    new: bool  # False: a repeat of a callback already stored
    pending: bool  # True: the notifier has e-mails to send for it


def store_callback(db: Database, cb: Callback, needs_mail: Callable[[dict], bool] | None = None) -> Stored:
    """Insert a callback once (dedup key), linked to its campaign.

    `needs_mail(row)` (the notifier's) says whether it gets an e-mail at once; when it does not, the callback
    is stored already routed and the notifier never reads it again. Without it, the notifier decides later.
    """
    campaign = find_campaign(db, cb.ticket, cb.number) if cb.kind in ("reply", "stop") else None
    row = cb.row(clock.iso())
    if campaign:
        row["campaign_id"] = campaign["id"]
    if cb.kind == "unrecognised":
        row["routed"] = 1  # nothing to route: an operator reads these in the UI
    elif needs_mail is not None:
        facts = {"kind": cb.kind, "country": cb.country, "campaign_origin": None, "sender_email": None}
        if campaign:
            facts.update(campaign_origin=campaign["origin"], sender_email=campaign["sender_email"])
        row["routed"] = 0 if needs_mail(facts) else 1
    callback_id = insert(db, "callbacks", row, or_ignore=True)
    if callback_id is None:
        existing = db.execute("SELECT id FROM callbacks WHERE dedup_key = ?", [row["dedup_key"]]).fetchone()
        return Stored(existing[0], False, False)
    if cb.kind == "stop":
        db.execute(
            "INSERT OR IGNORE INTO optouts (number, at, callback_id) VALUES (?, ?, ?)",
            [cb.number, row["occurred_at"], callback_id],
        )
    elif cb.kind == "delivery":
        apply_receipts(db, ticket=cb.ticket, callback_id=callback_id)
    return Stored(callback_id, True, not row.get("routed"))


def find_campaign(db: Database, ticket: str, number: str) -> dict | None:
    """The campaign a reply answers (id, origin, sender_email): by its ticket (SPEC §4.1).

    Without a ticket, the latest campaign to that number in 30 days. With a ticket we do not know, only a
    campaign one of whose sends has no ticket (Octopush's code 120, "already sent", gives none back): an
    unknown ticket is otherwise another application's SMS on the same account, and its reply is not ours
    to e-mail to one of our senders.
    """
    row = None
    if ticket:
        row = db.execute(
            """SELECT c.id, c.origin, c.sender_email FROM sends s JOIN campaigns c ON c.id = s.campaign_id
               WHERE s.ticket = ? LIMIT 1""",
            [ticket],
        ).fetchone()
    if row is None:
        row = db.execute(
            """SELECT c.id, c.origin, c.sender_email FROM recipients r JOIN campaigns c ON c.id = r.campaign_id
               WHERE r.number = ? AND c.created_at >= ? AND c.status = 'sent'
               ORDER BY r.campaign_id DESC LIMIT 1""",
            [number, clock.ago(days=LINK_WINDOW_DAYS)],
        ).fetchone()
        if row and ticket and not _has_untracked_send(db, row[0]):
            row = None
    return dict(zip(("id", "origin", "sender_email"), row, strict=True)) if row else None


def _has_untracked_send(db: Database, campaign_id: int) -> bool:
    return bool(
        db.execute(
            "SELECT 1 FROM sends WHERE campaign_id = ? AND status = 'sent' AND coalesce(ticket, '') = '' LIMIT 1",
            [campaign_id],
        ).fetchone()
    )


def apply_receipts(db: Database, *, ticket: str, callback_id: int | None = None) -> int:
    """Apply unapplied receipts of `ticket` to their recipients, in date order; safe out of order."""
    where = "kind = 'delivery' AND applied = 0 AND ticket = ?"
    params: list[Any] = [ticket]
    if callback_id is not None:
        where += " AND id = ?"
        params.append(callback_id)
    applied = 0
    rows = db.execute(
        f"SELECT id, number, status, occurred_at FROM callbacks WHERE {where} ORDER BY occurred_at", params
    )
    for cid, number, status, at in rows.fetchall():
        cur = db.execute(
            """UPDATE recipients SET status = ?, status_at = ?
               WHERE number = ? AND send_id IN (SELECT id FROM sends WHERE ticket = ?)
                 AND (status_at IS NULL OR status_at <= ?)""",
            [status, at, number, ticket, at],
        )
        matched = (
            cur.rowcount
            or db.execute(
                "SELECT 1 FROM recipients WHERE number = ? AND send_id IN (SELECT id FROM sends WHERE ticket = ?)",
                [number, ticket],
            ).fetchone()
        )
        if matched:
            campaign = db.execute("SELECT campaign_id FROM sends WHERE ticket = ?", [ticket]).fetchone()
            db.execute("UPDATE callbacks SET applied = 1, campaign_id = ? WHERE id = ?", [campaign[0], cid])
            applied += 1
    return applied


# ------------------------------------------------------------------ reads


def replies(
    db: Database,
    *,
    since: str | None = None,
    until: str | None = None,
    country: str | None = None,
    number: str | None = None,
    text: str | None = None,
    kinds: tuple[str, ...] = ("reply",),
    limit: int | None = 100,
    offset: int = 0,
    before: tuple[str, int] | None = None,
) -> list[dict]:
    """Stored replies, newest first, with the text of the SMS they answer.

    `before` (`occurred_at`, `id` of the last row of a previous call) continues from there: a keyset page
    costs the same wherever it starts, and a row stored meanwhile never shifts one into the next page twice.
    """
    where, params = _reply_filter(since=since, until=until, country=country, number=number, text=text, kinds=kinds)
    if before is not None:
        where += " AND cb.occurred_at <= ? AND (cb.occurred_at < ? OR cb.id < ?)"
        params += [before[0], before[0], before[1]]
    sql = f"""SELECT cb.id, cb.kind, cb.ticket, cb.number, cb.country, cb.text, cb.status,
                     cb.sim_card_number, cb.date_raw, cb.occurred_at, cb.received_at, cb.campaign_id,
                     c.text AS answered, c.sender_email AS campaign_sender, c.label AS campaign_label,
                     c.origin AS campaign_origin
              FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id
              WHERE {where} ORDER BY cb.occurred_at DESC, cb.id DESC"""
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    return [dict(r) for r in db.query(sql, params)]


def iter_replies(db: Database, *, limit: int | None = None, chunk: int = 1000, **filters: Any) -> Iterator[dict]:
    """Every reply under the filters (up to `limit`), newest first, read `chunk` rows at a time.

    Memory stays constant however many there are, and no read transaction stays open between chunks
    (a long one would keep the WAL from being checkpointed).
    """
    before = None
    while limit is None or limit > 0:
        size = chunk if limit is None else min(chunk, limit)
        rows = replies(db, limit=size, before=before, **filters)
        yield from rows
        if len(rows) < size:
            return
        before = (rows[-1]["occurred_at"], rows[-1]["id"])
        if limit is not None:
            limit -= len(rows)


def reply_counts(db: Database) -> list[tuple[str, int]]:
    """(country, replies) for every country ('' for none), from the counts the triggers of m012 keep."""
    return db.execute("SELECT country, n FROM callback_counts WHERE kind = 'reply' AND n > 0").fetchall()


def count_replies(db: Database, **filters: Any) -> int:
    where, params = _reply_filter(**filters)
    return db.execute(f"SELECT count(*) FROM callbacks cb WHERE {where}", params).fetchone()[0]


def _reply_filter(
    *,
    since: str | None = None,
    until: str | None = None,
    country: str | None = None,
    number: str | None = None,
    text: str | None = None,
    kinds: tuple[str, ...] = ("reply",),
) -> tuple[str, list]:
    clauses = [f"cb.kind IN ({', '.join('?' * len(kinds))})"]
    params: list[Any] = list(kinds)
    if since:
        clauses.append("cb.occurred_at >= ?")
        params.append(since)
    if until:
        clauses.append("cb.occurred_at < ?")
        params.append(until)
    if country == NO_COUNTRY:
        clauses.append("coalesce(cb.country, '') = ''")
    elif country:
        clauses.append("cb.country = ?")
        params.append(country.upper())
    if number:
        clauses.append("cb.number LIKE ?")
        params.append(f"%{number.strip()}%")
    if text:
        clauses.append("cb.text LIKE ?")
        params.append(f"%{text}%")
    return " AND ".join(clauses), params


def country_summary(db: Database, **filters: Any) -> list[dict]:
    """Per country under the reply filters: replies, distinct numbers, last reply; most replies first."""
    where, params = _reply_filter(**filters)
    sql = f"""SELECT coalesce(cb.country, '') AS country, count(*) AS replies, count(DISTINCT cb.number) AS numbers,
                     max(cb.occurred_at) AS last_at
              FROM callbacks cb WHERE {where} GROUP BY 1 ORDER BY replies DESC, country"""
    return [dict(r) for r in db.query(sql, params)]


def reply_hours(db: Database, **filters: Any) -> list[tuple[str, str, int]]:
    """(UTC hour "2026-11-24T08", country, replies) under the reply filters: the chart buckets them into local days."""
    where, params = _reply_filter(**filters)
    sql = f"""SELECT substr(cb.occurred_at, 1, 13) AS hour, coalesce(cb.country, ''), count(*)
              FROM callbacks cb WHERE {where} AND cb.occurred_at IS NOT NULL GROUP BY 1, 2"""
    return [(r[0], r[1], r[2]) for r in db.execute(sql, params).fetchall()]


def campaign(db: Database, *, ticket: str | None = None, campaign_id: int | None = None) -> dict | None:
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


def next_scheduled_send(db: Database) -> str | None:
    """When the earliest call held in our queue until its time is due (None: none is waiting)."""
    return db.execute(
        "SELECT min(not_before) FROM sends WHERE status = 'pending' AND not_before > ?", [clock.iso()]
    ).fetchone()[0]


def cancel_campaign(db: Database, *, campaign_id: int, by: str, at_octopush: list[int]) -> None:
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


def pending_mail_of(db: Database, *, campaign_id: int, kind: str) -> list[int]:
    """Outbox ids of a campaign's e-mails of one kind still waiting for delivery."""
    return [
        r[0]
        for r in db.execute(
            """SELECT o.id FROM outbox o JOIN messages m ON m.message_id = o.message_id
               WHERE m.campaign_id = ? AND o.kind = ? AND o.status = 'pending'""",
            [campaign_id, kind],
        )
    ]


def depths(db: Database) -> dict:
    # IN, not != 'sent': an index range over the few unsent rows instead of a scan of every sent one.
    outbox = dict(
        db.execute("SELECT status, count(*) FROM outbox WHERE status IN ('pending', 'failed') GROUP BY status")
    )
    sends = dict(db.execute("SELECT status, count(*) FROM sends WHERE status IN ('pending', 'failed') GROUP BY status"))
    oldest = db.execute("SELECT min(created_at) FROM outbox WHERE status = 'pending'").fetchone()[0]
    return {
        "outbox_pending": outbox.get("pending", 0),
        "outbox_failed": outbox.get("failed", 0),
        "outbox_oldest_pending": oldest,
        "send_queue_pending": sends.get("pending", 0),
        "send_queue_failed": sends.get("failed", 0),
        "unrecognised_callbacks": db.execute("SELECT count(*) FROM callbacks WHERE kind = 'unrecognised'").fetchone()[
            0
        ],
        "set_aside": count_set_aside(db),
    }


# ------------------------------------------------------------------ rows set aside

MAX_FAILURES = 5  # a row that fails this often is set aside instead of being tried again and again

# Each worker's rows: (table, the column that says where a row is, its value while a worker has it, when set
# aside, when waiting for a worker).
_WORK = {
    "routing": ("callbacks", "routed", 0, -1, 0),
    "confirmation": ("campaigns", "notified", 0, -1, 0),
    "send": ("sends", "status", "sending", "set_aside", "pending"),
}


def note_failures(db: Database, *, work: str, failures: dict[int, str]) -> dict[int, int]:
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


def retry_set_aside(db: Database, *, work: str, row_id: int, deadline: str | None = None) -> bool:
    """An operator's retry: the row waits for its worker again, with a fresh count; False if it was not aside."""
    table, column, _, aside, waiting = _WORK[work]
    sets = f"{column} = ?, failures = 0" + (", deadline = ?" if deadline else "")
    params = [waiting, *([deadline] if deadline else []), row_id, aside]
    return db.execute(f"UPDATE {table} SET {sets} WHERE id = ? AND {column} = ?", params).rowcount > 0


def set_aside(db: Database, *, limit: int = 200) -> dict[str, list[dict]]:
    """The rows set aside, newest first, for the Attention page."""
    return {
        "routing": [
            dict(r)
            for r in db.query(
                """SELECT id, kind, number, text, received_at, failures, last_failure FROM callbacks
                   WHERE routed = -1 ORDER BY id DESC LIMIT ?""",
                [limit],
            )
        ],
        "confirmation": [
            dict(r)
            for r in db.query(
                """SELECT id, label, status, sender_email, finished_at, failures, last_failure FROM campaigns
                   WHERE notified = -1 ORDER BY id DESC LIMIT ?""",
                [limit],
            )
        ],
        "send": [
            dict(r)
            for r in db.query(
                """SELECT s.id, s.campaign_id, s.chunk, c.label, c.origin, c.sender_email, s.created_at, s.failures,
                          s.last_failure
                   FROM sends s JOIN campaigns c ON c.id = s.campaign_id
                   WHERE s.status = 'set_aside' ORDER BY s.id DESC LIMIT ?""",
                [limit],
            )
        ],
    }


def count_set_aside(db: Database) -> dict[str, int]:
    return {
        "routing": db.execute("SELECT count(*) FROM callbacks WHERE routed = -1").fetchone()[0],
        "confirmation": db.execute("SELECT count(*) FROM campaigns WHERE notified = -1").fetchone()[0],
        "send": db.execute("SELECT count(*) FROM sends WHERE status = 'set_aside'").fetchone()[0],
    }


def mark_done(db: Database, *, work: str, ids: list[int]) -> set[int]:
    """The notifier queues these rows' e-mails: routed callbacks, or notified campaigns. Returns the rows this
    call marked; one already marked (by another process's sweep) is left out, so its e-mails are not queued twice."""
    table, column = _WORK[work][:2]
    sql = f"UPDATE {table} SET {column} = 1 WHERE id = ? AND {column} = 0"
    return {row_id for row_id in ids if db.execute(sql, [row_id]).rowcount}


def is_opted_out(db: Database, number: str) -> bool:
    return db.execute("SELECT 1 FROM optouts WHERE number = ?", [number]).fetchone() is not None


def init_digests(db: Database, names: list[str]) -> dict[str, str | None]:
    """A digest seen for the first time starts from now, not from the first callback ever; each one's last run."""
    top = db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]
    result = {}
    for name in names:
        row = db.execute("SELECT last_run_at FROM digests WHERE name = ?", [name]).fetchone()
        if row is None:
            now = clock.iso()
            db.execute("INSERT INTO digests (name, last_callback_id, last_run_at) VALUES (?, ?, ?)", [name, top, now])
            result[name] = now
        else:
            result[name] = row[0]
    return result


PURGE_BATCH = 100  # rows of each table per purge transaction: a few milliseconds of the write lock (500: 25-120 ms)


def purge_batch(db: Database, *, cutoff: str, digests: list[str], limit: int = PURGE_BATCH) -> dict:
    """Delete up to `limit` replies, receipts and STOP events, sent e-mails and message ids from before `cutoff`.

    One short transaction's worth: the caller commits, lets other writers in, and calls again until every
    count is under `limit` (`purge_done`). Opt-outs stay: they are law. Each table is reached through an
    index on its date, so a batch reads only what it deletes (an outbox row's body is never read).
    The newest callback is always kept so ids never restart below a digest's watermark, and never what a
    digest has still to send: only ids at or under every current digest's watermark. `digests` are the
    digest subscriptions of the configuration: a removed one's watermark no longer holds anything back.
    """
    top = db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]
    watermark = db.execute(
        f"SELECT min(last_callback_id) FROM digests WHERE name IN ({', '.join('?' * len(digests))})", digests
    ).fetchone()[0]
    highest = top - 1 if watermark is None else min(top - 1, watermark)
    callbacks = db.execute(
        """DELETE FROM callbacks WHERE id IN (
               SELECT id FROM callbacks INDEXED BY idx_callbacks_received_at
               WHERE received_at < ? AND routed = 1 AND id <= ? ORDER BY received_at LIMIT ?)""",
        [cutoff, highest, limit],
    ).rowcount
    outbox = db.execute(
        """DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox INDEXED BY idx_outbox_status_created
               WHERE status = 'sent' AND created_at < ? ORDER BY created_at LIMIT ?)""",
        [cutoff, limit],
    ).rowcount
    messages = db.execute(
        """DELETE FROM messages WHERE rowid IN (
               SELECT rowid FROM messages INDEXED BY idx_messages_created_at
               WHERE created_at < ? ORDER BY created_at LIMIT ?)""",
        [cutoff, limit],
    ).rowcount
    return {"callbacks": callbacks, "outbox": outbox, "messages": messages}


def purge_done(counts: dict, limit: int = PURGE_BATCH) -> bool:
    """True when a batch found less than a full batch in every table: nothing older is left."""
    return all(n < limit for n in counts.values())


BACKUP_STEP = 1024  # pages copied per step (4 MiB)
BACKUP_PAUSE = 0.05  # seconds after each step: ~80 MB/s, so the disk still has time for the daemon's fsyncs


def backup(db: Database, target: str) -> None:
    """SQLite's online backup: a consistent copy while the daemon keeps writing; 0600, like the database.

    One read transaction holds the snapshot for the whole copy, so it can go step by step (another
    connection's commits would otherwise restart it) and pause between steps: copied at full speed, a
    gigabyte of writes made the daemon's commits wait for the disk (callbacks' p99 123 ms).
    """
    import sqlite3
    import time

    from relay.storage.database import private_file

    private_file(Path(target))
    dest = sqlite3.connect(target)
    try:
        db.execute("BEGIN")
        try:
            db.execute("SELECT count(*) FROM meta").fetchone()  # the snapshot starts at the first read
            db.conn.backup(dest, pages=BACKUP_STEP, progress=lambda *_: time.sleep(BACKUP_PAUSE))
        finally:
            db.execute("COMMIT")
    finally:
        dest.close()
