"""The one aiohttp application factory: callbacks, API, health, metrics and the web interface."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.config import ConfigSource
from relay.guard import LoginGuard
from relay.metrics import Metrics
from relay.notify import Notifier
from relay.octopush.client import OctopushClient
from relay.sending import SendQueue
from relay.storage.database import Store
from relay.web import api, callbacks, keys, routes
from relay.web.access import security_headers
from relay.web.connections import client_deadline


def create_app(
    *,
    config: ConfigSource,
    store: Store,
    metrics: Metrics,
    logins: LoginGuard,
    callback_token: str,
    sender: SendQueue,
    notifier: Notifier,
    octopush: OctopushClient,
    ready: Callable[[], bool],
    gauges: Callable[[], Awaitable[None]],
    csrf_secret: bytes | None = None,
) -> web.Application:
    """The application, with each handle under its own typed key (relay/web/keys.py)."""
    app = web.Application(client_max_size=callbacks.MAX_BODY, middlewares=[client_deadline])
    app.on_response_prepare.append(security_headers)
    app[keys.CONFIG] = config
    app[keys.STORE] = store
    app[keys.METRICS] = metrics
    app[keys.LOGINS] = logins
    app[keys.CALLBACK_TOKEN] = callback_token
    app[keys.SENDER] = sender
    app[keys.NOTIFIER] = notifier
    app[keys.OCTOPUSH] = octopush
    app[keys.READY] = ready
    app[keys.GAUGES] = gauges
    app.router.add_get("/octopush/{token}", callbacks.check, name="callback_check")
    app.router.add_post("/octopush/{token}", callbacks.receive, name="callback")
    app.router.add_get("/healthz", api.healthz, name="healthz")
    app.router.add_get("/metrics", api.metrics, name="metrics")
    app.router.add_get("/api/replies", api.api_replies, name="api_replies")
    app.router.add_get("/api/campaigns/{ticket}", api.api_campaign, name="api_campaign")
    routes.setup(app, csrf_secret=csrf_secret)
    return app
