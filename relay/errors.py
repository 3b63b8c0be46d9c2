"""Errors shared across octorelay; each carries a message a person can act on."""


class RelayError(Exception):
    """Base class: a clear, user-facing failure (exit code 1, no traceback)."""


class ConfigError(RelayError):
    """The configuration is invalid; the message names the file and the key."""


class CannotCancel(RelayError):
    """A campaign that cannot be cancelled (any more); the message says why."""
