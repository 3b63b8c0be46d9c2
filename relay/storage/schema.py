"""The SQLite schema as an ordered list of sqlite-utils migrations, applied at start.

A new version only ever appends a migration; an empty file and every older
version reach the current schema by applying what they lack.
"""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("octorelay")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # One row per logical send: an e-mail, a `send` command or a web answer.
    db["campaigns"].create(
        {
            "id": int,
            "request_key": str,  # idempotency: Message-ID + recipients, or a random id
            "origin": str,  # "email" | "cli" | "web"
            "sender_email": str,  # who asked, and who gets the confirmation and the replies
            "message_id": str,  # the asking e-mail's Message-ID, for threading
            "label": str,
            "text": str,
            "type": str,
            "purpose": str,
            "sender": str,
            "send_at": str,
            "with_replies": int,
            "simulation": int,
            "status": str,  # "queued" | "sent" | "failed"
            "error_code": int,
            "error": str,
            "contacts": int,
            "sms_needed": int,
            "cost": float,
            "residual_credit": float,
            "encoding": str,
            "unicode_chars": str,
            "removed_optouts": str,  # JSON list of numbers left out because they sent STOP
            "confirm": str,  # "all" | "errors" | "none": what to e-mail sender_email afterwards
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
        not_null={"request_key", "origin", "text", "status", "created_at"},
        defaults={"status": "queued", "with_replies": 1, "simulation": 0},
    )
    db["campaigns"].create_index(["request_key"], unique=True)
    db["campaigns"].create_index(["created_at"])
    # The send queue: one row per Octopush call (at most 500 recipients each).
    db["sends"].create(
        {
            "id": int,
            "campaign_id": int,
            "chunk": int,
            "request_id": str,
            "status": str,  # "pending" | "sending" | "sent" | "failed"
            "attempts": int,
            "deadline": str,  # temporary failures are retried until then (octopush.retry_for)
            "ticket": str,
            "already_sent": int,
            "sms_needed": int,
            "cost": float,
            "residual_credit": float,
            "error_code": int,
            "error": str,
            "created_at": str,
            "sent_at": str,
        },
        pk="id",
        foreign_keys=[("campaign_id", "campaigns", "id")],
        not_null={"campaign_id", "request_id", "status"},
        defaults={"status": "pending", "attempts": 0, "already_sent": 0},
    )
    db["sends"].create_index(["request_id"], unique=True)
    db["sends"].create_index(["status"])
    db["sends"].create_index(["ticket"])
    db["recipients"].create(
        {
            "id": int,
            "campaign_id": int,
            "send_id": int,
            "number": str,
            "country": str,
            "first_name": str,
            "last_name": str,
            "params": str,
            "status": str,  # last delivery status, e.g. "DELIVERED"
            "status_at": str,
        },
        pk="id",
        foreign_keys=[("campaign_id", "campaigns", "id"), ("send_id", "sends", "id")],
    )
    db["recipients"].create_index(["number"])
    db["recipients"].create_index(["send_id", "number"])
    db["recipients"].create_index(["campaign_id"])
    # Every callback Octopush sent, whatever its kind: one table, one id order for digests.
    db["callbacks"].create(
        {
            "id": int,
            "kind": str,  # "reply" | "delivery" | "stop" | "unrecognised"
            "dedup_key": str,
            "ticket": str,
            "number": str,
            "country": str,
            "text": str,
            "status": str,
            "sim_card_number": str,
            "date_raw": str,  # as Octopush sent it (Europe/Paris local)
            "occurred_at": str,  # the same in UTC ISO 8601
            "received_at": str,
            "campaign_id": int,
            "applied": int,  # receipts: 1 once matched to a recipient
            "routed": int,  # 1 once the notifier has queued its e-mails
            "content_type": str,
            "raw": str,
        },
        pk="id",
        not_null={"kind", "dedup_key", "received_at"},
        defaults={"applied": 0, "routed": 0},
    )
    db["callbacks"].create_index(["routed"])
    db["callbacks"].create_index(["dedup_key"], unique=True)
    db["callbacks"].create_index(["kind", "occurred_at"])
    db["callbacks"].create_index(["number", "occurred_at"])
    db["callbacks"].create_index(["ticket"])
    for view, kind in [
        ("replies", "reply"),
        ("receipts", "delivery"),
        ("stops", "stop"),
        ("unrecognised", "unrecognised"),
    ]:
        db.create_view(view, f"SELECT * FROM callbacks WHERE kind = '{kind}'")
    db["optouts"].create({"number": str, "at": str, "callback_id": int}, pk="number")
    # The durable e-mail outbox.
    db["outbox"].create(
        {
            "id": int,
            "kind": str,  # "reply" | "digest" | "confirmation" | "failure" | "alert"
            "recipients": str,  # JSON list
            "message": bytes,
            "message_id": str,
            "subject": str,
            "status": str,  # "pending" | "sent" | "failed"
            "attempts": int,
            "next_attempt_at": str,
            "last_error": str,
            "created_at": str,
            "sent_at": str,
        },
        pk="id",
        not_null={"recipients", "message", "status", "created_at"},
        defaults={"status": "pending", "attempts": 0},
    )
    db["outbox"].create_index(["status", "next_attempt_at"])
    # Message-IDs octorelay sent or turned into SMS, so answers find their conversation.
    db["messages"].create(
        {"message_id": str, "number": str, "campaign_id": int, "direction": str, "created_at": str},
        pk="message_id",
    )
    db["digests"].create({"name": str, "last_callback_id": int, "last_run_at": str}, pk="name")


@migrations()
def m002_browse_indexes(db: Database) -> None:
    """The web interface browses replies by country and campaigns by sender."""
    db["callbacks"].create_index(["country", "occurred_at"], if_not_exists=True)
    db["campaigns"].create_index(["sender_email", "created_at"], if_not_exists=True)


@migrations()
def m003_campaign_notified(db: Database) -> None:
    """Confirmations are queued by a sweep over finished campaigns, so a crash between the two loses none."""
    db["campaigns"].add_column("notified", int, not_null_default=0)
    # Campaigns finished before this version were confirmed the old way.
    db.execute("UPDATE campaigns SET notified = 1 WHERE status IN ('sent', 'failed')")


@migrations()
def m004_hot_path_indexes(db: Database) -> None:
    """Indexes for two lookups that scanned: a send's sibling calls, and a number's latest campaign."""
    # Recording an Octopush answer reads its campaign's other calls: without this, every send.
    db["sends"].create_index(["campaign_id", "status"], if_not_exists=True)
    # A reply finds the latest campaign to its number by walking this index backwards; with (number) alone,
    # every campaign ever sent to that number was read and sorted.
    db["recipients"].create_index(["number", "campaign_id"], if_not_exists=True)
    db.execute("DROP INDEX IF EXISTS idx_recipients_number")  # a prefix of the one above


@migrations()
def m005_unrouted_index(db: Database) -> None:
    """Most callbacks are now stored routed: index only those the notifier still has to read."""
    db.execute("CREATE INDEX IF NOT EXISTS idx_callbacks_unrouted ON callbacks (id) WHERE routed = 0")
    db.execute("DROP INDEX IF EXISTS idx_callbacks_routed")


@migrations()
def m006_failures_set_aside(db: Database) -> None:
    """A row whose handling keeps failing is counted, then set aside for an operator instead of blocking its worker.

    Set aside: a callback `routed = -1`, a campaign's confirmation `notified = -1`, a send `status = 'set_aside'`.
    """
    for table in ("callbacks", "campaigns", "sends"):
        db[table].add_column("failures", int, not_null_default=0)
        db[table].add_column("last_failure", str)
    db.execute("CREATE INDEX IF NOT EXISTS idx_callbacks_set_aside ON callbacks (id) WHERE routed = -1")
    db.execute("CREATE INDEX IF NOT EXISTS idx_campaigns_set_aside ON campaigns (id) WHERE notified = -1")


@migrations()
def m007_campaign_thread(db: Database) -> None:
    """The asking e-mail's own References, so a reply's References is the whole chain (RFC 5322 §3.6.4)."""
    db["campaigns"].add_column("thread_refs", str)


@migrations()
def m008_scheduled_campaigns(db: Database) -> None:
    """A scheduled campaign to 3 or more numbers waits in our own queue (`not_before`), so it can be cancelled."""
    db["sends"].add_column("not_before", str)  # a pending call waits until then; NULL: at once
    db["campaigns"].add_column("cancelled_by", str)  # who cancelled it (campaign status "cancelled")
    db["campaigns"].add_column("cancelled_at", str)


@migrations()
def m009_who_sends(db: Database) -> None:
    """Who sent a campaign (its SMTP login), what it counts against the day's budget, and approval."""
    db["campaigns"].add_column("login", str)  # the SMTP AUTH login, when there was one
    db["campaigns"].add_column("sms_budget", int, not_null_default=0)  # SMS parts x numbers, counted at acceptance
    db["campaigns"].add_column("approve_by", str)  # a held campaign is cancelled after this
    # Approval e-mails: 0 = the sender is yet to be asked, 1 = asked, 2 = nothing (more) to tell. Only campaigns
    # held for approval ever hold 0 or 1, so the notifier's sweeps read a small index.
    db["campaigns"].add_column("approval_mailed", int, not_null_default=2)
    db.execute("CREATE INDEX IF NOT EXISTS idx_campaigns_approval ON campaigns (id) WHERE approval_mailed < 2")


@migrations()
def m010_campaign_trimmed(db: Database) -> None:
    """Whether the body clean-up left text out of an e-mail's SMS: its confirmation then says what was sent."""
    db["campaigns"].add_column("trimmed", int, not_null_default=0)


@migrations()
def m011_scale_indexes(db: Database) -> None:
    """Indexes that keep a few years of data cheap: the purge, the outbox's claim and depth, the country menu.

    The purge finds old rows by date without reading them (and outbox rows without their bodies); the claim
    walks the pending e-mails in id order; the replies page counts and pages countries from an index alone.
    """
    db.execute("CREATE INDEX IF NOT EXISTS idx_callbacks_received_at ON callbacks (received_at)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_messages_created_at ON messages (created_at)")
    # Covering (status is a column, not a partial index's condition, which SQLite would check in the row).
    db.execute("CREATE INDEX IF NOT EXISTS idx_outbox_status_created ON outbox (status, created_at)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_outbox_claim ON outbox (status, id, next_attempt_at)")
    db.execute("DROP INDEX IF EXISTS idx_outbox_status_next_attempt_at")  # the claim index serves its queries
    # (kind, country, occurred_at) serves what (country, occurred_at) did, and the replies page's kind filter.
    db.execute("CREATE INDEX IF NOT EXISTS idx_callbacks_kind_country ON callbacks (kind, country, occurred_at)")
    db.execute("DROP INDEX IF EXISTS idx_callbacks_country_occurred_at")


@migrations()
def m012_callback_counts(db: Database) -> None:
    """Callbacks per kind and country, kept by triggers: the replies page's menu and total without a scan.

    Counting 600,000 replies by country took hundreds of milliseconds on every page view; a trigger costs
    one small upsert on a page that each commit touches anyway. Any insert or delete path (the purge
    too) keeps the counts right, because the database does it.
    """
    db.execute(
        """CREATE TABLE callback_counts (kind TEXT NOT NULL, country TEXT NOT NULL, n INTEGER NOT NULL,
                                         PRIMARY KEY (kind, country)) WITHOUT ROWID"""
    )
    db.execute(
        """INSERT INTO callback_counts (kind, country, n)
           SELECT kind, coalesce(country, ''), count(*) FROM callbacks GROUP BY kind, coalesce(country, '')"""
    )
    db.execute(
        """CREATE TRIGGER callback_counts_insert AFTER INSERT ON callbacks BEGIN
               INSERT INTO callback_counts (kind, country, n) VALUES (new.kind, coalesce(new.country, ''), 1)
               ON CONFLICT (kind, country) DO UPDATE SET n = n + 1;
           END"""
    )
    db.execute(
        """CREATE TRIGGER callback_counts_delete AFTER DELETE ON callbacks BEGIN
               UPDATE callback_counts SET n = n - 1 WHERE kind = old.kind AND country = coalesce(old.country, '');
           END"""
    )
    db.execute(
        """CREATE TRIGGER callback_counts_update AFTER UPDATE OF kind, country ON callbacks BEGIN
               UPDATE callback_counts SET n = n - 1 WHERE kind = old.kind AND country = coalesce(old.country, '');
               INSERT INTO callback_counts (kind, country, n) VALUES (new.kind, coalesce(new.country, ''), 1)
               ON CONFLICT (kind, country) DO UPDATE SET n = n + 1;
           END"""
    )


@migrations()
def m013_claims(db: Database) -> None:
    """Who holds a claim of work and until when, so several daemons on one database (PostgreSQL) take each piece
    of work once and a dead one's claims are taken over when their lease runs out. (pg_schema.py: the same.)"""
    db["sends"].add_column("claimed_by", str)  # the daemon (host:pid) calling Octopush for it
    db["sends"].add_column("claimed_until", str)  # UTC ISO: past this, another daemon may take it over
    db["outbox"].add_column("claimed_by", str)  # the daemon delivering it (its lease is next_attempt_at)


@migrations()
def m014_reply_numbers(db: Database) -> None:
    """Replies per country and number, kept by triggers: the country view's "Numbers" column without a scan.

    Counting distinct numbers per country sorted every reply (420 ms at 300,000 callbacks, on every view of the
    page); this table has a row per number that replied, and a row goes when its last reply does, so a copy
    to PostgreSQL finds the same rows. (pg_schema.py: the same in plpgsql.)
    """
    db.execute(
        """CREATE TABLE reply_numbers (country TEXT NOT NULL, number TEXT NOT NULL, n INTEGER NOT NULL,
                                       PRIMARY KEY (country, number)) WITHOUT ROWID"""
    )
    db.execute(
        """INSERT INTO reply_numbers (country, number, n)
           SELECT coalesce(country, ''), number, count(*) FROM callbacks
           WHERE kind = 'reply' AND number IS NOT NULL GROUP BY 1, 2"""
    )
    add = """INSERT INTO reply_numbers (country, number, n) VALUES (coalesce(new.country, ''), new.number, 1)
             ON CONFLICT (country, number) DO UPDATE SET n = n + 1;"""
    drop = """UPDATE reply_numbers SET n = n - 1 WHERE country = coalesce(old.country, '') AND number = old.number;
              DELETE FROM reply_numbers WHERE country = coalesce(old.country, '') AND number = old.number AND n <= 0;"""
    adds = "new.kind = 'reply' AND new.number IS NOT NULL"
    drops = "old.kind = 'reply' AND old.number IS NOT NULL"
    db.execute(f"CREATE TRIGGER reply_numbers_insert AFTER INSERT ON callbacks WHEN {adds} BEGIN {add} END")
    db.execute(f"CREATE TRIGGER reply_numbers_delete AFTER DELETE ON callbacks WHEN {drops} BEGIN {drop} END")
    # An update that moves a reply (its kind, country or number) is a delete and an insert.
    db.execute(
        f"CREATE TRIGGER reply_numbers_update_old AFTER UPDATE OF kind, country, number ON callbacks WHEN {drops} "
        f"BEGIN {drop} END"
    )
    db.execute(
        f"CREATE TRIGGER reply_numbers_update_new AFTER UPDATE OF kind, country, number ON callbacks WHEN {adds} "
        f"BEGIN {add} END"
    )
