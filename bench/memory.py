"""Idle resident memory of `python -m relay run` on a defaults-like configuration.

The configuration is the built-in defaults (emulator, the demo instant subscription, Maildir) with
every listener on 127.0.0.1 port 0 and the state in a temporary directory. VmRSS and VmHWM come from
/proc/PID/status right after READY=1 and after ~5 s idle; the run is repeated on fresh state and the
medians are quoted. For context, the bare aiohttp baseline server (bench/_servers.py) is measured
the same way.

Target: < 80 MB resident.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


async def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 1 if args.quick else 3
    idle = 5.0
    rows_raw: list[dict] = []
    bare: list[dict] = []
    for _ in range(reps):
        with c.tempdir("memory") as tmpname:
            tmp = Path(tmpname)
            cfg = c.write_config(tmp)
            proc = await c.start_daemon_process(tmp, cfg)
            try:
                pid = proc.proc.pid
                first = status(pid)
                await asyncio.sleep(idle)
                later = status(pid)
            finally:
                await proc.stop()
            rows_raw.append({"start": first, "idle": later})
            sp = await c.ServerProcess("bare", tmp).start()
            try:
                await asyncio.sleep(1)
                bare.append(status(sp.pid))
            finally:
                await sp.stop()
        print(
            f"  octorelay RSS at READY {first['VmRSS'] / 1024:.1f} MB, "
            f"after {idle:.0f} s idle {later['VmRSS'] / 1024:.1f} MB "
            f"(HWM {later['VmHWM'] / 1024:.1f} MB, threads {later['Threads']})",
            flush=True,
        )

    def m(when: str, key: str) -> float:
        return c.median([r[when][key] / 1024 for r in rows_raw])

    rows = [
        ["octorelay at READY", m("start", "VmRSS"), m("start", "RssAnon"), m("start", "RssFile"), m("start", "VmHWM")],
        [
            f"octorelay after {idle:.0f} s idle",
            m("idle", "VmRSS"),
            m("idle", "RssAnon"),
            m("idle", "RssFile"),
            m("idle", "VmHWM"),
        ],
        [
            "bare aiohttp server (context)",
            c.median([b["VmRSS"] / 1024 for b in bare]),
            c.median([b["RssAnon"] / 1024 for b in bare]),
            c.median([b["RssFile"] / 1024 for b in bare]),
            c.median([b["VmHWM"] / 1024 for b in bare]),
        ],
    ]
    print(f"\nidle memory, {reps} fresh starts, medians in MB ({c.machine()})")
    print(c.table(rows, ["process", "VmRSS", "RssAnon", "RssFile", "VmHWM"]))
    worst = max(m("start", "VmRSS"), m("idle", "VmRSS"))
    checks = [("idle RSS < 80 MB", worst, 80.0, worst < 80)]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    c.save("memory", {"runs": rows_raw, "bare": bare, "checks": checks}, args.json)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
