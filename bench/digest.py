"""Build and queue a 10,000-reply digest: time of `notifier.run_digest`, peak memory, event-loop stall.

The daemon runs in this process (asyncio loop, Maildir transport, emulator, no instant subscription).
10,000 reply callbacks from a dozen countries over a week are stored through the real path
(`classify` + `callbacks.store_callback`, in batches through the store's writer) and marked routed.
Each timed run resets the digest's watermark first, so every run gathers the same 10,000 events.

Measured per run: wall time of `await daemon.notifier.run_digest(name)` (read, group, render both
parts, build the MIME message, queue it and advance the watermark in one commit), and the longest
stall of the event loop meanwhile (a 5 ms ticker: the digest is built on the loop, so callbacks wait
that long). Memory: a separate run under tracemalloc (peak of Python allocations; tracemalloc slows
the run, so it is not timed) and the growth of ru_maxrss across the untraced runs.

Targets: under 1 s, under 100 MB peak.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

# The benchmark's digest subscription, plus the same grouped by date.
SUBS = (
    c.DIGEST_ONLY
    + """
[[subscriptions]]
name = "ops-date"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * 1-5"
timezone = "Europe/Paris"
group_by = "date"
events = ["reply", "stop"]
"""
)

PREFIXES = ["+336", "+337", "+4479", "+4915", "+3493", "+3933", "+3247", "+4176", "+1415", "+3161", "+35191", "+4812"]


def seed_batch(db, *, start: int, n: int) -> int:
    from relay.octopush.callbacks import classify
    from relay.storage import callbacks

    for i in range(start, start + n):
        prefix = PREFIXES[i % len(PREFIXES)]
        number = prefix + str(10_000_000 + i * 7919 % 9_000_000)[: 12 - len(prefix) + 1]
        day = 1 + (i % 7)
        fields = {
            "message_id": "",
            "number": number,
            "text": f"Reply number {i}: yes please, I'll be there at {8 + i % 10}h. Merci !",
            "sim_card_number": "30101",
            "reception_date": f"2026-11-0{day} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}",
        }
        cb = classify(fields, raw=str(fields), content_type="application/json")
        callbacks.store_callback(db, cb)
    db.execute("UPDATE callbacks SET routed = 1 WHERE routed = 0")
    return n


async def stall_ticker(stop: asyncio.Event, out: list[float], period: float = 0.005) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(period)
        now = time.perf_counter()
        out.append(now - last - period)
        last = now


async def reset(daemon, name: str) -> None:
    # From the first callback: a digest seen for the first time would start from now and find nothing.
    await daemon.store.write(
        lambda db: db.execute(
            "INSERT OR REPLACE INTO digests (name, last_callback_id, last_run_at) VALUES (?, 0, NULL)", [name]
        )
    )


async def timed(daemon, name: str) -> dict:
    await reset(daemon, name)
    gc.collect()
    stop, lags = asyncio.Event(), []
    ticker = asyncio.create_task(stall_ticker(stop, lags))
    await asyncio.sleep(0.02)
    t = time.perf_counter()
    msg = await daemon.notifier.run_digest(name)
    elapsed = time.perf_counter() - t
    stop.set()
    await ticker
    assert msg is not None, "the digest was empty"
    return {"seconds": elapsed, "stall_ms": max(lags) * 1000, "bytes": len(msg.as_bytes())}


async def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 2 if args.quick else 5
    total = 10_000
    from relay import config as config_mod
    from relay.daemon import Daemon

    with c.tempdir("digest") as tmpname:
        tmp = Path(tmpname)
        cfg = c.write_config(tmp, extra=SUBS)
        daemon = Daemon(config_mod.load(cfg), config_path=str(cfg))
        await daemon.start()
        try:
            t = time.perf_counter()
            for start in range(0, total, 1000):
                await daemon.store.write(partial(seed_batch, start=start, n=1000))
            seeded = await daemon.store.read(
                lambda db: db.execute("SELECT count(*) FROM callbacks WHERE kind='reply'").fetchone()[0]
            )
            print(f"seeded {seeded} replies in {time.perf_counter() - t:.1f} s")
            assert seeded == total, seeded

            await timed(daemon, "ops")  # warm-up: templates compiled, caches filled
            await timed(daemon, "ops-date")
            gc.collect()
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            runs: dict[str, list[dict]] = {"ops": [], "ops-date": []}
            for _ in range(reps):
                for name in runs:
                    r = await timed(daemon, name)
                    runs[name].append(r)
                    print(
                        f"  {name:9s} {r['seconds'] * 1000:7.0f} ms  loop stall {r['stall_ms']:6.0f} ms  "
                        f"{r['bytes'] / 1e6:.1f} MB message",
                        flush=True,
                    )
            rss_delta_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024

            peaks = {}
            for name in runs:
                await reset(daemon, name)
                gc.collect()
                tracemalloc.start()
                tracemalloc.reset_peak()
                await daemon.notifier.run_digest(name)
                peaks[name] = tracemalloc.get_traced_memory()[1] / 1e6
                tracemalloc.stop()
            await asyncio.sleep(0.5)  # let the outbox hand the digests to the Maildir
        finally:
            await daemon.stop()

    rows = []
    for name, rs in runs.items():
        rows.append(
            [
                f"{name} (group_by {'country' if name == 'ops' else 'date'})",
                c.median([r["seconds"] for r in rs]) * 1000,
                c.median([r["stall_ms"] for r in rs]),
                peaks[name],
                rs[0]["bytes"] / 1e6,
            ]
        )
    print(f"\n10,000-reply digest, {reps} runs each, medians ({c.machine()})")
    print(c.table(rows, ["digest", "run_digest ms", "loop stall ms", "tracemalloc peak MB", "message MB"]))
    print(f"ru_maxrss growth across the timed runs: {rss_delta_mb:.1f} MB")
    worst_s = max(c.median([r["seconds"] for r in rs]) for rs in runs.values())
    worst_peak = max(peaks.values())
    checks = [
        ("run_digest < 1 s", worst_s, 1.0, worst_s < 1.0),
        ("peak memory < 100 MB (tracemalloc)", worst_peak, 100.0, worst_peak < 100.0),
        ("ru_maxrss growth < 100 MB", rss_delta_mb, 100.0, rss_delta_mb < 100.0),
    ]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    c.save(
        "digest",
        {"runs": runs, "tracemalloc_peak_mb": peaks, "ru_maxrss_growth_mb": rss_delta_mb, "checks": checks},
        args.json,
    )
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
