"""The one aiohttp application factory: callbacks, API, health, metrics and the web interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from relay.web import api, callbacks, ui
from relay.web.access import security_headers
from relay.web.connections import client_deadline
from relay.web.keys import RELAY

if TYPE_CHECKING:
    from relay.daemon import Daemon


def create_app(relay: Daemon) -> web.Application:
    app = web.Application(client_max_size=callbacks.MAX_BODY, middlewares=[client_deadline])
    app.on_response_prepare.append(security_headers)
    app[RELAY] = relay
    app.router.add_get("/octopush/{token}", callbacks.check)
    app.router.add_post("/octopush/{token}", callbacks.receive)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/replies", api.api_replies)
    app.router.add_get("/api/campaigns/{ticket}", api.api_campaign)
    ui.setup(app)
    return app
