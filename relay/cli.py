"""The `octorelay` command: parse, load the configuration once, log, run one command.

Exit codes: 0 success, 1 a clear user error (one line on stderr, no traceback
unless OCTORELAY_DEBUG=1), 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import sqlite3
import sys
import time
import urllib.parse
from datetime import timedelta
from functools import partial

import orjson

from relay import __version__, clock
from relay import config as config_mod
from relay.errors import RelayError


def build_parser() -> argparse.ArgumentParser:
    help_c = "configuration file (else $OCTORELAY_CONFIG, else built-in defaults)"
    # -c works before or after the command: the subcommands' copy must not overwrite the top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help=help_c)
    parser = argparse.ArgumentParser(prog="octorelay", description="E-mail <-> SMS bridge for Octopush.")
    parser.add_argument("-c", "--config", metavar="FILE", default=None, help=help_c)
    parser.add_argument("--version", action="version", version=f"octorelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon (HTTP, SMTP, scheduler, workers)")
    sub.add_parser("check-config", parents=[common], help="validate the configuration and show what would run")
    send = sub.add_parser("send", parents=[common], help="send one SMS campaign from the terminal")
    send.add_argument("--to", nargs="+", required=True, metavar="NUMBER", help="numbers (any format) or group names")
    send.add_argument("--text", required=True)
    send.add_argument("--type", choices=["premium", "low-cost"])
    send.add_argument("--purpose", choices=["alert", "marketing"])
    send.add_argument("--sender", metavar="S")
    send.add_argument(
        "--at", metavar="WHEN", help="ISO 8601 (without an offset: smtp_in.region's time), or 30m / 2h / 1d from now"
    )
    send.add_argument("--replies", action=argparse.BooleanOptionalAction, default=None)
    send.add_argument("--simulate", action="store_true", help="Octopush validates but sends nothing")
    replies = sub.add_parser("replies", parents=[common], help="stored replies, newest first")
    replies.add_argument("--since", metavar="WHEN", help="ISO 8601 date/time, or 2h / 3d / 1w")
    replies.add_argument("--country", metavar="CC", help="ISO code or English name: BE, Belgium")
    replies.add_argument("--number", metavar="N", help="any form: +33612345678, 0612345678, '+33 6 12 34 56 78'")
    replies.add_argument("--limit", type=int, default=100, help="at most this many (0: all)")
    replies.add_argument("--format", choices=["table", "json", "csv"], default="table")
    digest = sub.add_parser("digest", parents=[common], help="build and send a subscription's digest now")
    digest.add_argument("name")
    digest.add_argument("--dry-run", action="store_true", help="print the digest instead of sending it")
    sub.add_parser("callback-url", parents=[common], help="the URL to paste into Octopush's Callbacks page")
    db = sub.add_parser("db", parents=[common], help="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    backup = dbsub.add_parser("backup", parents=[common], help="online backup to FILE")
    backup.add_argument("file")
    purge = dbsub.add_parser("purge", parents=[common], help="delete old replies, receipts and sent mail")
    purge.add_argument(
        "--older-than", required=True, metavar="AGE", help="30 (days), 12h, 7d, 4w, or an ISO 8601 date/time"
    )
    copy = dbsub.add_parser(
        "copy", parents=[common], help="copy the SQLite database into an empty PostgreSQL database (several nodes)"
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="postgresql://user@host:5432/database (an empty database)"
    )
    sub.add_parser("hash-password", parents=[common], help="hash a password for ui_users or smtp_in.users")
    octopush = sub.add_parser("octopush", parents=[common], help="the Octopush account: callbacks, credit")
    octosub = octopush.add_subparsers(dest="octopush_command", required=True, metavar="ACTION")
    setup = octosub.add_parser(
        "setup", parents=[common], help="register this relay's callback URL in the Octopush account"
    )
    setup.add_argument("--dry-run", action="store_true", help="print what would be set; change nothing")
    octosub.add_parser("balance", parents=[common], help="the account's remaining credit")
    campaign = sub.add_parser("campaign", parents=[common], help="act on one campaign")
    campaignsub = campaign.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    approve = campaignsub.add_parser("approve", parents=[common], help="send a campaign held for approval")
    approve.add_argument("id", type=int, metavar="ID", help="the relay's campaign number (Queued as campaign N)")
    cancel = campaignsub.add_parser("cancel", parents=[common], help="cancel a scheduled (or held) campaign")
    cancel.add_argument("id", type=int, metavar="ID", help="the relay's campaign number (Queued as campaign N)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "hash-password":
            return cmd_hash_password()
        sub = {"db": "db_command", "octopush": "octopush_command", "campaign": "campaign_command"}.get(args.command)
        command = f"{args.command}-{getattr(args, sub)}" if sub else args.command
        uses = SECRETS_USED.get(command)
        if command == "digest" and args.dry_run:
            uses = ()
        config = config_mod.load(args.config, secrets=uses)
        from relay import logs

        quiet = args.command != "run"
        logs.setup(
            config.log.format,
            "warning" if quiet and config.log.level == "info" else config.log.level,
            secrets=[
                config.octopush.api_key,
                config.http.callback_token,
                config.http.api_token,
                config.smtp_out.password,
                config.storage.password,
            ],
        )
        if quiet:
            # The store's own error lines repeat what its StoreError says in the one line below.
            logging.getLogger("relay.storage").setLevel(logging.CRITICAL)
        handler = COMMANDS[command]
        return handler(config, args)
    except (RelayError, OSError, sqlite3.Error) as exc:
        if os.environ.get("OCTORELAY_DEBUG") == "1":
            raise
        message = str(exc)
        if not isinstance(exc, RelayError):  # the database (storage.path) or a file a command was given
            message += f" ({type(exc).__name__}; check storage.path and the files named on the command line)"
        print(f"octorelay: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run_async(coro) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _existing_db(config):
    """A read-only connection to the database, or None when there is none yet: commands that read create nothing."""
    from relay.storage.database import connect

    if config.storage.url:
        return _postgres_db(config, create=False)
    path = config.storage.path
    if path.parent.exists() and not path.parent.is_dir():
        raise RelayError(f"{path.parent} is not a directory (storage.path = {path})")
    if not path.exists():
        return None
    if not path.is_file():
        raise RelayError(f"{path} is not a database file (storage.path)")
    return connect(path, readonly=True)


def _postgres_db(config, *, create: bool):
    """A connection to `[storage] url` (its tables made first when `create`); None when reading a database no
    daemon has set up yet."""
    from relay.storage import engine

    st = config.storage
    db = engine.connect(path=st.path, url=st.url, password=st.password, readonly=not create)
    if not create and not db.has_schema():
        db.close()
        return None
    return db


def _writable_db(config, missing: str):
    """A connection for a command that writes beside the daemon, migrated; `missing` is said when SQLite's file
    is not there (a command never creates it)."""
    from relay.storage.database import connect, migrate

    if config.storage.url:
        return _postgres_db(config, create=True)
    if not config.storage.path.exists():
        raise RelayError(f"no database at {config.storage.path} (storage.path): {missing}")
    migrate(config.storage.path)
    return connect(config.storage.path)


# ------------------------------------------------------------------ commands


# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The daemon's callbacks
# cross threads (the loop, the database writer, rendering): each hand-off could wait a whole interval behind a
# busy thread, so a callback waited 80-150 ms while a 5 MB e-mail came in. At 1 ms: 25-50 ms, and the paced p99
# of bench/instant.py 37 -> 27 ms, for ~14% fewer callbacks/s at saturation (bench/README.md).
GIL_SWITCH_INTERVAL = 0.001


def cmd_run(config, args) -> int:
    from relay.daemon import serve

    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    return _run_async(serve(config, args.config or os.environ.get(config_mod.ENV_CONFIG)))


def cmd_check_config(config, args) -> int:
    from relay.groups import load_groups
    from relay.scheduler import next_runs

    groups = load_groups(config.groups, config.smtp_in.region, config.source)
    o = config.octopush
    print(f"configuration: {config.source} — valid")
    print(f"octopush: mode {o.mode}" + (f", {o.base_url}" if o.mode != "emulator" else " (offline emulator)"))
    key_state = (
        "(set)" if o.api_key else "(in a file this user cannot read)" if _unread(config, "octopush") else "(not set)"
    )
    print(f"  api_login {o.api_login or '(not set)'}, api_key {key_state}")
    print(f"  defaults: type {o.type}, purpose {o.purpose}, replies {'on' if o.with_replies else 'off'}")
    print(
        f"http: listening on {config.http.listen}, public URL {config.http.public_url}, node {config.http.node_name}"
    )
    host = urllib.parse.urlsplit(config.http.public_url).hostname or ""
    if o.mode != "emulator" and (host == "localhost" or host.startswith("127.") or host == "::1"):
        print("  warning: http.public_url is a loopback address: Octopush cannot reach it for callbacks")
    api = "bearer token" if config.http.api_token else "loopback only"
    ui = "users: " + ", ".join(config.http.ui_users) if config.http.ui_users else "loopback only"
    print(f"  API {api}; UI {ui}")
    s = config.smtp_in
    print(
        f"smtp_in: listening on {s.listen} for NUMBER@{s.domain}; senders {', '.join(s.allowed_senders)}; "
        f"AUTH {'required' if s.require_auth else 'off'}; "
        f"TLS {'certificate ' + s.tls_cert if s.tls_cert else 'self-signed (kept in the database)'}"
    )
    logins = ", ".join(
        f"{name} (as {', '.join(user.senders)})" if user.senders else f"{name} (as any allowed sender)"
        for name, user in s.users.items()
    )
    print(f"  logins: {logins or 'none'}; without a login the sender is proven by: {s.sender_check}")
    if s.sender_check == "dkim" and s.trusted_authserv_id:
        print(f"  also trusted: dkim=pass / dmarc=pass in Authentication-Results from {s.trusted_authserv_id}")
    if s.sender_check == "envelope" and not s.require_auth:
        print(
            '  warning: sender_check = "envelope" trusts MAIL FROM, which anyone can write: right only behind a mail '
            "server that ties senders to logins (smtpd_sender_login_maps, systemd/README.md); otherwise set "
            'require_auth = true or sender_check = "dkim"'
        )
    lm = config.limits
    print(
        f"limits: daily_sms {lm.daily_sms or 'none'}, sender_daily_sms {lm.sender_daily_sms or 'none'}, "
        f"countries {', '.join(lm.countries) or 'any'}, "
        + (
            f"approval over {lm.approve_over} numbers (within {lm.approve_within:.0f} s)"
            if lm.approve_over
            else "no approval"
        )
    )
    days = ",".join(("mon", "tue", "wed", "thu", "fri", "sat", "sun")[d] for d in sorted(o.marketing_days))
    hours = "-".join(t.strftime("%H:%M") for t in o.marketing_hours) if o.marketing_hours else "any hour"
    print(
        f"marketing SMS: {hours} on {days}" + (f", not on {s.region} public holidays" if o.marketing_holidays else "")
    )
    out = config.smtp_out
    where = f"Maildir {out.maildir}" if out.transport == "maildir" else f"SMTP {out.host}:{out.port} ({out.security})"
    print(f"smtp_out: {where}, from {out.sender}")
    print(
        f"storage: {config.storage.engine} {config.storage.where}"
        + (f", keeps {config.storage.retention_days} days" if config.storage.retention_days else ", keeps everything")
    )
    for name, members in groups.items():
        print(f"group {name}: {len(members)} numbers ({config.groups[name]})")
    runs = next_runs(config)
    for sub in config.subscriptions:
        what = f"{sub.mode}, events {', '.join(sub.events)} to {', '.join(sub.to)}"
        if sub.mode == "digest":
            nxt = runs.get(sub.name)
            what += f", schedule '{sub.schedule}' ({sub.timezone}), next run {nxt.isoformat() if nxt else 'never'}"
        print(f"subscription {sub.name}: {what}")
    if not config.subscriptions:
        print("subscriptions: none (replies only go to the people who sent SMS by e-mail)")
    for unread in config.unread_secrets:
        # A systemd credential is readable by the service only: the daemon reads it, not an admin's shell.
        print(f"note: cannot read {unread} from here; the daemon must be able to")
    return 0


def _unread(config, section: str) -> bool:
    return any(u.startswith(section + ".") for u in config.unread_secrets)


def cmd_callback_url(config, args) -> int:
    from relay.storage import meta

    token = config.http.callback_token
    if not token:
        db = _existing_db(config)
        try:
            token = meta.meta_get(db, "callback_token") if db is not None else None
        finally:
            if db is not None:
                db.close()
    if not token:
        raise RelayError(
            "no callback token yet: the daemon makes one at its first start (octorelay run) in "
            f"{config.storage.where}, or set http.callback_token"
        )
    print(f"{config.http.public_url}/octopush/{token}")
    return 0


def cmd_replies(config, args) -> int:
    from relay import numbers
    from relay.storage import callbacks

    tz = config.display_tz
    try:
        since = clock.parse_when(args.since, tz)
    except ValueError as exc:
        raise RelayError(f"--since: {exc}") from None
    number = country = None
    if args.number:
        number = numbers.search_term(args.number, config.smtp_in.region)
        if number is None:
            raise RelayError(f"--number: {args.number!r} is not a phone number (+33612345678, 0612345678)")
    if args.country:
        country = numbers.country_code(args.country)
        if country is None:
            raise RelayError(f"--country: {args.country!r} is not a country code or English name (BE, Belgium)")
    db = _existing_db(config)
    try:
        # Read a thousand at a time and printed as they come: a full export runs in constant memory.
        filters = {"since": since, "country": country, "number": number, "limit": args.limit or None}
        rows = iter(()) if db is None else callbacks.iter_replies(db, **filters)
        if args.format == "json":
            _print_json(rows)
        elif args.format == "csv":
            _print_csv(rows, tz)
        else:
            table = list(rows)
            if not table:
                print("no replies" + ("" if db is not None else f" (no database yet at {config.storage.where})"))
            else:
                _replies_table(table, tz)
    finally:
        if db is not None:
            db.close()
    return 0


def _print_json(rows) -> None:
    """A JSON array written one reply at a time."""
    out = sys.stdout
    out.write("[")
    for i, row in enumerate(rows):
        out.write(("," if i else "") + "\n" + orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
    out.write("\n]\n")


def _print_csv(rows, tz, chunk: int = 1000) -> None:
    """The replies CSV (`exports`), written a thousand rows at a time."""
    from itertools import islice

    from relay.web import exports

    rows = iter(rows)
    batch, first = list(islice(rows, chunk)), True
    while first or batch:
        sys.stdout.write(exports.replies_csv(batch, tz, header=first))
        batch, first = list(islice(rows, chunk)), False


def _replies_table(rows: list[dict], tz) -> None:
    """The replies as a table with a header, in local time (the web's zone, named in the header)."""
    from relay.mail.render import intl, sent_by

    header = (f"TIME ({tz.key})", "NUMBER", "CC", "TEXT", "CAMPAIGN", "SENT BY")
    table = [
        (
            clock.local(row["occurred_at"], tz, "%Y-%m-%d %H:%M %Z"),
            intl(row["number"]),
            row["country"] or "--",
            " ".join((row["text"] or "").split()),
            f"#{row['campaign_id']} {row['campaign_label'] or ''}".strip() if row["campaign_id"] else "",
            sent_by(row["campaign_sender"], row["campaign_origin"]) if row["campaign_id"] else "",
        )
        for row in rows
    ]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    widths[3] = min(widths[3], 60)
    for r in [header, *table]:
        cells = [str(c) if i != 3 or len(str(c)) <= 60 else str(c)[:59] + "…" for i, c in enumerate(r)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


def cmd_send(config, args) -> int:
    return _run_async(_send(config, args))


async def _send(config, args) -> int:
    from relay import marketing
    from relay.connect import connect
    from relay.groups import load_groups
    from relay.mail.parsing import Rejected, parse_recipient
    from relay.notify import confirmation_owed
    from relay.octopush.client import Recipient, with_stop_mention
    from relay.octopush.errors import ValidationError
    from relay.sending import Guards, SendQueue, SendRequest, queue_campaign
    from relay.statuses import CampaignStatus, Origin, Purpose, SendStatus, SmsType
    from relay.storage import campaigns, meta
    from relay.storage.engine import open_store

    o = config.octopush
    groups = load_groups(config.groups, config.smtp_in.region, config.source)
    recipients: list[Recipient] = []
    try:
        for item in args.to:
            address = parse_recipient(
                f"{item}@{config.smtp_in.domain}",
                domain=config.smtp_in.domain,
                region=config.smtp_in.region,
                groups=groups,
            )
            if address.kind == "group":
                recipients.extend(groups[address.value])
            else:
                recipients.append(Recipient(address.value))
    except Rejected as exc:
        raise RelayError(exc.reason) from None
    send_at = None
    if args.at:
        tz = clock.region_timezone(config.smtp_in.region)
        try:
            send_at = clock.parse_future(args.at, tz)
        except ValueError as exc:
            raise RelayError(f"--at: {exc}") from None
        if send_at <= clock.now():
            raise RelayError(f"--at: {send_at.astimezone(tz):%Y-%m-%d %H:%M %Z} is in the past; give a future time")
    purpose = {"alert": Purpose.ALERT, "marketing": Purpose.WHOLESALE, None: o.purpose}[args.purpose]
    sms_type = {"premium": SmsType.PREMIUM, "low-cost": SmsType.LOW_COST, None: o.type}[args.type]
    text = args.text
    if purpose == Purpose.WHOLESALE:
        # Without a mention to add, validation refuses it below with Octopush's own reason.
        with contextlib.suppress(ValidationError):
            text = with_stop_mention(text, sms_type, config.smtp_in.stop_mention)
    request = SendRequest.from_config(
        o,
        text=text,
        recipients=dict.fromkeys(recipients),
        type=sms_type,
        purpose=purpose,
        sender=args.sender,
        send_at=send_at,
        with_replies=args.replies,
        simulate=args.simulate,
        origin=Origin.CLI,
        label="octorelay send",
    )
    request, delayed = marketing.schedule(request, o, config.smtp_in.region)
    request.validate()
    had_database = config.storage.path.exists()
    store = open_store(path=config.storage.path, url=config.storage.url, password=config.storage.password)
    await store.start()
    try:
        stored, callback_url = None, None
        if o.mode == "emulator":
            # A running daemon's emulator is the stand-in Octopush that holds its campaigns: use it when it
            # answers, so `campaign cancel` finds a scheduled SMS sent from here too.
            stored = await store.read(lambda db: meta.meta_get(db, "emulator_url")) if had_database else None
            # Else this command's own emulator posts its receipt and reply to this database's daemon: one must
            # have run here (it made the token), else they would go to whatever listens on http.listen.
            token = config.http.callback_token or (
                await store.read(partial(meta.meta_get, key="callback_token")) if had_database else None
            )
            callback_url = f"http://{config.http.listen}/octopush/{token}" if token else None
        async with connect(o, emulator_url=stored, callback_url=callback_url, replies=True) as (client, emulator):
            campaign_id, _ = await store.write(
                partial(queue_campaign, req=request, retry_for=o.retry_for, guards=Guards.from_config(config))
            )
            if delayed:
                when = request.send_at.astimezone(clock.region_timezone(config.smtp_in.region))
                print(f"campaign {campaign_id}: outside marketing hours, it goes at {when:%Y-%m-%d %H:%M %Z}")
            queued = await store.read(partial(campaigns.campaign, campaign_id=campaign_id))
            if any(s["not_before"] for s in queued["sends"]):
                # Held in our own queue until its time: the daemon hands it to Octopush then.
                result = None
            else:
                queue = SendQueue(
                    store,
                    client,
                    simulation=o.mode == "simulation",
                    auto_optimize_text=o.auto_optimize_text,
                    only_campaign=campaign_id,
                    confirmation_owed=confirmation_owed,
                )
                await queue.start()
                try:
                    result = await queue.wait(campaign_id)
                finally:
                    await queue.stop()
                if emulator is not None and result["status"] == CampaignStatus.SENT:
                    # The emulator lives in this process: let its receipt and reply reach a running daemon.
                    await emulator.drain(o.emulator.reply_after + 3)
    finally:
        await store.stop()
    when = clock.local(queued["send_at"], clock.region_timezone(config.smtp_in.region), "%Y-%m-%d %H:%M %Z")
    if result is None:
        print(
            f"campaign {campaign_id} scheduled for {when}: {queued['contacts']} recipient(s), held by the relay "
            f"until then (the running daemon hands it to Octopush); cancel with `octorelay campaign cancel "
            f"{campaign_id}`"
        )
        if queued["removed_optouts"]:
            print(f"left out (sent STOP): {', '.join(queued['removed_optouts'])}")
        return 0
    if result["status"] == CampaignStatus.FAILED:
        raise RelayError(f"not sent: {result['error']}")
    aside = next((s for s in result["sends"] if s["status"] == SendStatus.SET_ASIDE), None)
    if aside is not None:
        raise RelayError(
            f"not sent: it failed {aside['failures']} times ({aside['last_failure']}); it is set aside until "
            "someone retries it from the web interface's Attention page (/attention)"
        )
    tickets = ", ".join(t for t in result["tickets"]) or "(already sent earlier: same request)"
    cost = result.get("cost")
    print(f"ticket {tickets}")
    print(
        f"{result['contacts']} recipient(s), {result['sms_needed'] or 0} SMS, cost {cost if cost is not None else '?'}"
        f", credit left {result.get('residual_credit')}, encoding {result['encoding']}"
        + (" (simulation: nothing sent)" if request.simulation else "")
    )
    if result["status"] == CampaignStatus.SCHEDULED:
        print(
            f"campaign {campaign_id} scheduled for {when}: Octopush sends it then; cancel it until 10 minutes "
            f"before with `octorelay campaign cancel {campaign_id}`"
        )
    if result["removed_optouts"]:
        print(f"left out (sent STOP): {', '.join(result['removed_optouts'])}")
    return 0


def cmd_digest(config, args) -> int:
    return _run_async(_digest(config, args))


async def _digest(config, args) -> int:
    from relay.groups import contacts, load_groups
    from relay.mail.outbox import Outbox
    from relay.mail.render import Renderer
    from relay.notify import Notifier
    from relay.storage.engine import open_store
    from relay.storage.outbox import mail_state

    sub = config.subscription(args.name)  # a clear error before anything starts
    if sub.mode != "digest":
        raise RelayError(
            f"subscription {sub.name!r} is {sub.mode}, not a digest: its e-mails go out as each event arrives"
            f" (digests: {', '.join(d.name for d in config.digests) or 'none'})"
        )
    if args.dry_run:
        return _digest_preview(config, sub)
    store = open_store(path=config.storage.path, url=config.storage.url, password=config.storage.password)
    await store.start()
    outbox = Outbox(config.smtp_out, store)
    try:
        notifier = Notifier(
            config,
            store,
            outbox,
            Renderer(config.templates_dir),
            contacts(load_groups(config.groups, config.smtp_in.region, config.source)),
        )
        msg = await notifier.run_digest(args.name)
        if msg is None:
            # Also what a run started beside another one (the daemon, another node) finds: it sent them.
            print(f"digest {args.name}: nothing new since the last run, or another run just sent it; nothing sent")
            return 0
        row_id = (await store.read(partial(mail_state, message_id=msg["Message-ID"]))).id
        # Deliver this digest only; whatever else is pending belongs to the daemon.
        outbox = Outbox(config.smtp_out, store, only=[row_id])
        await outbox.start()
        deadline = asyncio.get_running_loop().time() + config.smtp_out.timeout + 5
        while asyncio.get_running_loop().time() < deadline:
            state = await store.read(partial(mail_state, message_id=msg["Message-ID"]))
            if state and state.status != "pending":
                break
            await asyncio.sleep(0.1)
        print(
            f"digest {args.name}: {msg['Subject']}: {state.status if state else 'queued'}"
            + (f" ({state.last_error})" if state and state.last_error else "")
        )
        return 0
    finally:
        await outbox.stop()
        await store.stop()


def _digest_preview(config, sub) -> int:
    """`digest NAME --dry-run`: the e-mail the next run would send, as its reader sees it; reads, writes nothing."""
    from relay.groups import contacts, load_groups
    from relay.mail.render import Renderer
    from relay.notify import Notifier, pending_digest

    db = _existing_db(config)
    try:
        snapshot = pending_digest(db, sub=sub) if db is not None else None
    finally:
        if db is not None:
            db.close()
    if snapshot is None:
        print(f"digest {sub.name}: has not run yet; it starts at its first run and holds what arrives after it")
        return 0
    if not snapshot["rows"] and not sub.send_empty:
        print(f"digest {sub.name}: nothing new since the last run; a run now would send nothing")
        return 0
    groups = contacts(load_groups(config.groups, config.smtp_in.region, config.source))
    notifier = Notifier(config, None, None, Renderer(config.templates_dir), groups)
    msg = notifier.digest_message(sub, snapshot["rows"], snapshot["since"], clock.now())
    print(f"From: {msg['From']}\nTo: {msg['To']}\nSubject: {msg['Subject']}\n")
    sys.stdout.write(msg.get_body(("plain",)).get_content())
    print("\n(dry run: nothing sent, the digest's starting point is unchanged)")
    return 0


def cmd_db_backup(config, args) -> int:
    from relay.storage import database
    from relay.storage.database import connect

    if config.storage.url:
        raise RelayError(
            "db backup copies SQLite's file; this relay's database is PostgreSQL (storage.url): back it up with "
            "pg_dump, or PostgreSQL's own continuous archiving"
        )
    if not config.storage.path.exists():
        raise RelayError(f"no database at {config.storage.path} (storage.path)")
    db = connect(config.storage.path, readonly=True)
    try:
        database.backup(db, args.file)
    except (sqlite3.Error, OSError) as exc:
        raise RelayError(f"cannot write the backup to {args.file}: {exc}") from None
    finally:
        db.close()
    print(f"backup written to {args.file}")
    return 0


def cmd_db_purge(config, args) -> int:

    value = args.older_than.strip()
    try:
        cutoff = clock.now() - timedelta(days=int(value)) if value.isdigit() else None
        if cutoff is None:
            cutoff = clock.parse_iso(clock.parse_when(value, config.display_tz))
    except (ValueError, OverflowError) as exc:
        raise RelayError(f"--older-than: expected days (30), 12h, 7d, 4w or an ISO 8601 date: {exc}") from None
    if cutoff > clock.now() - timedelta(hours=1):
        raise RelayError("--older-than: must reach at least 1 hour back (it deletes everything older)")
    db = _writable_db(config, "nothing to purge")
    try:
        counts = _purge_in_batches(db, cutoff=clock.iso(cutoff), digests=[s.name for s in config.digests])
    finally:
        db.close()
    print(f"purged {counts['callbacks']} callbacks, {counts['outbox']} sent e-mails, {counts['messages']} message ids")
    return 0


def cmd_db_copy(config, args) -> int:
    """`db copy --to URL`: the SQLite database at storage.path into an empty PostgreSQL database (SPEC §8)."""
    from relay.logs import mask_url
    from relay.storage import database, postgres
    from relay.storage.copy import copy_database, refuse_unless_empty, source_tables

    url = args.to.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        has_password = parts.password is not None
    except ValueError as exc:
        raise RelayError(f"--to: not a URL ({exc}): {mask_url(url)}") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise RelayError(f"--to: expected postgresql://user@host:5432/database, not {mask_url(url)}")
    source = config.storage.path
    if not source.exists():
        raise RelayError(f"no database at {source} (storage.path): nothing to copy")
    # The daemon's own lock, held for the whole copy: a running daemon makes the command stop here, and a
    # daemon started meanwhile waits (exits 1 naming this command's pid) instead of writing rows it would miss.
    lock = database.DaemonLock(source)
    try:
        asyncio.run(lock.start())
    except RelayError as exc:
        raise RelayError(f"db copy needs the daemon stopped: {exc}") from None
    import psycopg

    bare = url
    if has_password:  # the user without the password
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        bare = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}"))
    try:
        database.migrate(source)  # the source at today's schema, as the target's is
        password = "" if has_password else config.storage.password
        dst = postgres.connect(url, password=password)
        src = database.connect(source, readonly=True)
        try:
            # Before the target gets any table of ours: another application's database stays untouched.
            refuse_unless_empty(dst, source_tables(src))
            postgres.migrate(url, password=password)
            print(f"copying {source} into {bare}", flush=True)
            print(f"  {'table':<18} {'SQLite':>10} {'PostgreSQL':>11}")
            copied = copy_database(
                src, dst, progress=lambda c: print(f"  {c.table:<18} {c.source:>10,} {c.target:>11,}", flush=True)
            )
        finally:
            src.close()
            dst.close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RelayError(f"db copy into {bare} failed, nothing was kept: {reason}") from None
    except sqlite3.Error as exc:
        raise RelayError(f"db copy: cannot read {source}: {exc}") from None
    finally:
        asyncio.run(lock.stop())
    rows = sum(c.source for c in copied)
    print(
        f"done: {rows:,} rows in {len(copied)} tables, every count verified. Now set [storage] url = "
        f'"{bare}" and its password on every node, and start them.'
    )
    return 0


PURGE_PAUSE = 0.02  # seconds at least between two batches of `db purge`


def _purge_in_batches(db, *, cutoff: str, digests: list[str]) -> dict:
    """Short write transactions with pauses between them, so a running daemon's callbacks get the lock.

    The daemon waits for a lock in growing sleeps (SQLite's busy handler): each pause is at least twice the
    batch it follows, so the daemon's next try finds the lock free.
    """
    from relay.storage import retention
    from relay.storage.database import immediate_transaction

    totals = dict.fromkeys(("callbacks", "outbox", "messages"), 0)
    while True:
        started = time.monotonic()
        with immediate_transaction(db):
            counts = retention.purge_batch(db, cutoff=cutoff, digests=digests)
        for key, n in counts.items():
            totals[key] += n
        if retention.purge_done(counts):
            return totals
        time.sleep(max(PURGE_PAUSE, 2 * (time.monotonic() - started)))


MIN_PASSWORD = 10


def cmd_campaign_approve(config, args) -> int:
    """`campaign approve ID`: the campaign-status logic is sending.py's; the daemon's queue sends it."""
    from relay import sending

    db = _writable_db(config, f"there is no campaign {args.id}")
    who = f"the command line ({getpass.getuser()})"
    try:
        with db.atomic():
            sending.approve_campaign(db, args.id, config=config, by=who)
    finally:
        db.close()
    print(f"campaign {args.id}: approved; the daemon sends it")
    return 0


def cmd_hash_password() -> int:
    from relay.passwords import make_hash

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("octorelay: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD:
        # It guards the web interface or the SMTP listener, where anyone who reaches it can guess.
        print(
            f"octorelay: this password is too short ({len(password)} characters): use at least {MIN_PASSWORD},"
            " e.g. four random words",
            file=sys.stderr,
        )
        return 1
    print(make_hash(password))
    return 0


# The secrets each command uses; a command not listed reads them all. The others are not needed: an admin command
# run by hand must not fail on a systemd credential only the service can read (SPEC §1).
SECRETS_USED: dict[str, tuple[str, ...]] = {
    "check-config": (),
    "replies": (),
    "callback-url": ("http.callback_token",),
    "send": ("octopush.api_key", "http.callback_token"),
    "digest": ("smtp_out.password",),
    "db-backup": (),
    "db-purge": (),
    "db-copy": ("storage.password",),
}


# ------------------------------------------------------------------ the Octopush account


@contextlib.asynccontextmanager
async def octopush_client(config):
    """A client for the configured Octopush; in emulator mode, a stand-in account in this process."""
    from relay.connect import connect

    async with connect(config.octopush, emulator_url=read_meta(config, "emulator_url")) as (client, _):
        yield client


def is_loopback_url(url: str) -> bool:
    """A URL whose host is this machine: Octopush, on the Internet, cannot reach it."""
    import ipaddress

    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or not host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def stored_token(config, *, create: bool) -> str | None:
    """The callback token: configured, else stored in the database (made there when `create`)."""
    from relay.storage import meta
    from relay.storage.database import connect, migrate

    if config.http.callback_token:
        return config.http.callback_token
    if not create:
        return read_meta(config, "callback_token")
    if config.storage.url:
        db = _postgres_db(config, create=True)
    else:
        migrate(config.storage.path)  # `octopush setup` makes the token, and the database, if need be
        db = connect(config.storage.path)
    try:
        with db.atomic():
            return meta.ensure_callback_token(db)
    finally:
        db.close()


def read_meta(config, key: str) -> str | None:
    """A value the daemon stored, read without creating anything (None without a database)."""
    from relay.storage import meta
    from relay.storage.database import connect

    if config.storage.url:
        db = _postgres_db(config, create=False)
        if db is None:
            return None
    elif not config.storage.path.exists():
        return None
    else:
        db = connect(config.storage.path, readonly=True)
    try:
        return meta.meta_get(db, key)
    except sqlite3.Error:  # a database from before the meta table
        return None
    finally:
        db.close()


def cmd_octopush_setup(config, args) -> int:
    from relay.octopush.client import CALLBACK_URL_FIELDS

    o = config.octopush
    public_url = config.http.public_url
    if o.mode != "emulator" and is_loopback_url(public_url):
        raise RelayError(
            f"{config.source}: http.public_url is {public_url!r}, an address of this machine: Octopush cannot "
            "reach it. Set http.public_url to the https address under which Octopush reaches this relay."
        )
    token = stored_token(config, create=not args.dry_run)
    base = f"{public_url}/octopush/"
    url = base + (token or "<TOKEN>")
    urls = {name: url for name in CALLBACK_URL_FIELDS.values()}
    what = {"callback_url_for_inbounds": "replies", "callback_url_for_deliveries": "delivery receipts"}
    if args.dry_run:
        print(
            f"would set in the Octopush account {o.api_login or '(emulator)'} (PATCH /user/campaign-parameters/edit):"
        )
        for name, value in urls.items():
            print(f"  {name} = {value}  ({what.get(name, 'STOP opt-outs')})")
        if token is None:
            print("<TOKEN> is made when the daemon first starts, or by `octorelay octopush setup` itself.")
        return 0
    settings = _run_async(_set_callbacks(config, urls))
    answered = settings.get("callbacks") if isinstance(settings.get("callbacks"), dict) else {}
    print(f"set in the Octopush account {o.api_login or '(emulator)'}:")
    for name, value in urls.items():
        shown = answered.get(name, value)
        print(f"  {name} = {shown}  ({what.get(name, 'STOP opt-outs')})")
    if o.mode == "emulator":
        print("(mode emulator: a stand-in account in this process; nothing left this machine)")
    return 0


async def _set_callbacks(config, urls: dict[str, str]) -> dict:
    async with octopush_client(config) as client:
        return await client.set_callbacks(urls)


def cmd_octopush_balance(config, args) -> int:
    from relay.mail.render import amount
    from relay.statuses import SmsType

    balance, sms = _run_async(_balance(config))
    unit = "€" if balance.unit == "euros" else balance.unit
    line = f"credit: {amount(balance.amount)} {unit}"
    if sms is not None:
        kind = "premium" if config.octopush.type == SmsType.PREMIUM else "low-cost"
        line += f" (about {int(sms.amount)} {kind} SMS to {config.smtp_in.region})"
    print(line + (" (emulator)" if config.octopush.mode == "emulator" else ""))
    return 0


async def _balance(config):
    from relay.octopush.errors import OctopushError, TemporaryError

    async with octopush_client(config) as client:
        balance = await client.check_balance()
        try:
            sms = await client.check_balance(product=config.octopush.type, country=config.smtp_in.region)
        except (OctopushError, TemporaryError):
            sms = None  # the euros are the answer; the SMS count is a courtesy
    return balance, sms


# ------------------------------------------------------------------ campaigns


def cmd_campaign_cancel(config, args) -> int:
    return _run_async(_cancel(config, args))


async def _cancel(config, args) -> int:
    from relay.connect import connect
    from relay.groups import contacts, load_groups
    from relay.mail.outbox import Outbox
    from relay.mail.render import Renderer
    from relay.notify import Notifier
    from relay.sending import cancel_campaign
    from relay.statuses import MailKind
    from relay.storage import meta
    from relay.storage.engine import open_store
    from relay.storage.outbox import pending_mail_of

    if not config.storage.url and not config.storage.path.exists():
        raise RelayError(f"no database at {config.storage.path} (storage.path): there is no campaign {args.id}")
    o = config.octopush
    store = open_store(path=config.storage.path, url=config.storage.url, password=config.storage.password)
    await store.start()
    outbox = None
    try:
        # The emulator lives in the daemon's process: that is the "Octopush" holding its campaigns.
        stored = await store.read(lambda db: meta.meta_get(db, "emulator_url")) if o.mode == "emulator" else None
        async with connect(o, emulator_url=stored, stand_in=False) as (client, _):
            who = os.environ.get("SUDO_USER") or os.environ.get("USER") or "the operator"
            row = await cancel_campaign(store, client, args.id, by=f"{who} (octorelay campaign cancel)")
        # Tell the sender now rather than at the daemon's next sweep; the sweep never doubles it.
        notifier = Notifier(
            config,
            store,
            Outbox(config.smtp_out, store),
            Renderer(config.templates_dir),
            contacts(load_groups(config.groups, config.smtp_in.region)),
        )
        await notifier.confirm_pending()
        ids = await store.read(partial(pending_mail_of, campaign_id=args.id, kind=MailKind.CANCELLED))
        if ids:
            outbox = Outbox(config.smtp_out, store, only=ids)
            await outbox.start()
            deadline = asyncio.get_running_loop().time() + config.smtp_out.timeout + 5
            while asyncio.get_running_loop().time() < deadline:
                if not await store.read(partial(pending_mail_of, campaign_id=args.id, kind=MailKind.CANCELLED)):
                    break
                await asyncio.sleep(0.1)
    finally:
        if outbox is not None:
            await outbox.stop()
        await store.stop()
    when = clock.local(row.get("send_at"), clock.region_timezone(config.smtp_in.region), "%Y-%m-%d %H:%M %Z")
    print(
        f"campaign {args.id} cancelled"
        + (f" (it was {row['status']} for {when})" if when else f" (it was {row['status']})")
        + (f"; {row['sender_email']} is told by e-mail" if row.get("sender_email") else "")
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "send": cmd_send,
    "replies": cmd_replies,
    "digest": cmd_digest,
    "callback-url": cmd_callback_url,
    "db-backup": cmd_db_backup,
    "db-purge": cmd_db_purge,
    "db-copy": cmd_db_copy,
    "octopush-setup": cmd_octopush_setup,
    "octopush-balance": cmd_octopush_balance,
    "campaign-cancel": cmd_campaign_cancel,
    "campaign-approve": cmd_campaign_approve,
}
