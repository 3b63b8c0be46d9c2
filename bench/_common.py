"""Shared helpers for the octorelay benchmarks: stats, configs, subprocess servers, load generation.

Everything binds and talks to 127.0.0.1 only. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"

# A digest subscription only: the callback path is then "parse, classify, commit, answer" plus the
# notifier marking the row routed (no instant e-mail per callback).
DIGEST_ONLY = """
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

# An instant subscription: every stored reply also becomes an e-mail (rendered, queued, delivered).
INSTANT = """
[octopush.emulator]
reply_text = ""
[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "instant"
timezone = "Europe/Paris"
events = ["reply", "stop"]
"""


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (fewer requests and repeats)")
    p.add_argument("--json", action="store_true", help="also write bench/results/<name>.json")
    return p


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; values need not be sorted."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "n/a"
        return f"{c:,.1f}" if abs(c) >= 100 else f"{c:.2f}"
    return str(c)


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def save(name: str, data: dict, enabled: bool) -> None:
    if not enabled:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"bench": name, "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def tempdir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"octorelay-bench-{prefix}-")


def write_config(tmp: Path, *, extra: str = "", smtp_port: int | None = None, name: str = "octorelay.toml") -> Path:
    from tests.conftest import write_config as _write

    return _write(tmp / name, tmp, smtp_port=smtp_port, extra=extra)


async def start_daemon_process(tmp: Path, cfg: Path, env: dict | None = None):
    """`python -m relay run -c cfg` in its own process (uvloop, as the CLI does); READY gives the ports."""
    from tests.conftest import DaemonProcess

    proc = DaemonProcess(tmp, cfg, env=env)
    await proc.start(timeout=30)
    return proc


async def token_of(proc, tmp: Path) -> str:
    """The callback token the daemon made at first start (read from its database)."""
    import sqlite3

    db = sqlite3.connect(str(tmp / "octorelay.db"))
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'callback_token'").fetchone()
        return row[0]
    finally:
        db.close()


class ServerProcess:
    """A helper server from bench/_servers.py in its own process; it prints its port on stdout."""

    def __init__(self, kind: str, tmp: Path, *, loop: str = "uvloop"):
        self.kind, self.tmp, self.loop = kind, tmp, loop
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, timeout: float = 20) -> ServerProcess:
        script = ROOT / "bench" / "_servers.py"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            self.kind,
            str(self.tmp),
            self.loop,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        self.port = int(line.decode().split()[-1])
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def reply_body(i: int, salt: str = "") -> bytes:
    """One Octopush reply callback; unique text, so never a duplicate."""
    import orjson

    n = 600000001 + (i % 997)
    return orjson.dumps(
        {
            "message_id": "",
            "number": f"+33{n}",
            "text": f"Reply {salt}{i}: OK, thanks!",
            "sim_card_number": "30101",
            "reception_date": "2026-11-04 11:11:45",
        }
    )


def _target(url: str | list[str]):
    """Request i's URL: one server, or several nodes taken in turn (a round-robin load balancer)."""
    urls = [url] if isinstance(url, str) else list(url)
    return lambda i: urls[i % len(urls)]


@contextlib.contextmanager
def client_gc_off():
    """No garbage collection in the load generator while it measures: a full collection of its own heap stops
    its event loop for 20-35 ms, and every request in flight then counts that pause as the server's latency
    (seen as bursts of slow requests at the client's collections, none at the daemon's)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def closed_loop(
    url: str | list[str], *, count: int, concurrency: int, salt: str, time_limit: float = 60.0
) -> dict:
    """`count` POSTs by `concurrency` workers over keep-alive connections; rate and latencies."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = iter(range(count))
    target = _target(url)
    deadline = time.monotonic() + time_limit
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.monotonic() > deadline:
                    return
                body = reply_body(i, salt)
                t = time.perf_counter()
                try:
                    async with session.post(target(i), data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                if not ok:
                    errors += 1

        with client_gc_off():
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rate": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


async def paced(url: str | list[str], *, rate: float, seconds: float, salt: str, max_inflight: int = 256) -> dict:
    """Open-loop load: request i is due at t0 + i/rate.

    Latency counts from when it was due (no coordinated omission).
    """
    import aiohttp

    total = int(rate * seconds)
    from_due: list[float] = []
    from_sent: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    sem = asyncio.Semaphore(max_inflight)
    target = _target(url)
    connector = aiohttp.TCPConnector(limit=max_inflight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, due: float) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                try:
                    async with session.post(target(i), data=reply_body(i, salt), headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                end = time.perf_counter()
                from_due.append(end - due)
                from_sent.append(end - t)
                if not ok:
                    errors += 1

        with client_gc_off():
            tasks = []
            t0 = time.perf_counter() + 0.05
            for i in range(total):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, due)))
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
            elapsed = time.perf_counter() - t0
    return {
        "requests": total,
        "errors": errors,
        "achieved_rate": total / elapsed,
        "p50_ms": pct(from_due, 0.5) * 1000,
        "p99_ms": pct(from_due, 0.99) * 1000,
        "max_ms": max(from_due) * 1000,
        "p99_sent_ms": pct(from_sent, 0.99) * 1000,
    }


async def until_none_left(db_path: Path, *counts: str, limit: float) -> float:
    """Wait (bounded) until every `SELECT count(*) ...` reads 0 in the daemon's database; returns seconds waited."""
    import sqlite3

    started = time.monotonic()
    while time.monotonic() - started < limit:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            left = sum(db.execute(sql).fetchone()[0] for sql in counts)
        finally:
            db.close()
        if not left:
            break
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(coro):
    """Run the benchmark's main coroutine under plain asyncio (the load generator's own loop)."""
    return asyncio.run(coro)
