"""The HTTP listener's connections: at most `http.max_connections`, each cut off when its client is too slow.

aiohttp has no timeout for reading a request: a client that connects and sends nothing, or drips a header
or a body one byte at a time, holds its connection (a file descriptor) for as long as it likes. So each
connection runs behind a small watchdog protocol, on the client's clock: from the moment it connects (or
is answered), its client has `http.request_timeout` seconds to send a complete request, headers and body;
`client_deadline` (a middleware) reads the body and stops the clock while the relay works on the request.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from relay.guard import ConnectionCap

log = logging.getLogger("relay.http")

_BUSY = b"503: too many connections, try again in a moment\n"
TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class Watched(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a deadline that only the client's slowness trips.

    It forwards every transport event, counts the connection in the listener's cap, and closes the
    transport when the deadline passes while the connection waits for its client.
    """

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap, timeout: float):
        self.inner, self.cap, self.timeout = inner, cap, timeout
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        cap.held += 1  # counted from its creation, so a burst of accepts cannot overshoot the cap

    # -- the deadline

    def waiting(self) -> None:
        """The connection waits for its client's next request: start the clock."""
        self.working()
        if self.transport is not None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._too_slow)

    def working(self) -> None:
        """A complete request arrived: the relay's own time does not count."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            # The client is still reading its last answer (a large CSV export over a slow link). How fast it
            # reads cannot be told from here (the kernel's buffers hold megabytes), so that is not cut; the
            # connection cap bounds such readers.
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._too_slow)
            return
        peer = self.transport.get_extra_info("peername")
        log.info(
            "HTTP connection from %s closed: no complete request within %.0f s (http.request_timeout)",
            peer[0] if peer else "unknown",
            self.timeout,
        )
        self.transport.close()

    # -- the transport's events, forwarded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(transport)
        self.waiting()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.working()
        self.cap.held -= 1
        self.transport = None
        self.inner.connection_lost(exc)


def _watched(request: web.BaseRequest) -> Watched | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Watched) else None


@web.middleware
async def client_deadline(request: web.Request, handler):
    """A request is complete once its body has arrived: read it under the connection's deadline, then stop the
    clock for the handler (whose reads get the same bytes), and start it again for the next request."""
    watched = _watched(request)
    if watched is None:
        return await handler(request)
    if request.body_exists:
        try:
            await request.read()  # client_max_size answers 413 for an endless body
        except ConnectionError:  # cut off by the deadline (or gone): nobody to answer, nothing to log
            raise web.HTTPRequestTimeout() from None
    watched.working()
    try:
        return await handler(request)
    finally:
        watched.waiting()


class CappedSite(web.BaseSite):
    """A TCP site whose connections are `Watched`, at most `cap.limit` at once: one more gets 503 and is closed."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int, timeout: float):
        super().__init__(runner)
        self._host, self._port, self._timeout = host, port, timeout
        self.cap = ConnectionCap("HTTP", "http.max_connections", max_connections, TOO_MANY)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _protocol(self) -> asyncio.Protocol:
        if self.cap.full:
            return self.cap.refuse()
        return Watched(self._runner.server(), self.cap, self._timeout)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, reuse_address=True)
