"""Load the TOML configuration once, merge it over `default.toml`, validate it into frozen objects.

Every problem is a `ConfigError` whose one line names the file and the key, so
`octorelay run` and `check-config` can exit 1 without a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay import numbers
from relay.errors import ConfigError
from relay.logs import mask_url
from relay.octopush.rules import TYPES, has_stop_mention

NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

DEFAULT_NAME = "built-in defaults"
ENV_CONFIG = "OCTORELAY_CONFIG"
PLACEHOLDERS = {"changeme", "change-me", "xxx", "your-api-key", "secret"}


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Emulator:
    reply_text: str
    reply_after: float
    credit: float


@dataclass(frozen=True)
class Octopush:
    mode: str
    base_url: str
    api_login: str
    api_key: str = field(repr=False)
    type: str
    purpose: str
    sender: str
    with_replies: bool
    auto_optimize_text: bool
    timeout: float
    retry_for: float
    low_credit: float
    marketing_hours: tuple[time, time] | None  # None: any hour
    marketing_days: frozenset[int]  # weekday numbers, Monday = 0
    marketing_holidays: bool
    emulator: Emulator


@dataclass(frozen=True)
class Http:
    listen: Listen
    public_url: str
    callback_token: str = field(repr=False)
    api_token: str = field(repr=False)
    ui_users: dict[str, str] = field(repr=False)
    request_timeout: float
    max_connections: int
    node_name: str  # which daemon answers (/healthz, logs): the host's name unless set, for several nodes (SPEC §8)


@dataclass(frozen=True)
class SmtpUser:
    """An SMTP AUTH login: its password hash, and the addresses it may send as (None: any allowed sender)."""

    hash: str = field(repr=False)
    senders: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SmtpIn:
    listen: Listen
    domain: str
    allowed_senders: tuple[str, ...]
    require_auth: bool
    users: dict[str, SmtpUser] = field(repr=False)
    sender_check: str
    trusted_authserv_id: str
    resolver: Listen | None
    tls_cert: str
    tls_key: str
    region: str
    max_recipients: int
    max_size: int
    max_commands: int
    command_timeout: float
    session_limit: float
    max_connections: int
    confirm: str
    stop_mention: str


@dataclass(frozen=True)
class SmtpOut:
    transport: str
    host: str
    port: int
    security: str
    username: str
    password: str = field(repr=False)
    sender: str  # the "from" key
    maildir: Path
    max_age: float
    timeout: float


@dataclass(frozen=True)
class Limits:
    daily_sms: int  # 0 = no limit
    sender_daily_sms: int
    approve_over: int
    approve_within: float
    countries: tuple[str, ...]


@dataclass(frozen=True)
class Storage:
    path: Path  # SQLite's file, and beside it the state directory (ignored as a database when `url` is set)
    retention_days: int
    url: str = ""  # postgresql://…: several daemons share this database (SPEC §8)
    password: str = field(default="", repr=False)

    @property
    def engine(self) -> str:
        return "postgresql" if self.url else "sqlite"

    @property
    def where(self) -> str:
        """The database as messages name it: the file, or the URL without its password."""
        return mask_url(self.url) if self.url else str(self.path)

    @property
    def state_dir(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class Log:
    format: str
    level: str


@dataclass(frozen=True)
class Subscription:
    name: str
    to: tuple[str, ...]
    mode: str
    schedule: str
    timezone: str
    group_by: str
    events: tuple[str, ...]
    countries: tuple[str, ...]
    send_empty: bool

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Config:
    source: str  # the file it came from, or DEFAULT_NAME
    octopush: Octopush
    http: Http
    smtp_in: SmtpIn
    smtp_out: SmtpOut
    limits: Limits
    storage: Storage
    log: Log
    templates_dir: Path | None
    groups: dict[str, Path]
    subscriptions: tuple[Subscription, ...]
    unread_secrets: tuple[str, ...] = ()  # secrets this command does not use whose file it could not read

    @property
    def display_tz(self) -> ZoneInfo:
        """Where people read times (web pages, `octorelay replies`): the first subscription's zone, else Paris."""
        return ZoneInfo(self.subscriptions[0].timezone if self.subscriptions else "Europe/Paris")

    @property
    def digests(self) -> list[Subscription]:
        return [sub for sub in self.subscriptions if sub.mode == "digest"]

    def subscription(self, name: str) -> Subscription:
        for sub in self.subscriptions:
            if sub.name == name:
                return sub
        known = ", ".join(s.name for s in self.subscriptions) or "none"
        raise ConfigError(f"{self.source}: no subscription named {name!r} (known: {known})")


# The running configuration, asked for at each use: a reload swaps it, and components built once see the new one.
ConfigSource = Callable[[], Config]


# ---------------------------------------------------------------- loading


def default_text() -> str:
    return resources.files("relay").joinpath("default.toml").read_text(encoding="utf-8")


def load(
    path: str | os.PathLike | None = None,
    *,
    env: dict[str, str] | None = None,
    secrets: typing.Collection[str] | None = None,
) -> Config:
    """Read `path` (else $OCTORELAY_CONFIG, else nothing) over the defaults and validate it.

    `secrets` names the secrets the caller uses ("octopush.api_key", …; None: all of them). A secret outside it
    whose file cannot be read (a systemd credential, readable only by the service) is left empty and listed in
    `Config.unread_secrets`, so an admin command never fails for a secret it does not use (SPEC §1).
    """
    env = dict(os.environ if env is None else env)
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    raw = tomllib.loads(default_text())
    source = DEFAULT_NAME
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the configuration: {exc.strerror}") from None
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        raw = _merge(raw, user, source, "")
    # Relative paths are read from the working directory (systemd's WorkingDirectory).
    return _validate(raw, source, env, Path.cwd(), secrets)


def _merge(default: dict, user: dict, source: str, prefix: str) -> dict:
    """Tables merge key by key (unknown keys refused); lists and values replace."""
    merged = dict(default)
    for key, value in user.items():
        where = f"{prefix}{key}"
        if key not in default:
            raise ConfigError(f"{source}: unknown key {where!r}{did_you_mean(key, default, prefix)}")
        if isinstance(default[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {where!r} must be a table")
            merged[key] = value if key in _FREE_TABLES else _merge(default[key], value, source, where + ".")
        else:
            merged[key] = value
    return merged


def did_you_mean(key: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """' — did you mean 'allowed_senders'?' for a key close to a known one, else ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" — did you mean {prefix + close[0]!r}?" if close else ""


NOT_A_HASH = "must be a password hash: `octorelay hash-password` (scrypt), or an Argon2 or Django pbkdf2_sha256 one"

# Tables whose keys are the user's own names (users, groups) rather than settings.
_FREE_TABLES = {"ui_users", "users", "groups"}


# ---------------------------------------------------------------- validation


class _Checker:
    """Type and value checks that name the key in their message."""

    def __init__(self, source: str, section: str, data: dict, secrets: typing.Collection[str] | None = None):
        self.source, self.section, self.data = source, section, data
        self.secrets = secrets  # the secrets the command uses; None: all
        self.unread: list[str] = []  # secrets not used whose file could not be read

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {self.section}{key}: {message}")

    def get(self, key: str, kind: type | types.UnionType):
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, bool):
            self.fail(key, f"must be a whole number, not {value!r}")
        if not isinstance(value, kind):
            names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
            self.fail(key, f"must be {names.get(kind, kind)}, not {value!r}")
        return value

    def choice(self, key: str, options: typing.Iterable[str]) -> str:
        value = self.get(key, str)
        options = tuple(options)
        if value not in options:
            self.fail(key, f"must be one of {', '.join(map(repr, options))}, not {value!r}")
        return value

    def positive(self, key: str, kind: type = float, *, zero: bool = False):
        value = self.get(key, kind)
        if value < 0 or (value == 0 and not zero):
            self.fail(key, f"must be {'0 or more' if zero else 'more than 0'}, not {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"must be a list of strings, not {value!r}")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, str]:
        value = self.data[key]
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.fail(key, 'must be a table of name = "string"')
        return dict(value)

    def listen(self, key: str) -> Listen:
        value = self.get(key, str)
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            self.fail(key, f"must be HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), not {value!r}")
        return Listen(host, int(port))

    def secret(self, key: str, env: dict[str, str], env_name: str | None) -> str:
        """The `<key>_file` file, else the environment variable, else the inline value."""
        file_key = f"{key}_file"
        path = self.data.get(file_key, "")
        if path:
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                if self.secrets is None or f"{self.section}{key}" in self.secrets:
                    self.fail(file_key, f"cannot read {path}: {exc.strerror}")
                self.unread.append(f"{self.section}{file_key} ({path}: {exc.strerror})")
                return ""
        elif env_name and env.get(env_name):
            value = env[env_name].strip()
        else:
            value = self.get(key, str)
        if value.lower() in PLACEHOLDERS:
            self.fail(key, "is still a placeholder value; put the real secret there")
        return value


def _section(raw: dict, source: str, name: str, secrets: typing.Collection[str] | None = None) -> _Checker:
    data = raw[name] if "." not in name else raw[name.split(".")[0]][name.split(".")[1]]
    return _Checker(source, name + ".", data, secrets)


def _validate(
    raw: dict, source: str, env: dict[str, str], base: Path, secrets: typing.Collection[str] | None = None
) -> Config:
    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)

    c = _section(raw, source, "octopush", secrets)
    e = _section(raw, source, "octopush.emulator")
    purpose = c.choice("purpose", ("alert", "marketing", "wholesale"))
    octopush = Octopush(
        mode=c.choice("mode", ("live", "simulation", "emulator")),
        base_url=c.get("base_url", str).rstrip("/"),
        api_login=env.get("OCTOPUSH_API_LOGIN") or c.get("api_login", str),
        api_key=c.secret("api_key", env, "OCTOPUSH_API_KEY"),
        type=c.choice("type", ("sms_premium", "sms_low_cost")),
        purpose="wholesale" if purpose == "marketing" else purpose,
        sender=c.get("sender", str),
        with_replies=c.get("with_replies", bool),
        auto_optimize_text=c.get("auto_optimize_text", bool),
        timeout=c.positive("timeout"),
        retry_for=c.positive("retry_for", zero=True),
        low_credit=c.positive("low_credit", zero=True),
        marketing_hours=_hours(c, "marketing_hours"),
        marketing_days=_days(c, "marketing_days"),
        marketing_holidays=c.get("marketing_holidays", bool),
        emulator=Emulator(
            reply_text=e.get("reply_text", str),
            reply_after=e.positive("reply_after", zero=True),
            credit=e.positive("credit", zero=True),
        ),
    )
    if octopush.retry_for >= 86400:
        c.fail("retry_for", "must stay under 86400 s: Octopush forgets a request_id after 24 h")
    if not octopush.base_url.startswith(("http://", "https://")):
        c.fail("base_url", f"must be an http(s) URL, not {octopush.base_url!r}")
    if octopush.sender and not _valid_sender(octopush.sender):
        c.fail("sender", "must be 3 to 11 letters or digits, without space, accent or punctuation")
    has_key = octopush.api_key or any("octopush.api_key_file" in u for u in c.unread)
    if octopush.mode != "emulator" and not (octopush.api_login and has_key):
        c.fail("api_key", f"mode {octopush.mode!r} needs api_login and api_key (or api_key_file)")

    h = _section(raw, source, "http", secrets)
    http = Http(
        listen=h.listen("listen"),
        public_url=h.get("public_url", str).rstrip("/"),
        callback_token=h.secret("callback_token", env, "OCTORELAY_CALLBACK_TOKEN"),
        api_token=h.secret("api_token", env, "OCTORELAY_API_TOKEN"),
        ui_users=h.mapping("ui_users"),
        request_timeout=h.positive("request_timeout"),
        max_connections=h.positive("max_connections", int),
        node_name=h.get("node_name", str).strip() or socket.gethostname(),
    )
    if not NODE_NAME.fullmatch(http.node_name):
        h.fail("node_name", f"{http.node_name!r}: use 1 to 64 letters, digits, '.', '-' or '_'")
    if not http.listen.loopback and not http.ui_users:
        h.fail("ui_users", f"listen = {str(http.listen)!r} is not loopback: add ui_users for the web interface")
    for user, hashed in http.ui_users.items():
        if not _is_hash(hashed):
            h.fail(f"ui_users.{user}", NOT_A_HASH)

    s = _section(raw, source, "smtp_in")
    smtp_in = SmtpIn(
        listen=s.listen("listen"),
        domain=s.get("domain", str).lower(),
        allowed_senders=s.strings("allowed_senders"),
        require_auth=s.get("require_auth", bool),
        users=_smtp_users(s),
        sender_check=s.choice("sender_check", ("envelope", "dkim")),
        trusted_authserv_id=s.get("trusted_authserv_id", str).strip(),
        resolver=s.listen("resolver") if s.get("resolver", str) else None,
        tls_cert=s.get("tls_cert", str),
        tls_key=s.get("tls_key", str),
        region=s.get("region", str).upper(),
        max_recipients=s.positive("max_recipients", int),
        max_size=s.positive("max_size", int),
        max_commands=s.positive("max_commands", int),
        command_timeout=s.positive("command_timeout"),
        session_limit=s.positive("session_limit"),
        max_connections=s.positive("max_connections", int),
        confirm=s.choice("confirm", ("all", "errors", "none")),
        stop_mention=s.get("stop_mention", str),
    )
    if smtp_in.stop_mention and not any(has_stop_mention(smtp_in.stop_mention, t) for t in TYPES):
        s.fail(
            "stop_mention",
            "must hold, written exactly so (case included), 'STOP au ' and the short number or XXXXX "
            "(premium, e.g. 'STOP au 30101') or 'no PUB=STOP' (low-cost)",
        )
    if not numbers.is_region(smtp_in.region):
        s.fail("region", f"{smtp_in.region!r} is not an ISO region code phonenumbers knows (e.g. FR)")
    if bool(smtp_in.tls_cert) != bool(smtp_in.tls_key):
        s.fail("tls_key", "tls_cert and tls_key go together")
    if smtp_in.require_auth and not smtp_in.users:
        s.fail("users", "require_auth = true needs at least one user")
    if not smtp_in.listen.loopback and not smtp_in.require_auth and smtp_in.sender_check == "envelope":
        # An envelope sender is trivially forged: outside loopback only AUTH or DKIM tells who is sending SMS.
        s.fail(
            "require_auth",
            f"listen = {str(smtp_in.listen)!r} is not loopback: set require_auth = true and users, "
            'or sender_check = "dkim"',
        )
    if octopush.marketing_holidays:
        try:
            _region_holidays(smtp_in.region)
        except NotImplementedError:
            c.fail("marketing_holidays", f"the holidays library has no calendar for region {smtp_in.region!r}")
    if not smtp_in.domain or "@" in smtp_in.domain:
        s.fail("domain", f"must be a domain name, not {smtp_in.domain!r}")

    o = _section(raw, source, "smtp_out", secrets)
    smtp_out = SmtpOut(
        transport=o.choice("transport", ("smtp", "maildir")),
        host=o.get("host", str),
        port=o.positive("port", int),
        security=o.choice("security", ("none", "starttls", "tls")),
        username=o.get("username", str),
        password=o.secret("password", env, "OCTORELAY_SMTP_PASSWORD"),
        sender=o.get("from", str),
        maildir=path(o.get("maildir", str)),
        max_age=o.positive("max_age"),
        timeout=o.positive("timeout"),
    )
    if "@" not in smtp_out.sender or "\n" in smtp_out.sender or "\r" in smtp_out.sender:
        o.fail("from", f"must be an e-mail address like 'octorelay <relay@example.org>', not {smtp_out.sender!r}")

    lm = _section(raw, source, "limits")
    limits = Limits(
        daily_sms=lm.positive("daily_sms", int, zero=True),
        sender_daily_sms=lm.positive("sender_daily_sms", int, zero=True),
        approve_over=lm.positive("approve_over", int, zero=True),
        approve_within=lm.positive("approve_within"),
        countries=tuple(x.strip().upper() for x in lm.strings("countries")),
    )
    for code in limits.countries:
        if not numbers.is_region(code):
            lm.fail("countries", f"{code!r} is not an ISO country code (e.g. FR, BE)")

    st = _section(raw, source, "storage", secrets)
    url = st.get("url", str).strip()
    if url:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            st.fail("url", f"is not a valid URL ({exc}): {mask_url(url)!r}")
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            st.fail("url", f"must be postgresql://user@host:5432/database, not {mask_url(url)!r}")
    storage = Storage(
        path=path(st.get("path", str)),
        retention_days=st.positive("retention_days", int, zero=True),
        url=url,
        password=st.secret("password", env, "OCTORELAY_DB_PASSWORD"),
    )

    lg = _section(raw, source, "log")
    log = Log(
        format=lg.choice("format", ("text", "json")),
        level=lg.choice("level", ("debug", "info", "warning", "error")),
    )

    t = _section(raw, source, "templates")
    templates_dir = path(t.get("dir", str)) if t.get("dir", str) else None

    g = _Checker(source, "groups.", raw["groups"])
    groups = {name.lower(): path(g.get(name, str)) for name in raw["groups"]}

    subscriptions = _subscriptions(raw.get("subscriptions", []), source)
    return Config(
        source=source,
        octopush=octopush,
        http=http,
        smtp_in=smtp_in,
        smtp_out=smtp_out,
        limits=limits,
        storage=storage,
        log=log,
        templates_dir=templates_dir,
        groups=groups,
        subscriptions=subscriptions,
        unread_secrets=tuple(c.unread + h.unread + o.unread + st.unread),
    )


def _subscriptions(items: object, source: str) -> tuple[Subscription, ...]:
    from apscheduler.triggers.cron import CronTrigger

    if not isinstance(items, list):
        raise ConfigError(f"{source}: subscriptions must be an array of tables ([[subscriptions]])")
    defaults = tomllib.loads(default_text())["subscriptions"][0]
    result, names = [], set()
    for index, item in enumerate(items):
        prefix = f"subscriptions[{index}]."
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: subscriptions[{index}] must be a table")
        for key in item:
            if key not in defaults:
                raise ConfigError(f"{source}: unknown key {prefix + key!r}{did_you_mean(key, defaults, prefix)}")
        if "name" not in item or "to" not in item:
            raise ConfigError(f"{source}: {prefix}name and {prefix}to are required")
        c = _Checker(source, prefix, {**defaults, **item})
        sub = Subscription(
            name=c.get("name", str),
            to=c.strings("to"),
            mode=c.choice("mode", ("instant", "digest")),
            schedule=c.get("schedule", str),
            timezone=c.get("timezone", str),
            group_by=c.choice("group_by", ("country", "date")),
            events=c.strings("events"),
            countries=tuple(x.upper() for x in c.strings("countries")),
            send_empty=c.get("send_empty", bool),
        )
        if not sub.name or sub.name in names:
            c.fail("name", f"must be a unique, non-empty name, not {sub.name!r}")
        names.add(sub.name)
        if not sub.to or not all("@" in a and "\n" not in a for a in sub.to):
            c.fail("to", "must list e-mail addresses")
        for event in sub.events:
            if event not in ("reply", "delivery", "stop"):
                c.fail("events", f"{event!r} is not one of 'reply', 'delivery', 'stop'")
        try:
            tz = ZoneInfo(sub.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            c.fail("timezone", f"unknown timezone {sub.timezone!r} (e.g. Europe/Paris)")
        if sub.mode == "digest":
            try:
                CronTrigger.from_crontab(sub.schedule, timezone=tz)
            except ValueError as exc:
                c.fail("schedule", f"bad cron expression {sub.schedule!r}: {exc}")
        result.append(sub)
    return tuple(result)


def _smtp_users(s: _Checker) -> dict[str, SmtpUser]:
    """`user = "hash"`, or `user = { hash = "…", senders = ["alice@example.org"] }`."""
    value = s.data["users"]
    if not isinstance(value, dict):
        s.fail("users", 'must be a table of user = "hash" or user = { hash = "…", senders = [...] }')
    users = {}
    for name, entry in value.items():
        if isinstance(entry, str):
            entry = {"hash": entry}
        if not isinstance(entry, dict):
            s.fail(f"users.{name}", 'must be "hash" or { hash = "…", senders = ["alice@example.org"] }')
        unknown = set(entry) - {"hash", "senders"}
        if unknown:
            s.fail(f"users.{name}", f"unknown key {sorted(unknown)[0]!r} (known: hash, senders)")
        hashed, senders = entry.get("hash"), entry.get("senders")
        if not isinstance(hashed, str) or not _is_hash(hashed):
            s.fail(f"users.{name}", NOT_A_HASH)
        if senders is not None and (
            not isinstance(senders, list) or not senders or not all(isinstance(x, str) and x.strip() for x in senders)
        ):
            s.fail(f"users.{name}.senders", "must be a non-empty list of addresses or globs")
        users[name] = SmtpUser(hashed, tuple(senders) if senders is not None else None)
    return users


_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(c: _Checker, key: str) -> frozenset[int]:
    """Day names and ranges: "mon-sat", "mon-fri,sun", "mon-sun"."""
    text = c.get(key, str).strip().lower()
    days: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, dash, last = (x.strip()[:3] for x in item.partition("-"))
        if first not in _DAY_NAMES or (dash and last not in _DAY_NAMES):
            c.fail(key, f'{item!r} is not a day or a range of days like "mon-sat" or "mon-fri,sun"')
        start, end = _DAY_NAMES.index(first), _DAY_NAMES.index(last if dash else first)
        days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)])
    if not days:
        c.fail(key, 'must name at least one day, e.g. "mon-sat" ("mon-sun" is every day)')
    return frozenset(days)


def _hours(c: _Checker, key: str) -> tuple[time, time] | None:
    """ "08:00-20:00" (start included, end excluded); "" = any hour."""
    text = c.get(key, str).strip()
    if not text:
        return None
    start, dash, end = text.partition("-")
    try:
        if not dash:
            raise ValueError
        first, last = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        c.fail(key, f'must be "HH:MM-HH:MM" (e.g. "08:00-20:00") or "", not {text!r}')
    if first >= last:
        c.fail(key, f"the window {text!r} must start before it ends, within one day")
    return first, last


def _region_holidays(region: str):
    import holidays

    return holidays.country_holidays(region)


def _valid_sender(sender: str) -> bool:
    return 3 <= len(sender) <= 11 and all(ch.isascii() and ch.isalnum() for ch in sender)


def _is_hash(value: str) -> bool:
    from relay.passwords import is_hash

    return is_hash(value)


def replace(config: Config, **changes) -> Config:
    """A copy with top-level sections swapped: used by tests and by the daemon after binding."""
    return dataclasses.replace(config, **changes)
