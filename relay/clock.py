"""Time helpers: the store keeps UTC ISO 8601 text that sorts as it compares."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

OCTOPUSH_TZ = ZoneInfo("Europe/Paris")
OCTOPUSH_FORMAT = "%Y-%m-%d %H:%M:%S"


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None = None) -> str:
    """UTC ISO 8601 with microseconds: every stored time has this one shape, so text order is time order."""
    return (moment or now()).astimezone(UTC).isoformat(timespec="microseconds")


def ago(**delta: float) -> str:
    return iso(now() - timedelta(**delta))


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local(iso_text: str | None, tz: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A stored UTC time as people read it in `tz`; "" for none."""
    if not iso_text:
        return ""
    return parse_iso(iso_text).astimezone(tz).strftime(fmt)


FIRST_YEAR = 2000  # Octopush dates before this, or after next year, cannot be true: the relay does not trust them


def from_octopush(text: str) -> datetime | None:
    """Octopush dates are `Y-m-d H:i:s` in Europe/Paris local time; None when unreadable or out of range.

    Out of range: before 2000 or after next year. Such a date (year 1 cannot even be converted to UTC) is
    not believed; the caller uses the time the callback arrived instead.
    """
    text = text.strip() if isinstance(text, str) else ""
    # fromisoformat is ~10x faster than strptime, but reads more shapes: check this one first.
    if len(text) != 19 or text[4] != "-" or text[7] != "-" or text[10] != " " or text[13] != ":" or text[16] != ":":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if not FIRST_YEAR <= moment.year <= now().year + 1:
        return None
    return moment.replace(tzinfo=OCTOPUSH_TZ)


def to_octopush(moment: datetime) -> str:
    return moment.astimezone(OCTOPUSH_TZ).strftime(OCTOPUSH_FORMAT)


def region_timezone(region: str) -> ZoneInfo:
    """The main timezone of an ISO region (FR → Europe/Paris), for national times like [at:2026-12-01 09:00]."""
    from relay import numbers

    for zone in numbers.region_time_zones(region):
        try:
            return ZoneInfo(zone)
        except (KeyError, ValueError):
            continue
    return ZoneInfo("UTC")


_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ISO_HELP = "ISO 8601 (2026-11-24, 2026-11-24 08:00 or 2026-11-24T08:00:00+01:00)"


def parse_age(value: str) -> timedelta | None:
    """A relative time as people write it: `30m`, `2h`, `3d`, `1w`; None for anything else."""
    value = value.strip().lower()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        try:
            return timedelta(**{_UNITS[value[-1]]: int(value[:-1])})
        except OverflowError:
            raise ValueError(f"{value!r} is too long ago") from None
    return None


def parse_moment(value: str, tz: ZoneInfo | None = None) -> datetime:
    """An ISO 8601 date or date-time (a space for the T is fine); without an offset it is read in `tz` (else UTC)."""
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz or UTC)


def parse_when(value: str | None, tz: ZoneInfo | None = None) -> str | None:
    """A filter time: ISO 8601 date or date-time, or an age like 2h / 3d / 1w (that long ago); UTC ISO out."""
    if not value:
        return None
    value = value.strip()
    try:
        age = parse_age(value)
        if age is not None:
            return iso(now() - age)
        return iso(parse_moment(value, tz))
    except OverflowError:
        raise ValueError(f"{value!r} reaches back before the year 1") from None
    except ValueError:
        raise ValueError(f"expected {_ISO_HELP} or 2h/3d/1w, not {value!r}") from None


def parse_future(value: str, tz: ZoneInfo) -> datetime:
    """A time to send at: ISO 8601 (without an offset, in `tz`) or a delay like 30m / 2h / 1d from now; UTC out."""
    value = value.strip()
    try:
        age = parse_age(value)
        moment = now() + age if age is not None else parse_moment(value, tz)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            f"expected {_ISO_HELP}, read in {tz.key} time without an offset, or 30m/2h/1d from now, not {value!r}"
        ) from None
