"""The web interface's routes, each with a name: pages and templates link and redirect through `url(name)`."""

from __future__ import annotations

from aiohttp import web

from relay.web import exports, views
from relay.web.forms import CSRF, Csrf
from relay.web.views import TEMPLATES, Templates

CAMPAIGN = r"/campaigns/{id:\d{1,18}}"  # beyond SQLite's integers: the router's 404


def setup(app: web.Application, *, csrf_secret: bytes | None = None) -> None:
    """Add the web interface's state and routes to the daemon's application."""
    app[CSRF] = Csrf(csrf_secret)
    app[TEMPLATES] = Templates()
    router = app.router
    router.add_get("/", views.index, name="index")
    router.add_get("/replies", views.replies_page, name="replies")
    router.add_get("/replies.csv", exports.replies_csv_download, name="replies_csv")
    router.add_get("/conversations/{number}", views.conversation_page, name="conversation")
    router.add_post("/conversations/{number}", views.conversation_answer, name="conversation_answer")
    router.add_get("/campaigns", views.campaigns_page, name="campaigns")
    router.add_get(CAMPAIGN, views.campaign_page, name="campaign")
    router.add_post(CAMPAIGN + "/cancel", views.campaign_cancel, name="campaign_cancel")
    router.add_post(CAMPAIGN + "/approve", views.campaign_approve, name="campaign_approve")
    router.add_get("/attention", views.attention_page, name="attention")
    router.add_post("/attention/retry", views.attention_retry, name="attention_retry")
    router.add_get("/static/style.css", views.stylesheet, name="stylesheet")
