"""Baseline servers for the benchmarks, each run in its own process: `python bench/_servers.py KIND TMPDIR LOOP`.

KIND:
  bare   aiohttp, POST /octopush/{token} reads the body and answers an empty 200 (nothing stored)
  naive  aiohttp, the same route parses the JSON and commits it with a *new* sqlite3 connection per
         request (WAL, synchronous=FULL), in the default thread pool, before answering 200
  sink   aiosmtpd's own `Sink` handler (accepts and drops every message) on the same SMTP class
  emulator  octorelay's Octopush emulator on its own (no replies, no callbacks): Octopush is a remote
         service, so a benchmark of octorelay's own work runs it outside the daemon's process
LOOP: uvloop | asyncio (the daemon's CLI uses uvloop, so the baselines do too by default).

Binds 127.0.0.1 port 0 and prints "PORT <n>" on stdout. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path


async def serve_http(kind: str, tmp: Path) -> None:
    import orjson
    from aiohttp import web

    db_path = tmp / f"naive-{id(tmp)}.db"
    if kind == "naive":
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS callbacks (id INTEGER PRIMARY KEY, number TEXT, text TEXT, "
            "reception_date TEXT, raw TEXT)"
        )
        conn.commit()
        conn.close()

    def store(fields: dict, raw: str) -> None:
        c = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = FULL")
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT INTO callbacks (number, text, reception_date, raw) VALUES (?, ?, ?, ?)",
                [fields.get("number"), fields.get("text"), fields.get("reception_date"), raw],
            )
            c.execute("COMMIT")
        finally:
            c.close()

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    async def naive(request: web.Request) -> web.Response:
        body = await request.read()
        fields = orjson.loads(body)
        await asyncio.to_thread(store, fields, body.decode())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/octopush/{token}", bare if kind == "bare" else naive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("PORT", site._server.sockets[0].getsockname()[1], flush=True)
    await _until_term()
    await runner.cleanup()


async def serve_sink() -> None:
    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = Sink()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink", enable_SMTPUTF8=True), "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await _until_term()
    server.close()


async def serve_emulator() -> None:
    from relay.octopush.emulator import Emulator

    emulator = Emulator(reply_text="", callback_url=None, credit=1e9)  # never runs dry during a benchmark
    await emulator.start()
    print("PORT", emulator.base_url.split(":")[2].split("/")[0], flush=True)
    await _until_term()
    await emulator.stop()


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    kind, tmp, loop = sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "uvloop"
    coro = {"sink": serve_sink, "emulator": serve_emulator}.get(kind, lambda: serve_http(kind, tmp))()
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
