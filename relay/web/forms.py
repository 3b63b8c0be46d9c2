"""Who may use the web interface, and the forms that change something: access, sessions, CSRF, form keys.

Every page applies one access rule (`ui_access`): open on loopback when `http.ui_users` is empty, HTTP basic
auth otherwise, with the failed-login limiter shared with SMTP AUTH. The forms that change something (an SMS
answer, approve or cancel, a retry on the Attention page) carry a CSRF token bound to the session cookie and
the user, because a browser sends basic-auth credentials with cross-site requests too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay.guard import printable
from relay.web.access import basic_login, ui_user
from relay.web.keys import CONFIG, LOGINS

SESSION_COOKIE = "octorelay_session"
REALM = 'Basic realm="octorelay", charset="UTF-8"'
FORM_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Csrf:
    """The CSRF secret. The daemon's comes from the database, so that a form one node served is accepted by
    every node behind the load balancer, and by the same node after a restart; without one, a random secret
    of this process's own."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def token(self, nonce: str, user: str) -> str:
        return hmac.new(self.secret, f"{user}\x1f{nonce}".encode(), hashlib.sha256).hexdigest()


CSRF: web.AppKey[Csrf] = web.AppKey("csrf", Csrf)


def ui_access(handler: Handler) -> Handler:
    """Apply the UI access rule before the handler runs; the user is `request["ui_user"]` ("" on loopback)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        users = request.app[CONFIG]().http.ui_users
        logins = request.app[LOGINS]
        if users:
            peer = request.remote or "unknown"
            left = logins.refused(peer, "web interface")
            if left:
                raise web.HTTPTooManyRequests(
                    text=f"429: too many failed logins from your address; try again in {math.ceil(left)} s\n",
                    headers={"Retry-After": str(math.ceil(left))},
                )
            # Verifying a password hash costs tens of milliseconds by design: keep it off the event loop.
            user = await asyncio.to_thread(ui_user, request, users)
            login = basic_login(request)
            if user is None and login is not None:
                logins.failed(peer, f"web interface as {printable(login)}")
        else:
            user = ui_user(request, users)
        if user is None:
            raise web.HTTPUnauthorized(
                text="401: the web interface needs a user name and password\n",
                headers={"WWW-Authenticate": REALM},
            )
        request["ui_user"] = user
        return await handler(request)

    return wrapped


def session(request: web.Request) -> tuple[str, bool]:
    """The session nonce from the cookie, or a new one (True when it must be set)."""
    nonce = request.cookies.get(SESSION_COOKIE, "")
    if FORM_KEY.fullmatch(nonce):
        return nonce, False
    return secrets.token_urlsafe(24), True


def set_session(request: web.Request, response: web.Response, nonce: str) -> None:
    # SameSite=Strict: another site's form never carries it, a second wall behind the token.
    response.set_cookie(SESSION_COOKIE, nonce, path="/", httponly=True, samesite="Strict", secure=request.secure)


def csrf_token(request: web.Request, nonce: str) -> str:
    """The token a form of this session and user carries."""
    return request.app[CSRF].token(nonce, request.get("ui_user", ""))


def check_csrf(request: web.Request, form: Any, advice: str) -> None:
    """A form that changes something must carry the token of this browser's session cookie, else 403."""
    nonce = request.cookies.get(SESSION_COOKIE, "")
    expected = csrf_token(request, nonce) if nonce else ""
    token = str(form.get("csrf", ""))
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise web.HTTPForbidden(text=f"403: this form expired or came from another site; {advice}\n")


def form_key(given: str = "") -> str:
    """The key of one rendered answer form (the one given when it is well-formed, else a new one)."""
    return given if FORM_KEY.fullmatch(given) else secrets.token_urlsafe(18)
