"""The words octorelay stores for statuses, kinds and purposes, as `StrEnum`s: one spelling for Python code.

Each value is exactly the string in the database (and in the API, the templates and the metrics' labels), so a
member compares equal to what a query returns and is stored as that string: no migration. The SQL in
`relay/storage/` still writes them as literals.
"""

from __future__ import annotations

from enum import StrEnum


class CampaignStatus(StrEnum):
    """A campaign (`campaigns.status`); SCHEDULED is only shown, never stored (`campaigns.public_status`)."""

    HELD = "held"  # waiting for its sender's approval (`approve_over`)
    QUEUED = "queued"  # its calls wait in the send queue
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SCHEDULED = "scheduled"


class SendStatus(StrEnum):
    """One Octopush call of a campaign (`sends.status`)."""

    HELD = "held"
    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker; a crash leaves it so, and the next start sends it again
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SET_ASIDE = "set_aside"  # failed too often (the Attention page)


class MailStatus(StrEnum):
    """An e-mail in the outbox (`outbox.status`)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Delivery(StrEnum):
    """What one delivery attempt of an e-mail decided: its row is sent, tried again later, failed, or was gone."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"  # deleted meanwhile (db purge)


class CallbackKind(StrEnum):
    """What Octopush posted (`callbacks.kind`)."""

    REPLY = "reply"
    DELIVERY = "delivery"
    STOP = "stop"
    UNRECOGNISED = "unrecognised"


class MailKind(StrEnum):
    """Why an e-mail was sent (`outbox.kind`, and the metrics' `kind` label); the template of most of them."""

    REPLY = "reply"
    DIGEST = "digest"
    CONFIRMATION = "confirmation"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    APPROVAL = "approval"
    ALERT = "alert"


class Purpose(StrEnum):
    """Octopush's `purpose`: the `[marketing]` tag and `--purpose marketing` mean WHOLESALE."""

    ALERT = "alert"
    WHOLESALE = "wholesale"


class SmsType(StrEnum):
    """Octopush's campaign `type`."""

    PREMIUM = "sms_premium"
    LOW_COST = "sms_low_cost"


class Origin(StrEnum):
    """Where a campaign was asked for (`campaigns.origin`)."""

    EMAIL = "email"
    CLI = "cli"
    WEB = "web"


class Confirm(StrEnum):
    """`smtp_in.confirm`: which campaigns' senders get an e-mail once Octopush has answered."""

    ALL = "all"
    ERRORS = "errors"
    NONE = "none"
