"""`/octopush/{token}`: Octopush's callbacks, stored before the empty 200 (SPEC §3)."""

from __future__ import annotations

import hmac
import json
import logging
import time
from functools import partial
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from relay.octopush.callbacks import classify
from relay.storage.database import StoreError
from relay.web.keys import CALLBACK_TOKEN, METRICS, NOTIFIER, STORE

log = logging.getLogger("relay.callbacks")
MAX_BODY = 64 * 1024


class BadBody(Exception):
    """The body is neither JSON nor a form."""


def raw_text(body: bytes) -> str:
    """The body as stored raw: bytes that are not UTF-8 are kept visible as `\\xNN`."""
    return body.decode("utf-8", "backslashreplace")


def parse_body(body: bytes, content_type: str) -> dict | list | str | int | float | None:
    """JSON or form fields; raises BadBody for anything else.

    Invalid Unicode does not make a body unreadable (SPEC §3): bytes that are not UTF-8 read as U+FFFD, and a
    lone surrogate escape (`"\\ud83d"`), which orjson refuses, is read by the standard library's parser.
    """
    text = body.decode("utf-8", "replace")
    if "json" in content_type or (not content_type.startswith("application/x-www-form") and text.lstrip()[:1] in "{["):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                return json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                if "json" in content_type:
                    raise BadBody("the body is not valid JSON") from None
    if "=" in text or content_type.startswith("application/x-www-form-urlencoded"):
        # Lenient, as browsers and most HTTP libraries are: a trailing "&" or a bare field loses nothing.
        return dict(parse_qsl(text, keep_blank_values=True))
    raise BadBody("expected a JSON object or form fields (application/json or application/x-www-form-urlencoded)")


def _token_ok(request: web.Request) -> bool:
    given = request.match_info["token"].encode()
    return hmac.compare_digest(given, request.app[CALLBACK_TOKEN].encode())


async def check(request: web.Request) -> web.Response:
    """Octopush checks a callback URL with GET before using it."""
    if not _token_ok(request):
        raise web.HTTPNotFound()
    return web.Response(status=200)


async def receive(request: web.Request) -> web.Response:
    metrics, notifier = request.app[METRICS], request.app[NOTIFIER]
    started = time.perf_counter()
    if not _token_ok(request):
        metrics.callbacks.labels("unknown", "bad_token").inc()
        raise web.HTTPNotFound()
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    body = await request.read()  # client_max_size answers 413 for longer chunked bodies
    try:
        fields = parse_body(body, request.content_type or "")
    except BadBody as exc:
        metrics.callbacks.labels("unknown", "bad_body").inc()
        return web.Response(status=400, text=f"{exc}\n")
    callback = classify(
        fields if isinstance(fields, dict) else {},
        raw=raw_text(body),
        content_type=request.content_type or "",
    )
    try:
        stored = await request.app[STORE].write(partial(notifier.store_callback, cb=callback), small=True)
    except StoreError as exc:
        metrics.callbacks.labels(callback.kind, "not_stored").inc()
        log.error("callback not stored, answered 503 so Octopush retries: %s", exc)
        return web.Response(status=503, text="the relay cannot store this callback now; retry later\n")
    metrics.callbacks.labels(callback.kind, "stored" if stored.new else "duplicate").inc()
    metrics.callback_seconds.observe(time.perf_counter() - started)
    if stored.new:
        # The access log already has a line per request; this one is for debugging.
        log.debug("callback %s #%d from %s", callback.kind, stored.id, callback.number or "?")
    if stored.pending:
        notifier.wake()
    return web.Response(status=200)
