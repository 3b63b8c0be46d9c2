"""The periodic jobs that belong to no worker: the hourly credit check, the retention purge, the /metrics gauges,
and on PostgreSQL the fold of the kept counts' deltas.

Each is a method of one small object holding the few handles it needs, so the scheduler and the web app get
these jobs without the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from relay import clock
from relay.config import ConfigSource
from relay.metrics import Metrics
from relay.notify import Notifier
from relay.octopush.client import OctopushClient
from relay.octopush.errors import OctopushError, TemporaryError
from relay.sending import Guards
from relay.storage import callbacks, guards, queues, retention
from relay.storage.database import Store, StoreError

log = logging.getLogger("relay.daemon")
PURGE_PAUSE = 0.02  # seconds at least between two purge batches


class Housekeeping:
    """The jobs the scheduler runs besides the workers' sweeps and the digests, and the gauges /metrics reads."""

    def __init__(
        self, config: ConfigSource, store: Store, metrics: Metrics, client: OctopushClient, notifier: Notifier
    ):
        self.config, self.store, self.metrics, self.client, self.notifier = config, store, metrics, client, notifier

    async def check_credit(self) -> float | None:
        """Hourly: ask Octopush for the credit (check-balance), export it, and alert under `low_credit`.

        Asked of Octopush, not read from the last send's answer: a relay that sends nothing for a week still
        learns its credit. The SMS count is Octopush's own for the default type and `smtp_in.region`.
        """
        cfg = self.config()
        try:
            balance = await self.client.check_balance()
            try:
                sms = (await self.client.check_balance(product=cfg.octopush.type, country=cfg.smtp_in.region)).amount
            except (OctopushError, TemporaryError) as exc:
                log.info("credit check: no SMS count for %s: %s", cfg.smtp_in.region, exc)
                sms = None
            self.metrics.credit.set(balance.amount)
            self.metrics.credit_sms.set(float("nan") if sms is None else sms)
            await self.notifier.check_credit(balance.amount, sms)
        except (OctopushError, TemporaryError) as exc:
            log.warning("credit check: %s", exc)
            return None
        except Exception:  # noqa: BLE001 - a job logs; the next hour tries again
            log.exception("credit check failed")
            return None
        return balance.amount

    async def refresh_gauges(self) -> None:
        depth = await self.store.read(queues.depths)
        self.metrics.outbox_depth.set(depth["outbox_pending"])
        self.metrics.send_queue_depth.set(depth["send_queue_pending"])
        for work, count in depth["set_aside"].items():
            self.metrics.set_aside.labels(work).set(count)
        config = self.config()
        limits = config.limits
        since = clock.iso(Guards.from_config(config).day()[0])
        used, top = await self.store.read(lambda db: (guards.used_since(db, since), guards.top_sender_since(db, since)))
        for name, value, limit in (
            ("daily_sms", used, limits.daily_sms),
            ("sender_daily_sms", top, limits.sender_daily_sms),
        ):
            self.metrics.sms_used_today.labels(name).set(value)
            self.metrics.sms_limit.labels(name).set(limit)

    async def purge(self, days: int | None = None) -> dict:
        """The retention purge in short batches, each its own commit: callbacks wait milliseconds, not seconds."""
        config = self.config()
        days = config.storage.retention_days if days is None else days
        batch = partial(retention.purge_batch, cutoff=clock.ago(days=days), digests=[s.name for s in config.digests])
        totals = dict.fromkeys(("callbacks", "outbox", "messages"), 0)
        while True:
            started = time.monotonic()
            counts = await self.store.write(batch)
            for key, n in counts.items():
                totals[key] += n
            if retention.purge_done(counts):
                break
            # The writes that queued meanwhile commit before the next batch: the purge takes a third of the time.
            await asyncio.sleep(max(PURGE_PAUSE, 2 * (time.monotonic() - started)))
        if any(totals.values()):
            log.info("purge: %(callbacks)d callbacks, %(outbox)d sent e-mails, %(messages)d message ids", totals)
        return totals

    async def fold_counts(self) -> int:
        """PostgreSQL, every few seconds (scheduler.FOLD_SECONDS): the counts' deltas into the counts
        (`callbacks.fold_counts`), so what the readers add up stays a few seconds of callbacks. In a transaction
        of its own: a fold that fails or takes long holds no callback. While the database is away /healthz says
        so; the next fold takes what this one could not."""
        try:
            return await self.store.write(callbacks.fold_counts, alone=True)
        except StoreError as exc:
            log.debug("fold of the counts: %s", exc)
        except Exception:  # noqa: BLE001 - a job logs; the next fold tries again
            log.exception("fold of the counts failed")
        return 0
