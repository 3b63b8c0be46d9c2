"""First page of /replies with 10,000 stored replies: server render time.

10,000 reply callbacks (a dozen countries over a week, the same data as bench/digest.py) are stored
through `classify` + `callbacks.store_callback` with the real Store, then the daemon runs as
`python -m relay run -c cfg` (its own process) on that database and this process GETs each page
~30 times, one request at a time, over a keep-alive connection (loopback, no UI users). The time is
from the request to the last byte of the body.

Pages: /replies (by date, the default), /replies?view=country, a text search, a country filter.
Target: /replies median < 200 ms.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from digest import seed_batch  # noqa: E402

PAGES = [
    ("/replies", "/replies"),
    ("/replies?view=country", "/replies?view=country"),
    ("/replies?q=please (text search)", "/replies?q=please"),
    ("/replies?country=GB", "/replies?country=GB"),
]


async def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    n = 10 if args.quick else 30
    import aiohttp

    from relay.storage.database import Store

    results: dict[str, list[float]] = {label: [] for label, _ in PAGES}
    sizes: dict[str, int] = {}
    with c.tempdir("ui") as tmpname:
        tmp = Path(tmpname)
        store = Store(tmp / "octorelay.db")
        await store.start()
        try:
            for start in range(0, 10_000, 1000):
                await store.write(partial(seed_batch, start=start, n=1000))
        finally:
            await store.stop()
        cfg = c.write_config(tmp, extra=c.DIGEST_ONLY)
        proc = await c.start_daemon_process(tmp, cfg)
        try:
            async with aiohttp.ClientSession(proc.http_url) as session:
                for label, path in PAGES:  # warm-up: templates compiled, pages cached by SQLite
                    for _ in range(3):
                        async with session.get(path) as resp:
                            body = await resp.read()
                            assert resp.status == 200, (path, resp.status)
                            sizes[label] = len(body)
                for _ in range(n):  # interleaved
                    for label, path in PAGES:
                        t = time.perf_counter()
                        async with session.get(path) as resp:
                            await resp.read()
                        results[label].append(time.perf_counter() - t)
        finally:
            await proc.stop()

    rows = [
        [label, c.median(v) * 1000, c.pct(v, 0.9) * 1000, max(v) * 1000, sizes[label] / 1024]
        for label, v in results.items()
    ]
    print(f"\nweb interface with 10,000 replies, {n} requests per page, interleaved ({c.machine()})")
    print(c.table(rows, ["page", "median ms", "p90 ms", "max ms", "KiB"]))
    first = c.median(results["/replies"]) * 1000
    checks = [("/replies first page median < 200 ms", first, 200.0, first < 200)]
    print()
    print(
        c.table([[name, v, t, c.verdict(ok)] for name, v, t, ok in checks], ["target", "measured", "target", "verdict"])
    )
    c.save("ui", {"median_ms": {k: c.median(v) * 1000 for k, v in results.items()}, "checks": checks}, args.json)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
