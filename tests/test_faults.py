"""Fault injection: 3 replicas behind the shipped nginx config, concurrent writers through
nginx and through SQL, 50 subscribers that disconnect at random and resume through nginx
(so on a random replica) with Last-Event-ID. Meanwhile: SIGKILL and restart a replica,
SIGKILL the sequencer holder, terminate the listener backends, restart PostgreSQL (fast and
immediate). Afterwards every subscriber's log equals the topic's log, every acknowledged
publish is in it once, no rolled-back one is, and streams and connections are back to
their baseline.

CHANGEFEED_TEST_FAULT_SECONDS (default 30) sets the run's length; the fault schedule is
spread over it, repeated when the run is long.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
from httpx_sse import aconnect_sse

from changefeed.ops.cluster import Cluster
from tests.support import (
    Ledger,
    Nginx,
    Service,
    create_database,
    metrics,
    new_topic,
    publish_keys,
    sequenced_log,
    wait_for,
)

SECONDS = float(os.environ.get("CHANGEFEED_TEST_FAULT_SECONDS", "30"))
SEED = int(os.environ.get("CHANGEFEED_TEST_SEED", random.randrange(1 << 30)))
SUBSCRIBERS = 50
REPLICA_ENV = {
    "CHANGEFEED_ELECTION_SECONDS": "0.5",
    "CHANGEFEED_RECHECK_SECONDS": "1",
    "CHANGEFEED_SHUTDOWN_SECONDS": "5",
    "CHANGEFEED_POOL_MAX_SIZE": "8",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not os.environ.get("CI"), reason="nginx is not installed"
    ),
]


@dataclass
class Subscriber:
    received: list[tuple[int, str]] = field(default_factory=list)
    last_id: str | None = None  # as the stream sent it: <seq>.<hash8>
    resets: int = 0
    sessions: int = 0
    errors: int = 0


async def _http_writer(
    base: str, topic: str, w: int, ledger: Ledger, stop: asyncio.Event, rng: random.Random
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        i = 0
        while not stop.is_set():
            keys = [f"h{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
            body = [{"type": "http", "id": k, "data": {"k": k}} for k in keys]
            # Retry the same ids until acknowledged: ids make retries idempotent.
            for attempt in range(200):
                try:
                    response = await client.post(f"/feeds/{topic}", json=body)
                    if response.status_code == 202:
                        ledger.ok.update(keys)
                        break
                except httpx.HTTPError:
                    pass
                ledger.http_retries += 1
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
            else:
                ledger.unknown.update(keys)
            i += 1
            await asyncio.sleep(rng.random() * 0.02)


async def _sql_writer(
    url: str, topic: str, w: int, ledger: Ledger, stop: asyncio.Event, rng: random.Random
) -> None:
    i = 0
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        keys = [f"s{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
        i += 1
        committing = False
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(url, timeout=5)
            tx = conn.transaction()
            await tx.start()
            await publish_keys(conn, topic, keys)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.3)  # a slow transaction, held open
            if rng.random() < 0.2:
                await tx.rollback()
                ledger.failed.update(keys)
            else:
                committing = True
                await tx.commit()
                ledger.ok.update(keys)
        except Exception:  # any connection-level failure (asyncpg raises several kinds)
            # Died before COMMIT: rolled back. During COMMIT: nobody knows.
            (ledger.unknown if committing else ledger.failed).update(keys)
            if conn is not None:
                conn.terminate()
            conn = None
            await asyncio.sleep(0.2)
    if conn is not None:
        await conn.close()


async def _subscriber(
    base: str,
    topic: str,
    sub: Subscriber,
    done: asyncio.Event,
    final_head: list[int],
    rng: random.Random,
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=3)) as client:
        while True:
            last = sub.received[-1][0] if sub.received else None
            if done.is_set() and last == final_head[0]:
                return
            sub.sessions += 1
            headers = {"Last-Event-ID": sub.last_id} if sub.last_id is not None else {}
            budget = rng.randint(1, 150)
            try:
                async with aconnect_sse(
                    client, "GET", f"/feeds/{topic}", params={"after": "0"}, headers=headers
                ) as source:
                    if source.response.status_code != 200:
                        sub.errors += 1
                        await asyncio.sleep(0.2)
                        continue
                    async for event in source.aiter_sse():
                        if not event.data:
                            # The retry frame, or a keep-alive comment that httpx-sse
                            # reports as an empty event (the spec dispatches nothing).
                            continue
                        if event.event == "reset":
                            sub.resets += 1  # must never happen: the history is intact
                            continue
                        sub.received.append(
                            (int(event.id.split(".")[0]), json.loads(event.data)["k"])
                        )
                        sub.last_id = event.id
                        budget -= 1
                        if budget == 0:
                            break
            except (httpx.HTTPError, httpx.StreamError):
                sub.errors += 1  # a replica died, the proxy cut us, a read timed out
                await asyncio.sleep(0.1)
            # A clean end (shutdown) or our own random disconnect: resume at once.


async def _sequencer_holder(replicas: list[Service]) -> Service | None:
    for replica in replicas:
        try:
            async with httpx.AsyncClient(base_url=replica.base_url, timeout=2) as client:
                if (await metrics(client)).get("changefeed_is_sequencer") == 1:
                    return replica
        except httpx.HTTPError:
            continue
    return None


async def _terminate_listeners(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'changefeed:listener'"
        )
        return len(rows)
    finally:
        await conn.close()


async def test_nothing_lost_or_duplicated_under_faults(
    cluster: Cluster | None, admin_url: str, template: str
) -> None:
    if cluster is None:
        pytest.skip("needs the suite's own PostgreSQL cluster to restart it")
    rng = random.Random(SEED)
    print(f"seed={SEED} seconds={SECONDS}")
    url = await create_database(admin_url, template)
    replicas = [Service(url, env=REPLICA_ENV).start() for _ in range(3)]
    proxy = Nginx([r.port for r in replicas]).start()
    topic = new_topic("faults")
    ledger = Ledger()
    subscribers = [Subscriber() for _ in range(SUBSCRIBERS)]
    stop, done = asyncio.Event(), asyncio.Event()
    final_head = [0]
    faults: list[str] = []
    baseline_rss = replicas[0].rss_bytes()

    async def inject() -> None:
        schedule = [
            "kill-replica",
            "kill-sequencer",
            "terminate-listeners",
            "restart-postgres-fast",
            "restart-postgres-immediate",
        ]
        deadline = asyncio.get_running_loop().time() + SECONDS
        step = min(SECONDS / (len(schedule) + 1), 6.0)
        n = 0
        # The whole schedule runs at least once; a longer run repeats it until the deadline.
        while n < len(schedule) or asyncio.get_running_loop().time() + step < deadline:
            await asyncio.sleep(step)
            fault = schedule[n % len(schedule)]
            n += 1
            if fault == "kill-replica":
                victim = rng.choice(replicas[1:])  # replicas[0] stays up: memory baseline
                victim.kill()
                await asyncio.sleep(0.5)
                await asyncio.to_thread(victim.start)
            elif fault == "kill-sequencer":
                victim = await _sequencer_holder(replicas) or replicas[1]
                victim.kill()
                await asyncio.sleep(0.5)
                await asyncio.to_thread(victim.start)
            elif fault == "terminate-listeners":
                assert await _terminate_listeners(url) >= 1
            else:
                mode = fault.rsplit("-", 1)[1]
                await asyncio.to_thread(cluster.restart, mode)
            faults.append(fault)

    try:
        async with asyncio.timeout(SECONDS + 240):
            reading = [
                asyncio.create_task(
                    _subscriber(
                        proxy.base_url, topic, s, done, final_head, random.Random(rng.random())
                    )
                )
                for s in subscribers
            ]
            writing = [
                *(
                    asyncio.create_task(
                        _http_writer(
                            proxy.base_url, topic, w, ledger, stop, random.Random(rng.random())
                        )
                    )
                    for w in range(3)
                ),
                *(
                    asyncio.create_task(
                        _sql_writer(url, topic, w, ledger, stop, random.Random(rng.random()))
                    )
                    for w in range(2)
                ),
            ]
            await inject()
            stop.set()
            await asyncio.gather(*writing)

            log = await sequenced_log(url, topic, timeout=60)
            final_head[0] = log[-1][0]
            done.set()
            await asyncio.gather(*reading)

        anomalies = ledger.anomalies(
            log, {f"subscriber {i}": s.received for i, s in enumerate(subscribers)}
        )
        anomalies += [
            f"subscriber {i} got {s.resets} reset frames"
            for i, s in enumerate(subscribers)
            if s.resets
        ]
        print(
            f"events={len(log)} acknowledged={len(ledger.ok)} rolled_back={len(ledger.failed)} "
            f"unknown={len(ledger.unknown)} http_retries={ledger.http_retries} "
            f"resumes={sum(s.sessions for s in subscribers)} "
            f"stream_errors={sum(s.errors for s in subscribers)} "
            f"faults={len(faults)} ({', '.join(faults)}) anomalies={len(anomalies)}"
        )
        assert not anomalies, anomalies
        assert len(faults) >= 5

        # Back to baseline: no open streams, no busy connections, memory bounded.
        for replica in replicas:
            async with httpx.AsyncClient(base_url=replica.base_url, timeout=5) as client:

                async def idle(client: httpx.AsyncClient = client) -> bool:
                    now = await metrics(client)
                    return (
                        now["changefeed_open_streams"] == 0 and now["changefeed_subscriptions"] == 0
                    )

                await wait_for(idle, timeout=15)
        conn = await asyncpg.connect(url)
        try:
            states = await conn.fetch(
                "SELECT application_name, state FROM pg_stat_activity "
                "WHERE application_name LIKE 'changefeed%' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        bound = len(replicas) * (int(REPLICA_ENV["CHANGEFEED_POOL_MAX_SIZE"]) + 2)
        print(f"database connections after the run: {len(states)} (bound {bound})")
        assert len(states) <= bound
        # Nothing left inside a transaction (the sequencer may be mid-step: that is 'active').
        assert not [r for r in states if (r["state"] or "").startswith("idle in transaction")]
        rss = replicas[0].rss_bytes()
        print(f"replica rss: baseline {baseline_rss >> 20} MiB, after {rss >> 20} MiB")
        assert rss < baseline_rss + 64 * 1024 * 1024
    finally:
        proxy.stop()
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.stop()
        if not cluster.is_running():
            cluster.start()
