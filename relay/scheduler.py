"""APScheduler 3 on the daemon's loop: digests (cron, their timezone), sweeps, purge, credit check."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from relay import clock
from relay.config import Config, ConfigSource, Subscription
from relay.storage.database import Store
from relay.storage.digests import init_digests

log = logging.getLogger("relay.scheduler")


def digest_trigger(sub: Subscription) -> CronTrigger:
    return CronTrigger.from_crontab(sub.schedule, timezone=sub.tz)


def next_runs(config: Config, now: datetime | None = None) -> dict[str, datetime | None]:
    """Each digest subscription's next run, for check-config."""
    now = now or clock.now()
    return {s.name: digest_trigger(s).get_next_fire_time(None, now) for s in config.digests}


def missed(sub: Subscription, last_run_at: str | None, now: datetime) -> bool:
    """True when a scheduled run fell between the last run and now (the daemon was down)."""
    if not last_run_at:
        return False
    upcoming = digest_trigger(sub).get_next_fire_time(None, clock.parse_iso(last_run_at))
    return upcoming is not None and upcoming <= now


# PostgreSQL: how often the counts' deltas are folded (each node; one at a time folds, the others skip). Longer
# than a write waits for a pooled connection (3 s), so while the database is away a fold has mostly failed
# before the next is due.
FOLD_SECONDS = 5


Job = Callable[[], Awaitable[object]]


class Scheduler:
    """Owns the AsyncIOScheduler and its jobs; rebuilt jobs on reload.

    It gets only what its jobs call: the workers' `wake` for the sweeps, the housekeeping jobs, the digests' runner.
    """

    def __init__(
        self,
        config: ConfigSource,
        store: Store,
        *,
        sweeps: Mapping[str, Callable[[], object]],
        check_credit: Job,
        purge: Job,
        run_digest: Callable[..., Awaitable[object]],  # (name, due=...)
        fold_counts: Job | None = None,  # PostgreSQL's only
    ):
        self.config, self.store, self.sweeps = config, store, sweeps
        self.check_credit, self.purge, self.run_digest = check_credit, purge, run_digest
        self.fold_counts = fold_counts
        self.scheduler: AsyncIOScheduler | None = None
        self._reloading = asyncio.Lock()

    async def start(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.start()
        await self.reload()

    async def stop(self) -> None:
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    async def reload(self) -> None:
        """(Re)create every job from the current configuration, then catch up missed digests once.

        Serialised: it removes every job and then awaits, so two at once would add the same job ids twice.
        """
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        config = self.config()
        s = self.scheduler
        s.remove_all_jobs()
        for name, wake in self.sweeps.items():
            s.add_job(wake, IntervalTrigger(seconds=60), id=f"{name}-sweep")
        s.add_job(self.check_credit, IntervalTrigger(hours=1), id="credit-check", next_run_time=clock.now())
        if config.storage.retention_days > 0:
            s.add_job(self.purge, IntervalTrigger(days=1), id="retention-purge", next_run_time=clock.now())
        if self.fold_counts:
            s.add_job(
                self.fold_counts,
                IntervalTrigger(seconds=FOLD_SECONDS),
                id="fold-counts",
                coalesce=True,
                misfire_grace_time=None,  # late on a busy loop is still wanted, and not worth a warning
            )
        digests = config.digests
        state = await self.store.write(partial(init_digests, names=[sub.name for sub in digests]))
        now = clock.now()
        for sub in digests:
            s.add_job(
                self._digest,
                digest_trigger(sub),
                args=[sub.name],
                id=f"digest-{sub.name}",
                misfire_grace_time=3600,
                coalesce=True,
                max_instances=1,
            )
            if missed(sub, state.get(sub.name), now):
                log.info("digest %s: a run was missed while stopped; catching up once", sub.name)
                # No grace limit: a busy start must not make APScheduler drop the catch-up as "missed".
                s.add_job(
                    self._digest,
                    args=[sub.name],
                    id=f"catch-up-{sub.name}",
                    next_run_time=now,
                    misfire_grace_time=None,
                )

    async def _digest(self, name: str) -> None:
        sub = self.config().subscription(name)

        def due(last_run_at: str | None) -> bool:
            # A slot fell since the last run. Every node fires the same slot: one that fires after another
            # node's run finds that run's time past the slot, and sends nothing.
            return last_run_at is None or missed(sub, last_run_at, clock.now())

        try:
            await self.run_digest(name, due=due)
        except Exception:  # noqa: BLE001 - a job logs; the next run tries again
            log.exception("digest %s failed", name)
