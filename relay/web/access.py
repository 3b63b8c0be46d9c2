"""Who may see what, and what the access log says: loopback/bearer/user checks, security headers, no token in logs."""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from relay import passwords
from relay.logs import mask

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class AccessLogger(AbstractAccessLogger):
    """One line per request; the callback token never reaches the log.

    A stored Octopush callback (POST answered 200) is logged at DEBUG: a campaign's replies come by the
    thousand, each is already stored and counted in `octorelay_callbacks_total`, and at INFO those lines
    cost a tenth of the callback path's throughput. Refused callbacks (404, 400, 503) stay at INFO.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        stored_callback = response.status == 200 and request.method == "POST" and request.path.startswith("/octopush/")
        level = logging.DEBUG if stored_callback else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(
            level,
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            mask(request.path),
            response.status,
            time * 1000,
        )


def is_loopback(request: web.BaseRequest) -> bool:
    """Only a peer address that reads as loopback; an unknown peer is not trusted."""
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def _local_host(host: str | None) -> bool:
    """A Host header naming this machine: localhost, *.localhost or a loopback address (port ignored)."""
    if not host:
        return True  # no Host header: not a browser, so not a page playing DNS tricks
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def open_on_loopback(request: web.BaseRequest) -> bool:
    """Whether the open-on-loopback rule lets this request in.

    The peer must be loopback, and the Host header must name this machine: a web page whose own host name
    an attacker re-points at 127.0.0.1 (DNS rebinding) reaches us from the browser's loopback, but with the
    attacker's host name. That gets a 403 saying why, not the data.
    """
    if not is_loopback(request):
        return False
    host = request.headers.get("Host")
    if not _local_host(host):
        raise web.HTTPForbidden(
            text=f"403: without users this relay answers only requests for localhost, not for {host!r}\n"
        )
    return True


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer, pages and refusals alike (`on_response_prepare`: cheaper per request than a middleware)."""
    response.headers.update(SECURITY_HEADERS)


def api_allowed(request: web.Request, api_token: str) -> bool:
    """Once `api_token` is set, only its bearer, from anywhere (SPEC §3); before that, loopback only.

    Loopback proves nothing once a token exists: a reverse proxy on the same host relays every
    outside request from 127.0.0.1, with whatever Host header the client chose.
    """
    if not api_token:
        return open_on_loopback(request)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), api_token.encode())


@functools.cache
def _dummy_hash() -> str:
    return passwords.make_hash("not a password")


def basic_login(request: web.BaseRequest) -> str | None:
    """The user name an `Authorization: Basic` header offers ("" if unreadable); None without one."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        return base64.b64decode(header[6:]).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        return ""


def ui_user(request: web.Request, users: dict[str, str]) -> str | None:
    """The authenticated UI user (HTTP basic), "" for an open loopback UI, None when refused."""
    if not users:
        return "" if open_on_loopback(request) else None
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    hashed = users.get(user)
    if hashed is None:
        passwords.verify(password, _dummy_hash())  # the same work for an unknown user: no user probing by timing
        return None
    return user if passwords.verify(password, hashed) else None
