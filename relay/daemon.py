"""The daemon: builds the components and wires them, starts them in dependency order, stops them in reverse,
owns the signals. Each component gets only the handles it uses, never the daemon.

Order: the database's lock → store (and the digests' starting points) →
outbox → Octopush client (and emulator) → send queue → notifier → HTTP → SMTP
→ scheduler → READY=1. Stopping goes backwards, so listeners close first and
workers finish what they hold. `/healthz` says `starting` until READY.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import secrets
import signal
import sqlite3
from functools import partial

from aiohttp import web

from relay import config as config_mod
from relay import systemd
from relay.config import Config
from relay.connect import client_for, emulator_for
from relay.errors import RelayError
from relay.groups import contacts, load_groups
from relay.guard import LoginGuard
from relay.housekeeping import Housekeeping
from relay.mail.outbox import Outbox
from relay.mail.render import Renderer
from relay.mail.smtp_inbound import SmtpListener
from relay.metrics import Metrics
from relay.notify import Notifier, confirmation_owed
from relay.octopush.client import OctopushClient
from relay.octopush.emulator import Emulator
from relay.scheduler import Scheduler
from relay.sending import SendQueue, estimate_cost
from relay.storage import digests, meta
from relay.storage.database import DaemonLock, StoreError
from relay.storage.engine import open_store
from relay.web.access import AccessLogger
from relay.web.app import create_app
from relay.web.connections import CappedSite

log = logging.getLogger("relay.daemon")
STOP_TIMEOUT = 10.0


class Daemon:
    """Every long-lived component of octorelay, wired together."""

    def __init__(self, config: Config, *, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        # One daemon per SQLite file; on PostgreSQL any number of daemons share the database (SPEC §8).
        self.lock = DaemonLock(config.storage.path) if config.storage.engine == "sqlite" else None
        self.logins = LoginGuard()  # failed logins per address, shared by the web interface and SMTP AUTH
        storage = config.storage
        self.store = open_store(path=storage.path, url=storage.url, password=storage.password)
        self.ready = False  # every component is up: /healthz stops answering "starting"
        self.callback_token = ""
        self.groups = load_groups(config.groups, config.smtp_in.region, config.source)
        self.renderer = Renderer(config.templates_dir)
        self.emulator: Emulator | None = None
        self.client: OctopushClient | None = None
        self.outbox: Outbox | None = None
        self.sender: SendQueue | None = None
        self.notifier: Notifier | None = None
        self.smtp: SmtpListener | None = None
        self.scheduler: Scheduler | None = None
        self.housekeeping: Housekeeping | None = None
        self.watchdog = systemd.Watchdog()
        self._runner: web.AppRunner | None = None
        self.http_address: tuple[str, int] | None = None
        self._started: list = []
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._all_up = asyncio.Event()  # set once every component has started

    def current_config(self) -> Config:
        """What components get instead of the daemon: the configuration of the moment (a reload swaps it)."""
        return self.config

    # ------------------------------------------------------------ addresses

    @property
    def http_url(self) -> str:
        host, port = self.http_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        try:
            if self.lock:
                await self._up(self.lock)
            await self._up(self.store)
        except StoreError as exc:  # PostgreSQL: it names the database, never its password
            raise RelayError(f"storage.url: {exc}") from None
        except (OSError, sqlite3.Error) as exc:
            raise RelayError(f"storage.path: cannot open the database {cfg.storage.path}: {exc}") from None
        self.callback_token = cfg.http.callback_token or await self.store.write(meta.ensure_callback_token)
        # Shared by every node on this database: a form served by one is accepted by the others.
        csrf_secret = await self.store.write(
            partial(meta.meta_setdefault, key="csrf_secret", value=secrets.token_hex(32))
        )
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

        await asyncio.to_thread(self.renderer.warm)
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
        self.housekeeping = Housekeeping(self.current_config, self.store, self.metrics, self.client, self.notifier)

        app = create_app(
            config=self.current_config,
            store=self.store,
            metrics=self.metrics,
            logins=self.logins,
            callback_token=self.callback_token,
            sender=self.sender,
            notifier=self.notifier,
            octopush=self.client,
            ready=lambda: self.ready,
            gauges=self.housekeeping.refresh_gauges,
            csrf_secret=bytes.fromhex(csrf_secret),
        )
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
        self.http_address = tuple(self._runner.addresses[0][:2])  # the bound address, for port 0
        if self.emulator:
            self.emulator.callback_url = f"{self.http_url}/octopush/{self.callback_token}"

        self.smtp = SmtpListener(
            self.current_config,
            self.store,
            groups=lambda: self.groups,
            logins=self.logins,
            metrics=self.metrics,
            wake_sender=self.sender.wake,
            wake_notifier=self.notifier.wake,
        )
        await self._up(self.smtp)
        self.scheduler = Scheduler(
            self.current_config,
            self.store,
            sweeps={"outbox": self.outbox.wake, "send-queue": self.sender.wake, "notify": self.notifier.wake},
            check_credit=self.housekeeping.check_credit,
            purge=self.housekeeping.purge,
            run_digest=self.notifier.run_digest,
            fold_counts=self.housekeeping.fold_counts if cfg.storage.url else None,
        )
        await self._up(self.scheduler)
        await self._up(self.watchdog)
        self.ready = True
        self._all_up.set()
        check_open_files(cfg)
        systemd.ready(f"HTTP {self.http_url}, SMTP {self.smtp.address_text}")
        log.info(
            "octorelay ready: node %s, HTTP %s, SMTP %s, Octopush %s",
            cfg.http.node_name,
            self.http_url,
            self.smtp.address_text,
            cfg.octopush.mode,
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
            settle_heap()
            await self._stop_event.wait()
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

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
            await asyncio.to_thread(renderer.warm)
        except Exception as exc:  # noqa: BLE001 - a reload never takes the daemon down
            log.error("reload refused, the running configuration stays: %s", exc)
            systemd.ready("reload refused")
            return False
        new = self._keep_bound_settings(new)
        self.config, self.groups, self.renderer = new, groups, renderer
        self.notifier.reconfigure(new, renderer, contacts(groups))
        settle_heap()  # the replaced renderer and configuration were frozen with the rest: collect them
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

    async def stop(self) -> None:
        await self.runner.cleanup()


def settle_heap() -> None:
    """Collect, then freeze what is left: it lives as long as the process (modules, templates, the numbers'
    metadata: most of the heap), and out of the collector's sight a full collection no longer walks it. Each took
    12-29 ms with the loop stopped, every few seconds under load; 0.5 ms frozen (bench/README.md). Frozen objects
    are never collected, so a reload, which replaces some, thaws and collects first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def serve(config: Config, config_path: str | None) -> int:
    daemon = Daemon(config, config_path=config_path)
    return await daemon.run()
