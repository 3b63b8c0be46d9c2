"""Errors shared across octorelay; each carries a message a person can act on."""


class RelayError(Exception):
    """Base class: a clear, user-facing failure (exit code 1, no traceback)."""


class ConfigError(RelayError):
    """The configuration is invalid; the message names the file and the key."""


class CannotCancel(RelayError):
    """A campaign that cannot be cancelled (any more); the message says why."""


class Rejected(RelayError):
    """Input the relay refuses; .reason is one line a person can act on (SMTP 550 5.6.0 / 5.1.1 text)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
