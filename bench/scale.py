"""A few years of data: pages, exports, backup, purge and a catch-up digest on 100,000 and 1,000,000 callbacks.

The database is built in this process through octorelay's own storage layer, with the clock moved
forward two years over the build (`relay.clock.now` patched): 20,000 campaigns per million callbacks
sent by e-mail (`sending.queue_campaign`, then the send queue's own `_claim` / `_record` with a
ticket), and for each campaign replies, delivery receipts and now and then a STOP from its
recipients in 15 countries (`classify` + `callbacks.store_callback`); every reply to an e-mail gets
its instant e-mail through the outbox (`queue_message`, then `outbox._settle` as delivered) and its
Message-ID remembered. One number is a busy conversation (every 50th campaign).

Then `python -m relay run` serves that database in its own process while this process posts reply
callbacks at a steady 100/s (open loop: each latency counts from when the request was due) for the
whole run, and measures one thing at a time: every page and API call (sequential GETs), the web CSV
export (streamed to the end), the CLI's `replies --format csv --limit 0`, `replies --since 7d`,
`db backup`, a catch-up digest of 50,000 events (`octorelay digest ops` after moving its watermark
back, parts delivered to a Maildir), `db purge --older-than 365` (half the rows), and the daemon's
own scheduled purge (a second daemon on the backup with `retention_days = 365`). Each line shows
the callbacks' p99 while that step ran, and the peak RSS of the process doing the work.

`--quick`: 100,000 callbacks only. Default: 100,000 then 1,000,000. Timings on a shared 2-core
machine are noisy: compare figures from one run.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

RATE = 100  # paced callbacks per second during every measurement
COUNTRIES = [
    ("+336", 8),
    ("+337", 8),
    ("+4479", 9),
    ("+4915", 9),
    ("+3461", 7),
    ("+3933", 8),
    ("+3247", 7),
    ("+4176", 7),
    ("+1415", 7),
    ("+3161", 7),
    ("+35191", 7),
    ("+4860", 7),
    ("+4368", 7),
    ("+4520", 6),
    ("+46", 9),
]
BUSY = "+33612345678"
TEXTS = [
    "OK, thanks!",
    "Yes please, I'll be there at 9h. Merci !",
    "Can we move it to Thursday afternoon?",
    "STOP",
    "Who is this?",
    "Received, see you tomorrow",
    "D'accord, à demain 👍",
    "Please call me back on this number after 6pm, I'm at work until then",
]
PAGE_REPEATS = {True: 12, False: 25}
SUBS = """
[octopush.emulator]
reply_text = ""
[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * 1-5"
timezone = "Europe/Paris"
group_by = "country"
events = ["reply", "stop"]
"""


# ------------------------------------------------------------------ building the database


def number(k: int) -> str:
    prefix, digits = COUNTRIES[k % len(COUNTRIES)]
    return prefix + str(10**digits + (k * 7919) % (9 * 10**digits))[1:]


def build(path: Path, total: int) -> dict:
    """`total` callbacks over two years, through the storage layer; returns counts."""
    from relay import clock
    from relay.mail import outbox
    from relay.mail.render import build_message, make_msgid
    from relay.octopush.callbacks import classify
    from relay.octopush.client import Recipient, SendResult
    from relay.sending import SendRequest, _claim, _record, queue_campaign
    from relay.storage import callbacks
    from relay.storage.campaigns import remember_message
    from relay.storage.database import connect, migrate

    rng = random.Random(21)
    real_now = clock.now
    start = real_now() - timedelta(days=730)
    step = timedelta(days=730) / total
    moment = [start]
    clock.now = lambda: moment[0]  # the build moves through two years of time
    body = outbox.serialise(
        build_message(
            sender="octorelay <relay@sms.example.org>",
            to=["alice@example.org"],
            subject="Re: Planning for next week",
            text="+33 6 12 34 56 78 (France) replied at 2026-11-04 11:11:\n\nOK, thanks!\n\n" + "Your SMS: " * 40,
            html="<p>" + "<b>+33 6 12 34 56 78</b> replied: OK, thanks! " * 60 + "</p>",
            message_id=make_msgid("sms.example.org"),
            in_reply_to="<c1@mail.example.org>",
            references=["<c1@mail.example.org>"],
            reply_to="+33612345678@sms.example.org",
        )
    )
    migrate(path)
    db = connect(path)
    db.execute("PRAGMA synchronous = OFF")  # a build, not a daemon: durability is not the point here
    db.execute("PRAGMA cache_size = -262144")  # 256 MB: index inserts all over a growing file stay in memory
    per_campaign = 50
    campaigns = 0
    counts = {"reply": 0, "delivery": 0, "stop": 0, "outbox": 0}
    i = 0
    while i < total:
        db.execute("BEGIN")
        for _ in range(40):  # campaigns per transaction
            if i >= total:
                break
            k = campaigns
            campaigns += 1
            numbers = [BUSY] if k % 50 == 0 else []
            numbers += [number(rng.randrange(40_000)) for _ in range(3 - len(numbers))]
            sender = f"user{k % 40}@example.org"
            req = SendRequest(
                text=f"Hello, your appointment #{k} is confirmed for tomorrow. Reply YES or NO.",
                recipients=tuple(Recipient(n) for n in numbers),
                type="sms_premium",
                purpose="alert",
                origin="email",
                sender_email=sender,
                message_id=f"<c{k}@mail.example.org>",
                label=f"Appointments {k}",
            )
            campaign_id, _ = queue_campaign(db, req=req, retry_for=3600)
            remember_message(db, req.message_id, number=numbers[0], campaign_id=campaign_id, direction="in")
            send_id = db.execute("SELECT id FROM sends WHERE campaign_id = ?", [campaign_id]).fetchone()[0]
            ticket = f"sms_{k:08x}"
            _claim(db, send_id=send_id)
            _record(db, send_id=send_id, result=SendResult(ticket, len(numbers), len(numbers), 100.0, 0.05), error=None)
            for j in range(per_campaign):
                if i >= total:
                    break
                moment[0] = start + step * i
                num = numbers[j % len(numbers)]
                when = clock.to_octopush(moment[0])
                if j % 20 < 12:
                    fields = {"message_id": ticket, "number": num, "text": TEXTS[(i + j) % len(TEXTS)] + f" #{i}"}
                    fields.update(reception_date=when, sim_card_number="30101")
                elif j % 20 < 19:
                    fields = {"message_id": ticket, "number": num, "status": "DELIVERED", "delivery_date": when}
                else:
                    fields = {"number": num, "stop_date": when}
                cb = classify(fields, raw=json.dumps(fields), content_type="application/json")
                callbacks.store_callback(db, cb, routed=True)
                counts[cb.kind] += 1
                i += 1
                if cb.kind == "reply":  # the author's instant e-mail, delivered
                    mid = make_msgid("sms.example.org")
                    stub = {"Message-ID": mid, "Subject": f"Re: Appointments {k}"}
                    row_id = outbox.queue_message(db, stub, kind="reply", recipients=[sender], data=body)
                    remember_message(db, mid, number=num, campaign_id=campaign_id, direction="out")
                    outbox._settle(db, row_id=row_id, outcome=outbox.Outcome("sent"), max_age=3600)
                    counts["outbox"] += 1
        db.execute("COMMIT")
    clock.now = real_now
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    counts["campaigns"] = campaigns
    return counts


def db_bytes(path: Path) -> int:
    """Bytes the database holds (pages in use, the WAL checkpointed first)."""
    from relay.storage.database import connect

    db = connect(path, readonly=True)
    try:
        pages, free, size = (
            db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
        )
    finally:
        db.close()
    return (pages - free) * size


def rewind_digest(path: Path, name: str, events: int) -> int:
    """Move digest `name`'s watermark back so that its next run holds `events` replies and STOPs."""
    from relay.storage import callbacks, digests
    from relay.storage.database import connect, immediate_transaction

    db = connect(path)
    try:
        ids = [r["id"] for r in callbacks.replies(db, kinds=("reply", "stop"), limit=events)]
        with immediate_transaction(db):  # the daemon writes meanwhile: take the write lock first
            digests.init_digests(db, [name])
            current = digests.watermark(db, name)
            digests.advance(db, sub=name, expected=current.last_callback_id, since=current.last_run_at, to=min(ids) - 1)
    finally:
        db.close()
    return len(ids)


# ------------------------------------------------------------------ load and measurement


class Pacer:
    """Reply callbacks at a steady rate until stopped; each latency counted from its due time."""

    def __init__(self, url: str, salt: str):
        self.url, self.salt = url, salt
        self.samples: list[tuple[float, float, bool]] = []  # (due, latency, ok)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    async def _run(self) -> None:
        import aiohttp

        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            tasks: set[asyncio.Task] = set()

            async def one(i: int, due: float) -> None:
                try:
                    async with session.post(self.url, data=c.reply_body(i, self.salt), headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                self.samples.append((due, time.perf_counter() - due, ok))

            t0, i = time.perf_counter(), 0
            while not self._stop.is_set():
                due = t0 + i / RATE
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(i, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=60)

    def window(self, start: float, end: float) -> dict:
        lat = [s[1] for s in self.samples if start <= s[0] <= end]
        errors = sum(1 for s in self.samples if start <= s[0] <= end and not s[2])
        return {"n": len(lat), "p50_ms": c.pct(lat, 0.5) * 1000, "p99_ms": c.pct(lat, 0.99) * 1000, "errors": errors}


async def peak_rss(pid_of, stop: asyncio.Event) -> int:
    """Highest VmRSS (KiB) seen every 20 ms until `stop`."""
    peak = 0
    while not stop.is_set():
        pid = pid_of()
        if pid:
            try:
                peak = max(peak, c.rss_kb(pid))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass
    return peak


async def measure(pacer: Pacer, work, *, pid=None) -> dict:
    """Run `work()` (async), timing it, with the callbacks' latency and a process's peak RSS meanwhile."""
    await asyncio.sleep(0.3)  # a quiet moment before, so the window holds this step only
    holder: dict = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(peak_rss(lambda: pid or holder.get("pid"), stop))
    started = time.perf_counter()
    detail = await work(holder)
    seconds = time.perf_counter() - started
    stop.set()
    rss = await watcher
    await asyncio.sleep(0.2)  # the callbacks due during the step get their answers
    return {"seconds": seconds, "rss_mb": rss / 1024, "callbacks": pacer.window(started, started + seconds), **detail}


async def cli(holder: dict, cfg: Path, *args: str) -> dict:
    """One `python -m relay` command; stdout counted and discarded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        "-c",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(c.ROOT),
    )
    holder["pid"] = proc.pid
    size, tail = 0, b""
    while chunk := await proc.stdout.read(1 << 16):
        size += len(chunk)
        tail = (tail + chunk)[-300:]
    err = await proc.stderr.read()
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"octorelay {' '.join(args)} exited {code}: {err.decode()[-500:]}")
    return {"bytes": size, "tail": tail.decode(errors="replace").strip().splitlines()[-1:]}


async def get(session, path: str) -> int:
    size = 0
    async with session.get(path) as resp:
        assert resp.status == 200, (path, resp.status)
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
    return size


async def run_size(total: int, quick: bool) -> dict:
    import aiohttp

    out: dict = {"callbacks": total}
    with c.tempdir(f"scale-{total}") as tmpname:
        tmp = Path(tmpname)
        path = tmp / "octorelay.db"
        t = time.perf_counter()
        counts = await asyncio.to_thread(build, path, total)
        out["build_s"] = time.perf_counter() - t
        out["counts"] = counts
        out["bytes_per_callback"] = db_bytes(path) / total
        print(
            f"  built {total:,} callbacks ({counts}) in {out['build_s']:.0f} s; "
            f"{out['bytes_per_callback']:.0f} bytes per callback",
            flush=True,
        )
        cfg = c.write_config(tmp, extra=SUBS)
        proc = await c.start_daemon_process(tmp, cfg)
        steps: dict[str, dict] = {}
        try:
            token = await c.token_of(proc, tmp)
            pacer = Pacer(f"{proc.http_url}/octopush/{token}", salt=f"s{total}-")
            await pacer.start()
            await asyncio.sleep(1)

            async def idle(holder):
                await asyncio.sleep(5)
                return {}

            steps["(nothing else running)"] = await measure(pacer, idle)
            pages = [
                ("/replies", "/replies"),
                ("/replies?view=country", "/replies?view=country"),
                ("/replies?view=country&page=40", "/replies?view=country&page=40"),
                ("/replies?q=Thursday", "/replies?q=Thursday"),
                ("/replies?country=DE", "/replies?country=DE"),
                ("/replies?page=200", "/replies?page=200"),
                (f"/conversations/{BUSY} (busy)", f"/conversations/{BUSY}"),
                ("/campaigns", "/campaigns"),
                ("/attention", "/attention"),
                ("/api/replies", "/api/replies?limit=100"),
                ("/api/replies?country=GB", "/api/replies?country=GB&limit=100"),
                ("/healthz", "/healthz"),
                ("/metrics", "/metrics"),
            ]
            async with aiohttp.ClientSession(proc.http_url, timeout=aiohttp.ClientTimeout(total=600)) as session:
                for _, url in pages:
                    await get(session, url)  # warm-up

                async def browse(holder, url=None):
                    times = []
                    for _ in range(PAGE_REPEATS[quick]):
                        s = time.perf_counter()
                        await get(session, url)
                        times.append(time.perf_counter() - s)
                    return {"p50_ms": c.median(times) * 1000, "p95_ms": c.pct(times, 0.95) * 1000}

                for label, url in pages:
                    steps[label] = await measure(pacer, partial(browse, url=url), pid=proc.proc.pid)

                async def web_csv(holder):
                    return {"bytes": await get(session, "/replies.csv")}

                steps["/replies.csv (web export)"] = await measure(pacer, web_csv, pid=proc.proc.pid)
            steps["replies --format csv --limit 0"] = await measure(
                pacer, lambda h: cli(h, cfg, "replies", "--format", "csv", "--limit", "0")
            )
            steps["replies --since 7d"] = await measure(pacer, lambda h: cli(h, cfg, "replies", "--since", "7d"))
            backup = tmp / "backup.db"
            steps["db backup"] = await measure(pacer, lambda h: cli(h, cfg, "db", "backup", str(backup)))
            events = await asyncio.to_thread(rewind_digest, path, "ops", 50_000 if total >= 100_000 else total // 2)

            async def digest(holder):
                result = await cli(holder, cfg, "digest", "ops")
                return {"events": events, **result}

            steps["catch-up digest (50,000 events)"] = await measure(pacer, digest)
            mails = await c.until_none_left(path, "SELECT count(*) FROM outbox WHERE status = 'pending'", limit=120)
            sizes = [p.stat().st_size for p in (tmp / "mail" / "new").glob("*")]
            steps["catch-up digest (50,000 events)"].update(
                parts=len(sizes), largest_mb=max(sizes, default=0) / 1e6, total_mb=sum(sizes) / 1e6, drain_s=mails
            )
            steps["db purge --older-than 365"] = await measure(
                pacer, lambda h: cli(h, cfg, "db", "purge", "--older-than", "365")
            )
            out["bytes_per_callback_after_purge"] = db_bytes(path) / total
            await pacer.stop()
            steps["(whole run) callbacks"] = {"callbacks": pacer.window(0, float("inf"))}
        finally:
            await proc.stop()
        # The daemon's own scheduled purge, on the backup (taken before the CLI's purge).
        steps["scheduled purge (daemon, retention_days = 365)"] = await scheduled_purge(tmp, backup)
    out["steps"] = steps
    return out


async def scheduled_purge(tmp: Path, backup: Path) -> dict:
    other = tmp / "scheduled"
    other.mkdir()
    backup.rename(other / "octorelay.db")
    cfg = c.write_config(other, extra=SUBS + "\n[storage]\nretention_days = 365\n")
    proc = await c.start_daemon_process(other, cfg)
    try:
        token = await c.token_of(proc, other)
        pacer = Pacer(f"{proc.http_url}/octopush/{token}", salt="sched-")
        await pacer.start()
        started = time.perf_counter()
        stop = asyncio.Event()
        watcher = asyncio.create_task(peak_rss(lambda: proc.proc.pid, stop))
        deadline = started + 600
        while "purge: " not in proc.output() and time.perf_counter() < deadline:  # noqa: ASYNC110 - its log
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        stop.set()
        rss = await watcher
        await asyncio.sleep(0.3)
        await pacer.stop()
        line = next((ln for ln in proc.output().splitlines() if "purge: " in ln), "no purge line within 600 s")
        return {
            "seconds": seconds,
            "rss_mb": rss / 1024,
            "callbacks": pacer.window(started, started + seconds),
            "tail": [line.split("purge: ", 1)[-1]],
        }
    finally:
        await proc.stop()


# ------------------------------------------------------------------ report


def report(results: list[dict]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    for res in results:
        total = res["callbacks"]
        print(f"\n{total:,} callbacks (built in {res['build_s']:.0f} s), callbacks paced at {RATE}/s throughout")
        rows = []
        for label, step in res["steps"].items():
            cb = step["callbacks"]
            what = ""
            if "p95_ms" in step:
                what = f"p50 {step['p50_ms']:.0f} ms, p95 {step['p95_ms']:.0f} ms"
            elif "seconds" in step:
                what = f"{step['seconds']:.2f} s"
            if step.get("bytes"):
                what += f", {step['bytes'] / 1e6:.1f} MB"
            if step.get("parts"):
                what += f", {step['parts']} e-mails, largest {step['largest_mb']:.1f} MB"
            if step.get("tail") and "digest" not in label and "csv" not in label:
                what += f" ({' '.join(step['tail'])[:70]})"
            rss = f"{step['rss_mb']:.0f}" if step.get("rss_mb") else ""
            rows.append([label, what, rss, cb["n"], cb["p50_ms"], cb["p99_ms"], cb["errors"]])
        print(c.table(rows, ["step", "measured", "peak RSS MB", "callbacks", "p50 ms", "p99 ms", "errors"]))
        print(
            f"bytes on disk per callback: {res['bytes_per_callback']:.0f} "
            f"(after the purge of half: {res['bytes_per_callback_after_purge']:.0f}, pages freed for reuse)"
        )
        big = total >= 1_000_000 or len(results) == 1
        tag = f"{total // 1000:,}k"
        steps = res["steps"]
        if big:
            for label, step in steps.items():
                if "p95_ms" in step:
                    checks.append((f"{tag} {label} p95 < 200 ms ({step['p95_ms']:.0f} ms)", step["p95_ms"] < 200))
            for label, step in steps.items():
                if "p95_ms" not in step and label[0] != "(":
                    p99 = step["callbacks"]["p99_ms"]
                    checks.append((f"{tag} callbacks p99 < 25 ms during {label} ({p99:.0f} ms)", p99 < 25))
            for label in ("/replies.csv (web export)", "replies --format csv --limit 0"):
                rss = steps[label]["rss_mb"]
                checks.append((f"{tag} {label} in constant memory: peak RSS < 150 MB ({rss:.0f} MB)", rss < 150))
            d = steps["catch-up digest (50,000 events)"]
            checks.append((f"{tag} catch-up digest peak RSS < 150 MB ({d['rss_mb']:.0f} MB)", d["rss_mb"] < 150))
            checks.append((f"{tag} largest digest e-mail < 10 MB ({d['largest_mb']:.1f} MB)", d["largest_mb"] < 10))
            per = res["bytes_per_callback"]
            checks.append((f"{tag} bytes on disk per callback < 1,024 ({per:.0f})", per < 1024))
            errors = steps["(whole run) callbacks"]["callbacks"]["errors"]
            checks.append((f"{tag} no callback refused ({errors})", errors == 0))
    print()
    for name, ok in checks:
        print(f"{c.verdict(ok)}  {name}")
    return checks


async def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], help="e.g. 20000,300000")
    args = p.parse_args()
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 1_000_000])
    print(f"scale bench ({c.machine()}); sizes {', '.join(f'{s:,}' for s in sizes)}", flush=True)
    results = []
    for total in sizes:
        results.append(await run_size(total, args.quick))
    checks = report(results)
    c.save("scale", {"results": results, "checks": checks}, args.json)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
