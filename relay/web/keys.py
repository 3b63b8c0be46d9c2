"""Typed keys for the handles the aiohttp application shares with its handlers: each only what handlers use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # types only: importing these keys (the CLI's CSV export does) loads none of the components
    from relay.config import ConfigSource
    from relay.guard import LoginGuard
    from relay.metrics import Metrics
    from relay.notify import Notifier
    from relay.octopush.client import OctopushClient
    from relay.sending import SendQueue
    from relay.storage.database import Store

CONFIG: web.AppKey[ConfigSource] = web.AppKey("config")  # the running configuration: a reload swaps it
STORE: web.AppKey[Store] = web.AppKey("store")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
LOGINS: web.AppKey[LoginGuard] = web.AppKey("logins")  # failed logins, shared with SMTP AUTH
CALLBACK_TOKEN: web.AppKey[str] = web.AppKey("callback_token")
SENDER: web.AppKey[SendQueue] = web.AppKey("sender")  # woken when a page queues or approves a campaign
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")  # routes stored callbacks; woken after changes
OCTOPUSH: web.AppKey[OctopushClient] = web.AppKey("octopush")  # cancels, and the last call
READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")  # every component is up: /healthz stops "starting"
GAUGES: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("gauges")  # refreshes the gauges /metrics reads
