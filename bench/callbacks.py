"""Reply callbacks per second and latency, octorelay vs a bare aiohttp handler vs a naive durable handler.

Every server runs in its own process (the daemon as `python -m relay run -c cfg`, under uvloop as the
CLI does; the baselines under uvloop too). The load generator is an aiohttp client in this process
with 64 concurrent workers on keep-alive connections. All processes share the machine's cores (2 on
the reference machine), so the client's CPU is part of every figure alike; compare ratios, not
absolute rates.

  octorelay          the real daemon, a digest subscription (parse, classify, commit with group commit;
                     no reply needs an e-mail at once, so each is stored already routed)
  octorelay-instant  (full run only) the same with an instant subscription: every reply also renders
                     and delivers an e-mail into a Maildir in the background
  bare               aiohttp answering 200 without storing
  naive              aiohttp + one new sqlite3 connection and one commit per request (WAL, FULL)

Runs interleave the targets, repeat, and quote medians. Then a paced run at 500 callbacks/s against
octorelay measures p99 from each request's due time. `--profile` adds a py-spy profile of the daemon
under closed-loop load. `--wrk` adds a cross-check with Debian's `wrk` (C, one thread) as the client:
it takes far less CPU than the Python client, so the bare handler is no longer bounded by its client.

Targets: octorelay >= 0.7 x bare and >= 3 x naive (callbacks/s); p99 < 25 ms at 500/s.

`--storage postgresql` measures the engines instead (issue 20), in one run: the daemon on SQLite, one daemon on
PostgreSQL, and two daemons sharing that PostgreSQL database with the load spread over both (a round-robin
load balancer), each with the closed-loop rate and the p99 at 500 callbacks/s paced. PostgreSQL is a throwaway
cluster started for the run (Debian's postgresql; initdb/pg_ctl as in the tests), with fsync and
synchronous_commit on, so that its commits are as durable as SQLite's. Target: p99 < 25 ms at 500/s on it.
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


async def drained(db_path: Path, limit: float = 90.0) -> float:
    """Wait (bounded) until the daemon has routed every callback and emptied its outbox; returns seconds waited."""
    return await c.until_none_left(
        db_path,
        "SELECT count(*) FROM callbacks WHERE routed = 0",
        "SELECT count(*) FROM outbox WHERE status = 'pending'",
        limit=limit,
    )


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
local salt = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  local body = '{"message_id":"","number":"+33600000' .. string.format("%03d", n % 997) ..
    '","text":"Reply ' .. salt .. '-' .. n .. ': OK, thanks!","sim_card_number":"30101",' ..
    '"reception_date":"2026-11-04 11:11:45"}'
  return wrk.format(nil, nil, nil, body)
end
"""


def wrk(url: str, *, seconds: int, concurrency: int, script: Path) -> dict | None:
    """One `wrk` run (unique reply bodies); requests/s, p50/p99 and non-2xx answers, or None without wrk."""
    exe = shutil.which("wrk")
    if not exe:
        return None
    cmd = [exe, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    pcts = {p: _ms(v, unit) for p, v, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    if not rate:
        print("wrk printed no rate:", out.strip()[-300:])
        return None
    return {
        "rate": float(rate.group(1)),
        "p50_ms": pcts.get("50"),
        "p99_ms": pcts.get("99"),
        "errors": int(bad.group(1)) if bad else 0,
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def profile(pid: int, seconds: float, out: Path, *, gil: bool = False) -> list[tuple[str, float]] | None:
    """py-spy record of `pid` (raw collapsed stacks; `gil`: only the thread holding the GIL); returns the top
    functions by self and by inclusive share."""
    spy = shutil.which("py-spy")
    if not spy:
        print("py-spy not found (pip install py-spy); skipping the profile")
        return None
    cmd = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        "--threads",
    ] + (["--gil"] if gil else [])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if res.returncode != 0 or not out.exists():
        print("py-spy failed:", res.stderr.strip()[-500:])
        return None
    return summarise(out)


def summarise(path: Path, top: int = 25):
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        self_t[_short(frames[-1])] += n
        for f in set(_short(f) for f in frames[1:]):
            incl[f] += n
    return {
        "total": total,
        "threads": threads.most_common(8),
        "self": self_t.most_common(top),
        "inclusive": incl.most_common(top),
    }


def print_profile(prof: dict, under: str, *, self_top: int = 20, inclusive_top: int = 30) -> None:
    """`summarise`'s result as the scripts print it: threads, then the top functions by self and inclusive share."""
    total = prof["total"]
    print(f"\npy-spy profile of the daemon under {under} ({total} samples):")
    print("threads:", ", ".join(f"{t} {n / total:.0%}" for t, n in prof["threads"]))
    if self_top:
        print(c.table([[f, n / total * 100] for f, n in prof["self"][:self_top]], ["self time: function", "%"]))
    print(c.table([[f, n / total * 100] for f, n in prof["inclusive"][:inclusive_top]], ["inclusive: function", "%"]))


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":")
    parts = Path(file).parts
    keep = "/".join(parts[-2:]) if parts else file
    return f"{name} ({keep})"


def start_postgres():
    """A throwaway PostgreSQL cluster for the run, durable like production (fsync on), or None without one."""
    from tests.conftest import PostgresServer, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        return None

    class DurablePostgres(PostgresServer):
        def start(self) -> None:
            options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    server = DurablePostgres(bindir)
    server.init()
    return server


def ok_pace(pace: dict) -> bool:
    return pace["p99_ms"] < 25 and not pace["errors"]


async def storage_engines(args) -> int:
    """SQLite, one node on PostgreSQL and two nodes on it, side by side: closed-loop rate and paced p99."""
    from tests.conftest import PG_PASSWORD

    quick = args.quick
    count = 1000 if quick else 5000
    reps = 2 if quick else 3
    paced_seconds = 4 if quick else 10
    conc = args.concurrency
    server = start_postgres()
    if server is None:
        print("PostgreSQL server binaries not found (apt-get install postgresql): nothing to compare")
        return 1
    procs = []
    try:
        with c.tempdir("engines") as tmpname:
            tmp = Path(tmpname)
            url = server.create_database()
            token = secrets.token_hex(16)
            pg_toml = f'[storage]\nurl = "{url}"\npassword = "{PG_PASSWORD}"\n'
            targets: dict[str, list[str]] = {}
            for name, nodes, storage in (("sqlite", 1, ""), ("postgresql, 1 node", 1, pg_toml),
                                         ("postgresql, 2 nodes", 2, pg_toml)):  # fmt: skip
                urls = []
                for node in range(nodes):
                    d = tmp / f"{name.replace(', ', '-').replace(' ', '')}-{node}"
                    d.mkdir()
                    extra = c.DIGEST_ONLY + storage + f'\n[http]\ncallback_token = "{token}"\nnode_name = "n{node}"\n'
                    proc = await c.start_daemon_process(d, c.write_config(d, extra=extra))
                    procs.append(proc)
                    urls.append(f"{proc.http_url}/octopush/{token}")
                targets[name] = urls
                await c.closed_loop(urls, count=300, concurrency=conc, salt=f"warm-{name}-")
                results = []
                for rep in range(reps):
                    r = await c.closed_loop(urls, count=count, concurrency=conc, salt=f"r{rep}-{name}-", time_limit=90)
                    results.append(r)
                    print(f"  rep {rep + 1} {name:20s} {r['rate']:8.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
                          f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}", flush=True)  # fmt: skip
                pace = await c.paced(urls, rate=500, seconds=paced_seconds, salt=f"paced-{name}-")
                print(f"  paced 500/s {name:20s} p50 {pace['p50_ms']:6.1f} ms  p99 {pace['p99_ms']:6.1f} ms  "
                      f"max {pace['max_ms']:6.1f} ms  errors {pace['errors']}", flush=True)  # fmt: skip
                med = {k: c.median([r[k] for r in results]) for k in ("rate", "p50_ms", "p99_ms", "errors")}
                targets[name] = {"closed": med, "runs": results, "paced": pace}
                for proc in procs:  # one target at a time: the next one has the machine to itself
                    await proc.stop()
                procs.clear()
    finally:
        for proc in procs:
            await proc.stop()
        server.cleanup()

    base = targets["sqlite"]["closed"]["rate"]
    rows = [
        [name, t["closed"]["rate"], t["closed"]["rate"] / base, t["closed"]["p99_ms"], t["paced"]["p50_ms"],
         t["paced"]["p99_ms"], t["paced"]["max_ms"], int(t["paced"]["errors"])]
        for name, t in targets.items()
    ]  # fmt: skip
    print(f"\nreply callbacks by storage engine, {count} requests x {reps} repeats at concurrency {conc} (medians), "
          f"then {paced_seconds} s paced at 500/s ({c.machine()})")  # fmt: skip
    headers = ["storage", "req/s", "x sqlite", "p99 ms", "500/s p50 ms", "500/s p99 ms", "500/s max ms", "errors"]
    print(c.table(rows, headers))
    checks = [
        (f"p99 < 25 ms at 500/s, {name}", t["paced"]["p99_ms"], 25.0, ok_pace(t["paced"]))
        for name, t in targets.items()
        if name != "sqlite"
    ]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    c.save("callbacks-storage", {"targets": targets, "checks": checks}, args.json)
    return 0 if all(ok for *_, ok in checks) else 1


async def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="py-spy profile of the daemon under load")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--wrk", action="store_true", help="also drive octorelay and bare with wrk (if installed)")
    p.add_argument("--instant", action="store_true", help="also in --quick: the daemon with an instant subscription")
    p.add_argument(
        "--storage",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="postgresql: compare SQLite with one and two daemons on PostgreSQL instead",
    )
    args = p.parse_args()
    if args.storage == "postgresql":
        return await storage_engines(args)
    quick = args.quick
    count = 1000 if quick else 5000
    warm = 300 if quick else 1000
    reps = 2 if quick else 3
    paced_seconds = 4 if quick else 10
    conc = args.concurrency

    with c.tempdir("callbacks") as tmpname:
        tmp = Path(tmpname)
        servers: dict[str, tuple[str, object, Path | None]] = {}
        procs = []
        try:
            variants = [("octorelay", c.DIGEST_ONLY)] + (
                [] if quick and not args.instant else [("octorelay-instant", c.INSTANT)]
            )
            for name, extra in variants:
                d = tmp / name
                d.mkdir()
                token = secrets.token_hex(16)
                cfg = c.write_config(d, extra=extra + f'\n[http]\ncallback_token = "{token}"\n')
                proc = await c.start_daemon_process(d, cfg)
                procs.append(proc)
                servers[name] = (f"{proc.http_url}/octopush/{token}", proc, d / "octorelay.db")
            for kind in ("bare", "naive"):
                d = tmp / kind
                d.mkdir()
                sp = await c.ServerProcess(kind, d).start()
                procs.append(sp)
                servers[kind] = (f"http://127.0.0.1:{sp.port}/octopush/t", sp, None)

            for name, (url, _, db) in servers.items():
                await c.closed_loop(url, count=warm, concurrency=conc, salt=f"warm-{name}-")
                if db:
                    await drained(db)

            results: dict[str, list[dict]] = {name: [] for name in servers}
            for rep in range(reps):
                for name, (url, _, db) in servers.items():
                    r = await c.closed_loop(url, count=count, concurrency=conc, salt=f"r{rep}-{name}-", time_limit=90)
                    if db:
                        r["drain_s"] = await drained(db)
                    results[name].append(r)
                    print(
                        f"  rep {rep + 1} {name:18s} {r['rate']:8.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
                        f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}",
                        flush=True,
                    )

            med = {
                name: {k: c.median([r[k] for r in rs]) for k in ("rate", "p50_ms", "p99_ms", "errors")}
                for name, rs in results.items()
            }
            url0, proc0, db0 = servers["octorelay"]
            pace = await c.paced(url0, rate=500, seconds=paced_seconds, salt="paced-")
            await drained(db0)

            by_wrk: dict[str, list[dict]] = {}
            if args.wrk:
                if not shutil.which("wrk"):
                    print("wrk not found (apt-get install wrk); skipping the wrk cross-check")
                script = tmp / "reply.lua"
                script.write_text(WRK_SCRIPT)
                for _ in range(reps if shutil.which("wrk") else 0):
                    for name in ("octorelay", "bare"):
                        url, _, db = servers[name]
                        r = await asyncio.to_thread(
                            wrk, url, seconds=4 if quick else 8, concurrency=conc, script=script
                        )
                        if r:
                            by_wrk.setdefault(name, []).append(r)
                        if db:
                            await drained(db)

            prof = None
            if args.profile:
                out = tmp / "profile.txt"
                load = asyncio.create_task(
                    c.closed_loop(url0, count=200_000, concurrency=conc, salt="prof-", time_limit=10)
                )
                await asyncio.sleep(0.5)
                prof = await asyncio.to_thread(profile, proc0.proc.pid, 8, out)
                await load
                if prof:
                    keep = c.RESULTS / "callbacks-profile.txt"
                    c.RESULTS.mkdir(parents=True, exist_ok=True)
                    shutil.copy(out, keep)
        finally:
            for proc in reversed(procs):
                await proc.stop()

    bare, naive, octo = med["bare"]["rate"], med["naive"]["rate"], med["octorelay"]["rate"]
    rows = [
        [name, m["rate"], m["p50_ms"], m["p99_ms"], int(m["errors"]), m["rate"] / bare, m["rate"] / naive]
        for name, m in med.items()
    ]
    print(
        f"\nreply callbacks, {count} requests x {reps} interleaved repeats, concurrency {conc}, medians ({c.machine()})"
    )
    print(c.table(rows, ["server", "req/s", "p50 ms", "p99 ms", "errors", "x bare", "x naive"]))
    print(
        f"\npaced {pace['requests']} callbacks at 500/s (achieved {pace['achieved_rate']:.0f}/s) against octorelay: "
        f"p50 {pace['p50_ms']:.1f} ms, p99 {pace['p99_ms']:.1f} ms "
        f"(from due time; {pace['p99_sent_ms']:.1f} ms from send), "
        f"max {pace['max_ms']:.1f} ms, errors {pace['errors']}"
    )
    if len(by_wrk) == 2:
        wmed = {
            n: {k: c.median([r[k] for r in rs]) for k in ("rate", "p50_ms", "p99_ms", "errors")}
            for n, rs in by_wrk.items()
        }
        wbare = wmed["bare"]["rate"]
        print(f"\nthe same with wrk as the client (-t1 -c{conc}), {reps} repeats, medians:")
        print(
            c.table(
                [
                    [n, m["rate"], m["p50_ms"], m["p99_ms"], int(m["errors"]), m["rate"] / wbare]
                    for n, m in wmed.items()
                ],
                ["server", "req/s", "p50 ms", "p99 ms", "non-2xx", "x bare"],
            )
        )
    checks = [
        ("octorelay >= 0.7 x bare aiohttp", octo / bare, 0.7, octo / bare >= 0.7),
        ("octorelay >= 3 x naive durable", octo / naive, 3.0, octo / naive >= 3.0),
        ("p99 < 25 ms at 500/s", pace["p99_ms"], 25.0, pace["p99_ms"] < 25.0 and pace["errors"] == 0),
    ]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    if prof:
        print_profile(prof, "closed-loop load, all threads")
    c.save(
        "callbacks",
        {"medians": med, "runs": results, "paced": pace, "wrk": by_wrk, "checks": checks, "profile": prof},
        args.json,
    )
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
