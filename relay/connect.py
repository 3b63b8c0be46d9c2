"""The Octopush a configuration names, for the daemon and the commands: the API, or the offline emulator.

In emulator mode the daemon runs the emulator in its own process and records its URL (meta `emulator_url`).
A command (`send`, `octopush balance`, `campaign cancel`) talks to that running emulator, which holds the
daemon's campaigns and posts their callbacks to it; only when none answers does it run a stand-in of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from relay.octopush.client import OctopushClient
from relay.octopush.emulator import Emulator
from relay.octopush.errors import OctopushError, TemporaryError

if TYPE_CHECKING:
    from relay.config import Octopush

EMULATOR_LOGIN = "emulator"  # stands for a login or key the configuration leaves empty in emulator mode
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers, so a call fails as Octopush being down
PROBE_TIMEOUT = 2.0


def credentials(o: Octopush) -> tuple[str, str]:
    """The login and key to call with."""
    if o.mode == "emulator":
        return o.api_login or EMULATOR_LOGIN, o.api_key or EMULATOR_LOGIN
    return o.api_login, o.api_key


def client_for(o: Octopush, base_url: str | None = None) -> OctopushClient:
    """A client (not started) for `o`'s API, or for the emulator at `base_url`."""
    login, key = credentials(o)
    return OctopushClient(base_url or o.base_url, login, key, timeout=o.timeout, retry_for=o.retry_for)


def emulator_for(o: Octopush, *, callback_url: str | None = None, replies: bool = True) -> Emulator:
    """An emulator as `[octopush.emulator]` describes it (not started); it checks the configured login and key
    when both are set. Without `replies` it is a stand-in account that never answers an SMS."""
    emu = o.emulator
    return Emulator(
        reply_text=emu.reply_text if replies else "",
        reply_after=emu.reply_after,
        credit=emu.credit,
        callback_url=callback_url,
        credentials=(o.api_login, o.api_key) if o.api_login and o.api_key else None,
    )


async def running_emulator(url: str | None, o: Octopush) -> str:
    """`url` when a running daemon's emulator answers there (a balance check), else ""."""
    if not url:
        return ""
    probe = OctopushClient(url, *credentials(o), timeout=min(o.timeout, PROBE_TIMEOUT))
    await probe.start()
    try:
        await probe.check_balance()
        return url
    except (OctopushError, TemporaryError):
        return ""
    finally:
        await probe.stop()


@contextlib.asynccontextmanager
async def connect(
    o: Octopush,
    *,
    emulator_url: str | None = None,
    stand_in: bool = True,
    callback_url: str | None = None,
    replies: bool = False,
) -> AsyncIterator[tuple[OctopushClient, Emulator | None]]:
    """A started client for a command, and the emulator this process runs for it (None: the API, or a daemon's).

    In emulator mode `emulator_url` is the daemon's (from meta). With `stand_in`, it is used when it answers,
    else this process runs its own emulator (posting to `callback_url`, answering SMS when `replies`); without,
    it is used as it is, since only the daemon's emulator holds the daemon's campaigns.
    """
    emulator = None
    base_url = None
    if o.mode == "emulator":
        if not stand_in:
            base_url = emulator_url or UNREACHABLE
        else:
            base_url = await running_emulator(emulator_url, o)
            if not base_url:
                emulator = emulator_for(o, callback_url=callback_url, replies=replies)
                await emulator.start()
                base_url = emulator.base_url
    client = client_for(o, base_url)
    try:
        await client.start()
        yield client, emulator
    finally:
        await client.stop()
        if emulator is not None:
            await emulator.stop()
