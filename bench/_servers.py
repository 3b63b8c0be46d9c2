"""Baseline servers for the benchmarks, each run in its own process: `python bench/_servers.py KIND TMPDIR LOOP`.

KIND:
  bare   aiohttp, POST /octopush/{token} reads the body and answers an empty 200 (nothing stored)
  naive  aiohttp, the same route parses the JSON and commits it with a *new* sqlite3 connection per
         request (WAL, synchronous=FULL), in the default thread pool, before answering 200
  sink   aiosmtpd's own `Sink` handler (accepts and drops every message) on the same SMTP class
  fastsink  a minimal SMTP server (one asyncio protocol, PIPELINING) that accepts every message and, at SIGTERM,
         writes one line per message to TMPDIR/sink.txt: its Reply-To and the reply token of its text, in the
         order received. It stands for a mail server written in C: aiosmtpd's own cost per message would
         otherwise be most of what a delivery benchmark measures on two shared cores
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


async def serve_fastsink(tmp: Path) -> None:
    import re

    received: list[bytes] = []
    reply_to = re.compile(rb"^Reply-To: (\S+)", re.M)
    token = re.compile(rb"^  > Reply (\S+): ", re.M)

    class Session(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buffer, self.data = transport, b"", None
            transport.write(b"220 fastsink ESMTP\r\n")

        def data_received(self, chunk: bytes) -> None:
            self.buffer += chunk
            out = []
            while True:
                if self.data is not None:
                    end = self.buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    message, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                    a, b = reply_to.search(message), token.search(message)
                    received.append((a.group(1) if a else b"-") + b" " + (b.group(1) if b else b"-"))
                    self.data = None
                    out.append(b"250 2.0.0 queued\r\n")
                    continue
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    out.append(b"250-fastsink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
                elif verb == b"DATA":
                    self.data = b""
                    out.append(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    out.append(b"221 bye\r\n")
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
                else:
                    out.append(b"250 OK\r\n")
            if out:
                self.transport.write(b"".join(out))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Session, "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await _until_term()
    server.close()
    (tmp / "sink.txt").write_bytes(b"".join(line + b"\n" for line in received))


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
    coro = {"sink": serve_sink, "emulator": serve_emulator, "fastsink": lambda: serve_fastsink(tmp)}.get(
        kind, lambda: serve_http(kind, tmp)
    )()
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
