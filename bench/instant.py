"""The default path: reply callbacks -> instant e-mails delivered over SMTP, with a year of sent mail behind them.

`octorelay run`'s own configuration, and every team that wants replies in its mailbox at once, renders and
queues an e-mail per reply. Each daemon here has an instant subscription and delivers by SMTP to a minimal
mail server in its own process (`_servers.py fastsink`, standing for a server written in C), and starts on a
database whose outbox already holds a year of sent mail (`--history`, built through the storage layer).

  wrk       Debian's `wrk` (C, one thread, 64 connections, unique replies), closed loop: callbacks/s, p50/p99;
            then the time the daemon needs to route and deliver what is left (the outbox keeping up: e-mails
            delivered per second over the run and its drain)
  paced     500 callbacks/s for 10 s (Python client), p99 from each request's due time
  order     at the end, every stored reply must have reached the mail server exactly once, and each
            number's e-mails in the order its callbacks were stored

`--before DIR` runs the same against another checkout (e.g. `git archive <commit> | tar -x -C DIR`),
interleaved with this one, so before/after figures come from the same run.

Targets: >= 3,000 callbacks/s with wrk at 64 connections; p99 < 25 ms at 500/s; nothing lost, nothing twice,
nothing reordered within a conversation; the outbox drained within 2 s of the load's end.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import shutil
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from callbacks import WRK_SCRIPT, print_profile, profile, wrk  # noqa: E402


def fill_history(db_path: Path, count: int) -> float:
    """`count` delivered e-mails with their remembered Message-IDs, through the storage layer; seconds taken."""
    from relay.statuses import MailKind
    from relay.storage import campaigns, database
    from relay.storage import outbox as outbox_table

    started = time.monotonic()
    database.migrate(db_path)
    db = database.connect(db_path)
    try:
        body = (Path(__file__).resolve().parent / "instant.py").read_bytes()[:5000]  # a body-sized blob
        with database.immediate_transaction(db):
            for i in range(count):
                msgid = f"<history.{i}.{secrets.token_hex(6)}@sms.example.org>"
                row = outbox_table.add_mail(
                    db,
                    kind=MailKind.REPLY,
                    recipients=["ops@example.org"],
                    message=body,
                    message_id=msgid,
                    subject=f"SMS reply from +33 6 00 {i % 100:02d} 00 00",
                    now="2025-12-01T00:00:00+00:00",
                )
                outbox_table.record_delivered(db, row, attempts=1, error=None, at="2025-12-01T00:00:01+00:00")
                campaigns.remember_message(
                    db, msgid, number=f"+3360000{i % 10000:04d}", campaign_id=None, direction="out"
                )
    finally:
        db.close()
    return time.monotonic() - started


async def drained(db_path: Path, limit: float = 300.0) -> float:
    return await c.until_none_left(
        db_path,
        "SELECT count(*) FROM callbacks WHERE routed = 0",
        "SELECT count(*) FROM outbox WHERE status = 'pending'",
        limit=limit,
    )


def backlog(db_path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        unrouted = db.execute("SELECT count(*) FROM callbacks WHERE routed = 0").fetchone()[0]
        pending = db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        return unrouted, pending
    finally:
        db.close()


def check_order(db_path: Path, sink_file: Path) -> dict:
    """Every reply's e-mail received once, and each number's in the order its callbacks were stored."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, number, text FROM callbacks WHERE kind = 'reply' ORDER BY id").fetchall()
    finally:
        db.close()
    id_of = {text.split(":", 1)[0].removeprefix("Reply "): (cid, number) for cid, number, text in rows}
    seen: collections.Counter = collections.Counter()
    last: dict[str, int] = {}
    reordered = unknown = 0
    for line in sink_file.read_text().splitlines():
        _, _, token = line.partition(" ")
        if token not in id_of:
            unknown += 1
            continue
        seen[token] += 1
        cid, number = id_of[token]
        if last.get(number, 0) > cid:
            reordered += 1
        last[number] = max(last.get(number, 0), cid)
    return {
        "replies": len(rows),
        "received": sum(seen.values()),
        "missing": sum(1 for t in id_of if not seen[t]),
        "twice": sum(1 for n in seen.values() if n > 1),
        "reordered": reordered,
        "unknown": unknown,
    }


async def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="also run this checkout's code (interleaved), as 'before'")
    p.add_argument("--history", type=int, help="sent e-mails already in the outbox (default 250,000; quick 50,000)")
    p.add_argument("--profile", action="store_true", help="py-spy profile of this checkout's daemon under wrk")
    p.add_argument("--gil", action="store_true", help="with --profile: only the thread holding the GIL")
    args = p.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk")
        return 2
    seconds = 4 if args.quick else 8
    reps = 2 if args.quick else 3
    paced_seconds = 4 if args.quick else 10
    history = args.history if args.history is not None else (50_000 if args.quick else 250_000)
    trees = {"now": c.ROOT}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}

    with c.tempdir("instant") as tmpname:
        tmp = Path(tmpname)
        script = tmp / "reply.lua"
        script.write_text(WRK_SCRIPT)
        procs, sinks, servers = [], {}, {}
        try:
            for name, tree in trees.items():
                d = tmp / name
                d.mkdir()
                sink = await c.ServerProcess("fastsink", d).start()
                sinks[name] = sink
                token = secrets.token_hex(16)
                cfg = c.write_config(
                    d, extra=c.INSTANT + f'\n[http]\ncallback_token = "{token}"\n', smtp_port=sink.port
                )
                took = await asyncio.to_thread(fill_history, d / "octorelay.db", history)
                print(f"{name}: {history:,} sent e-mails in the outbox ({took:.1f} s)", flush=True)
                proc = await c.start_daemon_process(d, cfg, env={"PYTHONPATH": str(tree)})
                procs.append(proc)
                servers[name] = (f"{proc.http_url}/octopush/{token}", proc, d / "octorelay.db")

            for url, _, db in servers.values():
                await asyncio.to_thread(wrk, url, seconds=2, concurrency=64, script=script)
                await drained(db)

            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for rep in range(reps):
                for name, (url, _, db) in servers.items():
                    before = _count_mail(db)
                    started = time.monotonic()
                    r = await asyncio.to_thread(wrk, url, seconds=seconds, concurrency=64, script=script)
                    r["backlog"] = backlog(db)
                    r["drain_s"] = await drained(db)
                    delivered = _count_mail(db) - before
                    r["mail_rate"] = delivered / (time.monotonic() - started)
                    runs[name].append(r)
                    print(
                        f"  rep {rep + 1} {name:7s} {r['rate']:8.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
                        f"p99 {r['p99_ms']:6.1f} ms"
                        f"  non-2xx {r['errors']}  left at the end {r['backlog'][0]} unrouted / {r['backlog'][1]} "
                        f"unsent, drained in {r['drain_s']:.1f} s; {r['mail_rate']:.0f} e-mails/s",
                        flush=True,
                    )
            paced = {}
            for name, (url, _, db) in servers.items():
                paced[name] = await c.paced(url, rate=500, seconds=paced_seconds, salt=f"paced{name}-")
                paced[name]["drain_s"] = await drained(db)
                print(f"  paced {name}: p50 {paced[name]['p50_ms']:.1f} ms, p99 {paced[name]['p99_ms']:.1f} ms")

            prof = None
            if args.profile:
                url, proc, db = servers["now"]
                out = tmp / "profile.txt"
                load = asyncio.create_task(asyncio.to_thread(wrk, url, seconds=10, concurrency=64, script=script))
                await asyncio.sleep(1)
                prof = await asyncio.to_thread(profile, proc.proc.pid, 8, out, gil=args.gil)
                await load
                await drained(db)
                if prof:
                    c.RESULTS.mkdir(parents=True, exist_ok=True)
                    shutil.copy(out, c.RESULTS / f"instant-profile{'-gil' if args.gil else ''}.txt")
        finally:
            for proc in reversed(procs):
                await proc.stop()
            for sink in sinks.values():
                await sink.stop()
        order = {name: check_order(servers[name][2], tmp / name / "sink.txt") for name in servers}

    med = {
        name: {k: c.median([r[k] for r in rs]) for k in ("rate", "p50_ms", "p99_ms", "errors", "drain_s", "mail_rate")}
        for name, rs in runs.items()
    }
    print(f"\nreply callbacks -> instant e-mails over SMTP, wrk -c64 {seconds} s x {reps} interleaved, medians,")
    print(f"{history:,} sent e-mails already in the outbox ({c.machine()})")
    print(
        c.table(
            [
                [
                    n,
                    m["rate"],
                    m["p50_ms"],
                    m["p99_ms"],
                    int(m["errors"]),
                    m["drain_s"],
                    m["mail_rate"],
                    paced[n]["p99_ms"],
                ]
                for n, m in med.items()
            ],
            ["code", "callbacks/s", "p50 ms", "p99 ms", "non-2xx", "drain s", "e-mails/s", "paced 500/s p99 ms"],
        )
    )
    print("\ndelivery check (every reply's e-mail once, in order per number):")
    print(
        c.table(
            [[n, o["replies"], o["received"], o["missing"], o["twice"], o["reordered"]] for n, o in order.items()],
            ["code", "replies", "e-mails", "missing", "twice", "reordered"],
        )
    )
    now, o = med["now"], order["now"]
    checks = [
        (">= 3,000 callbacks/s (wrk, 64 connections)", now["rate"], 3000.0, now["rate"] >= 3000),
        (
            "p99 < 25 ms at 500/s",
            paced["now"]["p99_ms"],
            25.0,
            paced["now"]["p99_ms"] < 25 and not paced["now"]["errors"],
        ),
        (
            "nothing lost, twice or reordered",
            o["missing"] + o["twice"] + o["reordered"],
            0,
            not (o["missing"] or o["twice"] or o["reordered"]),
        ),
        ("outbox drained within 2 s of the load's end", now["drain_s"], 2.0, now["drain_s"] <= 2.0),
    ]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    if prof:
        print_profile(prof, "wrk, GIL only" if args.gil else "wrk")
    c.save("instant", {"medians": med, "runs": runs, "paced": paced, "order": order, "checks": checks}, args.json)
    return 0 if all(ok for *_, ok in checks) else 1


def _count_mail(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0]
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(c.run(main()))
