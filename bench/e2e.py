"""Callback → instant e-mail received by a local SMTP sink: end-to-end latency, one callback at a time.

The daemon runs as `python -m relay run -c cfg` (its own process, uvloop) with one instant
subscription and `smtp_out` pointing at an aiosmtpd sink in this process (tests.conftest.Sink). Each
reply callback is POSTed, then we wait (bounded) until the sink has accepted its e-mail, check that
the e-mail carries that reply's marker, pause 20 ms, and send the next. Latency = from just before
the POST to the end of the sink's DATA handler (so it includes the callback's commit, the notifier's
routing and rendering, the outbox's commit and the SMTP delivery).

Target: p50 < 50 ms.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

from tests.conftest import Sink  # noqa: E402


class TimedSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.times: list[float] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        self.times.append(time.perf_counter())
        self.arrived.set()
        return answer


async def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    count = 60 if args.quick else 300
    import aiohttp
    import orjson

    sink = TimedSink()
    await sink.start()
    e2e: list[float] = []
    http: list[float] = []
    mismatched = lost = 0
    with c.tempdir("e2e") as tmpname:
        tmp = Path(tmpname)
        token = secrets.token_hex(16)
        cfg = c.write_config(tmp, smtp_port=sink.port, extra=c.INSTANT + f'\n[http]\ncallback_token = "{token}"\n')
        proc = await c.start_daemon_process(tmp, cfg)
        url = f"{proc.http_url}/octopush/{token}"
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(-10, count):  # the first ten warm up (templates, SMTP client)
                    marker = f"E2E{i + 10:05d}"
                    body = orjson.dumps(
                        {
                            "message_id": "",
                            "number": f"+3360000{i % 100 + 1000:04d}",
                            "text": f"{marker} OK",
                            "sim_card_number": "30101",
                            "reception_date": "2026-11-04 11:11:45",
                        }
                    )
                    sink.arrived.clear()
                    before = len(sink.messages)
                    t = time.perf_counter()
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                    t_http = time.perf_counter()
                    deadline = t + 10
                    while len(sink.messages) == before and time.perf_counter() < deadline:
                        sink.arrived.clear()
                        try:
                            await asyncio.wait_for(sink.arrived.wait(), max(0.01, deadline - time.perf_counter()))
                        except TimeoutError:
                            break
                    if len(sink.messages) == before:
                        lost += 1
                        continue
                    _, _, msg = sink.messages[-1]
                    if marker not in msg.get_body(("plain",)).get_content():
                        mismatched += 1
                    if i >= 0:
                        e2e.append(sink.times[-1] - t)
                        http.append(t_http - t)
                    await asyncio.sleep(0.02)
        finally:
            await proc.stop()
            await sink.stop()

    p50, p99 = c.pct(e2e, 0.5) * 1000, c.pct(e2e, 0.99) * 1000
    print(f"\ncallback -> instant e-mail at the sink, {len(e2e)} callbacks one at a time ({c.machine()})")
    print(
        c.table(
            [
                ["callback answered (HTTP 200)", c.pct(http, 0.5) * 1000, c.pct(http, 0.99) * 1000, max(http) * 1000],
                ["e-mail accepted by the sink", p50, p99, max(e2e) * 1000],
            ],
            ["stage (from POST)", "p50 ms", "p99 ms", "max ms"],
        )
    )
    print(f"lost (no e-mail within 10 s): {lost}; e-mails without their marker: {mismatched}")
    checks = [("end-to-end p50 < 50 ms", p50, 50.0, p50 < 50 and not lost and not mismatched)]
    print()
    print(c.table([[n, v, t, c.verdict(ok)] for n, v, t, ok in checks], ["target", "measured", "target", "verdict"]))
    c.save(
        "e2e",
        {
            "p50_ms": p50,
            "p99_ms": p99,
            "http_p50_ms": c.pct(http, 0.5) * 1000,
            "lost": lost,
            "mismatched": mismatched,
            "checks": checks,
        },
        args.json,
    )
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(c.run(main()))
