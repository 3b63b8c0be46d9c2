"""JSON API, health and metrics: `/api/...`, `/healthz`, `/metrics`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import clock, numbers
from relay.storage import callbacks, campaigns, queues
from relay.web.access import api_allowed
from relay.web.keys import CONFIG, GAUGES, METRICS, OCTOPUSH, READY, STORE

STALE_OUTBOX = timedelta(minutes=10)
HEALTH_READ_TIMEOUT = 3.0  # seconds: an unreachable database makes the probe say so, not hang the load balancer


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


def _require_api(request: web.Request) -> None:
    token = request.app[CONFIG]().http.api_token
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
    region = request.app[CONFIG]().smtp_in.region
    number = country = None
    if q.get("number"):
        number = numbers.search_term(q["number"][:64], region)
        if number is None:
            raise web.HTTPBadRequest(
                text=f"number: {q['number'][:64]!r} is not a phone number (+33612345678, 0612345678)\n"
            )
    if q.get("country"):
        country = numbers.country_code(q["country"][:64])
        if country is None:
            raise web.HTTPBadRequest(
                text=f"country: {q['country'][:64]!r} is not a country code or name (BE, Belgium)\n"
            )
    rows = await request.app[STORE].read(
        partial(
            callbacks.replies,
            since=read_when(q.get("since"), "since"),
            until=read_when(q.get("until"), "until"),
            country=country,
            number=number,
            limit=limit,
        )
    )
    return json_response({"replies": rows, "count": len(rows)})


async def api_campaign(request: web.Request) -> web.Response:
    """One campaign by Octopush ticket, or by the relay's campaign number (a campaign waiting in our queue
    has no ticket yet)."""
    _require_api(request)
    key = request.match_info["ticket"]
    by_id = key.isdigit() and len(key) <= 18
    lookup = partial(campaigns.campaign, campaign_id=int(key)) if by_id else partial(campaigns.campaign, ticket=key)
    row = await request.app[STORE].read(lookup)
    if row is None:
        return json_response({"error": "no campaign with this ticket or number"}, status=404)
    row.pop("stored_status", None)
    return json_response(row)


async def healthz(request: web.Request) -> web.Response:
    """Read-only: a probe never writes (no commit, no fsync); the writer's last commit tells its state.

    It names the node that answers (`http.node_name`): behind a load balancer, several daemons share one
    database, and the database being unreachable from this node makes it `degraded`.
    """
    store = request.app[STORE]
    problems = []
    database = store.health()
    if database != "ok":
        problems.append("database")
    try:
        depth = await asyncio.wait_for(store.read(queues.depths), HEALTH_READ_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - health must answer whatever broke
        depth = {"error": describe_failure(exc)}
        if database == "ok":
            database = f"unreachable: {depth['error']}"
        problems.append("database")
    oldest = depth.get("outbox_oldest_pending")
    if oldest and clock.parse_iso(oldest) < clock.now() - STALE_OUTBOX:
        problems.append("outbox")
    status = "starting" if not request.app[READY]() else "degraded" if problems else "ok"
    body = {
        "status": status,
        "node": request.app[CONFIG]().http.node_name,
        "problems": sorted(set(problems)),
        "database": database,
        **depth,
        "last_octopush_call": last_octopush_call(request.app[OCTOPUSH]),
    }
    return json_response(body, status=200 if status == "ok" else 503)


def describe_failure(exc: BaseException) -> str:
    """A failed read in one line; a timeout has no message of its own."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {HEALTH_READ_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


def last_octopush_call(client: object) -> dict | None:
    """The client's last call (when, what it answered), with times as ISO text."""
    call = getattr(client, "last_call", None)
    if not call:
        return None
    return {k: (clock.iso(v) if hasattr(v, "tzinfo") else v) for k, v in call.items()}


async def metrics(request: web.Request) -> web.Response:
    await request.app[GAUGES]()
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
