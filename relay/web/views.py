"""The web interface's pages: replies by date or by country, conversations with an answer form, campaigns, attention.

Server-rendered Jinja2 pages that work without JavaScript (the CSP forbids any script and any inline style).
Each handler reads through `relay.web.pages`, renders a template, and links and redirects by route name
(`url`), so no address is written twice. Access, sessions and CSRF are `relay.web.forms`; the routes are
`relay.web.routes`; the CSV export is `relay.web.exports`.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from relay import clock, marketing, numbers, templating
from relay.config import Config
from relay.errors import CannotCancel
from relay.octopush.client import Recipient
from relay.octopush.errors import ValidationError
from relay.sending import (
    Guards,
    LimitExceeded,
    NotHeld,
    NothingToSend,
    SendRequest,
    approve_campaign,
    cancel_campaign,
    queue_campaign,
)
from relay.statuses import Origin
from relay.storage import campaigns, queues
from relay.web import forms, pages
from relay.web.forms import ui_access
from relay.web.keys import CONFIG, NOTIFIER, OCTOPUSH, SENDER, STORE
from relay.web.pages import PAGE_SIZE, SET_ASIDE_WORK, ReplyFilter, read_page, ui_timezone

log = logging.getLogger("relay.web")


class Templates:
    """One Jinja2 environment per template override, so a reload that changes `templates.dir` takes effect."""

    def __init__(self) -> None:
        self._envs: dict[Path | None, jinja2.Environment] = {}

    def env(self, config: Config) -> jinja2.Environment:
        env = self._envs.get(config.templates_dir)
        if env is None:
            env = self._envs[config.templates_dir] = make_env(config.templates_dir)
        return env


TEMPLATES: web.AppKey[Templates] = web.AppKey("templates", Templates)


def make_env(override: Path | None = None) -> jinja2.Environment:
    """The web pages' environment: the one factory of relay/templating.py."""
    return templating.make_env(override, kind="web")


def url(request: web.Request, name: str, query: dict[str, Any] | None = None, **parts: Any) -> str:
    """The address of route `name` (relay/web/routes.py) with its parts and query string."""
    address = request.app.router[name].url_for(**{key: str(value) for key, value in parts.items()})
    return str(address.with_query(query) if query else address)


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    config = request.app[CONFIG]()
    tz = ui_timezone(config)
    template = request.app[TEMPLATES].env(config).get_template(f"web/{name}")
    body = template.render(
        user=request.get("ui_user", ""),
        path=request.path,
        tz=tz.key,
        local=lambda iso_text, fmt="%Y-%m-%d %H:%M": clock.local(iso_text, tz, fmt),
        url=partial(url, request),
        **context,
    )
    # Pages hold phone numbers and messages: keep them out of shared caches and the back-forward cache.
    return web.Response(text=body, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


def render_form(request: web.Request, name: str, **context: Any) -> web.Response:
    """A page with a form that changes something: its CSRF token, and the session cookie when it is new."""
    nonce, new = forms.session(request)
    response = render(request, name, csrf=forms.csrf_token(request, nonce), **context)
    if new:
        forms.set_session(request, response, nonce)
    return response


def _region(config: Config) -> str:
    return config.smtp_in.region


# ------------------------------------------------------------------ replies


@ui_access
async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(url(request, "replies"))


@ui_access
async def replies_page(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]()
    f = ReplyFilter.from_query(request.query, _region(config))
    tz = ui_timezone(config)
    data = await request.app[STORE].read(partial(pages.load_replies, f=f, tz=tz))
    pages_count = max(1, -(-data["total"] // PAGE_SIZE))

    def replies_url(**changes: Any) -> str:
        return url(request, "replies", f.query(**changes))

    return render(
        request,
        "replies.html",
        f=f,
        pages=pages_count,
        prev_url=replies_url(page=f.page - 1) if f.page > 1 else "",
        next_url=replies_url(page=f.page + 1) if f.page < pages_count else "",
        csv_url=url(request, "replies_csv", f.query(csv=True)),
        clear_url=replies_url(country="", number="", q="", page=1),
        view_urls={"date": replies_url(view="date", page=1), "country": replies_url(view="country", page=1)},
        **data,
    )


# ------------------------------------------------------------------ conversations


def _canonical(request: web.Request) -> numbers.Number:
    """The conversation's number from the URL, in any form SPEC §5 accepts; what is not a phone number is a 404."""
    given = request.match_info["number"]
    number = numbers.parse(given[:64], _region(request.app[CONFIG]()))
    if number is None:
        raise web.HTTPNotFound(text=f"404: {given[:64]!r} is not a phone number\n")
    return number


async def _show_conversation(
    request: web.Request, number: str, *, text: str = "", error: str = "", form_key: str = "", status: int = 200
) -> web.Response:
    config = request.app[CONFIG]()
    data = await request.app[STORE].read(partial(pages.load_conversation, number=number))
    queued = request.query.get("queued", "")
    return render_form(
        request,
        "conversation.html",
        number=number,
        country=numbers.parse(number, _region(config)).country,
        form_key=form_key or forms.form_key(),
        text=text,
        error=error,
        queued=queued if queued.isdigit() else "",
        again=request.query.get("again") == "1",
        octopush=config.octopush,
        **data,
        status=status,
    )


@ui_access
async def conversation_page(request: web.Request) -> web.StreamResponse:
    number = _canonical(request).e164
    if number != request.match_info["number"]:
        raise web.HTTPMovedPermanently(url(request, "conversation", number=number))
    return await _show_conversation(request, number)


@ui_access
async def conversation_answer(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]()
    number = _canonical(request).e164
    form = await request.post()
    forms.check_csrf(request, form, "reload the conversation and send again")
    text = str(form.get("text", "")).replace("\r\n", "\n").strip()
    form_key = forms.form_key(str(form.get("key", "")))
    req = SendRequest.from_config(
        config.octopush,
        text=text,
        recipients=(Recipient(number),),
        origin=Origin.WEB,
        label=f"web answer to {number}",
        # One key per rendered form: a double click or a resubmitted POST queues the answer once.
        request_key=hashlib.sha256(f"web\x1f{number}\x1f{form_key}".encode()).hexdigest()[:32],
    )
    req, _ = marketing.schedule(req, config.octopush, config.smtp_in.region)
    try:
        req.validate()
        campaign_id, new = await request.app[STORE].write(
            partial(queue_campaign, req=req, retry_for=config.octopush.retry_for, guards=Guards.from_config(config))
        )
    except (ValidationError, NothingToSend, LimitExceeded) as exc:
        return await _show_conversation(request, number, text=text, error=str(exc), form_key=form_key, status=400)
    request.app[SENDER].wake()
    query = {"queued": campaign_id} if new else {"queued": campaign_id, "again": 1}
    raise web.HTTPSeeOther(url(request, "conversation", query, number=number) + "#answer")


# ------------------------------------------------------------------ campaigns


@ui_access
async def campaigns_page(request: web.Request) -> web.StreamResponse:
    page = read_page(request.query.get("page", "1"))
    data = await request.app[STORE].read(partial(pages.load_campaigns, page=page))
    pages_count = max(1, -(-data["total"] // PAGE_SIZE))
    return render(
        request,
        "campaigns.html",
        page=page,
        pages=pages_count,
        prev_url=url(request, "campaigns", {"page": page - 1}) if page > 1 else "",
        next_url=url(request, "campaigns", {"page": page + 1}) if page < pages_count else "",
        **data,
    )


@ui_access
async def campaign_page(request: web.Request) -> web.StreamResponse:
    return await _show_campaign(request, int(request.match_info["id"]))


async def _show_campaign(request: web.Request, campaign_id: int, *, error: str = "", status: int = 200):
    row = await request.app[STORE].read(partial(campaigns.campaign, campaign_id=campaign_id))
    if row is None:
        return render(
            request, "error.html", status=404, title="No such campaign", message=f"There is no campaign #{campaign_id}."
        )
    row, deliveries = pages.campaign_details(row)
    return render_form(
        request,
        "campaign.html",
        c=row,
        deliveries=deliveries,
        error=error,
        cancelled=request.query.get("cancelled") == "1",
        status=status,
        done=request.query.get("done", ""),
    )


@ui_access
async def campaign_cancel(request: web.Request) -> web.StreamResponse:
    """The campaign page's Cancel button: a scheduled (or held) campaign, in our queue or at Octopush."""
    campaign_id = int(request.match_info["id"])
    forms.check_csrf(request, await request.post(), "reload the page and try again")
    user = request.get("ui_user", "")
    by = f"{user} (web interface)" if user else "the web interface (on loopback)"
    try:
        await cancel_campaign(request.app[STORE], request.app[OCTOPUSH], campaign_id, by=by)
    except CannotCancel as exc:
        return await _show_campaign(request, campaign_id, error=str(exc), status=409)
    request.app[NOTIFIER].wake()  # tells the sender
    raise web.HTTPSeeOther(url(request, "campaign", {"cancelled": 1}, id=campaign_id))


@ui_access
async def campaign_approve(request: web.Request) -> web.StreamResponse:
    """Approve a held campaign: a UI user may, as its sender may by e-mail (SPEC §5)."""
    campaign_id = int(request.match_info["id"])
    forms.check_csrf(request, await request.post(), "reload the page and try again")
    who = f"web user {request.get('ui_user') or '(loopback)'}"
    try:
        await request.app[STORE].write(
            partial(approve_campaign, campaign_id=campaign_id, config=request.app[CONFIG](), by=who)
        )
    except NotHeld as exc:
        return render(request, "error.html", status=409, title="Nothing done", message=str(exc))
    request.app[SENDER].wake()
    raise web.HTTPSeeOther(url(request, "campaign", {"done": "approve"}, id=campaign_id))


# ------------------------------------------------------------------ attention


@ui_access
async def attention_page(request: web.Request) -> web.StreamResponse:
    data = await request.app[STORE].read(pages.load_attention)
    retried = request.query.get("retried", "")
    return render_form(request, "attention.html", retried=retried if retried in SET_ASIDE_WORK else "", **data)


@ui_access
async def attention_retry(request: web.Request) -> web.StreamResponse:
    """Put a row set aside after repeated failures back in its worker's queue (a button of the Attention page)."""
    form = await request.post()
    forms.check_csrf(request, form, "reload the Attention page and try again")
    work, row_id = str(form.get("work", "")), str(form.get("id", ""))
    if work not in SET_ASIDE_WORK or not row_id.isdigit() or len(row_id) > 18:
        raise web.HTTPBadRequest(text="400: expected work=routing|confirmation|send and a row id\n")
    # A send's retries get a new deadline, as a new request would (within Octopush's 24 h request_id window).
    retry_for = request.app[CONFIG]().octopush.retry_for
    deadline = clock.iso(clock.now() + timedelta(seconds=retry_for)) if work == "send" else None
    retried = await request.app[STORE].write(
        partial(queues.retry_set_aside, work=work, row_id=int(row_id), deadline=deadline), small=True
    )
    if retried:
        log.info("attention: %s #%s retried by %s", work, row_id, request.get("ui_user") or "a loopback user")
        (request.app[SENDER] if work == "send" else request.app[NOTIFIER]).wake()
    raise web.HTTPSeeOther(url(request, "attention", {"retried": work} if retried else None))


# ------------------------------------------------------------------ static


@ui_access
async def stylesheet(request: web.Request) -> web.StreamResponse:
    env = request.app[TEMPLATES].env(request.app[CONFIG]())
    source, _, _ = env.loader.get_source(env, "web/style.css")
    return web.Response(text=source, content_type="text/css", headers={"Cache-Control": "no-cache"})
