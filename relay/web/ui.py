"""The web interface: replies by date or by country, conversations with an answer form, campaigns, attention.

Server-rendered Jinja2 pages that work without JavaScript (the CSP forbids any
script and any inline style). Every route applies one access rule: open on
loopback when `http.ui_users` is empty, HTTP basic auth otherwise. The forms
that change something (an SMS answer, a retry on the Attention page) carry a
CSRF token, because a browser sends basic-auth credentials with cross-site
requests too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from relay import clock, marketing, numbers, templating
from relay.config import Config
from relay.errors import CannotCancel
from relay.guard import printable
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
from relay.storage import callbacks, campaigns, outbox, queues
from relay.storage.database import Connection
from relay.templating import country_label
from relay.web import chart, exports
from relay.web.access import basic_login, ui_user
from relay.web.keys import CONFIG, LOGINS, NOTIFIER, OCTOPUSH, SENDER, STORE

log = logging.getLogger("relay.web")
PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # beyond any real page; keeps OFFSET inside SQLite's integers
CONVERSATION_LIMIT = 500  # items of each direction shown on a conversation page
ATTENTION_LIMIT = 200
SESSION_COOKIE = "octorelay_session"
REALM = 'Basic realm="octorelay", charset="UTF-8"'
_FORM_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ------------------------------------------------------------------ setup


class Ui:
    """What the pages share: this process's CSRF secret and one Jinja2 environment per template override."""

    def __init__(self) -> None:
        # Per process: a restart invalidates open forms, which then answer 403 and a reload fixes it.
        self.secret = secrets.token_bytes(32)
        self._envs: dict[Path | None, jinja2.Environment] = {}

    def env(self, config: Config) -> jinja2.Environment:
        """The environment for the current config, so a reload that changes `templates.dir` takes effect."""
        env = self._envs.get(config.templates_dir)
        if env is None:
            env = self._envs[config.templates_dir] = make_env(config.templates_dir)
        return env

    def csrf_token(self, nonce: str, user: str) -> str:
        return hmac.new(self.secret, f"{user}\x1f{nonce}".encode(), hashlib.sha256).hexdigest()


UI: web.AppKey[Ui] = web.AppKey("ui", Ui)


def setup(app: web.Application) -> None:
    """Add the web interface's routes to the daemon's application."""
    app[UI] = Ui()
    app.router.add_get("/", index)
    app.router.add_get("/replies", replies_page)
    app.router.add_get("/replies.csv", replies_csv)
    app.router.add_get("/conversations/{number}", conversation_page)
    app.router.add_post("/conversations/{number}", conversation_answer)
    app.router.add_get("/campaigns", campaigns_page)
    app.router.add_get(r"/campaigns/{id:\d{1,18}}", campaign_page)  # beyond SQLite's integers: the router's 404
    app.router.add_post(r"/campaigns/{id:\d{1,18}}/cancel", campaign_cancel)
    app.router.add_post(r"/campaigns/{id:\d{1,18}}/approve", campaign_approve)
    app.router.add_get("/attention", attention_page)
    app.router.add_post("/attention/retry", attention_retry)
    app.router.add_get("/static/style.css", stylesheet)


def make_env(override: Path | None = None) -> jinja2.Environment:
    """The web pages' environment (relay/templating.py), with the one filter that needs the web's URLs."""
    env = templating.make_env(override, kind="web")
    env.filters["conversation_url"] = conversation_url
    return env


# ------------------------------------------------------------------ helpers


def ui_timezone(config: Config) -> ZoneInfo:
    """Pages show local time: the first subscription's timezone, else Octopush's own (Europe/Paris)."""
    return config.display_tz


def conversation_url(number: str) -> str:
    return "/conversations/" + urllib.parse.quote(number or "", safe="+")


def ui(handler: Handler) -> Handler:
    """Apply the UI access rule before the handler runs."""

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


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    config = request.app[CONFIG]()
    tz = ui_timezone(config)
    template = request.app[UI].env(config).get_template(f"web/{name}")
    body = template.render(
        user=request.get("ui_user", ""),
        path=request.path,
        tz=tz.key,
        local=lambda iso_text, fmt="%Y-%m-%d %H:%M": clock.local(iso_text, tz, fmt),
        **context,
    )
    # Pages hold phone numbers and messages: keep them out of shared caches and the back-forward cache.
    return web.Response(text=body, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


def _region(config: Config) -> str:
    return config.smtp_in.region


def read_number(value: str, region: str) -> str:
    """A number typed in the filter: E.164 when it is a whole number in any form, else its digits (a fragment)."""
    return numbers.search_term((value or "")[:64], region) or ""


# ------------------------------------------------------------------ replies


@dataclass(frozen=True)
class ReplyFilter:
    """The replies page's query string, read leniently: a page in a browser should not answer 400."""

    view: str = "date"
    country: str = ""
    number: str = ""
    q: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, query: Any, region: str) -> ReplyFilter:
        view = query.get("view", "date")
        country = numbers.country_code(query.get("country", "")[:64]) or ""
        try:
            page = min(MAX_PAGE, max(1, int(query.get("page", "1"))))
        except ValueError:
            page = 1
        return cls(
            view=view if view in ("date", "country") else "date",
            country=country,
            number=read_number(query.get("number", ""), region),
            q=query.get("q", "").strip()[:200],
            page=page,
        )

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for `callbacks.replies` / `callbacks.count_replies`."""
        return {"country": self.country or None, "number": self.number or None, "text": self.q or None}

    def url(self, path: str = "/replies", **changes: Any) -> str:
        f = replace(self, **changes)
        args = {"view": f.view, "country": f.country, "number": f.number, "q": f.q, "page": f.page}
        if path.endswith(".csv"):
            args.pop("view")
            args.pop("page")
        pairs = {
            k: v for k, v in args.items() if v and not (k == "page" and v == 1) and not (k == "view" and v == "date")
        }
        return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


@dataclass
class Section:
    """One heading of the replies page (a day or a country) with its total under the current filter."""

    key: str
    title: str
    count: int
    rows: list[dict]


def _day_bounds(day: date, tz: ZoneInfo) -> tuple[str, str]:
    start = datetime.combine(day, time(), tz)
    end = datetime.combine(day + timedelta(days=1), time(), tz)
    return clock.iso(start.astimezone(UTC)), clock.iso(end.astimezone(UTC))


def load_replies(db: Connection, *, f: ReplyFilter, tz: ZoneInfo) -> dict:
    """Everything the replies page shows, read on one reader connection.

    The country menu's counts (every country under the other filters) also give the total and the country
    view's sections: one pass over the matching replies, not one per question.
    """
    filters = f.filters()
    menu = callbacks.country_counts(db, **{**filters, "country": None})
    counts = dict(menu)
    total = counts.get(f.country, 0) if f.country else sum(counts.values())
    offset = (f.page - 1) * PAGE_SIZE
    sections: list[Section] = []
    summary: list[dict] = []
    graph = None
    if f.view == "country":
        summary = callbacks.country_summary(db, **filters)
        graph = chart.build(
            callbacks.reply_hours(db, **filters), tz, {r["country"]: country_label(r["country"]) for r in summary}
        )
        order = [(f.country, total)] if f.country else menu
        for row in callbacks.replies_by_country(db, counts=order, limit=PAGE_SIZE, offset=offset, **filters):
            if not sections or sections[-1].key != row["country"]:
                code = row["country"]
                title = f"{country_label(code)} ({code})" if code else country_label(code)
                sections.append(Section(code, title, counts.get(code, 0), []))
            sections[-1].rows.append(row)
    else:
        for row in callbacks.replies(db, limit=PAGE_SIZE, offset=offset, **filters):
            day = clock.parse_iso(row["occurred_at"]).astimezone(tz).date()
            if not sections or sections[-1].key != day.isoformat():
                since, until = _day_bounds(day, tz)
                count = callbacks.count_replies(db, since=since, until=until, **filters)
                sections.append(Section(day.isoformat(), day.strftime("%A %d %B %Y"), count, []))
            sections[-1].rows.append(row)
    return {"total": total, "sections": sections, "countries": menu, "summary": summary, "chart": graph}


@ui
async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/replies")


@ui
async def replies_page(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]()
    f = ReplyFilter.from_query(request.query, _region(config))
    tz = ui_timezone(config)
    data = await request.app[STORE].read(partial(load_replies, f=f, tz=tz))
    pages = max(1, -(-data["total"] // PAGE_SIZE))
    return render(
        request,
        "replies.html",
        f=f,
        pages=pages,
        prev_url=f.url(page=f.page - 1) if f.page > 1 else "",
        next_url=f.url(page=f.page + 1) if f.page < pages else "",
        csv_url=f.url("/replies.csv"),
        view_urls={"date": f.url(view="date", page=1), "country": f.url(view="country", page=1)},
        **data,
    )


# Rows per read: ~4 ms of a reader thread's CPU (under the GIL's 5 ms switch interval), ~25 KB of the response.
CSV_CHUNK = 250
CSV_PAUSE = 0.003  # seconds between two chunks, so the event loop has the GIL at least as often as the export


def csv_chunk(db: Connection, *, filters: dict[str, Any], tz: ZoneInfo, before: tuple[str, int] | None):
    """The next `CSV_CHUNK` replies after `before` as spreadsheet-safe UTF-8 CSV (the first chunk with the
    header), and where the chunk after it starts (None: the end)."""
    rows = callbacks.replies(db, limit=CSV_CHUNK, before=before, **filters)
    following = (rows[-1]["occurred_at"], rows[-1]["id"]) if len(rows) == CSV_CHUNK else None
    text = exports.replies_csv(rows, tz, header=before is None)
    if before is None:
        text = "\ufeff" + text  # the byte-order mark makes Excel read the file as UTF-8, not the local code page
    return text.encode("utf-8"), following


@ui
async def replies_csv(request: web.Request) -> web.StreamResponse:
    """Every reply under the filters (all pages), newest first, streamed a chunk at a time.

    Each chunk is read and formatted on a reader thread with its own short read transaction: memory stays
    constant, the writer never waits for an export, and the event loop only hands bytes to the socket. The
    chunks are small and paced, so callbacks wait a few milliseconds for the GIL at most.
    """
    config, store = request.app[CONFIG](), request.app[STORE]
    f = ReplyFilter.from_query(request.query, _region(config))
    tz = ui_timezone(config)
    name = f"octorelay-replies-{clock.now().astimezone(tz):%Y%m%d-%H%M}.csv"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )
    before, first = None, True
    while first or before is not None:
        body, before = await store.read(partial(csv_chunk, filters=f.filters(), tz=tz, before=before))
        if first:
            await response.prepare(request)  # after the first read: a database error still gets its 500
            first = False
        await response.write(body)
        await asyncio.sleep(CSV_PAUSE)
    await response.write_eof()
    return response


# ------------------------------------------------------------------ conversations


def load_conversation(db: Connection, *, number: str) -> dict:
    """SMS sent to `number` and its replies and STOPs, merged oldest first (the order of a chat)."""
    sent = campaigns.sent_to(db, number=number, limit=CONVERSATION_LIMIT)
    received = callbacks.received_from(db, number=number, limit=CONVERSATION_LIMIT)
    now = clock.iso()
    for item in sent:
        item["direction"] = "out"
        item["campaign_status"] = campaigns.public_status(item["campaign_status"], item["send_at"], now)
        # A scheduled SMS belongs where it goes out, not where it was asked for.
        item["at"] = item["send_at"] or item["sent_at"] or item["created_at"]
    for item in received:
        item["direction"] = "in"
        item["at"] = item["occurred_at"]
    # Octopush dates have whole seconds while ours have microseconds: compare by the second, SMS
    # before replies on a tie, and never put a reply before the SMS it answers.
    sent_at = {item["campaign_id"]: (item["at"] or "")[:19] for item in sent}
    for item in sent + received:
        item["order"] = (item["at"] or "")[:19]
        if item["direction"] == "in" and item["campaign_id"] in sent_at:
            item["order"] = max(item["order"], sent_at[item["campaign_id"]])
    items = sorted(sent + received, key=lambda i: (i["order"], i["direction"] == "in"))
    name = next(
        (f"{s['first_name'] or ''} {s['last_name'] or ''}".strip() for s in sent if s["first_name"] or s["last_name"]),
        "",
    )
    return {"items": items, "contact": name, "opted_out_at": callbacks.opted_out_at(db, number)}


def _session(request: web.Request) -> tuple[str, bool]:
    """The session nonce from the cookie, or a new one (True when it must be set)."""
    nonce = request.cookies.get(SESSION_COOKIE, "")
    if _FORM_KEY.fullmatch(nonce):
        return nonce, False
    return secrets.token_urlsafe(24), True


def _set_session(request: web.Request, response: web.Response, nonce: str) -> None:
    # SameSite=Strict: another site's form never carries it, a second wall behind the token.
    response.set_cookie(SESSION_COOKIE, nonce, path="/", httponly=True, samesite="Strict", secure=request.secure)


def check_csrf(request: web.Request, form: Any, advice: str) -> None:
    """A form that changes something must carry the token of this browser's session cookie, else 403."""
    nonce = request.cookies.get(SESSION_COOKIE, "")
    expected = request.app[UI].csrf_token(nonce, request.get("ui_user", "")) if nonce else ""
    token = str(form.get("csrf", ""))
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise web.HTTPForbidden(text=f"403: this form expired or came from another site; {advice}\n")


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
    data = await request.app[STORE].read(partial(load_conversation, number=number))
    nonce, new = _session(request)
    queued = request.query.get("queued", "")
    response = render(
        request,
        "conversation.html",
        number=number,
        country=numbers.parse(number, _region(config)).country,
        csrf=request.app[UI].csrf_token(nonce, request.get("ui_user", "")),
        form_key=form_key or secrets.token_urlsafe(18),
        text=text,
        error=error,
        queued=queued if queued.isdigit() else "",
        again=request.query.get("again") == "1",
        octopush=config.octopush,
        **data,
        status=status,
    )
    if new:
        _set_session(request, response, nonce)
    return response


@ui
async def conversation_page(request: web.Request) -> web.StreamResponse:
    number = _canonical(request).e164
    if number != request.match_info["number"]:
        raise web.HTTPMovedPermanently(conversation_url(number))
    return await _show_conversation(request, number)


@ui
async def conversation_answer(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]()
    number = _canonical(request).e164
    form = await request.post()
    check_csrf(request, form, "reload the conversation and send again")
    text = str(form.get("text", "")).replace("\r\n", "\n").strip()
    form_key = str(form.get("key", ""))
    if not _FORM_KEY.fullmatch(form_key):
        form_key = secrets.token_urlsafe(18)
    req = SendRequest(
        text=text,
        recipients=(Recipient(number),),
        type=config.octopush.type,
        purpose=config.octopush.purpose,
        sender=config.octopush.sender,
        with_replies=config.octopush.with_replies,
        auto_optimize_text=config.octopush.auto_optimize_text,
        origin="web",
        label=f"web answer to {number}",
        sender_email="",
        confirm="none",
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
    location = f"{conversation_url(number)}?queued={campaign_id}" + ("" if new else "&again=1")
    raise web.HTTPSeeOther(location + "#answer")


# ------------------------------------------------------------------ campaigns


def load_campaigns(db: Connection, *, page: int) -> dict:
    total = campaigns.count_campaigns(db)
    rows = campaigns.latest_campaigns(db, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    deliveries = campaigns.delivery_counts(db, [row["id"] for row in rows])
    now = clock.iso()
    for row in rows:
        row["deliveries"] = deliveries.get(row["id"], [])
        row["status"] = campaigns.public_status(row["status"], row["send_at"], now)
    return {"total": total, "campaigns": rows}


@ui
async def campaigns_page(request: web.Request) -> web.StreamResponse:
    try:
        page = min(MAX_PAGE, max(1, int(request.query.get("page", "1"))))
    except ValueError:
        page = 1
    data = await request.app[STORE].read(partial(load_campaigns, page=page))
    pages = max(1, -(-data["total"] // PAGE_SIZE))
    return render(
        request,
        "campaigns.html",
        page=page,
        pages=pages,
        prev_url=f"/campaigns?page={page - 1}" if page > 1 else "",
        next_url=f"/campaigns?page={page + 1}" if page < pages else "",
        **data,
    )


@ui
async def campaign_page(request: web.Request) -> web.StreamResponse:
    return await _show_campaign(request, int(request.match_info["id"]))


async def _show_campaign(request: web.Request, campaign_id: int, *, error: str = "", status: int = 200):
    row = await request.app[STORE].read(partial(campaigns.campaign, campaign_id=campaign_id))
    if row is None:
        return render(
            request, "error.html", status=404, title="No such campaign", message=f"There is no campaign #{campaign_id}."
        )
    # Receipts are linked to the campaign too; they show as the recipients' states, not as replies.
    row["replies"] = [r for r in row["replies"] if r["kind"] in ("reply", "stop")]
    deliveries: dict[str, int] = {}
    for r in row["recipients"]:
        deliveries[r["status"] or ""] = deliveries.get(r["status"] or "", 0) + 1
    nonce, new = _session(request)
    response = render(
        request,
        "campaign.html",
        c=row,
        deliveries=sorted(deliveries.items(), key=lambda kv: -kv[1]),
        csrf=request.app[UI].csrf_token(nonce, request.get("ui_user", "")),
        error=error,
        cancelled=request.query.get("cancelled") == "1",
        status=status,
        done=request.query.get("done", ""),
    )
    if new:
        _set_session(request, response, nonce)
    return response


@ui
async def campaign_cancel(request: web.Request) -> web.StreamResponse:
    """The campaign page's Cancel button: a scheduled (or held) campaign, in our queue or at Octopush."""
    campaign_id = int(request.match_info["id"])
    check_csrf(request, await request.post(), "reload the page and try again")
    user = request.get("ui_user", "")
    by = f"{user} (web interface)" if user else "the web interface (on loopback)"
    try:
        await cancel_campaign(request.app[STORE], request.app[OCTOPUSH], campaign_id, by=by)
    except CannotCancel as exc:
        return await _show_campaign(request, campaign_id, error=str(exc), status=409)
    request.app[NOTIFIER].wake()  # tells the sender
    raise web.HTTPSeeOther(f"/campaigns/{campaign_id}?cancelled=1")


async def campaign_approve(request: web.Request) -> web.StreamResponse:
    """Approve a held campaign: a UI user may, as its sender may by e-mail (SPEC §5)."""
    campaign_id = int(request.match_info["id"])
    check_csrf(request, await request.post(), "reload the page and try again")
    who = f"web user {request.get('ui_user') or '(loopback)'}"
    try:
        await request.app[STORE].write(
            partial(approve_campaign, campaign_id=campaign_id, config=request.app[CONFIG](), by=who)
        )
    except NotHeld as exc:
        return render(request, "error.html", status=409, title="Nothing done", message=str(exc))
    request.app[SENDER].wake()
    raise web.HTTPSeeOther(f"/campaigns/{campaign_id}?done=approve")


# ------------------------------------------------------------------ attention


def load_attention(db: Connection) -> dict:
    """What an operator must look at: callbacks the relay could not read, e-mails and SMS that failed."""
    unrecognised = callbacks.unrecognised(db, limit=ATTENTION_LIMIT)
    mails = outbox.failed_mails(db, limit=ATTENTION_LIMIT)
    for mail in mails:
        mail["recipients"] = ", ".join(_json_list(mail["recipients"]))
    sends = campaigns.failed_campaigns(db, limit=ATTENTION_LIMIT)
    return {"unrecognised": unrecognised, "mails": mails, "sends": sends, "set_aside": queues.set_aside(db)}


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return [text or ""]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@ui
async def attention_page(request: web.Request) -> web.StreamResponse:
    data = await request.app[STORE].read(load_attention)
    nonce, new = _session(request)
    retried = request.query.get("retried", "")
    response = render(
        request,
        "attention.html",
        csrf=request.app[UI].csrf_token(nonce, request.get("ui_user", "")),
        retried=retried if retried in SET_ASIDE_WORK else "",
        **data,
    )
    if new:
        _set_session(request, response, nonce)
    return response


SET_ASIDE_WORK = ("routing", "confirmation", "send")


@ui
async def attention_retry(request: web.Request) -> web.StreamResponse:
    """Put a row set aside after repeated failures back in its worker's queue (a button of the Attention page)."""
    form = await request.post()
    check_csrf(request, form, "reload the Attention page and try again")
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
    raise web.HTTPSeeOther(f"/attention?retried={work}" if retried else "/attention")


# ------------------------------------------------------------------ static


@ui
async def stylesheet(request: web.Request) -> web.StreamResponse:
    env = request.app[UI].env(request.app[CONFIG]())
    source, _, _ = env.loader.get_source(env, "web/style.css")
    return web.Response(text=source, content_type="text/css", headers={"Cache-Control": "no-cache"})
