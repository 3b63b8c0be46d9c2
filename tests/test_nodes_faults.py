"""Two real `octorelay run` processes on one PostgreSQL database, under faults (issue 20's "Done when").

Callbacks are spread over both nodes and e-mails sent to both listeners while a digest is due; then one node
gets SIGKILL mid-flood and later restarts, or the PostgreSQL server itself restarts mid-flood. Both nodes call
one Octopush emulator in this process (live mode) and deliver to one SMTP sink, so what was really sent
survives the kills. Afterwards: every acknowledged callback is stored once, every accepted e-mail became one
Octopush call (one request_id), every reply went out as one e-mail, and the digest run went out once.
"""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import time
from collections import Counter, defaultdict
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid

import aiohttp
import pytest

from relay import clock
from relay.mail.outbox import CONCURRENCY
from relay.storage import postgres as pg
from tests.conftest import PG_PASSWORD, live_mode, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

CALLBACKS = 1200
EMAILS = 120
SUBSCRIPTIONS = """
[[subscriptions]]
name = "team"
to = ["team@example.org"]
mode = "instant"
events = ["reply"]

[[subscriptions]]
name = "ops"
to = ["ops@example.org"]
mode = "digest"
schedule = "0 8 * * *"
timezone = "Europe/Paris"
events = ["reply"]
send_empty = true
"""
REPLY_TEXT = re.compile(r"node flood reply \d+")


class Nodes:
    """The two daemons' current addresses; a restarted node has new ones."""

    def __init__(self):
        self.procs: dict[str, object] = {}

    def http(self, i: int) -> list[str]:
        """Node i's URL first, then the other's: a client tries the other when one fails, as HAProxy would."""
        names = sorted(self.procs)
        first = names[i % len(names)]
        return [self.procs[n].http_url for n in (first, *[n for n in names if n != first])]

    def smtp(self, i: int) -> list[tuple[str, int]]:
        names = sorted(self.procs)
        first = names[i % len(names)]
        return [self.procs[n].smtp for n in (first, *[n for n in names if n != first])]


async def flood_callbacks(nodes: Nodes, token: str, acknowledged: list[str], refused: Counter) -> None:
    """16 clients post replies round robin; a refused or failed one is tried on the other node, then again
    after a pause (Octopush's retry, if it makes one): only a 200 counts as acknowledged."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(CALLBACKS):
        queue.put_nowait(i)

    async def client(http):
        while not queue.empty():
            i = queue.get_nowait()
            body = {"number": f"+336{10000000 + i % 500:08d}", "text": f"node flood reply {i}",
                    "reception_date": "2026-11-04 11:11:45"}  # fmt: skip
            for attempt in range(40):
                url = nodes.http(i + attempt)[0]
                try:
                    async with http.post(f"{url}/octopush/{token}", json=body) as resp:
                        if resp.status == 200:
                            acknowledged.append(body["text"])
                            break
                        refused[resp.status] += 1
                except (TimeoutError, aiohttp.ClientError):
                    refused["connection"] += 1
                await asyncio.sleep(0.25)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        await asyncio.gather(*(client(http) for _ in range(16)))


def send_emails(nodes: Nodes, accepted: list[str], stop: list[bool]) -> None:
    """E-mails to both listeners in turn (a sending MTA tries the next MX); only a 250 counts as accepted."""
    for i in range(EMAILS):
        msg = EmailMessage()
        msg["From"] = "alice@example.org"
        msg["Subject"] = f"node flood {i}"
        msg["Message-ID"] = make_msgid(domain="example.org")
        msg.set_content(f"node flood message {i}")
        for attempt in range(40):
            if stop:
                return
            try:
                with smtplib.SMTP(*nodes.smtp(i + attempt)[0], timeout=5) as s:
                    s.sendmail(
                        "alice@example.org",
                        [f"+336123456{i % 100:02d}@sms.example.org"],
                        msg.as_bytes(policy=SMTP_POLICY),
                    )
                accepted.append(f"node flood message {i}")
                break
            except (OSError, smtplib.SMTPException):
                time.sleep(0.25)


def query(url: str, sql: str) -> list[tuple]:
    db = pg.connect(url, password=PG_PASSWORD)
    try:
        return [tuple(r) for r in db.execute(sql).fetchall()]
    finally:
        db.close()


@pytest.mark.parametrize("fault", ["kill_a_node", "restart_the_database"])
async def test_two_nodes_lose_nothing_and_do_nothing_twice(spawn, tmp_path, postgres, pg_url, octopush, sink, fault):
    started = clock.now()
    pg.migrate(pg_url, password=PG_PASSWORD)
    # The digest was last run two days ago: both nodes find a run owed when they start, and race for it.
    two_days_ago = clock.iso(started.replace(microsecond=0) - __import__("datetime").timedelta(days=2))
    db = pg.connect(pg_url, password=PG_PASSWORD)
    db.execute("INSERT INTO digests (name, last_callback_id, last_run_at) VALUES ('ops', 0, ?)", [two_days_ago])
    db.close()

    nodes = Nodes()
    configs = {}
    for name in ("a", "b"):
        extra = (
            live_mode(octopush.base_url, retry_for=120, timeout=2)
            + f'[storage]\nurl = "{pg_url}"\npassword = "{PG_PASSWORD}"\n[http]\nnode_name = "{name}"\n'
            + SUBSCRIPTIONS
        )
        configs[name] = write_config(tmp_path / f"{name}.toml", tmp_path, smtp_port=sink.port, extra=extra)
    a, b = await asyncio.gather(spawn(configs["a"]), spawn(configs["b"]))
    nodes.procs = {"a": a, "b": b}
    token = query(pg_url, "SELECT value FROM meta WHERE key = 'callback_token'")[0][0]

    acknowledged: list[str] = []
    accepted: list[str] = []
    refused: Counter = Counter()
    stop: list[bool] = []
    flood = asyncio.create_task(flood_callbacks(nodes, token, acknowledged, refused))
    mails = asyncio.create_task(asyncio.to_thread(send_emails, nodes, accepted, stop))
    try:
        await wait_for(lambda: len(acknowledged) >= CALLBACKS // 4 and len(accepted) >= 10, timeout=60)
        if fault == "kill_a_node":
            a.proc.send_signal(signal.SIGKILL)
            await a.wait()
            del nodes.procs["a"]
            await asyncio.sleep(2)
            nodes.procs["a"] = await spawn(configs["a"])
        else:
            postgres.stop("fast")  # every connection of both nodes cut
            down = time.monotonic()
            # While it is down, each node says so, and which node it is, to the load balancer's probe.
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"{b.http_url}/healthz") as resp:
                health = await resp.json()
            assert resp.status == 503 and health["status"] == "degraded" and health["node"] == "b", health
            assert "database" in health["problems"] and health["database"] != "ok", health
            await asyncio.sleep(max(0.0, 3 - (time.monotonic() - down)))
            postgres.start()
        await asyncio.wait_for(flood, 90)
        await asyncio.wait_for(mails, 90)
    finally:
        stop.append(True)
        flood.cancel()

    assert len(acknowledged) == CALLBACKS and len(accepted) == EMAILS, (len(acknowledged), len(accepted), refused)
    if fault == "restart_the_database":
        assert refused, "the database was down while callbacks came: some were refused (never a 200)"

    # Every acknowledged callback is stored exactly once.
    stored = Counter(
        text for (text,) in query(pg_url, "SELECT text FROM callbacks WHERE text LIKE 'node flood reply %'")
    )
    assert sorted(stored) == sorted(acknowledged) and max(stored.values()) == 1

    # Every accepted e-mail became exactly one campaign and one Octopush request_id. A dead node's calls are
    # taken over when their claims run out (45 s), with the same request_id.
    def request_ids() -> dict[str, set[str]]:
        found = defaultdict(set)
        for r in octopush.requests:
            if isinstance(r["body"], dict) and "request_id" in r["body"]:
                found[r["body"]["text"]].add(r["body"]["request_id"])
        return found

    await wait_for(lambda: set(accepted) <= set(request_ids()), timeout=90, interval=0.5)
    assert all(len(ids) == 1 for ids in request_ids().values()), request_ids()
    campaigns = Counter(text for (text,) in query(pg_url, "SELECT text FROM campaigns"))
    assert all(campaigns[t] == 1 for t in accepted) and max(campaigns.values()) == 1
    await wait_for(
        lambda: query(pg_url, "SELECT count(*) FROM sends WHERE status <> 'sent'")[0][0] == 0, timeout=90, interval=0.5
    )

    # Every reply went out as one e-mail (one Message-ID). The same e-mail delivered again is only SPEC §8's
    # allowed case: a delivery cut between the mail server's 250 and the commit (at most the deliveries that
    # the killed node had in flight).
    def team_mails() -> dict[str, list[str]]:
        found = defaultdict(list)
        for _, rcpt, msg in list(sink.messages):
            if rcpt == ["team@example.org"]:
                for text in REPLY_TEXT.findall(msg.get_body(("plain",)).get_content()):
                    found[text].append(msg["Message-ID"])
        return found

    await wait_for(lambda: set(acknowledged) <= set(team_mails()), timeout=90, interval=0.5)
    mails_of = team_mails()
    assert all(len(set(ids)) == 1 for ids in mails_of.values()), "a reply was routed to two e-mails"
    again = sum(len(ids) - 1 for ids in mails_of.values())
    assert again <= (CONCURRENCY if fault == "kill_a_node" else 0), f"{again} e-mails delivered twice"

    # The digest run owed at start went out once (the one cron slot a day adds one if the test crossed it).
    slots = 1 + sum(1 for _ in _slots_between(started, clock.now()))
    digests = [msg for _, rcpt, msg in sink.messages if rcpt == ["ops@example.org"]]
    assert 1 <= len(digests) <= slots, [m["Subject"] for m in digests]
    seen = Counter(t for m in digests for t in set(REPLY_TEXT.findall(m.get_body(("plain",)).get_content())))
    assert not seen or max(seen.values()) == 1


def _slots_between(start, end):
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab("0 8 * * *", timezone="Europe/Paris")
    when = trigger.get_next_fire_time(None, start)
    while when is not None and when <= end:
        yield when
        when = trigger.get_next_fire_time(when, when + __import__("datetime").timedelta(seconds=1))
