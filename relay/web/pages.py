"""What each page of the web interface shows, read through relay/storage on one reader connection.

Plain functions of a database connection, run by `Store.read` on a reader thread; the views turn their results
into pages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from relay import clock, numbers
from relay.config import Config
from relay.storage import callbacks, campaigns, outbox, queues
from relay.storage.database import Connection
from relay.templating import country_label
from relay.web import chart

PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # beyond any real page; keeps OFFSET inside SQLite's integers
CONVERSATION_LIMIT = 500  # items of each direction shown on a conversation page
ATTENTION_LIMIT = 200
SET_ASIDE_WORK = ("routing", "confirmation", "send")


def ui_timezone(config: Config) -> ZoneInfo:
    """Pages show local time: the first subscription's timezone, else Octopush's own (Europe/Paris)."""
    return config.display_tz


def read_number(value: str, region: str) -> str:
    """A number typed in the filter: E.164 when it is a whole number in any form, else its digits (a fragment)."""
    return numbers.search_term((value or "")[:64], region) or ""


def read_page(value: str) -> int:
    """A page number from the query string, read leniently: a page in a browser should not answer 400."""
    try:
        return min(MAX_PAGE, max(1, int(value)))
    except ValueError:
        return 1


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
        return cls(
            view=view if view in ("date", "country") else "date",
            country=country,
            number=read_number(query.get("number", ""), region),
            q=query.get("q", "").strip()[:200],
            page=read_page(query.get("page", "1")),
        )

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for `callbacks.replies` / `callbacks.count_replies`."""
        return {"country": self.country or None, "number": self.number or None, "text": self.q or None}

    def query(self, *, csv: bool = False, **changes: Any) -> dict[str, Any]:
        """The query string of this filter with `changes`, defaults left out (`csv`: without view and page)."""
        f = replace(self, **changes)
        args = {"view": f.view, "country": f.country, "number": f.number, "q": f.q, "page": f.page}
        if csv:
            args.pop("view")
            args.pop("page")
        return {
            k: v for k, v in args.items() if v and not (k == "page" and v == 1) and not (k == "view" and v == "date")
        }


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
    summary: list[dict] = []
    if f.view == "country":
        summary = callbacks.country_summary(db, **filters)
    if summary and not f.country:  # the same counts: a search reads the replies once, not twice
        menu = [(r["country"], r["replies"]) for r in summary]
    else:
        menu = callbacks.country_counts(db, **{**filters, "country": None})
    counts = dict(menu)
    total = counts.get(f.country, 0) if f.country else sum(counts.values())
    offset = (f.page - 1) * PAGE_SIZE
    sections: list[Section] = []
    graph = None
    if f.view == "country":
        last = max((r["last_at"] for r in summary if r["last_at"]), default=None)
        if last is not None:
            # The hours of the chart's window only, ranked and totalled by the summary's counts.
            graph = chart.build(
                callbacks.reply_hours(db, **filters, since=chart.window_start(last, tz)),
                tz,
                {r["country"]: country_label(r["country"]) for r in summary},
                totals={r["country"]: r["replies"] for r in summary},
                earliest=min(r["first_at"] for r in summary if r["first_at"]),
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


def campaign_details(row: dict) -> tuple[dict, list[tuple[str, int]]]:
    """One campaign's row with only its replies and STOPs, and its recipients' delivery states, most first."""
    # Receipts are linked to the campaign too; they show as the recipients' states, not as replies.
    row["replies"] = [r for r in row["replies"] if r["kind"] in ("reply", "stop")]
    deliveries: dict[str, int] = {}
    for r in row["recipients"]:
        deliveries[r["status"] or ""] = deliveries.get(r["status"] or "", 0) + 1
    return row, sorted(deliveries.items(), key=lambda kv: -kv[1])


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
