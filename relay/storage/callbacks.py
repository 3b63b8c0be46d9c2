"""Callbacks (replies, delivery receipts, STOPs, the unrecognised), their filters and summaries, and opt-outs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Literal, NamedTuple, TypedDict

from relay import clock
from relay.octopush.callbacks import Callback
from relay.storage.database import Connection, insert, is_postgres

LINK_WINDOW_DAYS = 30
NO_COUNTRY = "-"  # `country` filter value for callbacks whose number has no country


class Stored(NamedTuple):
    id: int
    new: bool  # False: a repeat of a callback already stored
    pending: bool  # True: the notifier has e-mails to send for it


@dataclass(frozen=True)
class CampaignLink:
    """The campaign a reply or STOP answers, as routing needs to know it."""

    id: int
    origin: str
    sender_email: str | None


def store_callback(
    db: Connection, cb: Callback, *, link: CampaignLink | None | EllipsisType = ..., routed: bool = False
) -> Stored:
    """Insert a callback once (dedup key), linked to its campaign; a STOP adds an opt-out, a receipt is applied.

    `link` is the campaign it answers (`campaign_answered`), looked up here when not given. `routed=True` stores
    it with nothing left to send at once (notify.py decides); otherwise the notifier routes it later. An
    unrecognised callback has nothing to route: an operator reads these in the UI.
    """
    if link is ...:
        link = campaign_answered(db, cb.ticket, cb.number) if cb.kind in ("reply", "stop") else None
    row = cb.row(clock.iso())
    if link:
        row["campaign_id"] = link.id
    row["routed"] = 1 if routed or cb.kind == "unrecognised" else 0
    callback_id = insert(db, "callbacks", row, or_ignore=True)
    if callback_id is None:
        existing = db.execute("SELECT id FROM callbacks WHERE dedup_key = ?", [row["dedup_key"]]).fetchone()
        return Stored(existing[0], False, False)
    if cb.kind == "stop":
        db.execute(
            "INSERT INTO optouts (number, at, callback_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [cb.number, row["occurred_at"], callback_id],
        )
    elif cb.kind == "delivery":
        apply_receipts(db, ticket=cb.ticket, callback_id=callback_id)
    return Stored(callback_id, True, not row["routed"])


def campaign_answered(db: Connection, ticket: str, number: str) -> CampaignLink | None:
    """The campaign a reply answers: by its ticket (SPEC §4.1).

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
    return CampaignLink(*row) if row else None


def _has_untracked_send(db: Connection, campaign_id: int) -> bool:
    return bool(
        db.execute(
            "SELECT 1 FROM sends WHERE campaign_id = ? AND status = 'sent' AND coalesce(ticket, '') = '' LIMIT 1",
            [campaign_id],
        ).fetchone()
    )


def apply_receipts(db: Connection, *, ticket: str, callback_id: int | None = None) -> int:
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


class _Stored(TypedDict):
    """The columns of a stored callback every reader takes, and the text of the SMS it answers."""

    id: int
    kind: str
    ticket: str | None
    number: str | None
    country: str | None
    text: str | None
    status: str | None
    occurred_at: str | None
    received_at: str
    campaign_id: int | None
    answered: str | None  # the text of the SMS it answers
    campaign_origin: str | None


class Reply(_Stored):
    """A stored callback (a reply, by default) with the campaign it answers, as pages and exports show it."""

    sim_card_number: str | None
    date_raw: str | None
    campaign_sender: str | None
    campaign_label: str | None


def replies(
    db: Connection,
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
) -> list[Reply]:
    """Stored replies, newest first, with the text of the SMS they answer.

    `before` (`occurred_at`, `id` of the last row of a previous call) continues from there: a keyset page
    costs the same wherever it starts, and a row stored meanwhile never shifts one into the next page twice.
    """
    where, params = _reply_filter(db, since=since, until=until, country=country, number=number, text=text, kinds=kinds)
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
    return [Reply(**r) for r in db.query(sql, params)]


def iter_replies(db: Connection, *, limit: int | None = None, chunk: int = 1000, **filters: Any) -> Iterator[Reply]:
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


def reply_counts(db: Connection) -> list[tuple[str, int]]:
    """(country, replies) for every country ('' for none), from the counts the triggers of m012 keep (and, on
    PostgreSQL, the deltas of m015 not folded into them yet: one statement, so one snapshot of both)."""
    if is_postgres(db):
        return db.execute(
            """SELECT country, sum(n)::bigint FROM (
                   SELECT country, n FROM callback_counts WHERE kind = 'reply'
                   UNION ALL SELECT country, n FROM callback_deltas WHERE kind = 'reply') kept
               GROUP BY country HAVING sum(n) > 0"""
        ).fetchall()
    return db.execute("SELECT country, n FROM callback_counts WHERE kind = 'reply' AND n > 0").fetchall()


def _numbers_per_country(db: Connection) -> dict[str, int]:
    """Distinct numbers that replied, per country, from `reply_numbers` (m014); on PostgreSQL, corrected by the
    deltas not folded yet: a number whose replies go from none to some counts one more, from some to none one less.
    """
    if not is_postgres(db):
        return dict(db.execute("SELECT country, count(*) FROM reply_numbers GROUP BY country").fetchall())
    rows = db.execute(
        """SELECT country, sum(c)::bigint FROM (
               SELECT country, count(*) AS c FROM reply_numbers WHERE n > 0 GROUP BY country
               UNION ALL
               SELECT d.country, sum(CASE WHEN coalesce(k.n, 0) <= 0 AND coalesce(k.n, 0) + d.n > 0 THEN 1
                                          WHEN coalesce(k.n, 0) > 0 AND k.n + d.n <= 0 THEN -1 ELSE 0 END)
               FROM (SELECT country, number, sum(n) AS n FROM callback_deltas
                     WHERE kind = 'reply' AND number IS NOT NULL GROUP BY country, number) d
               LEFT JOIN reply_numbers k ON k.country = d.country AND k.number = d.number
               GROUP BY d.country) counted
           GROUP BY country"""
    ).fetchall()
    return {country: n for country, n in rows if n > 0}


# Only one fold at a time across the nodes (a transaction-scoped advisory lock); another one finds it taken.
FOLD_LOCK = 0x6F63746F636F756E  # "octocoun"


def fold_counts(db: Connection, *, wait: bool = False) -> int:
    """PostgreSQL: move the deltas that m015's triggers append into `callback_counts` and `reply_numbers`; how many
    moved. 0 on SQLite (its triggers keep the counts themselves), or while another node folds (unless `wait`).

    Runs inside a transaction (its lock is the transaction's): one statement moves the deltas, and a second
    removes, by key, the numbers whose last reply went. The kept counts' rows are locked only here, never by a
    callback's write.
    """
    if not is_postgres(db):
        return 0
    if wait:
        db.execute("SELECT pg_advisory_xact_lock(?)", [FOLD_LOCK])
    elif not db.execute("SELECT pg_try_advisory_xact_lock(?)", [FOLD_LOCK]).fetchone()[0]:
        return 0
    moved, countries, numbers = db.execute(
        """WITH moved AS (DELETE FROM callback_deltas RETURNING kind, country, number, n),
                kinds AS (INSERT INTO callback_counts (kind, country, n)
                          SELECT kind, country, sum(n) FROM moved GROUP BY kind, country
                          ON CONFLICT (kind, country) DO UPDATE SET n = callback_counts.n + excluded.n),
                numbers AS (INSERT INTO reply_numbers (country, number, n)
                            SELECT country, number, sum(n) FROM moved WHERE kind = 'reply' AND number IS NOT NULL
                            GROUP BY country, number
                            ON CONFLICT (country, number) DO UPDATE SET n = reply_numbers.n + excluded.n
                            RETURNING country, number, n)
           SELECT (SELECT count(*) FROM moved),
                  (SELECT array_agg(country) FROM numbers WHERE n <= 0),
                  (SELECT array_agg(number) FROM numbers WHERE n <= 0)"""
    ).fetchone()
    if countries:  # a number whose last reply went has no row, as on SQLite
        db.execute(
            """DELETE FROM reply_numbers r USING unnest(?::text[], ?::text[]) AS gone (country, number)
               WHERE r.country = gone.country AND r.number = gone.number AND r.n <= 0""",
            [countries, numbers],
        )
    return moved


def count_replies(db: Connection, **filters: Any) -> int:
    where, params = _reply_filter(db, **filters)
    return db.execute(f"SELECT count(*) FROM callbacks cb WHERE {where}", params).fetchone()[0]


def _reply_filter(
    db: Connection,
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
    like = "ILIKE" if is_postgres(db) else "LIKE"  # SQLite's LIKE ignores (ASCII) case, PostgreSQL's does not
    if number:
        clauses.append(f"cb.number {like} ?")
        params.append(f"%{number.strip()}%")
    if text:
        clauses.append(f"cb.text {like} ?")
        params.append(f"%{text}%")
    return " AND ".join(clauses), params


class CountrySummary(TypedDict):
    country: str  # '' for numbers without a country
    replies: int
    numbers: int  # distinct numbers
    first_at: str | None
    last_at: str | None


def country_summary(db: Connection, **filters: Any) -> list[CountrySummary]:
    """Per country under the reply filters: replies, distinct numbers, last reply; most replies first.

    Unfiltered, or for one country, from the counts the triggers keep (m012, m014) and the last reply read from
    the end of (kind, country, occurred_at): no reply is read. A text or number filter reads the matching ones.
    """
    if not (filters.get("text") or filters.get("number") or filters.get("since") or filters.get("until")):
        return _kept_summary(db, filters.get("country"))
    where, params = _reply_filter(db, **filters)
    sql = f"""SELECT coalesce(cb.country, '') AS country, count(*) AS replies, count(DISTINCT cb.number) AS numbers,
                     min(cb.occurred_at) AS first_at, max(cb.occurred_at) AS last_at
              FROM callbacks cb WHERE {where} GROUP BY 1 ORDER BY replies DESC, country"""
    return [CountrySummary(**r) for r in db.query(sql, params)]


def _kept_summary(db: Connection, country: str | None) -> list[CountrySummary]:
    numbers = _numbers_per_country(db)
    found = []
    for code, replies in reply_counts(db):
        if country and code != ("" if country == NO_COUNTRY else country.upper()):
            continue
        found.append(
            CountrySummary(
                country=code,
                replies=replies,
                numbers=numbers.get(code, 0),
                first_at=_reply_end(db, code, "min"),
                last_at=_reply_end(db, code, "max"),
            )
        )
    return sorted(found, key=lambda r: (-r["replies"], r["country"]))


def _reply_end(db: Connection, country: str, end: Literal["min", "max"]) -> str | None:
    """The first or last reply's occurred_at in `country` ('' for none: stored as '' or NULL), read from an end
    of (kind, country, occurred_at): one query per end, as SQLite reads a lone min() or max() that way."""
    sql = f"SELECT {end}(occurred_at) FROM callbacks WHERE kind = 'reply' AND country "
    found = [db.execute(sql + "= ?", [country]).fetchone()[0]]
    if not country:
        found.append(db.execute(sql + "IS NULL").fetchone()[0])
    return (min if end == "min" else max)((at for at in found if at), default=None)


def reply_hours(db: Connection, **filters: Any) -> list[tuple[str, str, int]]:
    """(UTC hour "2026-11-24T08", country, replies) under the reply filters: the chart buckets them into local days."""
    where, params = _reply_filter(db, **filters)
    sql = f"""SELECT substr(cb.occurred_at, 1, 13) AS hour, coalesce(cb.country, ''), count(*)
              FROM callbacks cb WHERE {where} AND cb.occurred_at IS NOT NULL GROUP BY 1, 2"""
    return [(r[0], r[1], r[2]) for r in db.execute(sql, params).fetchall()]


def country_counts(db: Connection, **filters: Any) -> list[tuple[str, int]]:
    """(ISO code, replies) for every country under the reply filters, most replies first.

    Without filters, from the counts the database keeps; else grouped on the column itself, so
    (kind, country, occurred_at) answers it alone, in order, with no table lookup. A number without a
    country ('' or NULL) is counted under ''.
    """
    if not any(filters.values()):
        found = reply_counts(db)  # kept by triggers: no scan
    else:
        where, params = _reply_filter(db, **filters)
        # A text or number filter reads each reply's row: in date order those rows sit together on disk,
        # in country order every one is a seek (twice as slow measured on 50,000).
        order = "INDEXED BY idx_callbacks_kind_occurred_at" if filters.get("text") or filters.get("number") else ""
        if is_postgres(db):
            order = ""  # no index hints in PostgreSQL: its planner has the statistics
        sql = f"SELECT cb.country, count(*) FROM callbacks cb {order} WHERE {where} GROUP BY cb.country"
        found = db.execute(sql, params).fetchall()
    counts: dict[str, int] = {}
    for code, n in found:
        counts[code or ""] = counts.get(code or "", 0) + n
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def replies_by_country(
    db: Connection, *, counts: list[tuple[str, int]], limit: int, offset: int, **filters: Any
) -> list[Reply]:
    """A page of replies, largest country first, newest first within it, one indexed read per country.

    `counts` (from `country_counts`) say where the page starts, so no query sorts every reply. Each row's
    `country` is its section's code ('' for none).
    """
    rows: list[Reply] = []
    for code, n in counts:
        if offset >= n:
            offset -= n
            continue
        found = replies(db, limit=limit - len(rows), offset=offset, **{**filters, "country": code or NO_COUNTRY})
        offset = 0
        rows += [{**row, "country": code} for row in found]
        if len(rows) >= limit:
            break
    return rows


class ReceivedSms(TypedDict):
    """A reply or STOP from one number, as its conversation shows it."""

    id: int
    kind: str
    text: str | None
    date_raw: str | None
    occurred_at: str | None
    campaign_id: int | None


def received_from(db: Connection, *, number: str, limit: int) -> list[ReceivedSms]:
    """The latest `limit` replies and STOPs from `number`, newest first."""
    return [
        ReceivedSms(**r)
        for r in db.query(
            """SELECT id, kind, text, date_raw, occurred_at, campaign_id FROM callbacks
               WHERE number = ? AND kind IN ('reply', 'stop') ORDER BY occurred_at DESC, id DESC LIMIT ?""",
            [number, limit],
        )
    ]


class Unrecognised(TypedDict):
    """A callback the relay could not classify, kept raw for an operator."""

    id: int
    received_at: str
    content_type: str | None
    raw: str | None


def unrecognised(db: Connection, *, limit: int) -> list[Unrecognised]:
    """The latest `limit` callbacks stored as unrecognised, newest first."""
    return [
        Unrecognised(**r)
        for r in db.query(
            """SELECT id, received_at, content_type, raw FROM callbacks WHERE kind = 'unrecognised'
               ORDER BY id DESC LIMIT ?""",
            [limit],
        )
    ]


def opted_out_at(db: Connection, number: str) -> str | None:
    """When `number` sent STOP (UTC ISO), or None."""
    row = db.execute("SELECT at FROM optouts WHERE number = ?", [number]).fetchone()
    return row[0] if row else None


class Event(_Stored):
    """A stored callback as routing and digests read it, with the campaign it answers."""

    sender_email: str | None  # the campaign's, when it came from an e-mail
    message_id: str | None  # that e-mail's Message-ID and References: the reply is threaded under it
    thread_refs: str | None
    label: str | None


EVENT_COLUMNS = """cb.id, cb.kind, cb.ticket, cb.number, cb.country, cb.text, cb.status, cb.occurred_at,
                   cb.received_at, cb.campaign_id, c.text AS answered, c.origin AS campaign_origin, c.sender_email,
                   c.message_id, c.thread_refs, c.label"""


def unrouted(db: Connection, *, limit: int) -> list[Event]:
    """The oldest `limit` callbacks whose instant e-mails are not queued yet."""
    return [
        Event(**r)
        for r in db.query(
            f"""SELECT {EVENT_COLUMNS} FROM callbacks cb LEFT JOIN campaigns c ON c.id = cb.campaign_id
                WHERE cb.routed = 0 ORDER BY cb.id LIMIT ?""",
            [limit],
        )
    ]


def newest_id(db: Connection) -> int:
    """The id of the newest callback (0: none yet): ids only grow, so digests keep their place by it.

    On PostgreSQL an id is handed out at INSERT, not at COMMIT: a smaller id may still commit after a larger
    one is seen. The SHARE lock waits for the inserts in flight (and holds new ones for this transaction's
    few milliseconds), so no callback commits later under the id this returns. (A command's statement outside
    a transaction, a preview, takes no lock: a lock ends with its transaction.)
    """
    if is_postgres(db) and db.in_transaction:
        db.execute("LOCK TABLE callbacks IN SHARE MODE")
    return db.execute("SELECT coalesce(max(id), 0) FROM callbacks").fetchone()[0]


def is_opted_out(db: Connection, number: str) -> bool:
    return db.execute("SELECT 1 FROM optouts WHERE number = ?", [number]).fetchone() is not None
