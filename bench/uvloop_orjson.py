"""The callback path with and without uvloop, and with orjson vs the standard json.

Each variant is the daemon in its own process (bench/_daemon_variant.py: the same Daemon and logging
set-up as `octorelay run`, a digest subscription, emulator without replies), loaded by the same aiohttp
client as bench/callbacks.py (64 workers, keep-alive), interleaved, repeated, medians.

  uvloop + orjson          what `octorelay run` does
  asyncio + orjson         the standard event loop
  uvloop + json            the callback route parsing with json.loads instead of orjson.loads
  asyncio + json

Plus a micro-benchmark of parsing one callback body with each parser.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from callbacks import drained  # noqa: E402

VARIANTS = [
    ("uvloop + orjson (shipped)", "uvloop", "orjson", ""),
    ("asyncio + orjson", "asyncio", "orjson", ""),
    ("uvloop + json", "uvloop", "json", ""),
    ("asyncio + json", "asyncio", "json", ""),
]


class Variant:
    def __init__(self, tmp: Path, loop: str, parser: str, tuning: str):
        self.tmp, self.loop, self.parser, self.tuning = tmp, loop, parser, tuning
        self.token = secrets.token_hex(16)
        self.proc = None
        self.url = ""

    async def start(self) -> None:
        cfg = c.write_config(self.tmp, extra=c.DIGEST_ONLY + f'\n[http]\ncallback_token = "{self.token}"\n')
        self.log = open(self.tmp / "daemon.log", "wb")  # noqa: SIM115 - closed in stop
        env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
        args = [sys.executable, str(c.ROOT / "bench" / "_daemon_variant.py"), str(cfg), self.loop, self.parser]
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            *([self.tuning] if self.tuning else []),
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            env=env,
            cwd=self.tmp,
        )
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"variant did not start: {(self.tmp / 'daemon.log').read_text()[-1500:]}")
        self.url = f"{line[1]}/octopush/{self.token}"

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.close()


def parse_micro() -> dict:
    import orjson

    body = c.reply_body(12345)
    n = 200_000
    return {
        "orjson.loads_us": min(timeit.repeat(lambda: orjson.loads(body), number=n, repeat=3)) / n * 1e6,
        "json.loads_us": min(timeit.repeat(lambda: json.loads(body), number=n, repeat=3)) / n * 1e6,
    }


async def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    count = 1000 if args.quick else 4000
    reps = 2 if args.quick else 3
    results: dict[str, list[dict]] = {name: [] for name, *_ in VARIANTS}
    with c.tempdir("loops") as tmpname:
        tmp = Path(tmpname)
        running: dict[str, Variant] = {}
        try:
            for i, (name, loop, parser, tuning) in enumerate(VARIANTS):
                d = tmp / f"v{i}"
                d.mkdir()
                v = Variant(d, loop, parser, tuning)
                await v.start()
                running[name] = v
            for name, v in running.items():
                await c.closed_loop(v.url, count=300, concurrency=64, salt=f"warm{name}")
                await drained(v.tmp / "octorelay.db")
            for rep in range(reps):
                for name, v in running.items():
                    r = await c.closed_loop(v.url, count=count, concurrency=64, salt=f"r{rep}{name}", time_limit=60)
                    await drained(v.tmp / "octorelay.db")
                    results[name].append(r)
                    print(
                        f"  rep {rep + 1} {name:26s} {r['rate']:7.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
                        f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}",
                        flush=True,
                    )
        finally:
            for v in running.values():
                await v.stop()

    micro = parse_micro()
    med = {
        name: {k: c.median([r[k] for r in rs]) for k in ("rate", "p50_ms", "p99_ms", "errors")}
        for name, rs in results.items()
    }
    base = med[VARIANTS[0][0]]["rate"]
    rows = [[name, m["rate"], m["p50_ms"], m["p99_ms"], int(m["errors"]), m["rate"] / base] for name, m in med.items()]
    print(
        f"\ncallback path variants, {count} requests x {reps} interleaved repeats, "
        f"concurrency 64, medians ({c.machine()})"
    )
    print(c.table(rows, ["variant", "req/s", "p50 ms", "p99 ms", "errors", "x shipped"]))
    print(
        f"parsing one callback body: orjson.loads {micro['orjson.loads_us']:.2f} us, "
        f"json.loads {micro['json.loads_us']:.2f} us"
    )
    c.save("uvloop_orjson", {"medians": med, "runs": results, "parse_micro": micro}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(c.run(main()))
