"""Issue 3, part 6: per-gateway credentials, TLS with CA verification, the production ACL.

Against a Mosquitto started with TLS, a password file and ``deploy/mosquitto/acl``, with a
second TLS listener where a client certificate from the CA is the login (its CN the user name)
(:mod:`tests.e2e.secure_broker`), through the project's own client factory
(:func:`carewatch_contract.broker.make_client`) and then the real gateway and ingest processes:

- anonymous clients, wrong passwords and unknown users are refused;
- a client that does not trust the broker's CA (or reaches it under a name its certificate
  does not carry) fails the TLS handshake before it sends any credentials;
- gateway A can neither publish as gateway B, nor read B's acks and inbox, nor forge them;
- on the certificate listener, no certificate or one from another CA is refused in the TLS
  handshake, and gateway A's certificate confines it to A whatever user name it claims; a
  certificate alone is no login on the password listener;
- gateway and ingest work end to end over TLS with their own logins (the gateway with a
  password or with a client certificate), and neither logs (nor writes back) a password, a
  private key or any patient data; a gateway whose key file others can read does not start.

(That ``MQTT_PASSWORD_FILE`` and ``MQTT_KEY_FILE`` must be 0600 is proven in
tests/unit/test_gateway_settings.py too.)
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint, make_client
from devstack.ports import free_port
from gateway_agent.simulator.population import build_population
from tests.conftest import REPO
from tests.e2e.conftest import wait_until
from tests.e2e.secure_broker import ClientCert, SecureBroker, secure_broker

pytestmark = [pytest.mark.slow, pytest.mark.broker]

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code, CONNACK and PUBACK
X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19  # OpenSSL: the chain ends in a CA we do not trust
X509_V_ERR_HOSTNAME_MISMATCH = 62
QUIET_S = 2.0  # how long a forbidden message is given to show up after the allowed one


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureBroker]:
    with secure_broker() as broker:
        yield broker


# -- a thin test client over the project's make_client ---------------------------------------


@dataclass
class Session:
    """One MQTT connection and what the broker told it, in order of arrival."""

    client: mqtt.Client
    connack: ReasonCode | None = None
    events: queue.Queue[tuple[str, object]] = field(default_factory=queue.Queue)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    disconnects: int = 0

    def _wait(self, what: str, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            try:
                kind, value = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if kind == "connack":
                assert isinstance(value, ReasonCode)
                self.connack = value
            elif kind == "puback":
                mid, code = value  # type: ignore[misc]
                self.pubacks[mid] = code
            elif kind == "suback":
                mid, codes = value  # type: ignore[misc]
                self.subacks[mid] = codes
            elif kind == "message":
                self.messages.append(value)  # type: ignore[arg-type]
            elif kind == "disconnect":
                self.disconnects += 1

    def wait_connack(self) -> ReasonCode:
        self._wait("a CONNACK", lambda: self.connack is not None)
        assert self.connack is not None
        return self.connack

    def wait_dropped_without_connack(self) -> None:
        """The broker closed the connection before any CONNACK: refused below MQTT (TLS)."""
        self._wait("the connection to drop", lambda: self.disconnects > 0)
        assert self.connack is None, f"the broker answered CONNECT with {self.connack}"

    def subscribe(self, *topic_filters: str) -> list[ReasonCode]:
        result, mid = self.client.subscribe([(f, 1) for f in topic_filters])
        assert result == mqtt.MQTT_ERR_SUCCESS
        self._wait(f"the SUBACK of {topic_filters}", lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        self._wait(f"the PUBACK for {topic}", lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def wait_message(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        self._wait(f"{payload!r} on {topic}", lambda: (topic, payload) in self.messages, timeout_s)

    def settle(self, seconds: float) -> list[tuple[str, bytes]]:
        """Everything received, after giving stragglers ``seconds`` more to arrive."""
        deadline = time.monotonic() + seconds
        self._wait("nothing", lambda: time.monotonic() >= deadline, seconds + 1)
        return list(self.messages)


Connect = Callable[..., Session]


def _close_leaked_sockets(traceback: TracebackType | None) -> None:
    """paho-mqtt 2.2 leaves the TLS socket of a failed handshake open (``_ssl_wrap_socket``
    raises without closing it); close it here so its ResourceWarning does not fail a test."""
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            if isinstance(value, ssl.SSLSocket):
                value.close()
        traceback = traceback.tb_next


@pytest.fixture
def connect(secure: SecureBroker) -> Iterator[Connect]:
    """``connect(username, password, ca_file=..., host=..., port=..., cert=...)``: a client made
    by the project's ``make_client``, connected (the TLS handshake runs inside ``connect``) with
    its network loop running; every session is disconnected at the end of the test. ``cert``
    is a client certificate to present, ``port`` the listener (default: the password one)."""
    sessions: list[Session] = []

    def _connect(
        username: str | None,
        password: str | None,
        *,
        ca_file: str | None = secure.ca_file,
        host: str = secure.host,
        port: int = secure.port,
        cert: ClientCert | None = None,
    ) -> Session:
        endpoint = BrokerEndpoint.from_url(f"mqtts://{host}:{port}")
        client = make_client(
            endpoint,
            client_id=f"security-test-{username or 'anonymous'}-{uuid.uuid4().hex[:8]}",
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert.cert_file if cert else None,
            key_file=cert.key_file if cert else None,
            persistent_session=False,
        )
        session = Session(client)
        client.on_connect = lambda c, u, flags, rc, props: session.events.put(("connack", rc))
        client.on_publish = lambda c, u, mid, rc, props: session.events.put(("puback", (mid, rc)))
        client.on_subscribe = lambda c, u, mid, rcs, props: session.events.put(
            ("suback", (mid, rcs))
        )
        client.on_message = lambda c, u, msg: session.events.put(
            ("message", (msg.topic, msg.payload))
        )
        client.on_disconnect = lambda c, u, flags, rc, props: session.events.put(("disconnect", rc))
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=30)
        except ssl.SSLError as exc:
            _close_leaked_sockets(exc.__traceback__)
            raise
        sessions.append(session)
        client.loop_start()
        return session

    try:
        yield _connect
    finally:
        for session in sessions:
            session.client.disconnect()
            session.client.loop_stop()


def topic(gateway_id: str, kind: str) -> str:
    return topics.gateway_topic(gateway_id, kind)


# -- 1. credentials -------------------------------------------------------------------------


def test_a_gateway_with_its_own_password_is_let_in(connect: Connect, secure: SecureBroker) -> None:
    """The control for the refusals below: TLS and the password file themselves work."""
    session = connect("gw-a", secure.passwords["gw-a"])
    assert not session.wait_connack().is_failure


@pytest.mark.parametrize(
    ("username", "password_of"),
    [
        pytest.param(None, None, id="anonymous"),
        pytest.param("gw-a", "nobody", id="wrong-password"),
        pytest.param("gw-a", "gw-b", id="another-gateways-password"),
        pytest.param("gw-c", "gw-a", id="unknown-user"),
    ],
)
def test_clients_without_valid_credentials_are_refused(
    connect: Connect, secure: SecureBroker, username: str | None, password_of: str | None
) -> None:
    """``password_of``: whose password is sent (``nobody``: a made-up one; None: none)."""
    password = None if password_of is None else secure.passwords.get(password_of, "made-up")
    session = connect(username, password)
    connack = session.wait_connack()
    assert connack.is_failure
    assert connack.value == NOT_AUTHORIZED, connack


# -- 2. TLS with CA verification ------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["wrong-ca", "system-trust-store", "name-not-in-certificate"], ids=str
)
def test_a_client_that_cannot_verify_the_broker_is_refused_before_sending_credentials(
    connect: Connect, secure: SecureBroker, case: str
) -> None:
    ca_file = {"wrong-ca": secure.wrong_ca_file, "system-trust-store": None}.get(
        case, secure.ca_file
    )
    host = "localhost" if case == "name-not-in-certificate" else secure.host
    log_size = len(secure.log())
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        connect("gw-a", secure.passwords["gw-a"], ca_file=ca_file, host=host)
    expected = (
        X509_V_ERR_HOSTNAME_MISMATCH
        if case == "name-not-in-certificate"
        else X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    )
    assert failure.value.verify_code == expected, failure.value
    del failure
    # The broker saw the handshake fail and never a login.
    wait_until(lambda: "OpenSSL Error" in secure.log()[log_size:], 5, "the broker's TLS error")
    assert "u'gw-a'" not in secure.log()[log_size:]


# -- 3. the ACL: a gateway is confined to its own id ----------------------------------------


@pytest.mark.parametrize("kind", [topics.READINGS, topics.STATUS, topics.RECEIPTS])
def test_gateway_a_cannot_publish_as_gateway_b(
    connect: Connect, secure: SecureBroker, kind: str
) -> None:
    ingest = connect("ingest", secure.passwords["ingest"])
    assert not ingest.wait_connack().is_failure
    assert not ingest.subscribe(topics.all_gateways(kind))[0].is_failure
    gw_a = connect("gw-a", secure.passwords["gw-a"])
    assert not gw_a.wait_connack().is_failure
    marker = secrets.token_hex(4).encode()

    forged = gw_a.publish(topic("gw-b", kind), b"forged " + marker, retain=kind == topics.STATUS)
    genuine = gw_a.publish(topic("gw-a", kind), b"genuine " + marker)

    assert forged.value == NOT_AUTHORIZED, forged  # MQTT 5 tells the publisher, too
    assert not genuine.is_failure, genuine
    ingest.wait_message(topic("gw-a", kind), b"genuine " + marker)
    assert ingest.settle(QUIET_S) == [(topic("gw-a", kind), b"genuine " + marker)]


def test_gateway_a_cannot_read_gateway_bs_acks_or_inbox(
    connect: Connect, secure: SecureBroker
) -> None:
    gw_a = connect("gw-a", secure.passwords["gw-a"])
    assert not gw_a.wait_connack().is_failure
    # Mosquitto grants these subscriptions but checks every delivery against the ACL.
    gw_a.subscribe(
        topic("gw-b", topics.ACKS),
        topic("gw-b", topics.INBOX),
        topics.all_gateways(topics.ACKS),
        topics.all_gateways(topics.INBOX),
        "carewatch/#",
        topic("gw-a", topics.ACKS),
    )
    ingest = connect("ingest", secure.passwords["ingest"])
    assert not ingest.wait_connack().is_failure
    marker = secrets.token_hex(4).encode()

    for kind in (topics.ACKS, topics.INBOX):
        assert not ingest.publish(topic("gw-b", kind), b"for gw-b " + marker).is_failure
    assert not ingest.publish(topic("gw-a", topics.ACKS), b"for gw-a " + marker).is_failure

    gw_a.wait_message(topic("gw-a", topics.ACKS), b"for gw-a " + marker)
    received = gw_a.settle(QUIET_S)
    assert {t for t, _ in received} == {topic("gw-a", topics.ACKS)}, received


def test_gateway_a_cannot_forge_acks_or_inbox_messages_for_gateway_b(
    connect: Connect, secure: SecureBroker
) -> None:
    """A forged ack would make gateway B drop readings from its outbox that were never stored."""
    gw_b = connect("gw-b", secure.passwords["gw-b"])
    assert not gw_b.wait_connack().is_failure
    gw_b.subscribe(topic("gw-b", topics.ACKS), topic("gw-b", topics.INBOX))
    gw_a = connect("gw-a", secure.passwords["gw-a"])
    assert not gw_a.wait_connack().is_failure
    ingest = connect("ingest", secure.passwords["ingest"])
    assert not ingest.wait_connack().is_failure
    marker = secrets.token_hex(4).encode()

    for kind in (topics.ACKS, topics.INBOX):
        forged = gw_a.publish(topic("gw-b", kind), b"forged " + marker)
        assert forged.value == NOT_AUTHORIZED, forged
    assert not ingest.publish(topic("gw-b", topics.ACKS), b"genuine " + marker).is_failure

    gw_b.wait_message(topic("gw-b", topics.ACKS), b"genuine " + marker)
    assert gw_b.settle(QUIET_S) == [(topic("gw-b", topics.ACKS), b"genuine " + marker)]


# -- 4. client certificates: the certificate is the login ----------------------------------


def test_a_gateway_with_its_certificate_is_let_in_and_its_readings_arrive(
    connect: Connect, secure: SecureBroker
) -> None:
    ingest = connect("ingest", secure.passwords["ingest"])
    assert not ingest.wait_connack().is_failure
    assert not ingest.subscribe(topics.all_gateways(topics.READINGS))[0].is_failure
    log_size = len(secure.log())
    gw_a = connect(None, None, port=secure.cert_port, cert=secure.client_certs["gw-a"])
    assert not gw_a.wait_connack().is_failure
    marker = secrets.token_hex(4).encode()

    assert not gw_a.publish(topic("gw-a", topics.READINGS), b"genuine " + marker).is_failure

    ingest.wait_message(topic("gw-a", topics.READINGS), b"genuine " + marker)
    # No user name was sent: the broker took it from the certificate's CN.
    assert "u'gw-a')" in secure.log()[log_size:]


@pytest.mark.parametrize("claimed", [None, "gw-b"], ids=["no-user-name", "claims-gw-b"])
def test_gateway_as_certificate_confines_it_to_gw_a_whatever_user_name_it_sends(
    connect: Connect, secure: SecureBroker, claimed: str | None
) -> None:
    ingest = connect("ingest", secure.passwords["ingest"])
    assert not ingest.wait_connack().is_failure
    assert not ingest.subscribe(topics.all_gateways(topics.READINGS))[0].is_failure
    password = secure.passwords["gw-b"] if claimed else None  # even with B's own password
    gw_a = connect(claimed, password, port=secure.cert_port, cert=secure.client_certs["gw-a"])
    assert not gw_a.wait_connack().is_failure
    marker = secrets.token_hex(4).encode()

    forged = gw_a.publish(topic("gw-b", topics.READINGS), b"forged " + marker)
    genuine = gw_a.publish(topic("gw-a", topics.READINGS), b"genuine " + marker)

    assert forged.value == NOT_AUTHORIZED, forged
    assert not genuine.is_failure, genuine
    ingest.wait_message(topic("gw-a", topics.READINGS), b"genuine " + marker)
    assert ingest.settle(QUIET_S) == [(topic("gw-a", topics.READINGS), b"genuine " + marker)]


@pytest.mark.parametrize(
    ("case", "broker_error"),
    [
        pytest.param("no-certificate", "peer did not return a certificate", id="no-certificate"),
        pytest.param("wrong-ca", "certificate verify failed", id="certificate-from-wrong-ca"),
    ],
)
def test_the_certificate_listener_refuses_clients_without_a_certificate_from_the_ca(
    connect: Connect, secure: SecureBroker, case: str, broker_error: str
) -> None:
    """Refused in the TLS handshake, before MQTT: a valid password does not help there."""
    log_size = len(secure.log())
    if case == "no-certificate":
        session = connect("gw-a", secure.passwords["gw-a"], port=secure.cert_port)
    else:
        session = connect(None, None, port=secure.cert_port, cert=secure.wrong_ca_client_cert)
    session.wait_dropped_without_connack()
    wait_until(lambda: broker_error in secure.log()[log_size:], 5, f"the broker's {broker_error!r}")
    assert "u'gw-a'" not in secure.log()[log_size:]


def test_a_certificate_alone_is_no_login_on_the_password_listener(
    connect: Connect, secure: SecureBroker
) -> None:
    session = connect("gw-a", None, cert=secure.client_certs["gw-a"])
    connack = session.wait_connack()
    assert connack.value == NOT_AUTHORIZED, connack


# -- 5. the real gateway and ingest over TLS ------------------------------------------------


@dataclass
class Processes:
    workdir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> None:
        """SIGTERM to the process group (a clean shutdown is logged too), then SIGKILL."""
        proc = self.running.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Like e2e's wait_until, but fails at once when a process exits, and shows the logs."""

        def done() -> bool:
            exited = [name for name, proc in self.running.items() if proc.poll() is not None]
            if exited:
                raise AssertionError(f"{', '.join(exited)} exited while waiting for {what}")
            return predicate()

        try:
            wait_until(done, timeout_s, what)
        except AssertionError as exc:
            tails = "".join(
                f"\n--- {name}.log (end) ---\n{self.log(name)[-3000:]}" for name in self.running
            )
            raise AssertionError(f"{exc}{tails}") from None


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def fresh_database(postgres_server_url: str) -> Iterator[str]:
    """A new, migrated database for this test (as tests/e2e/conftest.py's pipeline makes)."""
    from ingest.db import migrate

    name = f"carewatch_sec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}"))
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _clean_environment() -> dict[str, str]:
    """This process's environment without any CareWatch or MQTT setting of the caller's."""
    prefixes = ("MQTT_", "GATEWAY_", "INGEST_", "CAREWATCH_", "DATABASE_URL", "RULES_FILE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _db_value(database_url: str, sql: str) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _outbox_value(path: Path, sql: str) -> int:
    with sqlite3.connect(path, timeout=10) as conn:
        (value,) = conn.execute(sql).fetchone()
    return int(value)


def _copy_client_cert(cert: ClientCert, folder: Path, key_mode: int = 0o600) -> tuple[Path, Path]:
    """The gateway's certificate and key as an installer lays them out, key mode ``key_mode``."""
    cert_file, key_file = folder / "gw-a.crt", folder / "gw-a.key"
    cert_file.write_bytes(Path(cert.cert_file).read_bytes())
    key_file.write_bytes(Path(cert.key_file).read_bytes())
    key_file.chmod(key_mode)
    return cert_file, key_file


def _pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.mark.db
@pytest.mark.parametrize("login", ["password", "certificate"])
def test_gateway_and_ingest_run_over_tls_and_log_neither_secrets_nor_patient_data(
    secure: SecureBroker, fresh_database: str, processes: Processes, tmp_path: Path, login: str
) -> None:
    """The gateway logs in with its password file, or with its client certificate on the
    certificate listener (``MQTT_CERT_FILE``/``MQTT_KEY_FILE``, no password at all)."""
    gateway_id = "gw-a"
    password_file = tmp_path / "gw-a.mqtt-password"
    password_file.write_text(secure.passwords[gateway_id] + "\n")
    password_file.chmod(0o600)
    cert_file, key_file = _copy_client_cert(secure.client_certs[gateway_id], tmp_path)
    key_pem = key_file.read_text()
    outbox_path = tmp_path / "outbox.sqlite"
    broker_log_start = len(secure.log())  # the broker serves the whole module
    base = _clean_environment()
    server_env = {
        **base,
        "CAREWATCH_ENV": "test",
        "CAREWATCH_API_TOKEN": secrets.token_urlsafe(16),
        "DATABASE_URL": fresh_database,
        "MQTT_URL": secure.url,
        "MQTT_CA_FILE": secure.ca_file,
        "MQTT_USERNAME": "ingest",
        "MQTT_PASSWORD": secure.passwords["ingest"],
        "INGEST_CLIENT_ID": f"ingest-security-{uuid.uuid4().hex[:8]}",
    }
    gateway_env = {
        **base,
        "GATEWAY_ID": gateway_id,  # also its MQTT user name, and its certificate's CN
        "MQTT_CA_FILE": secure.ca_file,
        "GATEWAY_OUTBOX_PATH": str(outbox_path),
        "GATEWAY_RESEND_AFTER_S": "5",
        **(
            {"MQTT_URL": secure.url, "MQTT_PASSWORD_FILE": str(password_file)}
            if login == "password"
            else {
                "MQTT_URL": secure.cert_url,
                "MQTT_CERT_FILE": str(cert_file),
                "MQTT_KEY_FILE": str(key_file),
            }
        ),
    }
    enrolled = subprocess.run(
        [
            *(sys.executable, "-m", "ingest", "enroll-demo"),
            *("--gateway", gateway_id, "--patients", "2", "--seed", "7"),
        ],
        cwd=REPO,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr

    api_port = free_port()
    processes.start(
        "ingest",
        server_env,
        "-m",
        "ingest",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
    )

    def ingest_ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    processes.wait_until(ingest_ready, 60, "ingest connected to the TLS broker (/readyz)")
    processes.start(
        "gateway",
        gateway_env,
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "2",
        "--history-days",
        "0.2",
        "--rate",
        "30",
        "--live-readings",
        "6",
    )

    def drained() -> bool:
        if not outbox_path.exists() or "live measurements done" not in processes.log("gateway"):
            return False
        try:
            accepted = _outbox_value(
                outbox_path, "SELECT value - 1 FROM counters WHERE name = 'next_seq'"
            )
            pending = _outbox_value(outbox_path, "SELECT count(*) FROM outbox")
        except sqlite3.Error:
            return False
        stored = _db_value(fresh_database, "SELECT count(*) FROM readings")
        return accepted > 0 and pending == 0 and stored == accepted

    processes.wait_until(
        drained, 90, "the gateway's readings in the database and its outbox drained"
    )
    state = f"SELECT state FROM gateways WHERE gateway_id = '{gateway_id}'"
    processes.wait_until(
        lambda: _db_value(fresh_database, state) == "online", 30, "the gateway's status"
    )
    processes.stop_all()  # the shutdown is logged too

    logs = {name: processes.log(name) for name in ("gateway", "ingest")}
    assert "gateway connected" in logs["gateway"]
    assert "MQTT connected" in logs["ingest"]
    # The broker logged the gateway in through the listener of its login, as gw-a.
    broker_log = secure.log()[broker_log_start:]
    gateway_port = secure.port if login == "password" else secure.cert_port
    logins = re.findall(
        rf"New client connected from [\d.]+:(\d+) as carewatch-gw-{gateway_id} "
        rf"\(.*u'{gateway_id}'\)",
        broker_log,
    )
    assert logins, "the broker never logged the gateway in"
    assert all(
        f"New connection from {secure.host}:{client_port} on port {gateway_port}." in broker_log
        for client_port in logins
    ), "the gateway logged in through the other listener"
    # Secrets: in no log, not in the gateway's outbox, and the secret files are left alone.
    key_lines = _pem_body_lines(key_pem)
    outbox_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite*"))
    for name, text in [*logs.items(), ("broker", secure.log())]:
        for user, password in secure.passwords.items():
            assert password not in text, f"{user}'s MQTT password is in the {name} log"
        assert not any(line in text for line in key_lines), f"the private key in the {name} log"
    for user, password in secure.passwords.items():
        assert password.encode() not in outbox_bytes, f"{user}'s password is in the outbox"
    assert not any(line.encode() in outbox_bytes for line in key_lines), "the key in the outbox"
    assert password_file.read_text() == secure.passwords[gateway_id] + "\n"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text() == key_pem
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert cert_file.read_bytes() == Path(secure.client_certs[gateway_id].cert_file).read_bytes()
    # Patient data: no name, patient id, phone number or birth date in any log line.
    population = build_population(patients=2, seed=7)
    identifying = {
        value: what
        for p in population
        for value, what in [
            (p.display_name, "a patient name"),
            (p.patient_id, "a patient id"),
            (p.phone, "a phone number"),
            (p.birth_date.isoformat(), "a birth date"),
        ]
    }
    for name, text in logs.items():
        for line in text.splitlines():
            for value, what in identifying.items():
                assert value not in line, f"{what} in the {name} log: {line}"
            assert not re.search(r"\bpt-\d{4}\b", line), f"a patient id in the {name} log: {line}"


def test_a_gateway_whose_key_file_others_can_read_does_not_start(
    secure: SecureBroker, tmp_path: Path
) -> None:
    cert_file, key_file = _copy_client_cert(secure.client_certs["gw-a"], tmp_path, 0o644)
    log_size = len(secure.log())
    env = {
        **_clean_environment(),
        "GATEWAY_ID": "gw-a",
        "MQTT_URL": secure.cert_url,
        "MQTT_CA_FILE": secure.ca_file,
        "MQTT_CERT_FILE": str(cert_file),
        "MQTT_KEY_FILE": str(key_file),
        "GATEWAY_OUTBOX_PATH": str(tmp_path / "outbox.sqlite"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway_agent", "run", "--simulate", "--patients", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"MQTT_KEY_FILE {key_file} is readable by others; run: chmod 600 {key_file}" in (
        result.stderr
    )
    output = result.stdout + result.stderr
    assert not any(line in output for line in _pem_body_lines(key_file.read_text()))
    assert key_file.stat().st_mode & 0o777 == 0o644  # reported, not changed behind one's back
    assert "New connection" not in secure.log()[log_size:]  # it never reached the broker
