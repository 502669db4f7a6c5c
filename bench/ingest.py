"""Ingest throughput and latency against Mosquitto and PostgreSQL on loopback.

One run measures, with the same contract messages throughout (real readings of simulated
homes: device bytes decoded by the gateway's own path, fresh UUIDv7 ids, spread over
:data:`GATEWAYS` gateways and published by :data:`PUBLISHERS` processes at QoS 1, each
waiting for PUBACKs with at most :data:`WINDOW` messages in flight):

(a) the broker ceiling: publishers to Mosquitto to one paho subscriber at QoS 1, no database;
    messages per second end to end, single-reading messages;
(b) raw psycopg COPY into the indexed ``readings`` table (only ``readings``: not the
    ``reading_ids`` table nor the staging table the real insert goes through), in
    transactions of :data:`COPY_ROWS_PER_TRANSACTION` rows (ingest's largest batch);
(c) a naive consumer (:func:`_naive_insert`): paho subscriber, one INSERT per reading and a
    commit per message, as typical MQTT-to-PostgreSQL bridges do; single-reading messages;
(d) the real service (``python -m ingest serve``) consuming a burst published after it is
    ready, single-reading and 10-reading messages; the time is from the first publish to the
    arrival of the ack naming the last reading (ingest acks only after the commit);
(e) latency from publish to commit-confirmed: single-reading messages at a steady
    :data:`LATENCY_RATE` readings per second (from :data:`LATENCY_PUBLISHERS` paced
    process); per reading, from the publisher's clock just before ``publish()`` to the
    arrival of the ack naming it on the gateway's ``acks`` topic.

Goals (the issue's): (d, single) at least 75 % of (a); (d, batched) at least 50 % of (b);
(d, single) at least 10 times (c); (e) p99 at most 250 ms. Throughput figures are medians of
:data:`REPEATS` runs, each starting from empty ``readings`` / ``reading_ids`` tables. Every
process's CPU time per reading is recorded too (from /proc): on a machine shared with other
work the rates move with the load, the CPU costs much less.
Everything runs in its own database (``carewatch_bench_<random>``, dropped at the end) on the
server of ``DATABASE_URL`` (without it, an embedded PostgreSQL), and on a private broker
started for the run (Mosquitto when installed, configured as devstack's, else amqtt): ingest
subscribes to every gateway's readings, so on a shared broker it would consume everyone
else's traffic and every other ingest there would consume the bench's bursts.
``--shared-broker`` uses the broker of ``MQTT_URL`` all the same. Prints a table, writes
bench/results/ingest.json.

A broker that drops QoS 1 messages when a subscriber falls behind (Mosquitto's
``max_queued_messages`` is 1000 by default; devstack's and the compose stack's are 100,000)
makes a burst lose messages: each run counts what arrived and reports the loss. Rates are then
those of a consumer that was busy from the first publish to its last commit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint, make_client, start_connecting
from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    Reading,
    encode_reading,
    encode_reading_batch_json,
    parse_ack,
)
from gateway_agent.agent import build_readings
from gateway_agent.devices import EnrolledDevice
from gateway_agent.simulator.devices import SimulatedHome
from gateway_agent.simulator.population import SimulatedPatient, build_population
from gateway_agent.simulator.schedule import history
from ingest.readings import COPY_COLUMNS, copy_row

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "ingest.json"

GATEWAYS = 16
PATIENTS_PER_GATEWAY = 4
PUBLISHERS = 4
WINDOW = 100  # QoS 1 messages each publisher has awaiting their PUBACK
REPEATS = 3

BROKER_MESSAGES = 20_000  # (a)
COPY_ROWS = 40_000  # (b)
COPY_ROWS_PER_TRANSACTION = 2_000  # ingest's largest batch: 200 messages of 10 readings
NAIVE_MESSAGES = 2_000  # (c)
INGEST_SINGLE_READINGS = 20_000  # (d), one reading a message
INGEST_BATCHED_READINGS = 30_000  # (d), ten readings a message
BATCH = 10
LATENCY_RATE = 1_000  # (e), readings per second
LATENCY_SECONDS = 20.0
# One paced publisher process: paced paho publishing costs about as much CPU per message as
# ingest itself, and four processes twice what one does; on two cores that CPU is ingest's.
LATENCY_PUBLISHERS = 1
PACING_TICK_S = 0.005  # a paced publisher sleeps at least this long: what is due goes together
LATENCY_WINDOW_S = 5.0  # the p99 is also given for each window of this many seconds

GOAL_SINGLE_VS_BROKER = 0.75
GOAL_BATCHED_VS_COPY = 0.50
GOAL_VS_NAIVE = 10.0
GOAL_P99_MS = 250.0

STALL_S = 5.0  # no progress this long after the last publish: the run is over
RUN_TIMEOUT_S = 180.0

_NAIVE_INSERT = f"INSERT INTO readings ({COPY_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})"


# -- readings --------------------------------------------------------------------------------


def gateway_ids(tag: str) -> list[str]:
    return [f"bench-{tag}-g{i:02d}" for i in range(GATEWAYS)]


def _population(gateway_index: int) -> list[SimulatedPatient]:
    return build_population(patients=PATIENTS_PER_GATEWAY, seed=1000 + gateway_index)


def _patient_id(gateway_id: str, simulated_id: str) -> str:
    return f"{gateway_id}-{simulated_id}"


def _measurements(gateway_index: int, gateway_id: str) -> list[list[Reading]]:
    """Three days of one simulated home, turned into readings by the gateway's own path
    (device bytes, GATT decoding, LOINC/UCUM observations): one list per measurement."""
    population = _population(gateway_index)
    now = datetime.now(UTC)
    measurements = history(population, start=now - timedelta(days=3), end=now, seed=gateway_index)
    groups: list[list[Reading]] = []
    for device, patient_id, payload, taken_at in SimulatedHome(population).samples(measurements):
        enrolled = EnrolledDevice(
            device.device_id, device.device_type, _patient_id(gateway_id, patient_id)
        )
        readings = build_readings(
            enrolled,
            device.characteristic,
            payload,
            received_at=taken_at + timedelta(seconds=2),
            tz=UTC,
            max_drift_s=300.0,
        )
        if readings:
            groups.append(readings)
    return groups


def reading_stream(gateway_index: int, gateway_id: str) -> Iterator[Reading]:
    """Endless readings of one gateway: its home's measurements over and over, each time
    with fresh reading and measurement ids and the gateway's increasing sequence numbers."""
    seq = 0
    for group in itertools.cycle(_measurements(gateway_index, gateway_id)):
        measurement_id = new_uuid7()
        for reading in group:
            seq += 1
            yield dataclasses.replace(
                reading, reading_id=new_uuid7(), measurement_id=measurement_id, seq=seq
            )


# -- publishers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishJob:
    index: int
    mqtt_url: str
    protocol: str
    tag: str
    gateways: tuple[tuple[int, str], ...]  # (index, id) of the gateways this process serves
    messages: int
    per_message: int
    rate: float | None = None  # messages per second of this process; None: as fast as it can
    offset_s: float = 0.0  # where this process's schedule starts within one interval
    record: bool = False  # return (reading ids, publish time) of every message


@dataclass
class PublishResult:
    index: int
    messages: int
    readings: int
    first_s: float
    last_s: float
    cpu_s: float
    sent: list[tuple[list[str], float]] = field(default_factory=list)


def _connect(url: str, protocol: str, client_id: str):  # type: ignore[no-untyped-def]
    """A connected paho client (clean session) with its network loop running."""
    endpoint = BrokerEndpoint.from_url(url)
    client = make_client(endpoint, client_id=client_id, protocol=protocol, persistent_session=False)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else connected.set()
    start_connecting(client, endpoint, protocol=protocol, persistent_session=False)
    client.loop_start()
    if not connected.wait(15):
        raise RuntimeError(f"could not connect to the broker at {endpoint.redacted()}")
    return client


def _publisher(job: PublishJob, ready: Any, go: Any, results: Any) -> None:
    """One publisher process: build its messages, connect, wait for the start, publish."""
    streams = {gid: reading_stream(index, gid) for index, gid in job.gateways}
    ids = [gid for _, gid in job.gateways]
    messages: list[tuple[str, str, list[str], list[str]]] = []
    for m in range(job.messages):
        gid = ids[m % len(ids)]
        readings = [next(streams[gid]) for _ in range(job.per_message)]
        messages.append(
            (
                topics.gateway_topic(gid, topics.READINGS),
                gid,
                [encode_reading(r) for r in readings],
                [r.reading_id for r in readings],
            )
        )
    client = _connect(job.mqtt_url, job.protocol, f"bench-{job.tag}-pub{job.index}")
    window = threading.Semaphore(WINDOW)
    client.on_publish = lambda c, u, mid, rc, p: window.release()
    ready.put(job.index)
    go.wait()
    cpu = time.process_time()
    sent: list[tuple[list[str], float]] = []
    start = time.monotonic()
    first = last = start
    for m, (topic, gid, readings_json, reading_ids) in enumerate(messages):
        if job.rate:  # sleep until this message is due, in ticks (a sleep each costs CPU)
            delay = start + job.offset_s + m / job.rate - time.monotonic()
            if delay > 0:
                time.sleep(max(delay, PACING_TICK_S))
        window.acquire()
        payload = encode_reading_batch_json(gid, datetime.now(UTC), readings_json)
        last = time.monotonic()
        if m == 0:
            first = last
        client.publish(topic, payload, qos=1)
        if job.record:
            sent.append((reading_ids, last))
    for _ in range(WINDOW):  # every PUBACK in
        window.acquire(timeout=30)
    cpu = time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    results.put(
        PublishResult(
            job.index, len(messages), len(messages) * job.per_message, first, last, cpu, sent
        )
    )


# -- sinks: what counts the arrivals ---------------------------------------------------------


class Progress:
    """How many readings (or messages) arrived, and when the last did (monotonic seconds)."""

    def count(self) -> int:
        raise NotImplementedError

    def last(self) -> float:
        raise NotImplementedError


def _sink(
    kind: str,
    mqtt_url: str,
    protocol: str,
    client_id: str,
    subscriptions: list[str],
    database_url: str | None,
    ready: Any,
    stop: Any,
    count: Any,
    last: Any,
) -> None:
    """A subscriber process at QoS 1: ``count`` counts messages, ``naive`` inserts each reading
    and commits per message (paho acks the message after the callback returns)."""
    conn = psycopg.connect(database_url, autocommit=True) if kind == "naive" else None

    def on_message(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if conn is None:
            count.value += 1
        else:
            count.value += _naive_insert(conn, message.payload)
        last.value = time.monotonic()

    endpoint = BrokerEndpoint.from_url(mqtt_url)
    client = make_client(endpoint, client_id=client_id, protocol=protocol, persistent_session=False)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(s, 1) for s in subscriptions])
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = on_message
    start_connecting(client, endpoint, protocol=protocol, persistent_session=False)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    if conn is not None:
        conn.close()


def _naive_insert(conn: psycopg.Connection, payload: bytes) -> int:
    """What a typical bridge does: parse, INSERT each reading, commit per message."""
    message = json.loads(payload)
    rows = [
        (
            r["reading_id"],
            r["measured_at"],
            r["patient_id"],
            r["loinc"],
            r["unit"],
            r["value"],
            r["time_source"],
            r["received_at"],
            message["gateway_id"],
            r["device"]["id"],
            r["device"]["type"],
            r["measurement_id"],
            r["seq"],
            r["raw"]["characteristic"],
            r["raw"]["hex"],
            None if r.get("device_time") is None else json.dumps(r["device_time"]),
        )
        for r in message["readings"]
    ]
    if len(rows) == 1:
        conn.execute(_NAIVE_INSERT, rows[0])  # autocommit: the statement is the transaction
    else:
        with conn.transaction():
            for row in rows:
                conn.execute(_NAIVE_INSERT, row)
    return len(rows)


class SinkProcess(Progress):
    def __init__(self, ctx: Any, kind: str, bench: Bench, database_url: str | None = None) -> None:
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._count = ctx.Value("q", 0, lock=False)
        self._last = ctx.Value("d", 0.0, lock=False)
        self._proc = ctx.Process(
            target=_sink,
            args=(
                kind,
                bench.mqtt_url,
                bench.protocol,
                f"bench-{bench.tag}-{kind}",
                bench.topics(topics.READINGS),
                database_url,
                self._ready,
                self._stop,
                self._count,
                self._last,
            ),
            daemon=True,
        )

    def __enter__(self) -> SinkProcess:
        self._proc.start()
        if not self._ready.wait(30):
            raise RuntimeError("the subscriber did not subscribe within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def count(self) -> int:
        return int(self._count.value)

    def last(self) -> float:
        return float(self._last.value)


class AckObserver(Progress):
    """The gateways' ``acks`` topics: which reading ids ingest confirmed, and when."""

    def __init__(self, bench: Bench) -> None:
        self._bench = bench
        self._lock = threading.Lock()
        self._count = 0
        self._last = 0.0
        self.recording = False
        self.acked_at: dict[str, float] = {}
        self._client: Any = None

    def __enter__(self) -> AckObserver:
        endpoint = BrokerEndpoint.from_url(self._bench.mqtt_url)
        client = make_client(
            endpoint,
            client_id=f"bench-{self._bench.tag}-acks",
            protocol=self._bench.protocol,
            persistent_session=False,
        )
        subscribed = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(t, 1) for t in self._bench.topics(topics.ACKS)]
        )
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = self._on_ack
        start_connecting(client, endpoint, protocol=self._bench.protocol, persistent_session=False)
        client.loop_start()
        if not subscribed.wait(15):
            raise RuntimeError("could not subscribe to the acks topics")
        self._client = client
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_ack(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        committed = parse_ack(message.payload).committed
        with self._lock:
            self._count += len(committed)
            self._last = now
            if self.recording:
                for reading_id in committed:
                    self.acked_at.setdefault(reading_id, now)

    def reset(self, *, recording: bool = False) -> None:
        with self._lock:
            self._count = 0
            self._last = 0.0
            self.recording = recording
            self.acked_at = {}

    def count(self) -> int:
        return self._count

    def last(self) -> float:
        return self._last


# -- the bench's world -----------------------------------------------------------------------


@dataclass
class Bench:
    server_url: str  # the PostgreSQL server (any database in it)
    database_url: str  # the bench's own database
    mqtt_url: str
    protocol: str
    tag: str
    workdir: Path
    broker_pid: int | None = None
    ctx: Any = field(default_factory=lambda: mp.get_context("spawn"))

    def broker(self) -> list[int]:
        return [self.broker_pid] if self.broker_pid else []

    def backends(self) -> list[int]:
        """The PostgreSQL server processes serving the bench database's other sessions (when
        the server runs on this machine: their CPU time is read from /proc)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(r[0]) for r in rows]

    @property
    def gateways(self) -> list[str]:
        return gateway_ids(self.tag)

    def topics(self, kind: str) -> list[str]:
        return [topics.gateway_topic(g, kind) for g in self.gateways]

    def empty_readings(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE readings, reading_ids")
            conn.execute("CHECKPOINT")

    def stored(self) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0

    def jobs(
        self,
        readings: int,
        per_message: int,
        *,
        rate: float | None = None,
        record: bool = False,
        processes: int = PUBLISHERS,
    ) -> list[PublishJob]:
        """Split ``readings`` over ``processes`` publisher processes, each with its share of
        gateways; ``rate`` is in readings per second for all of them together."""
        messages = readings // per_message
        ids = list(enumerate(self.gateways))
        jobs = []
        for p in range(processes):
            share = messages // processes + (1 if p < messages % processes else 0)
            jobs.append(
                PublishJob(
                    index=p,
                    mqtt_url=self.mqtt_url,
                    protocol=self.protocol,
                    tag=self.tag,
                    gateways=tuple(ids[p::processes]),
                    messages=share,
                    per_message=per_message,
                    rate=None if rate is None else rate / per_message / processes,
                    offset_s=0.0 if rate is None else p * per_message / rate,
                    record=record,
                )
            )
        return jobs


@dataclass
class Burst:
    """One run: what was published, what arrived, and when."""

    published: int  # readings (messages for a message count)
    arrived: int
    seconds: float  # from the first publish to the last arrival
    publish_seconds: float  # from the first publish to the last
    sent: list[tuple[list[str], float]]
    start: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by component

    @property
    def per_s(self) -> float:
        return self.arrived / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.published - self.arrived


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds of each of these processes (all their threads), from
    /proc; a process that is gone is left out."""
    times: dict[int, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # fields 3 onwards: utime is field 14
        times[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return times


def _progress(line: str, *, final: bool = False) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{line}" + ("\n" if final else ""))
        sys.stderr.flush()
    elif final:
        print(line, file=sys.stderr, flush=True)


def publish_and_wait(
    bench: Bench,
    jobs: list[PublishJob],
    sink: Progress,
    label: str,
    unit: str = "readings",
    watch: dict[str, Callable[[], list[int]]] | None = None,
) -> Burst:
    """Start the publisher processes, release them together, and wait until ``sink`` has
    counted everything (or nothing more arrived for :data:`STALL_S` after the last publish).

    ``watch`` gives, by component, the processes whose CPU time the run accounts for (asked
    before and after the run: a process that appears meanwhile counts from its start)."""
    watch = watch or {}
    ready, results, go = bench.ctx.Queue(), bench.ctx.Queue(), bench.ctx.Event()
    procs = [
        bench.ctx.Process(target=_publisher, args=(job, ready, go, results), daemon=True)
        for job in jobs
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        expected = sum(j.messages * (1 if unit == "messages" else j.per_message) for j in jobs)
        cpu_before = {name: cpu_by_pid(pids()) for name, pids in watch.items()}
        start = time.monotonic()
        go.set()
        done: list[PublishResult] = []
        seen, seen_at = -1, start
        while True:
            with contextlib.suppress(Exception):
                while len(done) < len(procs):
                    done.append(results.get(timeout=0.05))
            count = sink.count()
            now = time.monotonic()
            if count != seen:
                seen, seen_at = count, now
            elapsed = now - start
            rate = count / (sink.last() - start) if count and sink.last() > start else 0.0
            _progress(f"  {label}: {count:,} / {expected:,} {unit}, {rate:,.0f}/s")
            if count >= expected and len(done) == len(procs):
                break
            if len(done) == len(procs) and now - seen_at > STALL_S:
                break
            if elapsed > RUN_TIMEOUT_S:
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    count = sink.count()
    cpu = {
        name: sum(t - cpu_before[name].get(pid, 0.0) for pid, t in cpu_by_pid(pids()).items())
        for name, pids in watch.items()
    }
    cpu["publishers"] = sum(r.cpu_s for r in done)
    burst = Burst(
        published=expected,
        arrived=count,
        seconds=sink.last() - start,
        publish_seconds=max((r.last_s for r in done), default=start) - start,
        sent=[item for r in done for item in r.sent],
        start=start,
        cpu_s=cpu,
    )
    lost = f", {burst.lost:,} lost" if burst.lost else ""
    _progress(
        f"  {label}: {count:,} {unit} in {burst.seconds:.2f} s, {burst.per_s:,.0f}/s{lost}",
        final=True,
    )
    return burst


# -- the phases ------------------------------------------------------------------------------


def broker_ceiling(bench: Bench, messages: int, run: str) -> Burst:
    """(a) publishers -> broker -> one paho subscriber at QoS 1, single-reading messages."""
    with SinkProcess(bench.ctx, "count", bench) as sink:
        return publish_and_wait(
            bench,
            bench.jobs(messages, 1),
            sink,
            f"(a) broker ceiling {run}",
            "messages",
            watch={"subscriber": lambda: [sink.pid], "broker": bench.broker},
        )


def copy_rows(bench: Bench, count: int) -> list[tuple[object, ...]]:
    streams = [reading_stream(i, g) for i, g in enumerate(bench.gateways)]
    rows: list[tuple[object, ...]] = []
    for n in range(count):
        gateway_id = bench.gateways[n % GATEWAYS]
        r = next(streams[n % GATEWAYS])
        rows.append(copy_row(gateway_id, r))
    return rows


@dataclass
class Copy:
    per_s: float
    cpu_s: dict[str, float]


def copy_throughput(bench: Bench, rows: list[tuple[object, ...]], run: str) -> Copy:
    """(b) rows per second of COPY into ``readings`` with its indexes, one transaction per
    :data:`COPY_ROWS_PER_TRANSACTION` rows."""
    bench.empty_readings()
    with psycopg.connect(bench.database_url) as conn:
        backend = [conn.info.backend_pid]
        cpu_before = time.process_time(), sum(cpu_by_pid(backend).values())
        started = time.perf_counter()
        for i in range(0, len(rows), COPY_ROWS_PER_TRANSACTION):
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY readings ({COPY_COLUMNS}) FROM STDIN") as copy,
            ):
                for row in rows[i : i + COPY_ROWS_PER_TRANSACTION]:
                    copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
        cpu = {
            "client": time.process_time() - cpu_before[0],
            "postgres": sum(cpu_by_pid(backend).values()) - cpu_before[1],
        }
    per_s = len(rows) / seconds
    _progress(
        f"  (b) COPY {run}: {len(rows):,} rows in {seconds:.2f} s, {per_s:,.0f}/s", final=True
    )
    return Copy(per_s, cpu)


def naive_consumer(bench: Bench, messages: int, run: str) -> Burst:
    """(c) the naive bridge: INSERT per reading, commit per message, single-reading messages."""
    bench.empty_readings()
    with SinkProcess(bench.ctx, "naive", bench, bench.database_url) as sink:
        return publish_and_wait(
            bench,
            bench.jobs(messages, 1),
            sink,
            f"(c) naive consumer {run}",
            watch={
                "consumer": lambda: [sink.pid],
                "broker": bench.broker,
                "postgres": bench.backends,
            },
        )


@contextlib.contextmanager
def ingest_service(bench: Bench) -> Iterator[tuple[str, int]]:
    """``python -m ingest serve`` on a free port, consuming; yields its URL and process id
    once ready."""
    from devstack.ports import free_port

    port = free_port()
    client_id = f"bench-{bench.tag}-ingest"
    env = {
        **os.environ,
        "CAREWATCH_ENV": "test",
        "CAREWATCH_API_TOKEN": secrets.token_hex(16),
        "DATABASE_URL": bench.database_url,
        "MQTT_URL": bench.mqtt_url,
        "MQTT_PROTOCOL": bench.protocol,
        "INGEST_CLIENT_ID": client_id,
    }
    env.pop("INGEST_SHARED_GROUP", None)
    log_path = bench.workdir / "ingest.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited during start-up:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest was not ready within 60 s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _forget_session(bench, client_id)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _forget_session(bench: Bench, client_id: str) -> None:
    """Remove ingest's persistent session from the broker: it would queue readings for a
    day."""
    with contextlib.suppress(Exception):
        client = _connect(bench.mqtt_url, bench.protocol, client_id)
        client.disconnect()
        client.loop_stop()


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = values.get(name, 0.0) + float(value)
    return values


@dataclass
class IngestRun:
    burst: Burst
    stored: int
    readings_per_batch: float
    quarantined: float


def ingest_burst(
    bench: Bench,
    ingest: tuple[str, int],
    acks: AckObserver,
    readings: int,
    per_message: int,
    label: str,
) -> IngestRun:
    """(d) a burst published once ingest is idle and ready; timed to the last ack."""
    url, pid = ingest
    bench.empty_readings()
    acks.reset()
    before = metrics(url)
    burst = publish_and_wait(
        bench,
        bench.jobs(readings, per_message),
        acks,
        label,
        watch={"ingest": lambda: [pid], "broker": bench.broker, "postgres": bench.backends},
    )
    after = metrics(url)
    batches = after["carewatch_ingest_batches_committed_total"] - before.get(
        "carewatch_ingest_batches_committed_total", 0.0
    )
    committed = after["carewatch_ingest_readings_committed_total"] - before.get(
        "carewatch_ingest_readings_committed_total", 0.0
    )
    return IngestRun(
        burst=burst,
        stored=bench.stored(),
        readings_per_batch=committed / batches if batches else 0.0,
        quarantined=after.get("carewatch_ingest_quarantined_total", 0.0)
        - before.get("carewatch_ingest_quarantined_total", 0.0),
    )


def _cpu_per_reading(cpu: list[dict[str, float]], counts: list[int]) -> dict[str, float]:
    """Median over runs of each component's CPU microseconds per reading (or message)."""
    names = sorted({name for run in cpu for name in run})
    return {
        name: round(
            statistics.median(
                run.get(name, 0.0) / n * 1e6 for run, n in zip(cpu, counts, strict=True) if n
            ),
            1,
        )
        for name in names
    }


def _percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass
class Latency:
    seconds: float
    rate_per_s: float
    samples: int
    missing: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    p99_by_window_ms: list[float] = field(default_factory=list)
    cpu_us_per_reading: dict[str, float] = field(default_factory=dict)


def latency(
    bench: Bench, ingest: tuple[str, int], acks: AckObserver, seconds: float = LATENCY_SECONDS
) -> Latency:
    """(e) single-reading messages at :data:`LATENCY_RATE` a second; publish to ack."""
    bench.empty_readings()
    acks.reset(recording=True)
    readings = int(LATENCY_RATE * seconds)
    burst = publish_and_wait(
        bench,
        bench.jobs(readings, 1, rate=LATENCY_RATE, record=True, processes=LATENCY_PUBLISHERS),
        acks,
        "(e) latency",
        watch={"ingest": lambda: [ingest[1]], "broker": bench.broker, "postgres": bench.backends},
    )
    samples: list[float] = []
    windows: dict[int, list[float]] = {}
    missing = 0
    for reading_ids, published_at in burst.sent:
        for reading_id in reading_ids:
            acked_at = acks.acked_at.get(reading_id)
            if acked_at is None:
                missing += 1
            else:
                samples.append((acked_at - published_at) * 1000)
                window = int((published_at - burst.start) // LATENCY_WINDOW_S)
                windows.setdefault(window, []).append(samples[-1])
    samples.sort()
    if not samples:
        return Latency(seconds, 0.0, 0, missing, float("nan"), float("nan"), float("nan"))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Latency(
        cpu_us_per_reading=_cpu_per_reading([burst.cpu_s], [burst.arrived]),
        p99_by_window_ms=[
            round(_percentile(windows[w], 99), 1) for w in sorted(windows) if len(windows[w]) > 1
        ],
        seconds=seconds,
        rate_per_s=burst.published / burst.publish_seconds if burst.publish_seconds else 0.0,
        samples=len(samples),
        missing=missing,
        p50_ms=cuts[49],
        p99_ms=cuts[98],
        max_ms=samples[-1],
    )


# -- services and database -------------------------------------------------------------------


def _with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@dataclass
class Services:
    server_url: str  # the PostgreSQL server (any database in it)
    mqtt_url: str
    protocol: str
    broker_pid: int | None  # when the bench started the broker
    described: dict[str, str]


@contextlib.contextmanager
def services(stack: ExitStack, *, shared_broker: bool = False) -> Iterator[Services]:
    """The PostgreSQL server and the broker the bench runs on.

    The database server is ``DATABASE_URL``'s, or an embedded PostgreSQL. The broker is a
    private embedded one (Mosquitto when installed) unless ``shared_broker``: ingest
    subscribes to every gateway's readings (``carewatch/v1/gateways/+/readings``), so on a
    shared broker it would also consume everyone else's traffic, and every other ingest
    there would consume (and quarantine) the bench's bursts."""
    described: dict[str, str] = {}
    folder = Path(tempfile.mkdtemp(prefix="cw-bench-ingest-"))
    stack.callback(shutil.rmtree, folder, True)
    server_url = os.environ.get("DATABASE_URL")
    if server_url:
        described["database_source"] = "DATABASE_URL"
    else:
        from devstack.postgres import EmbeddedPostgres

        _progress("  starting an embedded PostgreSQL", final=True)
        server_url = stack.enter_context(EmbeddedPostgres(data_dir=folder / "pgdata")).url
        described["database_source"] = "embedded"
    mqtt_url = os.environ.get("MQTT_URL") if shared_broker else None
    protocol = os.environ.get("MQTT_PROTOCOL", "5")
    broker_pid = None
    if mqtt_url:
        described["broker_source"] = "MQTT_URL"
    else:
        from devstack.broker import EmbeddedBroker

        broker = stack.enter_context(EmbeddedBroker(folder / "broker"))
        mqtt_url, protocol, broker_pid = broker.url, broker.protocol, broker.pid
        described["broker_source"] = f"embedded {broker.kind}"
    yield Services(server_url, mqtt_url, protocol, broker_pid, described)


@contextlib.contextmanager
def bench_database(server_url: str, tag: str) -> Iterator[str]:
    """A fresh, migrated database with the bench's gateways and patients; dropped after."""
    from ingest.db import migrate
    from ingest.registry import PatientRecord, enroll

    name = f"carewatch_bench_{tag}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_database(server_url, name)
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            for index, gateway_id in enumerate(gateway_ids(tag)):
                enroll(
                    conn,
                    gateway_id=gateway_id,
                    patients=[
                        PatientRecord(
                            patient_id=_patient_id(gateway_id, p.patient_id),
                            display_name=p.display_name,
                            program=p.program,
                            birth_date=p.birth_date,
                            spo2_scale=p.spo2_scale,
                            phone=p.phone,
                        )
                        for p in _population(index)
                    ],
                )
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- report ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _verdict(ratio: float, goal: float, *, at_most: bool = False) -> str:
    met = ratio <= goal if at_most else ratio >= goal
    if met:
        return "pass"
    short = (ratio / goal - 1) if at_most else (1 - ratio / goal)
    return f"short by {short:.0%}"


def _runs(values: list[float]) -> list[float]:
    return [round(v) for v in values]


def run(
    scale: float = 1.0, repeats: int = REPEATS, *, shared_broker: bool = False
) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    n = lambda count: max(PUBLISHERS * BATCH, int(count * scale))  # noqa: E731
    with ExitStack() as stack:
        svc = stack.enter_context(services(stack, shared_broker=shared_broker))
        described = svc.described
        database_url = stack.enter_context(bench_database(svc.server_url, tag))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-bench-")))
        bench = Bench(
            svc.server_url, database_url, svc.mqtt_url, svc.protocol, tag, workdir, svc.broker_pid
        )
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            described["postgresql"] = str(row[0]) if row else "?"
        load_before = os.getloadavg()
        started = time.monotonic()
        loads: dict[str, float] = {}  # the 1-minute load average as each phase starts

        loads["a"] = os.getloadavg()[0]
        a = [
            broker_ceiling(bench, n(BROKER_MESSAGES), f"{i + 1}/{repeats}") for i in range(repeats)
        ]
        rows = copy_rows(bench, n(COPY_ROWS))
        rows_b = len(rows)
        loads["b"] = os.getloadavg()[0]
        b = [copy_throughput(bench, rows, f"{i + 1}/{repeats}") for i in range(repeats)]
        del rows
        loads["c"] = os.getloadavg()[0]
        c = [naive_consumer(bench, n(NAIVE_MESSAGES), f"{i + 1}/{repeats}") for i in range(repeats)]
        with ingest_service(bench) as service, AckObserver(bench) as acks:
            loads["d_single"] = os.getloadavg()[0]
            single = [
                ingest_burst(
                    bench, service, acks, n(INGEST_SINGLE_READINGS), 1, f"(d) ingest single {i + 1}"
                )
                for i in range(repeats)
            ]
            loads["d_batched"] = os.getloadavg()[0]
            batched = [
                ingest_burst(
                    bench,
                    service,
                    acks,
                    n(INGEST_BATCHED_READINGS),
                    BATCH,
                    f"(d) ingest x10 {i + 1}",
                )
                for i in range(repeats)
            ]
            loads["e"] = os.getloadavg()[0]
            e = latency(bench, service, acks, max(5.0, LATENCY_SECONDS * min(scale, 1.0)))
        load_after = os.getloadavg()
        seconds = time.monotonic() - started

    a_per_s = _median([r.per_s for r in a])
    b_per_s = _median([r.per_s for r in b])
    c_per_s = _median([r.per_s for r in c])
    d1_per_s = _median([r.burst.per_s for r in single])
    d10_per_s = _median([r.burst.per_s for r in batched])
    results: dict[str, Any] = {
        "a_broker_messages_per_s": round(a_per_s),
        "b_copy_rows_per_s": round(b_per_s),
        "c_naive_readings_per_s": round(c_per_s),
        "d_single_readings_per_s": round(d1_per_s),
        "d_batched_readings_per_s": round(d10_per_s),
        "e_latency_p50_ms": round(e.p50_ms, 1),
        "e_latency_p99_ms": round(e.p99_ms, 1),
        "ratios": {
            "d_single_to_a": round(d1_per_s / a_per_s, 3),
            "d_batched_to_b": round(d10_per_s / b_per_s, 3),
            "d_single_to_c": round(d1_per_s / c_per_s, 2),
            "d_batched_to_c": round(d10_per_s / c_per_s, 2),
            "a_to_c": round(a_per_s / c_per_s, 2),  # what (d, single) could reach at most
            "e_p99_to_goal": round(e.p99_ms / GOAL_P99_MS, 3),
        },
        "goals": {
            "d_single_to_a_at_least": GOAL_SINGLE_VS_BROKER,
            "d_batched_to_b_at_least": GOAL_BATCHED_VS_COPY,
            "d_to_c_at_least": GOAL_VS_NAIVE,
            "e_p99_ms_at_most": GOAL_P99_MS,
        },
        "met": {
            "d_single_to_a": d1_per_s / a_per_s >= GOAL_SINGLE_VS_BROKER,
            "d_batched_to_b": d10_per_s / b_per_s >= GOAL_BATCHED_VS_COPY,
            "d_single_to_c": d1_per_s / c_per_s >= GOAL_VS_NAIVE,
            "d_batched_to_c": d10_per_s / c_per_s >= GOAL_VS_NAIVE,
            "e_p99": e.p99_ms <= GOAL_P99_MS,
        },
        "runs": {
            "a_messages_per_s": _runs([r.per_s for r in a]),
            "a_publish_messages_per_s": _runs(
                [r.published / r.publish_seconds for r in a if r.publish_seconds]
            ),
            "b_rows_per_s": _runs([r.per_s for r in b]),
            "c_readings_per_s": _runs([r.per_s for r in c]),
            "d_single_readings_per_s": _runs([r.burst.per_s for r in single]),
            "d_single_readings_per_transaction": [round(r.readings_per_batch, 1) for r in single],
            "d_batched_readings_per_s": _runs([r.burst.per_s for r in batched]),
            "d_batched_readings_per_transaction": [round(r.readings_per_batch, 1) for r in batched],
        },
        "lost_at_broker": {
            "a_messages": [r.lost for r in a],
            "c_readings": [r.lost for r in c],
            "d_single_readings": [r.burst.lost for r in single],
            "d_batched_readings": [r.burst.lost for r in batched],
            "e_readings": e.missing,
        },
        "cpu_us_per_reading": {
            "note": "CPU time (user + system, from /proc) of each process over a run, per "
            "reading (per message in a): robust to other load on the machine, unlike the rates; "
            "postgres counts the server processes of the bench's sessions only (not the WAL "
            "writer, checkpointer or background writer)",
            "a_per_message": _cpu_per_reading([r.cpu_s for r in a], [r.arrived for r in a]),
            "b": _cpu_per_reading([r.cpu_s for r in b], [rows_b] * len(b)),
            "c": _cpu_per_reading([r.cpu_s for r in c], [r.arrived for r in c]),
            "d_single": _cpu_per_reading(
                [r.burst.cpu_s for r in single], [r.burst.arrived for r in single]
            ),
            "d_batched": _cpu_per_reading(
                [r.burst.cpu_s for r in batched], [r.burst.arrived for r in batched]
            ),
            "e": e.cpu_us_per_reading,
        },
        "checks": {
            "d_rows_stored_equal_acked": all(
                r.stored == r.burst.arrived for r in [*single, *batched]
            ),
            "d_quarantined": sum(r.quarantined for r in [*single, *batched]),
        },
        "e_latency": {
            "measured": "publish() on the publisher to the arrival of the ack naming the "
            "reading (ingest acks after its commit)",
            "rate_readings_per_s": round(e.rate_per_s),
            "seconds": e.seconds,
            "samples": e.samples,
            "max_ms": round(e.max_ms, 1),
            f"p99_ms_by_{LATENCY_WINDOW_S:.0f}_s_of_publishing": e.p99_by_window_ms,
        },
        "setup": {
            **described,
            "mqtt_protocol": bench.protocol,
            "gateways": GATEWAYS,
            "patients_per_gateway": PATIENTS_PER_GATEWAY,
            "publisher_processes": PUBLISHERS,
            "e_publisher_processes": LATENCY_PUBLISHERS,
            "publisher_window": WINDOW,
            "repeats": repeats,
            "scale": scale,
            "a_messages": n(BROKER_MESSAGES),
            "b_rows": n(COPY_ROWS),
            "b_rows_per_transaction": COPY_ROWS_PER_TRANSACTION,
            "b_note": "COPY into readings only (its primary key and indexes); the real insert "
            "also claims each id in reading_ids through a staging table",
            "c_messages": n(NAIVE_MESSAGES),
            "d_single_readings": n(INGEST_SINGLE_READINGS),
            "d_batched_readings": n(INGEST_BATCHED_READINGS),
            "d_readings_per_message": BATCH,
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "load_average_1_min_at_phase_start": {k: round(v, 2) for k, v in loads.items()},
            "bench_seconds": round(seconds, 1),
        },
    }
    return results


def report(results: dict[str, Any]) -> None:
    r, ratios = results, results["ratios"]
    lines: list[tuple[str, str, str, str, str]] = [
        ("(a) broker ceiling, msg/s", f"{r['a_broker_messages_per_s']:,}", "", "", ""),
        ("(b) raw COPY, rows/s", f"{r['b_copy_rows_per_s']:,}", "", "", ""),
        ("(c) naive consumer, readings/s", f"{r['c_naive_readings_per_s']:,}", "", "", ""),
        (
            "(d) ingest 1/msg, readings/s",
            f"{r['d_single_readings_per_s']:,}",
            f">= {GOAL_SINGLE_VS_BROKER:.2f} x (a)",
            f"{ratios['d_single_to_a']:.2f}",
            _verdict(ratios["d_single_to_a"], GOAL_SINGLE_VS_BROKER),
        ),
        (
            "",
            "",
            f">= {GOAL_VS_NAIVE:.0f} x (c)",
            f"{ratios['d_single_to_c']:.1f}",
            _verdict(ratios["d_single_to_c"], GOAL_VS_NAIVE),
        ),
        (
            f"(d) ingest {BATCH}/msg, readings/s",
            f"{r['d_batched_readings_per_s']:,}",
            f">= {GOAL_BATCHED_VS_COPY:.2f} x (b)",
            f"{ratios['d_batched_to_b']:.2f}",
            _verdict(ratios["d_batched_to_b"], GOAL_BATCHED_VS_COPY),
        ),
        (
            "",
            "",
            f">= {GOAL_VS_NAIVE:.0f} x (c)",
            f"{ratios['d_batched_to_c']:.1f}",
            _verdict(ratios["d_batched_to_c"], GOAL_VS_NAIVE),
        ),
        ("(e) latency p50, ms", f"{r['e_latency_p50_ms']:,.1f}", "", "", ""),
        (
            "(e) latency p99, ms",
            f"{r['e_latency_p99_ms']:,.1f}",
            f"<= {GOAL_P99_MS:.0f} ms",
            f"{ratios['e_p99_to_goal']:.2f}",
            _verdict(ratios["e_p99_to_goal"], 1.0, at_most=True),
        ),
    ]
    print(f"{'figure':<34}{'value':>10}  {'goal':<16}{'ratio':>7}  result")
    for name, value, goal, ratio, verdict in lines:
        print(f"{name:<34}{value:>10}  {goal:<16}{ratio:>7}  {verdict}")
    print(
        f"(a) is {ratios['a_to_c']:.1f} x (c); (d, 1/msg) takes the same broker path, so it "
        "cannot go beyond that"
    )
    print("CPU time per reading (per message in a), microseconds, by process:")
    for phase, cpu in r["cpu_us_per_reading"].items():
        if isinstance(cpu, dict):
            print(f"  {phase:<14}" + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items()))
    lost = {k: v for k, v in r["lost_at_broker"].items() if (any(v) if isinstance(v, list) else v)}
    if lost:
        print(f"lost at the broker (published, never delivered): {lost}")
    print(f"written to {RESULTS.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the burst sizes")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="use the broker of MQTT_URL instead of a private embedded one (see services())",
    )
    args = parser.parse_args(argv)
    results = run(scale=args.scale, repeats=args.repeats, shared_broker=args.shared_broker)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


if __name__ == "__main__":
    main()
