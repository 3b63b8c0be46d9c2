"""The SQL octorelay runs: write functions (run inside `Store.write`) and read functions.

Each function takes a sqlite-utils `Database`, so the same code serves the
daemon's writer (on the event loop or in its thread), its readers and the command line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlite_utils import Database

from relay import clock
from relay.octopush.callbacks import Callback

LINK_WINDOW_DAYS = 30


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
) -> list[dict]:
    """Stored replies, newest first, with the text of the SMS they answer."""
    where, params = _reply_filter(since=since, until=until, country=country, number=number, text=text, kinds=kinds)
    sql = f"""SELECT cb.id, cb.kind, cb.ticket, cb.number, cb.country, cb.text, cb.status,
                     cb.sim_card_number, cb.date_raw, cb.occurred_at, cb.received_at, cb.campaign_id,
                     c.text AS answered, c.sender_email AS campaign_sender, c.label AS campaign_label
              FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id
              WHERE {where} ORDER BY cb.occurred_at DESC, cb.id DESC"""
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    return [dict(r) for r in db.query(sql, params)]


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
    if country:
        clauses.append("cb.country = ?")
        params.append(country.upper())
    if number:
        clauses.append("cb.number LIKE ?")
        params.append(f"%{number.strip()}%")
    if text:
        clauses.append("cb.text LIKE ?")
        params.append(f"%{text}%")
    return " AND ".join(clauses), params


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
    result["removed_optouts"] = json.loads(result.get("removed_optouts") or "[]")
    result["sends"] = [
        dict(r) for r in db.query("SELECT * FROM sends WHERE campaign_id = ? ORDER BY chunk", [campaign_id])
    ]
    result["tickets"] = [s["ticket"] for s in result["sends"] if s["ticket"]]
    result["recipients"] = [
        dict(r)
        for r in db.query(
            "SELECT number, country, first_name, last_name, status, status_at FROM recipients "
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


def depths(db: Database) -> dict:
    outbox = dict(db.execute("SELECT status, count(*) FROM outbox WHERE status != 'sent' GROUP BY status").fetchall())
    sends = dict(db.execute("SELECT status, count(*) FROM sends WHERE status != 'sent' GROUP BY status").fetchall())
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
    }


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


def purge(db: Database, *, days: int, digests: list[str]) -> dict:
    """Delete replies, receipts, STOP events and sent mail older than `days` (opt-outs stay: they are law).

    The newest callback is always kept so ids never restart below a digest's watermark. `digests` are the
    digest subscriptions of the configuration: a removed one's watermark no longer holds anything back.
    """
    cutoff = clock.ago(days=days)
    # Never what a digest has still to send: only ids at or under every current digest's watermark.
    callbacks = db.execute(
        f"""DELETE FROM callbacks WHERE received_at < ? AND routed = 1 AND id < (SELECT max(id) FROM callbacks)
           AND id <= coalesce((SELECT min(last_callback_id) FROM digests
                               WHERE name IN ({", ".join("?" * len(digests))})), id)""",
        [cutoff, *digests],
    ).rowcount
    outbox = db.execute("DELETE FROM outbox WHERE status = 'sent' AND created_at < ?", [cutoff]).rowcount
    messages = db.execute("DELETE FROM messages WHERE created_at < ?", [cutoff]).rowcount
    return {"callbacks": callbacks, "outbox": outbox, "messages": messages}


def backup(db: Database, target: str) -> None:
    """SQLite's online backup: a consistent copy while the daemon keeps writing."""
    import sqlite3

    dest = sqlite3.connect(target)
    try:
        db.conn.backup(dest)
    finally:
        dest.close()
