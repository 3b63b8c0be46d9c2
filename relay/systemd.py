"""The sd_notify protocol: tell systemd we are ready, reloading, stopping or alive; a no-op elsewhere."""

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("relay.systemd")


def _address(name: str) -> str | bytes:
    # "@name" is an abstract socket: its address starts with a NUL byte, not an "@".
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(*states: str) -> bool:
    """Send `states` as one datagram to $NOTIFY_SOCKET; False when there is none or sending fails."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name or not states:
        return False
    if not name.startswith(("/", "@")):
        log.debug("ignoring NOTIFY_SOCKET %r: neither a path nor an abstract name", name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        log.debug("sd_notify %s to %s failed: %s", states, name, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", f"STATUS={status}") if status else notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=stopping")


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp systemd ≥ 253 requires for Type=notify-reload."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), None when the watchdog is off or not ours."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6


class Watchdog:
    """Pings the systemd watchdog from the event loop, so a stuck loop gets the service restarted."""

    def __init__(self, interval: float | None = None) -> None:
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float | None:
        """The given interval, else the one systemd asks for through the environment."""
        return self._interval if self._interval is not None else watchdog_interval()

    async def start(self) -> None:
        interval = self.interval
        if interval is None or self._task is not None:
            return
        log.debug("pinging the systemd watchdog every %.3fs", interval)
        self._task = asyncio.create_task(self._run(interval), name="systemd-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() neither re-raises the task's CancelledError nor swallows our own cancellation.
        await asyncio.wait([task])

    async def _run(self, interval: float) -> None:
        while True:
            watchdog()
            await asyncio.sleep(interval)
