"""Logging: one line per event on stderr for journald, as text or JSON; secrets never logged."""

from __future__ import annotations

import logging
import sys

import orjson

from relay.web.middlewares import mask


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
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


def setup(fmt: str = "text", level: str = "info", secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets or []))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access lines come through our AccessLogger; quiet the chatty libraries.
    for name in ("apscheduler", "aiosmtpd", "mail.log", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
