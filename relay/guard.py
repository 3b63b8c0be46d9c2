"""What every listener shares against abuse: the failed-login limiter and the connection cap (SPEC §3).

Every failed login and every refusal is one log line on `relay.auth` naming the peer address, in a
fixed form that `systemd/fail2ban/` matches: `login failed from ADDRESS: …` and
`login refused from ADDRESS: …`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

log = logging.getLogger("relay.auth")

MAX_FAILURES = 5  # failed logins from one address within WINDOW ...
WINDOW = 60.0  # ... block that address for BLOCK seconds
BLOCK = 60.0
MAX_TRACKED = 10_000  # addresses remembered at once; the oldest is forgotten first
CAP_LOG_EVERY = 10.0  # seconds between two "listener full" lines while a flood lasts


def address_key(peer: str) -> str:
    """The unit that is limited: an IPv4 address, or an IPv6 /64 (one subscriber's whole network)."""
    try:
        ip = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return peer
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


def printable(text: str, limit: int = 64) -> str:
    """A user-chosen string (a login) fit for one log line: quoted, escaped and bounded."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


class LoginGuard:
    """Counts failed logins per address; after MAX_FAILURES within WINDOW, the address is refused for BLOCK.

    One guard serves the web interface and SMTP AUTH, so guesses spread over both count together.
    Runs on the event loop only (no locking).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[str, float] = {}

    def retry_after(self, peer: str) -> float:
        """Seconds this address stays refused; 0 when it may try."""
        key = address_key(peer)
        until = self._blocked.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._blocked[key]
            return 0.0
        return left

    def refused(self, peer: str, what: str) -> float:
        """If this address is blocked, log the refusal and return the seconds left; else 0."""
        left = self.retry_after(peer)
        if left:
            log.warning(
                "login refused from %s: %s, after %d failed logins (for %.0f s more)", peer, what, MAX_FAILURES, left
            )
        return left

    def failed(self, peer: str, what: str) -> None:
        """Record and log one failed login; the MAX_FAILURES-th within WINDOW blocks the address."""
        now = self._clock()
        key = address_key(peer)
        times = self._failures.pop(key, None) or deque()
        while times and times[0] <= now - WINDOW:
            times.popleft()
        times.append(now)
        log.warning("login failed from %s: %s", peer, what)
        if len(times) >= MAX_FAILURES:
            self._blocked[key] = now + BLOCK
            log.warning(
                "login refused from %s: %d failed logins within %.0f s, blocked for %.0f s",
                peer,
                len(times),
                WINDOW,
                BLOCK,
            )
            return
        self._failures[key] = times  # most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        if len(self._blocked) > MAX_TRACKED:
            self._blocked = {k: t for k, t in self._blocked.items() if t > now}


class ConnectionCap:
    """How many connections one listener holds, and the refusal of one more: an answer, then close.

    A refused connection gets its protocol's own answer (`503` / `421`), so the client retries later. The
    "listener full" line is logged at most every CAP_LOG_EVERY seconds, with how many were refused since:
    a flood must not become a flood of log lines.
    """

    def __init__(self, name: str, key: str, limit: int, answer: bytes):
        self.name, self.key, self.limit, self.answer = name, key, limit, answer
        self.held = 0
        self._refused_since = 0
        self._last_line = float("-inf")

    @property
    def full(self) -> bool:
        return self.held >= self.limit

    def refuse(self) -> asyncio.Protocol:
        return _Refuse(self)

    def _note_refused(self, peer: str) -> None:
        self._refused_since += 1
        now = time.monotonic()
        if now - self._last_line >= CAP_LOG_EVERY:
            log.warning(
                "%s listener full: it holds its maximum of %d connections (%s); refused %d connection(s), "
                "the last from %s",
                self.name,
                self.limit,
                self.key,
                self._refused_since,
                peer,
            )
            self._refused_since, self._last_line = 0, now


class _Refuse(asyncio.Protocol):
    """Answers a connection over the cap and closes it."""

    def __init__(self, cap: ConnectionCap):
        self.cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.cap._note_refused(peer[0] if peer else "unknown")
        transport.write(self.cap.answer)  # type: ignore[attr-defined]
        transport.close()
