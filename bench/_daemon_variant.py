"""The daemon in its own process with a chosen event loop and JSON parser, for A/B runs.

`python bench/_daemon_variant.py CONFIG LOOP PARSER [tuned]` with LOOP = uvloop | asyncio and
PARSER = orjson | json. `tuned` monkeypatches the changes proposed to relay/ in bench/README.md
(cached number parsing, fromisoformat for Octopush dates, no second log line per callback, fixed-name
savepoints in the writer) so their effect can be measured before anyone edits relay/.
Logging is set up as `octorelay run` does. Prints
"READY <http_url> <smtp_host>:<smtp_port>" on stdout once every listener is bound; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def use_stdlib_json() -> None:
    """Make the callback route parse with the standard library's json instead of orjson."""
    import relay.web.callbacks as cb

    shim = types.SimpleNamespace(
        loads=json.loads, dumps=lambda o: json.dumps(o).encode(), JSONDecodeError=json.JSONDecodeError
    )
    cb.orjson = shim


def apply_tuning() -> None:
    """The proposed relay/ changes, applied from outside (nothing in relay/ is edited)."""
    import functools
    import logging
    import sqlite3
    from datetime import datetime

    import relay.clock as clock
    import relay.octopush.callbacks as cbmod
    from relay.storage import database

    cbmod.normalise_number = functools.lru_cache(maxsize=8192)(cbmod.normalise_number)

    def from_octopush(text):
        try:
            t = text.strip()
            if len(t) != 19 or t[10] != " ":
                return None
            return datetime.fromisoformat(t).replace(tzinfo=clock.OCTOPUSH_TZ)
        except (ValueError, AttributeError):
            return None

    clock.from_octopush = from_octopush
    logging.getLogger("relay.callbacks").setLevel(logging.WARNING)

    def _commit(self, db, batch):
        conn = db.conn
        results = []
        try:
            conn.execute("BEGIN")
            try:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    try:
                        results.append((True, job.fn(db)))
                    except sqlite3.OperationalError:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        conn.execute("ROLLBACK TO job")
                        results.append((False, exc))
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            error = database.StoreError(f"the database could not commit: {exc}")
            for job in batch:
                self._resolve(job, False, error)
            return
        self.commits += 1
        self.writes += len(batch)
        self.last_error = None
        for job, (ok, value) in zip(batch, results, strict=True):
            self._resolve(job, ok, value)

    database.Store._commit = _commit


async def main(cfg_path: str) -> None:
    from relay import config as config_mod
    from relay import logs
    from relay.daemon import Daemon

    config = config_mod.load(cfg_path)
    logs.setup(config.log.format, config.log.level, secrets=[config.http.callback_token])
    daemon = Daemon(config, config_path=cfg_path)
    await daemon.start()
    host, port = daemon.smtp.address[:2]
    print("READY", daemon.http_url, f"{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await daemon.stop()


if __name__ == "__main__":
    cfg, loop_name, parser = sys.argv[1], sys.argv[2], sys.argv[3]
    if parser == "json":
        use_stdlib_json()
    if len(sys.argv) > 4 and sys.argv[4] == "tuned":
        apply_tuning()
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main(cfg))
    else:
        asyncio.run(main(cfg))
