"""The scheduler built alone from the handles it uses (no daemon): its jobs, and a missed digest caught up."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from relay import clock
from relay import config as config_mod
from relay.scheduler import Scheduler
from relay.storage.database import Store

pytestmark = pytest.mark.timeout(30)

SUBSCRIPTION = """
[storage]
path = "{db}"
retention_days = 30

[[subscriptions]]
name = "daily"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * *"
timezone = "Europe/Paris"
"""


async def test_the_scheduler_runs_on_narrow_handles(tmp_path):
    path = tmp_path / "octorelay.toml"
    path.write_text(SUBSCRIPTION.format(db=tmp_path / "octorelay.db"), encoding="utf-8")
    config = config_mod.load(path, env={})
    store = Store(config.storage.path)
    await store.start()
    # The digest last ran two days ago: a run was missed while the relay was stopped.
    two_days_ago = clock.iso(clock.now() - timedelta(days=2))
    await store.write(
        lambda db: db.execute(
            "INSERT INTO digests (name, last_callback_id, last_run_at) VALUES ('daily', 0, ?)", [two_days_ago]
        )
    )
    digests: list[str] = []
    credit = asyncio.Event()

    async def run_digest(name: str, *, due) -> None:
        assert due(two_days_ago)  # a slot fell since the last run
        digests.append(name)

    async def check_credit() -> None:
        credit.set()

    async def purge() -> None:
        pass

    scheduler = Scheduler(
        lambda: config,
        store,
        sweeps={"outbox": lambda: None, "send-queue": lambda: None, "notify": lambda: None},
        check_credit=check_credit,
        purge=purge,
        run_digest=run_digest,
    )
    await scheduler.start()
    try:
        ids = sorted(job.id for job in scheduler.scheduler.get_jobs())
        assert {"outbox-sweep", "send-queue-sweep", "notify-sweep", "digest-daily"} <= set(ids)
        await asyncio.wait_for(credit.wait(), 10)  # the credit check runs at once, then hourly
        for _ in range(100):
            if digests:
                break
            await asyncio.sleep(0.05)
        assert digests == ["daily"]  # caught up once
    finally:
        await scheduler.stop()
        await store.stop()
