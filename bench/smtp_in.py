"""E-mails accepted per second by octorelay's SMTP listener vs aiosmtpd's own `Sink` handler.

Both servers run in their own process under uvloop: octorelay as `python -m relay run -c cfg`
(`reply_text = ""` so no reply callbacks, `confirm = "none"`, a digest subscription only), the
baseline as bench/_servers.py `sink` (aiosmtpd.handlers.Sink: accept and drop). The client is
aiosmtplib in this process: N concurrent sessions, each sending M messages (one recipient each,
unique Message-ID) over one connection, plain text, no STARTTLS (the sink offers none; octorelay
offers it but the client does not take it).

octorelay's full path per message: parse the MIME message, extract the new words, validate, queue
the campaign and commit it before the 250. The send queue then calls Octopush in the background (and
commits its answer): that is part of the real load on the same cores, so after each octorelay run we
wait (bounded) for the send queue to drain before the next run starts. Octopush itself is a remote
service, so its stand-in (the emulator, bench/_servers.py `emulator`) runs in a process of its own
and octorelay talks to it in `live` mode, as it would talk to api.octopush.com; with `mode =
"emulator"` the emulator's own request handling would be charged to the daemon's cores.

Target: octorelay >= 0.7 x the Sink.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

from relay.octopush.emulator import PREFIX  # noqa: E402
from tests.conftest import live_mode  # noqa: E402

EXTRA = c.DIGEST_ONLY + '\n[smtp_in]\nconfirm = "none"\n'


def message(i: int, salt: str) -> bytes:
    return (
        f"From: Bench <bench@example.org>\r\nTo: +336{10_000_000 + i:08d}@sms.example.org\r\n"
        f"Subject: bench {salt}{i}\r\nMessage-ID: <{salt}{i}@bench.example.org>\r\n"
        f"Date: Wed, 04 Nov 2026 11:11:45 +0100\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {i}, the server room is at 31 C again; please check the air conditioning.\r\n\r\n-- \r\nBench\r\n"
    ).encode()


async def load(host: str, port: int, *, sessions: int, per_session: int, salt: str, time_limit: float = 90) -> dict:
    import aiosmtplib

    latencies: list[float] = []
    refused = 0
    deadline = time.monotonic() + time_limit

    async def session(s: int) -> None:
        nonlocal refused
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=30)
        await client.connect()
        try:
            for k in range(per_session):
                if time.monotonic() > deadline:
                    return
                i = s * per_session + k
                rcpt = f"+336{10_000_000 + i:08d}@sms.example.org"
                t = time.perf_counter()
                try:
                    await client.sendmail("bench@example.org", [rcpt], message(i, salt))
                except aiosmtplib.SMTPException:
                    refused += 1
                latencies.append(time.perf_counter() - t)
        finally:
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                pass

    started = time.perf_counter()
    await asyncio.gather(*(session(s) for s in range(sessions)))
    elapsed = time.perf_counter() - started
    return {
        "messages": len(latencies),
        "refused": refused,
        "rate": len(latencies) / elapsed,
        "p50_ms": c.pct(latencies, 0.5) * 1000,
        "p99_ms": c.pct(latencies, 0.99) * 1000,
    }


async def send_queue_drained(db_path: Path, limit: float = 40) -> float:
    return await c.until_none_left(db_path, "SELECT count(*) FROM sends WHERE status = 'pending'", limit=limit)


async def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--profile", action="store_true", help="py-spy profile of the daemon under SMTP load")
    args = p.parse_args()
    sessions = args.sessions
    per_session = 15 if args.quick else 25
    reps = 2 if args.quick else 3

    results: dict[str, list[dict]] = {"octorelay": [], "aiosmtpd Sink": []}
    drains: list[float] = []
    with c.tempdir("smtp") as tmpname:
        tmp = Path(tmpname)
        octopush = await c.ServerProcess("emulator", tmp).start()
        cfg = c.write_config(tmp, extra=EXTRA + live_mode(f"http://127.0.0.1:{octopush.port}{PREFIX}"))
        daemon = await c.start_daemon_process(tmp, cfg)
        sink = await c.ServerProcess("sink", tmp).start()
        targets = {"octorelay": daemon.smtp, "aiosmtpd Sink": ("127.0.0.1", sink.port)}
        try:
            for name, (host, port) in targets.items():
                await load(host, port, sessions=4, per_session=10, salt=f"warm{name[:4]}")
            await send_queue_drained(tmp / "octorelay.db")
            for rep in range(reps):
                for name, (host, port) in targets.items():
                    r = await load(host, port, sessions=sessions, per_session=per_session, salt=f"r{rep}{name[:4]}")
                    if name == "octorelay":
                        drains.append(await send_queue_drained(tmp / "octorelay.db"))
                    results[name].append(r)
                    print(
                        f"  rep {rep + 1} {name:14s} {r['rate']:7.0f} msg/s  "
                        f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                        f"refused {r['refused']}",
                        flush=True,
                    )
            prof = None
            if args.profile:
                from callbacks import profile

                task = asyncio.create_task(
                    load(*daemon.smtp, sessions=sessions, per_session=10_000, salt="prof", time_limit=8)
                )
                await asyncio.sleep(0.5)
                prof = await asyncio.to_thread(profile, daemon.proc.pid, 6, tmp / "profile.txt")
                await task
                if prof:
                    c.RESULTS.mkdir(parents=True, exist_ok=True)
                    (c.RESULTS / "smtp_in-profile.txt").write_text((tmp / "profile.txt").read_text())
            db = sqlite3.connect(f"file:{tmp / 'octorelay.db'}?mode=ro", uri=True)
            campaigns = db.execute("SELECT count(*) FROM campaigns").fetchone()[0]
            db.close()
        finally:
            await sink.stop()
            await daemon.stop()
            await octopush.stop()

    med = {
        name: {k: c.median([r[k] for r in rs]) for k in ("rate", "p50_ms", "p99_ms", "refused")}
        for name, rs in results.items()
    }
    base = med["aiosmtpd Sink"]["rate"]
    rows = [[name, m["rate"], m["p50_ms"], m["p99_ms"], int(m["refused"]), m["rate"] / base] for name, m in med.items()]
    print(
        f"\nSMTP in: {sessions} sessions x {per_session} messages, {reps} interleaved repeats, medians ({c.machine()})"
    )
    print(c.table(rows, ["server", "msg/s", "p50 ms", "p99 ms", "refused", "x Sink"]))
    print(
        f"campaigns stored by octorelay: {campaigns}; "
        f"send queue drained after each run in (median) {c.median(drains):.1f} s"
    )
    ratio = med["octorelay"]["rate"] / base
    checks = [("octorelay >= 0.7 x aiosmtpd Sink", ratio, 0.7, ratio >= 0.7 and not med["octorelay"]["refused"])]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    if prof:
        from callbacks import print_profile

        print_profile(prof, "SMTP load", self_top=0, inclusive_top=40)
    c.save("smtp_in", {"medians": med, "runs": results, "drain_s": drains, "checks": checks}, args.json)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
