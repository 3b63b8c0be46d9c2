"""The daemon in its own process with a chosen event loop and JSON parser, for A/B runs.

`python bench/_daemon_variant.py CONFIG LOOP PARSER` with LOOP = uvloop | asyncio and
PARSER = orjson | json. (An earlier `tuned` variant monkeypatched the profiling fixes in; they are
part of relay/ now.) Logging is set up as `octorelay run` does. Prints
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
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main(cfg))
    else:
        asyncio.run(main(cfg))
