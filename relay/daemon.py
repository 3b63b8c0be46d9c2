"""The daemon: starts components in dependency order, stops them in reverse, owns the signals.

Order: the database's lock → store (and the digests' starting points) →
outbox → Octopush client (and emulator) → send queue → notifier → HTTP → SMTP
→ scheduler → READY=1. Stopping goes backwards, so listeners close first and
workers finish what they hold. `/healthz` says `starting` until READY.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sqlite3
import time
from functools import partial

from aiohttp import web

from relay import clock, systemd
from relay import config as config_mod
from relay.config import Config
from relay.errors import RelayError
from relay.groups import contacts, load_groups
from relay.guard import LoginGuard
from relay.mail.outbox import Outbox
from relay.mail.render import Renderer
from relay.metrics import Metrics
from relay.notify import Notifier, confirmation_owed
from relay.octopush.client import OctopushClient
from relay.octopush.connect import client_for, emulator_for
from relay.octopush.emulator import Emulator
from relay.octopush.errors import OctopushError, TemporaryError
from relay.scheduler import Scheduler
from relay.sending import Guards, SendQueue, estimate_cost
from relay.storage import digests, guards, meta, queues, retention
from relay.storage.database import DaemonLock, Store
from relay.web.access import AccessLogger
from relay.web.app import create_app
from relay.web.connections import CappedSite

log = logging.getLogger("relay.daemon")
STOP_TIMEOUT = 10.0
PURGE_PAUSE = 0.02  # seconds at least between two purge batches


class Daemon:
    """Every long-lived component of octorelay, wired together."""

    def __init__(self, config: Config, *, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.lock = DaemonLock(config.storage.path)
        self.logins = LoginGuard()  # failed logins per address, shared by the web interface and SMTP AUTH
        self.store = Store(config.storage.path)
        self.ready = False  # every component is up: /healthz stops answering "starting"
        self.callback_token = ""
        self.groups = load_groups(config.groups, config.smtp_in.region, config.source)
        self.renderer = Renderer(config.templates_dir)
        self.emulator: Emulator | None = None
        self.client: OctopushClient | None = None
        self.outbox: Outbox | None = None
        self.sender: SendQueue | None = None
        self.notifier: Notifier | None = None
        self.smtp = None
        self.scheduler: Scheduler | None = None
        self.watchdog = systemd.Watchdog()
        self._runner: web.AppRunner | None = None
        self.http_address: tuple[str, int] | None = None
        self._started: list = []
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._all_up = asyncio.Event()  # set once every component has started

    # ------------------------------------------------------------ addresses

    @property
    def http_url(self) -> str:
        host, port = self.http_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def callback_url(self) -> str:
        """The URL to give Octopush (from public_url)."""
        return f"{self.config.http.public_url}/octopush/{self.callback_token}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        try:
            await self._up(self.lock)
            await self._up(self.store)
        except (OSError, sqlite3.Error) as exc:
            raise RelayError(f"storage.path: cannot open the database {cfg.storage.path}: {exc}") from None
        self.callback_token = cfg.http.callback_token or await self.store.write(meta.ensure_callback_token)
        # A new digest starts here, before any listener accepts: every callback acknowledged from now on is
        # in one of its runs.
        await self.store.write(partial(digests.init_digests, names=[sub.name for sub in cfg.digests]))
        self.outbox = Outbox(cfg.smtp_out, self.store, self.metrics)
        await self._up(self.outbox)

        if cfg.octopush.mode == "emulator":
            self.emulator = emulator_for(cfg.octopush)
            await self._up(self.emulator)
            # `octorelay campaign cancel` reaches this emulator, which holds the campaigns this daemon sent.
            await self.store.write(partial(meta.meta_set, key="emulator_url", value=self.emulator.base_url))
        self.client = client_for(cfg.octopush, self.emulator.base_url if self.emulator else None)
        await self._up(self.client)

        self.notifier = Notifier(cfg, self.store, self.outbox, self.renderer, contacts(self.groups), self.metrics)
        self.sender = SendQueue(
            self.store,
            self.client,
            simulation=cfg.octopush.mode == "simulation",
            auto_optimize_text=cfg.octopush.auto_optimize_text,
            on_finished=self.notifier.wake,
            metrics=self.metrics,
            confirmation_owed=confirmation_owed,
        )
        self.notifier.estimate = partial(estimate_cost, self.client, timeout=3 * cfg.octopush.timeout)
        await self._up(self.sender)
        await self._up(self.notifier)

        app = create_app(self)
        self._runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=logging.getLogger("relay.http"))
        await self._runner.setup()
        self._started.append(_Runner(self._runner))
        site = CappedSite(
            self._runner,
            cfg.http.listen.host,
            cfg.http.listen.port,
            max_connections=cfg.http.max_connections,
            timeout=cfg.http.request_timeout,
        )
        try:
            await site.start()
        except OSError as exc:
            raise RelayError(f"http.listen: cannot listen on {cfg.http.listen}: {exc.strerror}") from None
        self.http_address = site.address  # the bound address, for port 0
        if self.emulator:
            self.emulator.callback_url = f"{self.http_url}/octopush/{self.callback_token}"

        from relay.mail.smtp_inbound import SmtpListener

        self.smtp = SmtpListener(self)
        await self._up(self.smtp)
        self.scheduler = Scheduler(self)
        await self._up(self.scheduler)
        await self._up(self.watchdog)
        self.ready = True
        self._all_up.set()
        check_open_files(cfg)
        systemd.ready(f"HTTP {self.http_url}, SMTP {self.smtp.address_text}")
        log.info(
            "octorelay ready: HTTP %s, SMTP %s, Octopush %s", self.http_url, self.smtp.address_text, cfg.octopush.mode
        )

    async def _up(self, component) -> None:
        await component.start()
        self._started.append(component)

    async def stop(self) -> None:
        self.ready = False
        systemd.stopping()
        while self._started:
            component = self._started.pop()
            try:
                await asyncio.wait_for(component.stop(), STOP_TIMEOUT)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", type(component).__name__)

    # ------------------------------------------------------------ run, signals, reload

    async def run(self) -> int:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads the configuration."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_event.set)
        # From the start: a SIGHUP right after READY=1 (or before it) must not kill the process. A reload
        # waits until every component is in place.
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
            if self.config.source == config_mod.DEFAULT_NAME:
                self._print_demo()
            await self._stop_event.wait()
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def request_stop(self) -> None:
        self._stop_event.set()

    async def reload(self) -> bool:
        """Re-read the configuration file; a broken file is refused and the running one stays.

        One at a time: a second SIGHUP waits for the first reload to finish, so their jobs never collide.
        """
        await self._all_up.wait()
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        systemd.reloading()
        try:
            new = config_mod.load(self.config_path)
            groups = load_groups(new.groups, new.smtp_in.region, new.source)
            renderer = Renderer(new.templates_dir)
        except Exception as exc:  # noqa: BLE001 - a reload never takes the daemon down
            log.error("reload refused, the running configuration stays: %s", exc)
            systemd.ready("reload refused")
            return False
        new = self._keep_bound_settings(new)
        self.config, self.groups, self.renderer = new, groups, renderer
        self.notifier.reconfigure(new, renderer, contacts(groups))
        if self.smtp is not None:
            self.smtp.reconfigure(new)
        if self.scheduler is not None:
            await self.scheduler.reload()
        systemd.ready("configuration reloaded")
        log.info("configuration reloaded from %s", new.source)
        return True

    def _keep_bound_settings(self, new: Config) -> Config:
        """Listeners, storage, outgoing SMTP and the Octopush client are built once: they change at restart."""
        fixed = ("http", "storage", "smtp_out", "octopush")
        changed = [f"[{name}]" for name in fixed if getattr(new, name) != getattr(self.config, name)]
        old_in = self.config.smtp_in
        bound = {"listen": old_in.listen, "tls_cert": old_in.tls_cert, "tls_key": old_in.tls_key}
        if any(getattr(new.smtp_in, key) != value for key, value in bound.items()):
            changed.append("smtp_in.listen/tls_cert/tls_key")
        if changed:
            log.warning("reload: %s changes need a restart; they are ignored until then", ", ".join(changed))
        return config_mod.replace(
            new,
            smtp_in=dataclasses.replace(new.smtp_in, **bound),
            **{name: getattr(self.config, name) for name in fixed},
        )

    def _print_demo(self) -> None:
        host, port = self.smtp.address
        send = (
            f"import smtplib, email.utils as u; smtplib.SMTP('{host}', {port}).sendmail('you@localhost', "
            f"['+33612345678@{self.config.smtp_in.domain}'], "
            "'Subject: hello\\nMessage-ID: ' + u.make_msgid() + '\\n\\nHello from octorelay')"
        )
        print(
            f"\noctorelay demo: web interface {self.http_url}/ ; e-mail lands in {self.config.smtp_out.maildir}/new\n"
            f'Try: python3 -c "{send}"\n',
            flush=True,
        )

    # ------------------------------------------------------------ used by handlers

    def last_octopush_call(self) -> dict | None:
        call = getattr(self.client, "last_call", None)
        if not call:
            return None
        return {k: (clock.iso(v) if hasattr(v, "tzinfo") else v) for k, v in call.items()}

    async def check_credit(self) -> float | None:
        """Hourly: ask Octopush for the credit (check-balance), export it, and alert under `low_credit`.

        Asked of Octopush, not read from the last send's answer: a relay that sends nothing for a week still
        learns its credit. The SMS count is Octopush's own for the default type and `smtp_in.region`.
        """
        cfg = self.config
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
        limits = self.config.limits
        since = clock.iso(Guards.from_config(self.config).day()[0])
        used, top = await self.store.read(lambda db: (guards.used_since(db, since), guards.top_sender_since(db, since)))
        for name, value, limit in (
            ("daily_sms", used, limits.daily_sms),
            ("sender_daily_sms", top, limits.sender_daily_sms),
        ):
            self.metrics.sms_used_today.labels(name).set(value)
            self.metrics.sms_limit.labels(name).set(limit)

    async def purge(self, days: int | None = None) -> dict:
        """The retention purge in short batches, each its own commit: callbacks wait milliseconds, not seconds."""
        days = self.config.storage.retention_days if days is None else days
        batch = partial(
            retention.purge_batch, cutoff=clock.ago(days=days), digests=[s.name for s in self.config.digests]
        )
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


# Files the daemon needs besides its listeners' connections: the database, logs, outgoing connections.
FILES_BESIDES_CONNECTIONS = 64


def check_open_files(cfg: Config) -> None:
    """Warn when the listeners' caps do not fit under the open-file limit: the cap would never be reached,
    and a flood would make accept() fail for everyone instead."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError):
        return
    need = cfg.http.max_connections + cfg.smtp_in.max_connections + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and need > soft:
        log.warning(
            "http.max_connections + smtp_in.max_connections need about %d open files, but the limit is %d: "
            "raise it (LimitNOFILE= in the unit, ulimit -n) or lower them",
            need,
            soft,
        )


class _Runner:
    """Adapts aiohttp's AppRunner to start/stop: stop accepting, finish requests in flight."""

    def __init__(self, runner: web.AppRunner):
        self.runner = runner

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(config: Config, config_path: str | None) -> int:
    daemon = Daemon(config, config_path=config_path)
    return await daemon.run()
