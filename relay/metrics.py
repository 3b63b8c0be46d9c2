"""Prometheus metrics, on a registry of the daemon's own (tests run several daemons in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.callbacks = Counter("octorelay_callbacks", "Octopush callbacks received", ["kind", "outcome"], registry=r)
        self.callback_seconds = Histogram(
            "octorelay_callback_seconds",
            "Time from request to the committed answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.sms_sent = Counter("octorelay_sms_campaigns_sent", "Octopush campaigns sent", registry=r)
        self.sms_failed = Counter("octorelay_sms_campaigns_failed", "Octopush campaigns refused", ["code"], registry=r)
        self.emails_sent = Counter("octorelay_emails_sent", "E-mails accepted by the transport", ["kind"], registry=r)
        self.emails_failed = Counter("octorelay_emails_failed", "E-mails given up", ["kind"], registry=r)
        self.emails_retried = Counter("octorelay_emails_retried", "E-mail delivery attempts to retry", registry=r)
        self.smtp_in = Counter("octorelay_smtp_messages", "E-mails received on SMTP", ["outcome"], registry=r)
        self.outbox_depth = Gauge("octorelay_outbox_pending", "E-mails waiting in the outbox", registry=r)
        self.send_queue_depth = Gauge("octorelay_send_queue_pending", "Octopush calls waiting", registry=r)
        self.set_aside = Gauge(
            "octorelay_set_aside", "Rows set aside after repeated failures (the Attention page)", ["work"], registry=r
        )
        # NaN until the first balance check (at start, then hourly) or send answer says how much is left.
        self.credit = Gauge("octorelay_octopush_credit_euros", "Octopush credit left, in euros", registry=r)
        self.credit.set(float("nan"))
        self.credit_sms = Gauge(
            "octorelay_octopush_credit_sms",
            "Octopush credit left, in SMS of the default type to smtp_in.region (Octopush's own count)",
            registry=r,
        )
        self.credit_sms.set(float("nan"))
        self.sms_used_today = Gauge(
            "octorelay_sms_used_today",
            "SMS parts x numbers accepted today, per [limits] rule (sender_daily_sms: the busiest sender)",
            ["limit"],
            registry=r,
        )
        self.sms_limit = Gauge(
            "octorelay_sms_limit", "The [limits] value of each rule (0 = no limit)", ["limit"], registry=r
        )
        self.e2e_seconds = Histogram(
            "octorelay_notify_seconds",
            "Time from a callback's arrival to its e-mails committed in the outbox (callbacks e-mailed at once only)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
