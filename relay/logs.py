"""Logging: one line per event on stderr for journald, as text or JSON; secrets never logged."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys

import orjson

_TOKEN_PATH = re.compile(r"/octopush/[^/?\s\"']+")


def mask(path: str) -> str:
    """The request path with the callback token replaced: the token is a secret."""
    return _TOKEN_PATH.sub("/octopush/***", path)


def mask_url(url: str) -> str:
    """A database URL with its password (if it holds one) replaced by ***: what a message may show."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "postgresql://***"
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        if record.exc_info:
            data["exception"] = mask(self.formatException(record.exc_info))
        return orjson.dumps(data).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class SecretFilter(logging.Filter):
    """Last line of defence: a known secret never reaches the output, whatever logged it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for s in self.secrets:
                    message = message.replace(s, "***")
                record.msg, record.args = message, None
        return True


_listener: logging.handlers.QueueListener | None = None


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test may have swapped it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(fmt: str = "text", level: str = "info", secrets: list[str] | None = None) -> None:
    """Records are formatted and masked on the caller's side; a thread does the writing, off the event loop."""
    global _listener
    stream = _Stderr()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    secret_filter = SecretFilter(secrets or [])
    if _listener is not None:
        _listener.stop()
    records: queue.SimpleQueue = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    handler.setFormatter(formatter)
    handler.addFilter(secret_filter)
    _listener = logging.handlers.QueueListener(records, stream)
    _listener.start()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access lines come through our AccessLogger; quiet the chatty libraries.
    for name in ("apscheduler", "aiosmtpd", "mail.log", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def flush() -> None:
    """Write out every queued record now (the listener drains its queue when stopped)."""
    if _listener is not None:
        _listener.stop()
        _listener.start()


@atexit.register
def _flush_at_exit() -> None:
    if _listener is not None:
        _listener.stop()
