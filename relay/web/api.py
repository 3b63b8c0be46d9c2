"""JSON API, health and metrics: `/api/...`, `/healthz`, `/metrics`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import clock
from relay.storage import queries
from relay.storage.database import StoreError
from relay.web.access import api_allowed
from relay.web.keys import RELAY

STALE_OUTBOX = timedelta(minutes=10)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


def _require_api(request: web.Request) -> None:
    token = request.app[RELAY].config.http.api_token
    if not api_allowed(request, token):
        need = "from every client, since http.api_token is set" if token else "outside loopback"
        raise web.HTTPUnauthorized(
            text=f"the API needs 'Authorization: Bearer <api_token>' {need}\n",
            headers={"WWW-Authenticate": "Bearer"},
        )


def read_when(value: str | None, name: str) -> str | None:
    """A time filter from the query string; a bad one is a 400 with the reason."""
    try:
        return clock.parse_when(value)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name}: {exc}\n") from None


async def api_replies(request: web.Request) -> web.Response:
    _require_api(request)
    q = request.query
    try:
        limit = max(1, min(1000, int(q.get("limit", "100"))))
    except ValueError:
        raise web.HTTPBadRequest(text="limit: expected a whole number\n") from None
    rows = await request.app[RELAY].store.read(
        partial(
            queries.replies,
            since=read_when(q.get("since"), "since"),
            until=read_when(q.get("until"), "until"),
            country=q.get("country") or None,
            number=q.get("number") or None,
            limit=limit,
        )
    )
    return json_response({"replies": rows, "count": len(rows)})


async def api_campaign(request: web.Request) -> web.Response:
    _require_api(request)
    ticket = request.match_info["ticket"]
    row = await request.app[RELAY].store.read(partial(queries.campaign, ticket=ticket))
    if row is None and ticket.isdigit() and len(ticket) <= 18:
        # A held or scheduled campaign has no ticket yet: its relay id (Queued as campaign N) finds it too.
        row = await request.app[RELAY].store.read(partial(queries.campaign, campaign_id=int(ticket)))
    if row is None:
        return json_response({"error": "no campaign with this ticket"}, status=404)
    return json_response(row)


async def healthz(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    problems = []
    try:
        await asyncio.wait_for(relay.store.write(lambda db: queries.meta_set(db, "heartbeat", clock.iso())), 5)
        database = "ok"
    except (StoreError, TimeoutError) as exc:
        database = f"not writable: {exc}"
        problems.append("database")
    try:
        depth = await relay.store.read(queries.depths)
    except Exception as exc:  # noqa: BLE001 - health must answer whatever broke
        depth = {"error": str(exc)}
        problems.append("database")
    oldest = depth.get("outbox_oldest_pending")
    if oldest and clock.parse_iso(oldest) < clock.now() - STALE_OUTBOX:
        problems.append("outbox")
    body = {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "database": database,
        **depth,
        "last_octopush_call": relay.last_octopush_call(),
    }
    return json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    await relay.refresh_gauges()
    return web.Response(body=generate_latest(relay.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
