"""The `octorelay` command: parse, load the configuration once, log, run one command.

Exit codes: 0 success, 1 a clear user error (one line on stderr, no traceback
unless OCTORELAY_DEBUG=1), 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import getpass
import io
import os
import sqlite3
import sys
import urllib.parse
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
    send.add_argument("--at", metavar="WHEN", help="ISO 8601, or 'YYYY-MM-DD HH:MM' in smtp_in.region's timezone")
    send.add_argument("--replies", action=argparse.BooleanOptionalAction, default=None)
    send.add_argument("--simulate", action="store_true", help="Octopush validates but sends nothing")
    replies = sub.add_parser("replies", parents=[common], help="stored replies, newest first")
    replies.add_argument("--since", metavar="WHEN", help="ISO 8601 date/time, or 2h / 3d / 1w")
    replies.add_argument("--country", metavar="CC")
    replies.add_argument("--number", metavar="N")
    replies.add_argument("--limit", type=int, default=100)
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
    purge.add_argument("--older-than", type=int, required=True, metavar="DAYS")
    sub.add_parser("hash-password", parents=[common], help="hash a password for ui_users or smtp_in.users")
    campaign = sub.add_parser("campaign", parents=[common], help="approve or cancel a campaign held for approval")
    campaign.add_argument("action", choices=["approve", "cancel"])
    campaign.add_argument("id", type=int, metavar="ID", help="the relay's campaign number (Queued as campaign N)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "hash-password":
            return cmd_hash_password()
        config = config_mod.load(args.config)
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
            ],
        )
        handler = COMMANDS[args.command if args.command != "db" else f"db-{args.db_command}"]
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


# ------------------------------------------------------------------ commands


def cmd_run(config, args) -> int:
    from relay.daemon import serve

    return _run_async(serve(config, args.config or os.environ.get(config_mod.ENV_CONFIG)))


def cmd_check_config(config, args) -> int:
    from relay.groups import load_groups
    from relay.scheduler import next_runs

    groups = load_groups(config.groups, config.smtp_in.region)
    o = config.octopush
    print(f"configuration: {config.source} — valid")
    print(f"octopush: mode {o.mode}" + (f", {o.base_url}" if o.mode != "emulator" else " (offline emulator)"))
    print(f"  api_login {o.api_login or '(not set)'}, api_key {'(set)' if o.api_key else '(not set)'}")
    print(f"  defaults: type {o.type}, purpose {o.purpose}, replies {'on' if o.with_replies else 'off'}")
    print(f"http: listening on {config.http.listen}, public URL {config.http.public_url}")
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
        f"TLS {'certificate ' + s.tls_cert if s.tls_cert else 'self-signed'}"
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
        f"storage: {config.storage.path}"
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
    return 0


def cmd_callback_url(config, args) -> int:
    from relay.storage import queries
    from relay.storage.database import connect, migrate

    token = config.http.callback_token
    if not token:
        migrate(config.storage.path)
        db = connect(config.storage.path)
        try:
            with db.atomic():
                token = queries.ensure_callback_token(db)
        finally:
            db.close()
    print(f"{config.http.public_url}/octopush/{token}")
    return 0


def cmd_replies(config, args) -> int:
    from relay.storage import queries
    from relay.storage.database import connect, migrate

    migrate(config.storage.path)
    db = connect(config.storage.path, readonly=True)
    try:
        try:
            since = clock.parse_when(args.since)
        except ValueError as exc:
            raise RelayError(f"--since: {exc}") from None
        rows = queries.replies(db, since=since, country=args.country, number=args.number, limit=args.limit)
    finally:
        db.close()
    columns = ["occurred_at", "number", "country", "text", "answered", "ticket"]
    if args.format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c) or "" for c in columns])
        sys.stdout.write(out.getvalue())
    else:
        if not rows:
            print("no replies")
        for row in rows:
            when = clock.parse_iso(row["occurred_at"]).strftime("%Y-%m-%d %H:%M")
            text = (row["text"] or "").replace("\n", " ")
            print(f"{when}  {row['number']:<16} {row['country'] or '--':<3} {text}")
    return 0


def cmd_send(config, args) -> int:
    return _run_async(_send(config, args))


async def _send(config, args) -> int:
    from relay import marketing
    from relay.groups import load_groups
    from relay.mail.parsing import Rejected, parse_recipient, parse_subject
    from relay.octopush.client import OctopushClient, Recipient, with_stop_mention
    from relay.octopush.emulator import Emulator
    from relay.octopush.errors import ValidationError
    from relay.sending import Guards, SendQueue, SendRequest, queue_campaign
    from relay.storage import queries
    from relay.storage.database import Store

    o = config.octopush
    groups = load_groups(config.groups, config.smtp_in.region)
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
        send_at = parse_subject(f"[at:{args.at}]", region=config.smtp_in.region).send_at if args.at else None
    except Rejected as exc:
        raise RelayError(exc.reason) from None
    purpose = {"alert": "alert", "marketing": "wholesale", None: o.purpose}[args.purpose]
    sms_type = {"premium": "sms_premium", "low-cost": "sms_low_cost", None: o.type}[args.type]
    text = args.text
    if purpose == "wholesale":
        # Without a mention to add, validation refuses it below with Octopush's own reason.
        with contextlib.suppress(ValidationError):
            text = with_stop_mention(text, sms_type, config.smtp_in.stop_mention)
    request = SendRequest(
        text=text,
        recipients=tuple(dict.fromkeys(recipients)),
        type=sms_type,
        purpose=purpose,
        sender=args.sender if args.sender is not None else o.sender,
        send_at=send_at,
        with_replies=o.with_replies if args.replies is None else args.replies,
        simulation=args.simulate or o.mode == "simulation",
        auto_optimize_text=o.auto_optimize_text,
        origin="cli",
        label="octorelay send",
    )
    request, delayed = marketing.schedule(request, o, config.smtp_in.region)
    request.validate()
    store = Store(config.storage.path)
    components = [store]
    await store.start()
    try:
        base_url, login, key = o.base_url, o.api_login, o.api_key
        if o.mode == "emulator":
            token = config.http.callback_token or await store.write(queries.ensure_callback_token)
            listen = config.http.listen
            emulator = Emulator(
                reply_text=o.emulator.reply_text,
                reply_after=o.emulator.reply_after,
                credit=o.emulator.credit,
                callback_url=f"http://{listen}/octopush/{token}",
            )
            await emulator.start()
            components.append(emulator)
            base_url, login, key = emulator.base_url, login or "emulator", key or "emulator"
        client = OctopushClient(base_url, login, key, timeout=o.timeout, retry_for=o.retry_for)
        await client.start()
        components.append(client)
        campaign_id, _ = await store.write(
            partial(queue_campaign, req=request, retry_for=o.retry_for, guards=Guards.from_config(config))
        )
        if delayed:
            when = request.send_at.astimezone(clock.region_timezone(config.smtp_in.region))
            print(f"campaign {campaign_id}: outside marketing hours, it goes at {when:%Y-%m-%d %H:%M %Z}")
        queue = SendQueue(
            store,
            client,
            simulation=o.mode == "simulation",
            auto_optimize_text=o.auto_optimize_text,
            only_campaign=campaign_id,
        )
        await queue.start()
        components.append(queue)
        result = await queue.wait(campaign_id)
        if o.mode == "emulator" and result["status"] == "sent":
            # The emulator lives in this process: let its receipt and reply reach a running daemon.
            await emulator.drain(o.emulator.reply_after + 3)
    finally:
        for component in reversed(components):
            await component.stop()
    if result["status"] == "failed":
        raise RelayError(f"not sent: {result['error']}")
    tickets = ", ".join(t for t in result["tickets"]) or "(already sent earlier: same request)"
    cost = result.get("cost")
    print(f"ticket {tickets}")
    print(
        f"{result['contacts']} recipient(s), {result['sms_needed'] or 0} SMS, cost {cost if cost is not None else '?'}"
        f", credit left {result.get('residual_credit')}, encoding {result['encoding']}"
        + (" (simulation: nothing sent)" if request.simulation else "")
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
    from relay.storage.database import Store

    config.subscription(args.name)  # a clear error before anything starts
    store = Store(config.storage.path)
    await store.start()
    outbox = Outbox(config.smtp_out, store)
    try:
        notifier = Notifier(
            config,
            store,
            outbox,
            Renderer(config.templates_dir),
            contacts(load_groups(config.groups, config.smtp_in.region)),
        )
        msg = await notifier.run_digest(args.name, dry_run=args.dry_run)
        if msg is None:
            print(f"digest {args.name}: nothing new since the last run; nothing sent")
            return 0
        if args.dry_run:
            sys.stdout.write(msg.as_string())
            return 0
        row_id = await store.read(
            lambda db: db.execute("SELECT id FROM outbox WHERE message_id = ?", [msg["Message-ID"]]).fetchone()[0]
        )
        # Deliver this digest only; whatever else is pending belongs to the daemon.
        outbox = Outbox(config.smtp_out, store, only=[row_id])
        await outbox.start()
        deadline = asyncio.get_running_loop().time() + config.smtp_out.timeout + 5
        while asyncio.get_running_loop().time() < deadline:
            state = await store.read(
                lambda db: db.execute(
                    "SELECT status, last_error FROM outbox WHERE message_id = ?", [msg["Message-ID"]]
                ).fetchone()
            )
            if state and state[0] != "pending":
                break
            await asyncio.sleep(0.1)
        print(
            f"digest {args.name}: {msg['Subject']}: {state[0] if state else 'queued'}"
            + (f" ({state[1]})" if state and state[1] else "")
        )
        return 0
    finally:
        await outbox.stop()
        await store.stop()


def cmd_db_backup(config, args) -> int:
    from relay.storage import queries
    from relay.storage.database import connect

    if not config.storage.path.exists():
        raise RelayError(f"no database at {config.storage.path} (storage.path)")
    db = connect(config.storage.path, readonly=True)
    try:
        queries.backup(db, args.file)
    except (sqlite3.Error, OSError) as exc:
        raise RelayError(f"cannot write the backup to {args.file}: {exc}") from None
    finally:
        db.close()
    print(f"backup written to {args.file}")
    return 0


def cmd_db_purge(config, args) -> int:
    from relay.storage import queries
    from relay.storage.database import connect, migrate

    if args.older_than < 1:
        raise RelayError("--older-than must be 1 day or more")
    migrate(config.storage.path)
    db = connect(config.storage.path)
    try:
        with db.atomic():
            counts = queries.purge(db, days=args.older_than, digests=[s.name for s in config.digests])
    finally:
        db.close()
    print(f"purged {counts['callbacks']} callbacks, {counts['outbox']} sent e-mails, {counts['messages']} message ids")
    return 0


def cmd_campaign(config, args) -> int:
    """`campaign approve|cancel ID`: the campaign-status logic is sending.py's; the daemon's queue sends it."""
    from relay import sending
    from relay.storage.database import connect, migrate

    migrate(config.storage.path)
    db = connect(config.storage.path)
    who = f"the command line ({getpass.getuser()})"
    try:
        with db.atomic():
            if args.action == "approve":
                sending.approve_campaign(db, args.id, config=config, by=who)
            else:
                sending.cancel_campaign(db, args.id, by=who)
    finally:
        db.close()
    print(f"campaign {args.id}: " + ("approved; the daemon sends it" if args.action == "approve" else "cancelled"))
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
    if not password:
        print("octorelay: empty password", file=sys.stderr)
        return 1
    print(make_hash(password))
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
    "campaign": cmd_campaign,
}
