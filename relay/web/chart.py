"""The country view's chart: replies per day and per country, as stacked bars drawn on the server (SVG).

No JavaScript and no inline style (the CSP forbids both): the page embeds the SVG that
`templates/web/_chart.html` draws from the geometry computed here, with presentation attributes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from relay import clock

MAX_DAYS = 60  # the newest days of the filtered period; older ones would make bars too thin to read
MAX_SERIES = 5  # countries drawn apart; the rest are "Other"
COLOURS = ("#1f5fbf", "#e07b00", "#1c7c4a", "#b3261e", "#7b4fbf", "#8a93a3")
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 40


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Chart:
    """What the template draws; `empty` when there is nothing to show."""

    first: date | None = None
    last: date | None = None
    bars: list[Bar] = field(default_factory=list)
    legend: list[tuple[str, str, int]] = field(default_factory=list)  # (colour, label, replies)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # x labels: (x, "12 Nov")
    grid: list[tuple[float, int]] = field(default_factory=list)  # y lines: (y, value)
    days: int = 0
    truncated: bool = False
    width: int = WIDTH
    height: int = HEIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT

    @property
    def empty(self) -> bool:
        return not self.bars


def window_start(last: str, tz: ZoneInfo) -> str:
    """The UTC instant the chart starts at when the newest reply is `last`: MAX_DAYS local days up to its day.

    Only these hours are read and grouped; two years of replies made 250,000 (hour, country) groups at 300,000
    callbacks, and the page took a second.
    """
    # The day `build` puts the newest reply's hour in, and the window's first day's midnight floored to a
    # whole UTC hour (half-hour zones): `build` buckets whole hours, and drops the part before that day.
    newest = clock.parse_iso(last[:13] + ":00:00+00:00").astimezone(tz).date()
    midnight = datetime.combine(newest - timedelta(days=MAX_DAYS - 1), time(), tz).astimezone(UTC)
    return clock.iso(midnight.replace(minute=0, second=0, microsecond=0))


def build(
    hours: list[tuple[str, str, int]],
    tz: ZoneInfo,
    names: dict[str, str],
    *,
    totals: dict[str, int] | None = None,
    earliest: str | None = None,
) -> Chart:
    """The chart of `hours`: (UTC hour "2026-11-24T08", ISO country or "", replies), bucketed into `tz` days.

    `totals` (replies per country over the whole period) rank the countries and fill the legend, and `earliest`
    (the first reply's date) tells whether older days were left out, when `hours` covers only the window;
    without them both come from `hours`.
    """
    per_day: dict[date, dict[str, int]] = {}
    in_hours: dict[str, int] = {}
    days_of: dict[str, date] = {}  # one parse per hour, not per (hour, country)
    for hour, country, count in hours:
        day = days_of.get(hour)
        if day is None:
            day = days_of[hour] = clock.parse_iso(hour + ":00:00+00:00").astimezone(tz).date()
        per_day.setdefault(day, {})
        per_day[day][country] = per_day[day].get(country, 0) + count
        in_hours[country] = in_hours.get(country, 0) + count
    totals = totals or in_hours
    if not per_day:
        return Chart()
    last = max(per_day)
    first = max(min(per_day), last - timedelta(days=MAX_DAYS - 1))
    oldest = clock.parse_iso(earliest).astimezone(tz).date() if earliest else min(per_day)
    truncated = oldest < first
    ranked = sorted(set(totals) | set(in_hours), key=lambda c: (-totals.get(c, 0), c))
    series = ranked[:MAX_SERIES]
    others = [c for c in ranked if c not in series]
    colour = {c: COLOURS[i] for i, c in enumerate(series)}
    days = (last - first).days + 1
    chart = Chart(first=first, last=last, days=days, truncated=truncated)

    def stack(day: date) -> list[tuple[str, int]]:
        counts = per_day.get(day, {})
        parts = [(c, counts.get(c, 0)) for c in series]
        parts.append(("", sum(counts.get(c, 0) for c in others)))
        return [(c, n) for c, n in parts if n]

    peak = max(sum(n for _, n in stack(first + timedelta(days=i))) for i in range(days)) or 1
    top = _nice(peak)
    plot_w = chart.plot_right - chart.plot_left
    plot_h = chart.plot_bottom - chart.plot_top
    slot = plot_w / days
    bar_w = max(1.0, slot * 0.7)
    for i in range(days):
        day = first + timedelta(days=i)
        y = float(chart.plot_bottom)
        x = chart.plot_left + i * slot + (slot - bar_w) / 2
        for country, n in stack(day):
            h = n / top * plot_h
            y -= h
            label = names.get(country, country) if country in colour else "Other countries"
            chart.bars.append(
                Bar(
                    round(x, 1),
                    round(y, 1),
                    round(bar_w, 1),
                    round(h, 1),
                    colour.get(country, COLOURS[-1]),
                    f"{day:%d %b %Y}: {label}, {n}",
                )
            )
    step = max(1, round(days / 8))
    for i in range(0, days, step):
        day = first + timedelta(days=i)
        chart.ticks.append((round(chart.plot_left + (i + 0.5) * slot, 1), f"{day:%d %b}"))
    for value in sorted({0, top // 2, top}):
        chart.grid.append((round(chart.plot_bottom - value / top * plot_h, 1), value))
    chart.legend = [(colour[c], names.get(c, c) or "Unknown country", totals.get(c, 0)) for c in series]
    if others:
        chart.legend.append((COLOURS[-1], "Other countries", sum(totals.get(c, 0) for c in others)))
    return chart


def _nice(peak: int) -> int:
    """The axis top: a round number at or above the peak (1, 2, 3, 4, 5, 6, 8, 10, 20, 30 …)."""
    scale = 1
    while True:
        for step in (1, 2, 3, 4, 5, 6, 8):
            if step * scale >= peak:
                return step * scale
        scale *= 10
