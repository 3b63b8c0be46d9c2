"""When marketing SMS may go out: `[octopush] marketing_hours`, `marketing_days`, `marketing_holidays` (SPEC §5 "When").

French rules (and the default configuration) forbid marketing SMS at night, on
Sundays and on public holidays. A marketing campaign asked for outside them is
sent at the start of the next allowed window instead; alerts are never delayed.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from relay import clock
from relay.config import Octopush
from relay.statuses import Purpose

SEARCH_DAYS = 400  # every configuration allows at least one day a week; holidays never fill a year


@functools.lru_cache(maxsize=16)
def _holidays(region: str):
    import holidays

    return holidays.country_holidays(region)


def is_holiday(day: date, region: str) -> bool:
    return day in _holidays(region)


def next_allowed(moment: datetime, o: Octopush, region: str, tz: ZoneInfo) -> datetime | None:
    """None when `moment` is inside the marketing windows; else the start of the next window (aware, UTC)."""
    local = moment.astimezone(tz)
    opens, closes = o.marketing_hours or (time(0), None)
    for offset in range(SEARCH_DAYS):
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in o.marketing_days or (o.marketing_holidays and is_holiday(day, region)):
            continue
        start = datetime.combine(day, opens, tz)
        end = datetime.combine(day, closes, tz) if closes else datetime.combine(day + timedelta(days=1), time(0), tz)
        if offset == 0:
            if start <= local < end:
                return None
            if local >= end:
                continue
        return start.astimezone(UTC)
    return None  # no window within a year: unreachable with a valid configuration; send as asked


def schedule(req, o: Octopush, region: str, now: datetime | None = None):
    """The request with its send_at moved into the marketing windows when it is marketing; alerts as they are.

    Returns (request, moved): `moved` is True when the windows decided the time.
    """
    if req.purpose != Purpose.WHOLESALE:
        return req, False
    wanted = req.send_at or now or clock.now()
    later = next_allowed(wanted, o, region, clock.region_timezone(region))
    if later is None:
        return req, False
    return dataclasses.replace(req, send_at=later), True
