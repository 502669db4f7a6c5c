"""The embedded PostgreSQL and MQTT broker that `make demo` / `make test` start.

Each test uses its own temporary data folder (see ``service_dir``), never <repo>/.carewatch.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest

from devstack import REPO_ROOT
from devstack.broker import EmbeddedBroker, find_mosquitto, mqtt_handshake
from devstack.ports import free_port, port_accepts_connections
from devstack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.embedded

BROKER_KINDS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
    ),
    "amqtt",
]


@pytest.fixture
def service_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test's servers keep their data: tmp_path, except when running as root.

    As root the servers run as other accounts (embedded_postgres, mosquitto) that must be able
    to traverse every parent directory, and every pytest session that starts as root resets
    /tmp/pytest-of-root to 0700: a concurrent session would cut a running server off from its
    files (initdb then fails with "Permission denied"). So as root, use a folder of our own.
    """
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="carewatch-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_gone(pids: list[int], port: int) -> None:
    assert not port_accepts_connections(port), f"port {port} still accepts connections"
    deadline = time.monotonic() + 5
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if _pid_alive(pid)] == []


# -- PostgreSQL ---------------------------------------------------------------------------


def test_free_port_is_bindable_and_not_a_well_known_one() -> None:
    port = free_port()
    assert port not in (1883, 5432)
    assert not port_accepts_connections(port)


def test_postgres_is_18_creates_carewatch_and_leaves_nothing_behind(service_dir: Path) -> None:
    with EmbeddedPostgres(service_dir / "pgdata") as pg:
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/carewatch"
        assert pg.port != 5432
        with psycopg.connect(pg.url) as conn:
            row = conn.execute("select version(), current_database()").fetchone()
        assert row is not None
        version, database = row
        assert version.startswith("PostgreSQL 18")
        assert database == "carewatch"
        assert pg.pid is not None
        pids = [pg.pid, *(child.pid for child in psutil.Process(pg.pid).children())]
        port = pg.port
        print(f"PostgreSQL first start (initdb): {pg.start_seconds:.2f} s")
    assert pg.pid is None
    _assert_gone(pids, port)
    assert not (service_dir / "pgdata" / "postmaster.pid").exists()


def test_postgres_reuses_its_data_directory(service_dir: Path) -> None:
    with EmbeddedPostgres(service_dir / "pgdata") as pg, psycopg.connect(pg.url) as conn:
        conn.execute("create table kept (value text)")
        conn.execute("insert into kept values ('still here')")
    with EmbeddedPostgres(service_dir / "pgdata") as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select value from kept").fetchone() == ("still here",)
        print(f"PostgreSQL restart (existing data): {pg.start_seconds:.2f} s")


def test_postgres_failure_is_cleaned_up_and_names_the_log(service_dir: Path) -> None:
    # A port we hold ourselves cannot be bound by the server: it must fail fast, name the
    # log file, and not leave a process or the data directory lock behind.
    with (
        socket.create_server(("127.0.0.1", 0)) as blocker,
        pytest.raises(RuntimeError, match=r"could not listen on .* \(see .*postgres\.log\)"),
    ):
        EmbeddedPostgres(service_dir / "pgdata", port=blocker.getsockname()[1]).start()
    with EmbeddedPostgres(service_dir / "pgdata") as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_data_directory_in_use_by_a_live_run_is_refused(service_dir: Path) -> None:
    with EmbeddedPostgres(service_dir / "pgdata") as pg:
        with pytest.raises(RuntimeError, match="in use by another process"):
            EmbeddedPostgres(service_dir / "pgdata").start()
        with psycopg.connect(pg.url) as conn:  # the first server is untouched
            assert conn.execute("select 1").fetchone() == (1,)


def _start_in_child_and_kill_it(code: str) -> int:
    """Run `code` (which prints the server pid) in a Python child, then SIGKILL the child."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    child = subprocess.Popen(
        [sys.executable, "-c", code + "\nimport time; time.sleep(300)"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert child.stdout is not None
        server_pid = int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()
    assert _pid_alive(server_pid), "the server should outlive its killed owner"
    return server_pid


def test_postgres_left_running_by_a_killed_run_is_stopped(service_dir: Path) -> None:
    data = service_dir / "pgdata"
    orphan = _start_in_child_and_kill_it(
        "from devstack.postgres import EmbeddedPostgres\n"
        f"print(EmbeddedPostgres({str(data)!r}).start().pid, flush=True)"
    )
    with EmbeddedPostgres(data) as pg, psycopg.connect(pg.url) as conn:
        assert not _pid_alive(orphan)
        assert pg.pid != orphan
        assert conn.execute("select 1").fetchone() == (1,)


def test_stale_postmaster_pid_file_is_ignored(service_dir: Path) -> None:
    data = service_dir / "pgdata"
    with EmbeddedPostgres(data):
        pass
    # As after a host crash: postmaster.pid names a pid that is not a postmaster.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (data / "postmaster.pid").write_text(
            f"{sleeper.pid}\n{data}\n0\n1\n\n127.0.0.1\n0 0\nready\n"
        )
        with EmbeddedPostgres(data) as pg, psycopg.connect(pg.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert sleeper.poll() is None, "an unrelated process must not be touched"
    finally:
        sleeper.kill()
        sleeper.wait()


# -- MQTT broker --------------------------------------------------------------------------


class Client:
    """A connected MQTT 3.1.1 paho client whose received messages land in ``received``."""

    def __init__(self, paho: mqtt.Client) -> None:
        self.paho = paho
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def subscribe(self, topic: str) -> None:
        subscribed = threading.Event()
        self.paho.on_subscribe = lambda *_: subscribed.set()
        self.paho.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), "no PUBACK"


@contextmanager
def mqtt_client(port: int, client_id: str, *, clean_session: bool = True) -> Iterator[Client]:
    paho = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean_session,
    )
    client = Client(paho)
    connected = threading.Event()
    paho.on_connect = lambda *_: connected.set()
    # Set before connecting: a persistent session gets its queued messages right after CONNACK.
    paho.on_message = lambda _c, _u, message: client.received.put(message)
    paho.connect("127.0.0.1", port, keepalive=30)
    paho.loop_start()
    try:
        assert connected.wait(10), f"{client_id} got no CONNACK"
        yield client
    finally:
        paho.disconnect()
        paho.loop_stop()


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_broker_round_trips_qos1_and_leaves_nothing_behind(kind: str, service_dir: Path) -> None:
    with EmbeddedBroker(service_dir / kind, prefer=kind) as broker:  # type: ignore[arg-type]
        assert broker.kind == kind
        assert broker.protocol == {"mosquitto": "5", "amqtt": "3.1.1"}[kind]
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert broker.port != 1883
        with (
            mqtt_client(broker.port, "test-sub") as sub,
            mqtt_client(broker.port, "test-pub") as pub,
        ):
            sub.subscribe("carewatch/v1/test/#")
            pub.publish("carewatch/v1/test/reading", b'{"hr": 61}')
            message = sub.received.get(timeout=10)
        assert (message.topic, message.payload, message.qos) == (
            "carewatch/v1/test/reading",
            b'{"hr": 61}',
            1,
        )
        assert broker.pid is not None
        pid, port = broker.pid, broker.port
        print(f"{kind} start: {broker.start_seconds:.2f} s")
    assert broker.pid is None
    _assert_gone([pid], port)


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_broker_on_a_taken_port_fails_with_its_log_and_cleans_up(
    kind: str, service_dir: Path
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as blocker,
        pytest.raises(RuntimeError, match=rf"could not listen on .* \(see .*{kind}\.log\)"),
    ):
        EmbeddedBroker(service_dir / kind, prefer=kind, port=blocker.getsockname()[1]).start()  # type: ignore[arg-type]
    with EmbeddedBroker(service_dir / kind, prefer=kind) as broker:  # type: ignore[arg-type]
        assert mqtt_handshake(broker.port) is None


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_mosquitto_keeps_queued_qos1_messages_for_an_offline_subscriber(service_dir: Path) -> None:
    with EmbeddedBroker(service_dir / "mosquitto", prefer="mosquitto") as broker:
        with mqtt_client(broker.port, "ingest", clean_session=False) as ingest:
            ingest.subscribe("carewatch/v1/q/#")
        with mqtt_client(broker.port, "gateway") as gateway:
            for n in range(5):
                gateway.publish("carewatch/v1/q/reading", str(n).encode())
    # The broker restarts (on another port) in between: the queue is in mosquitto.db.
    with (
        EmbeddedBroker(service_dir / "mosquitto", prefer="mosquitto") as broker,
        mqtt_client(broker.port, "ingest", clean_session=False) as ingest,
    ):
        payloads = [ingest.received.get(timeout=10).payload for _ in range(5)]
    assert payloads == [b"0", b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_broker_left_running_by_a_killed_run_is_stopped(kind: str, service_dir: Path) -> None:
    folder = str(service_dir / kind)
    orphan = _start_in_child_and_kill_it(
        "from devstack.broker import EmbeddedBroker\n"
        f"print(EmbeddedBroker({folder!r}, prefer={kind!r}).start().pid, flush=True)"
    )
    with EmbeddedBroker(service_dir / kind, prefer=kind) as broker:  # type: ignore[arg-type]
        assert not _pid_alive(orphan)
        assert broker.pid != orphan
