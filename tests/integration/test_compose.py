"""The production-like stack's configuration: docker-compose.yml and deploy/.

Three tiers, each skipping cleanly where its tool is missing:

- The files themselves (always): the broker's ACL and config, no password literal anywhere in
  docker-compose.yml, deploy/env.example naming every variable, the Dockerfile's ground rules.
- ``docker compose config`` (needs the docker client with the compose plugin; no engine): the
  resolved stack, with dummy secrets in the environment, and the refusal when one is missing.
- The real Mosquitto (marker ``broker``; needs the mosquitto binaries): the broker started
  through deploy/mosquitto/entrypoint.sh with deploy/mosquitto/mosquitto.conf (moved to a
  temporary directory and a free port) and deploy/mosquitto/acl, and what each login may do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
MOSQUITTO_DIR = DEPLOY / "mosquitto"
ACL_FILE = MOSQUITTO_DIR / "acl"
MOSQUITTO_CONF = MOSQUITTO_DIR / "mosquitto.conf"
ENTRYPOINT = MOSQUITTO_DIR / "entrypoint.sh"
ENV_EXAMPLE = DEPLOY / "env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

PREFIX = "carewatch/v1/gateways"
DEMO_GATEWAY = "gw-demo-01"

# The secrets the stack needs, with the dummy value each gets in the compose tests: distinct,
# so that the wiring (which service gets which secret) can be checked.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD": "dummy-postgres-password",
    "MQTT_INGEST_PASSWORD": "dummy-ingest-password",
    "MQTT_GATEWAY_PASSWORD": "dummy-gateway-password",
    "MQTT_HEALTHCHECK_PASSWORD": "dummy-healthcheck-password",
    "CAREWATCH_API_TOKEN": "dummy-api-token",
}

SERVICES = {"broker", "db", "ingest", "enroll", "rules", "dashboard", "gateway-sim"}
ONE_SHOT = {"enroll"}
DEPENDENCIES = {
    "broker": {},
    "db": {},
    "ingest": {"db": "service_healthy", "broker": "service_healthy"},
    "enroll": {"ingest": "service_healthy"},
    "rules": {"ingest": "service_healthy"},
    "dashboard": {"ingest": "service_healthy"},
    "gateway-sim": {"broker": "service_healthy", "enroll": "service_completed_successfully"},
}

INGEST_ACL = {
    ("read", f"{PREFIX}/+/readings"),
    ("read", f"$share/ingest/{PREFIX}/+/readings"),
    ("read", f"{PREFIX}/+/status"),
    ("read", f"{PREFIX}/+/receipts"),
    ("read", f"$share/ingest/{PREFIX}/+/receipts"),
    ("read", f"{PREFIX}/+/requests"),
    ("read", f"$share/ingest/{PREFIX}/+/requests"),
    ("write", f"{PREFIX}/+/acks"),
    ("write", f"{PREFIX}/+/inbox"),
}
GATEWAY_PATTERNS = {
    ("write", f"{PREFIX}/%u/readings"),
    ("write", f"{PREFIX}/%u/status"),
    ("write", f"{PREFIX}/%u/receipts"),
    ("write", f"{PREFIX}/%u/requests"),
    ("read", f"{PREFIX}/%u/acks"),
    ("read", f"{PREFIX}/%u/inbox"),
}


def _compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


def _compose_code() -> str:
    """docker-compose.yml without its comment lines."""
    lines = _compose_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _compose_variables() -> set[str]:
    """Every variable that docker-compose.yml interpolates (``${VAR...}``)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", _compose_code()))


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"env.example line is not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


Rule = tuple[str, str]  # (access, topic)


def _acl_rules() -> tuple[list[Rule], dict[str, set[Rule]], set[Rule]]:
    """(topic lines before any user line, {user: {(access, topic)}}, {(access, pattern)})."""
    anonymous: list[Rule] = []
    users: dict[str, set[Rule]] = {}
    patterns: set[Rule] = set()
    current: str | None = None
    for raw in ACL_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            current = rest
            users.setdefault(current, set())
            continue
        assert keyword in {"topic", "pattern"}, f"unexpected ACL line {line!r}"
        access, _, topic = rest.partition(" ")
        if not topic:  # "topic foo" means readwrite
            access, topic = "readwrite", access
        rule = (access, topic.strip())
        if keyword == "pattern":
            patterns.add(rule)
        elif current is None:
            anonymous.append(rule)
        else:
            users[current].add(rule)
    return anonymous, users, patterns


def _conf_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for raw in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


# --- The files -------------------------------------------------------------------------------


def test_acl_confines_each_gateway_to_its_own_id() -> None:
    anonymous, users, patterns = _acl_rules()
    assert anonymous == [], "topic lines before any `user` line would apply to anonymous clients"
    assert patterns == GATEWAY_PATTERNS
    assert users == {"healthcheck": {("read", "$SYS/#")}, "ingest": INGEST_ACL}
    for access, topic in patterns:
        assert "#" not in topic and "+" not in topic, f"pattern {topic} reaches other gateways"
        assert access in {"read", "write"}
    every_rule = patterns | set().union(*users.values())
    writes = {topic for access, topic in every_rule if access in {"write", "readwrite"}}
    assert not any("#" in topic for topic in writes), f"a `#` write grant: {sorted(writes)}"


def test_mosquitto_conf_refuses_anonymous_and_keeps_queued_messages() -> None:
    conf = _conf_directives()
    assert conf["allow_anonymous"] == ["false"]
    assert conf["password_file"] == ["/mosquitto/auth/passwd"]
    assert conf["acl_file"] == ["/mosquitto/auth/acl"]
    assert conf["persistence"] == ["true"]
    assert conf["persistence_location"] == ["/mosquitto/data/"]
    assert conf["max_queued_messages"] == ["100000"]
    assert conf["listener"] == ["1883"]
    # The entrypoint writes the password file and ACL where the config reads them.
    entrypoint = ENTRYPOINT.read_text(encoding="utf-8")
    assert 'auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"' in entrypoint
    assert "mosquitto_passwd -b" in entrypoint
    assert entrypoint.rstrip().endswith('exec "$@"')


def test_entrypoint_is_valid_posix_shell() -> None:
    if shutil.which("sh") is None:
        pytest.skip("no sh on PATH")
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_file_has_no_password_literal() -> None:
    text = _compose_code()
    secret_key = r"[A-Z0-9_]*(?:PASSWORD|PASSWD|TOKEN|SECRET)[A-Z0-9_]*"
    assignments = re.findall(
        rf"(?<![\w${{])({secret_key})\s*[:=][ \t]*(\S*)", text, flags=re.IGNORECASE
    )
    assert assignments, "expected the secrets to be passed through the environment"
    for key, value in assignments:
        assert value.startswith("${") and ":?" in value, f"{key} is not a required ${{VAR:?}}"
    urls_with_user = 0
    for match in re.finditer(r"://[^\s/@:]+:", text):
        rest = text[match.end() :]
        if re.match(r"\d+(?:[/\s\"']|$)", rest):
            continue  # host:port
        urls_with_user += 1
        assert rest.startswith("${"), f"a password in a URL: {rest[:20]!r}..."
    assert urls_with_user, "expected DATABASE_URL to take its password from the environment"
    for argument in re.findall(r"\s-P\s+(\S+)", text):
        assert argument.strip("\"'").startswith("$$"), f"a literal -P argument: {argument!r}"
    for value in REQUIRED_SECRETS.values():
        assert value not in text


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    example = _env_example()
    missing = _compose_variables() - set(example)
    assert not missing, f"docker-compose.yml uses variables env.example lacks: {sorted(missing)}"
    for name in REQUIRED_SECRETS:
        assert name in example
        assert example[name] == "", f"env.example must not hold a value for {name}"
    assert ".env" in ENV_EXAMPLE.read_text(encoding="utf-8")


def test_required_secrets_are_exactly_the_required_variables() -> None:
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", _compose_code()))
    assert required == set(REQUIRED_SECRETS)


def test_dockerfile_ground_rules() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert "FROM python:3.11-slim" in instructions
    assert any(line.startswith("ARG EXTRAS") for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    for line in instructions:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"PASSWORD|TOKEN|SECRET", line), line
        if line.startswith(("COPY ", "ADD ")):
            sources = line.split()[1:-1]
            assert "." not in sources and "./" not in sources, f"copies the whole tree: {line}"
            assert not any(".env" in source for source in sources), line


# --- docker compose config -------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    if shutil.which("docker") is None:
        pytest.skip("docker is not on PATH")
    try:
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose version` failed: {exc}")
    if version.returncode != 0:
        reason = (version.stderr.strip() or version.stdout.strip() or "no output").splitlines()[0]
        pytest.skip(f"`docker compose version` failed: {reason}")
    return ["docker", "compose"]


def _compose_config(
    compose_command: list[str], tmp_path: Path, secrets: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # Nothing from the caller's shell or a developer's .env may fill in a variable: the
    # environment loses every variable the file uses, and the env file is an empty one.
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _compose_variables() and not name.startswith("COMPOSE_")
    }
    env.update(secrets)
    return subprocess.run(
        [
            *compose_command,
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE_FILE.name),
            "config",
            "--format",
            "json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack(compose_command: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _compose_config(compose_command, tmp_path_factory.mktemp("compose"), REQUIRED_SECRETS)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_compose_refuses_a_missing_secret_by_name(
    compose_command: list[str], tmp_path: Path, missing: str
) -> None:
    secrets = {name: value for name, value in REQUIRED_SECRETS.items() if name != missing}
    result = _compose_config(compose_command, tmp_path, secrets)
    assert result.returncode != 0
    assert missing in result.stderr


def test_compose_services_and_healthchecks(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        if name in ONE_SHOT:
            assert healthcheck is None, f"{name} is a one-shot and needs no healthcheck"
            assert service["restart"] == "no"
            continue
        assert healthcheck and not healthcheck.get("disable"), f"{name} has no healthcheck"
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
        assert service["restart"] == "unless-stopped"


def test_compose_dependency_conditions(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        conditions = {
            dependency: spec["condition"]
            for dependency, spec in (service.get("depends_on") or {}).items()
        }
        assert conditions == DEPENDENCIES[name], name


def test_compose_never_publishes_the_database(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert not services["db"].get("ports")
    assert not services["db"].get("expose")
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert int(port["target"]) != 5432, f"{name} publishes the database port"
            assert str(port.get("published")) != "5432", f"{name} publishes port 5432"
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes beyond localhost"
    # The database sits on an internal network only.
    assert set(services["db"]["networks"]) == {"data"}
    assert stack["networks"]["data"].get("internal") is True


def test_compose_images_and_commands(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert services["broker"]["image"].startswith("eclipse-mosquitto:2")
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg16", services["db"]["image"])
    built = {"ingest": "server", "dashboard": "dashboard", "gateway-sim": "gateway"}
    for name, extras in built.items():
        build = services[name]["build"]
        assert Path(build["dockerfile"]).as_posix().endswith("deploy/Dockerfile")
        assert build["args"]["EXTRAS"] == extras
    for name in ("enroll", "rules"):
        assert "build" not in services[name]
        assert services[name]["image"] == services["ingest"]["image"]
        assert services[name]["pull_policy"] == "never"
    assert services["ingest"]["command"] == ["python", "-m", "ingest", "serve"]
    assert services["enroll"]["command"] == [
        "python", "-m", "ingest", "enroll-demo",
        "--gateway", DEMO_GATEWAY, "--patients", "20", "--seed", "7",
    ]  # fmt: skip
    assert services["rules"]["command"] == ["python", "-m", "analytics", "worker"]
    assert services["dashboard"]["command"][:3] == ["streamlit", "run", "dashboard/app.py"]
    assert services["gateway-sim"]["command"] == [
        "python", "-m", "gateway_agent", "run", "--simulate", "--patients", "20", "--seed", "7",
    ]  # fmt: skip


def test_compose_secrets_reach_the_right_services(stack: dict[str, Any]) -> None:
    services = stack["services"]
    env = {name: service.get("environment") or {} for name, service in services.items()}
    database_url = (
        f"postgresql://carewatch:{REQUIRED_SECRETS['POSTGRES_PASSWORD']}@db:5432/carewatch"
    )
    assert env["db"]["POSTGRES_PASSWORD"] == REQUIRED_SECRETS["POSTGRES_PASSWORD"]
    for name in ("ingest", "enroll", "rules"):
        assert env[name]["DATABASE_URL"] == database_url, name
    for name in ("ingest", "enroll"):
        assert env[name]["MQTT_URL"] == "mqtt://broker:1883"
        assert env[name]["MQTT_USERNAME"] == "ingest"
        assert env[name]["MQTT_PASSWORD"] == env["broker"]["MQTT_INGEST_PASSWORD"]
        assert env[name]["MQTT_PASSWORD"] == REQUIRED_SECRETS["MQTT_INGEST_PASSWORD"]
        assert env[name]["INGEST_SHARED_GROUP"] == "ingest"
    assert env["ingest"]["CAREWATCH_API_TOKEN"] == REQUIRED_SECRETS["CAREWATCH_API_TOKEN"]
    assert "CAREWATCH_API_TOKEN" not in env["dashboard"]  # users log in; no service token
    assert env["dashboard"]["CAREWATCH_API_URL"] == "http://ingest:8000"
    gateway = env["gateway-sim"]
    assert gateway["GATEWAY_ID"] == gateway["MQTT_USERNAME"] == DEMO_GATEWAY
    assert env["broker"]["MQTT_GATEWAY_ID"] == DEMO_GATEWAY
    assert gateway["MQTT_PASSWORD"] == env["broker"]["MQTT_GATEWAY_PASSWORD"]
    assert gateway["MQTT_PASSWORD"] == REQUIRED_SECRETS["MQTT_GATEWAY_PASSWORD"]
    assert (
        env["broker"]["MQTT_HEALTHCHECK_PASSWORD"]
        == (REQUIRED_SECRETS["MQTT_HEALTHCHECK_PASSWORD"])
    )
    assert gateway["GATEWAY_OUTBOX_PATH"].startswith("/var/lib/carewatch/")
    mounts = {volume["target"]: volume for volume in services["gateway-sim"]["volumes"]}
    assert mounts["/var/lib/carewatch"]["type"] == "volume"


def test_compose_broker_mounts_this_config(stack: dict[str, Any]) -> None:
    broker = stack["services"]["broker"]
    mounts = {volume["target"]: volume for volume in broker["volumes"]}
    for source, target in (
        (ENTRYPOINT, "/carewatch/entrypoint.sh"),
        (MOSQUITTO_CONF, "/mosquitto/config/mosquitto.conf"),
        (ACL_FILE, "/mosquitto/config/acl"),
    ):
        assert Path(mounts[target]["source"]).resolve() == source.resolve()
        assert mounts[target]["read_only"] is True
    assert mounts["/mosquitto/data"]["type"] == "volume"
    assert broker["entrypoint"] == ["/bin/sh", "/carewatch/entrypoint.sh"]
    assert "/mosquitto/auth" in broker["tmpfs"]
    assert "-u healthcheck" in " ".join(broker["healthcheck"]["test"])


# --- The real Mosquitto ----------------------------------------------------------------------

BROKER_PASSWORDS = {
    "healthcheck": "hc-" + uuid.uuid4().hex,
    "ingest": "ingest-" + uuid.uuid4().hex,
    "gw-a": "gwa-" + uuid.uuid4().hex,
    "gw-b": "gwb-" + uuid.uuid4().hex,
}


def _mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def _entrypoint_env(auth_dir: Path, data_dir: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MQTT_", "MOSQUITTO_"))
    }
    env.update(
        MOSQUITTO_AUTH_DIR=str(auth_dir),
        MOSQUITTO_ACL_SOURCE=str(ACL_FILE),
        MOSQUITTO_DATA_DIR=str(data_dir),
        MQTT_HEALTHCHECK_PASSWORD=BROKER_PASSWORDS["healthcheck"],
        MQTT_INGEST_PASSWORD=BROKER_PASSWORDS["ingest"],
        MQTT_GATEWAY_ID="gw-a",
        MQTT_GATEWAY_PASSWORD=BROKER_PASSWORDS["gw-a"],
        MQTT_USER_1="gw-b",
        MQTT_PASSWORD_1=BROKER_PASSWORDS["gw-b"],
    )
    return env


@pytest.fixture
def passwd_tool() -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not on PATH")


def test_entrypoint_writes_hashes_only(passwd_tool: None, tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    env = _entrypoint_env(auth, tmp_path / "data")
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", 'env | grep -c "^MQTT_.*PASSWORD" || true'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", "the broker must not inherit the passwords"
    passwd = (auth / "passwd").read_text(encoding="utf-8")
    assert sorted(line.split(":", 1)[0] for line in passwd.splitlines()) == sorted(BROKER_PASSWORDS)
    for password in BROKER_PASSWORDS.values():
        assert password not in passwd
        assert password not in result.stderr
    assert (auth / "acl").read_bytes() == ACL_FILE.read_bytes()
    assert (auth / "passwd").stat().st_mode & 0o077 == 0
    assert (auth / "acl").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MQTT_INGEST_PASSWORD": None}, "MQTT_INGEST_PASSWORD"),
        ({"MQTT_HEALTHCHECK_PASSWORD": ""}, "MQTT_HEALTHCHECK_PASSWORD"),
        ({"MQTT_GATEWAY_PASSWORD": None}, "MQTT_GATEWAY_PASSWORD"),
        ({"MQTT_PASSWORD_1": None}, "MQTT_PASSWORD_1"),
        ({"MQTT_GATEWAY_ID": "gw/+"}, "not a valid gateway id"),
        ({"MQTT_GATEWAY_ID": "ingest"}, "given twice"),
    ],
)
def test_entrypoint_refuses_bad_logins(
    passwd_tool: None, tmp_path: Path, change: dict[str, str | None], message: str
) -> None:
    env = _entrypoint_env(tmp_path / "auth", tmp_path / "data")
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "auth" / "passwd").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real Mosquitto, started by the stack's entrypoint with the stack's config and ACL."""
    mosquitto = _mosquitto_binary()
    if mosquitto is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are not installed")
    pytest.importorskip("paho.mqtt.client")
    base = tmp_path_factory.mktemp("broker")
    auth, data = base / "auth", base / "data"
    data.mkdir()
    port = _free_port()
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8")
    for old, new in (
        ("/mosquitto/auth/", f"{auth}/"),
        ("/mosquitto/data/", f"{data}/"),
        ("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n"),
    ):
        assert old in conf, f"mosquitto.conf no longer has {old.strip()!r}"
        conf = conf.replace(old, new)
    if os.geteuid() == 0:
        # Mosquitto started as root drops to its own user, which cannot enter pytest's
        # private temporary directories; in the container the paths are the broker's own.
        conf += "\nuser root\n"
    (base / "mosquitto.conf").write_text(conf, encoding="utf-8")
    log_path = base / "broker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", str(ENTRYPOINT), mosquitto, "-c", str(base / "mosquitto.conf")],
            env=_entrypoint_env(auth, data),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"mosquitto exited: {log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not listen: {log_path.read_text()}")
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class _Login:
    """One MQTT connection to the test broker; records what it receives and its PUBACKs."""

    def __init__(
        self, port: int, username: str | None, password: str | None, *, v5: bool = True
    ) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[str, bytes]] = []
        self.puback_failures: list[str] = []
        self.connect_failure: str | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._suback: dict[int, threading.Event] = {}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{username}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.connect_failure = str(reason)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._suback.setdefault(mid, threading.Event()).set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if reason.is_failure:
            with self._lock:
                self.puback_failures.append(str(reason))

    def subscribe(self, *topics: str) -> None:
        result, mid = self.client.subscribe([(topic, 1) for topic in topics])
        assert result == 0
        assert self._suback.setdefault(mid, threading.Event()).wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def login(broker_port: int) -> Iterator[Any]:
    opened: list[_Login] = []

    def open_login(username: str | None, *, password: str | None = None, v5: bool = True):
        if password is None and username is not None:
            password = BROKER_PASSWORDS[username]
        connection = _Login(broker_port, username, password, v5=v5)
        opened.append(connection)
        return connection

    yield open_login
    for connection in opened:
        connection.close()


@pytest.mark.broker
def test_broker_refuses_anonymous_and_wrong_passwords(login: Any) -> None:
    assert login(None).connect_failure is not None
    assert login("ingest", password="not-the-password").connect_failure is not None
    assert login("gw-a", password=BROKER_PASSWORDS["gw-b"]).connect_failure is not None
    assert login("nobody", password="whatever").connect_failure is not None
    assert login("gw-a").connect_failure is None


@pytest.mark.broker
def test_broker_healthcheck_login_reads_sys_only(login: Any) -> None:
    healthcheck = login("healthcheck")
    healthcheck.subscribe("$SYS/broker/uptime", f"{PREFIX}/#")
    # $SYS/broker/uptime is retained, so it arrives at once; nothing of ours may follow.
    gateway = login("gw-a")
    gateway.publish(f"{PREFIX}/gw-a/readings", b"reading")
    received = healthcheck.wait_for(1)
    assert [topic for topic, _ in received] == ["$SYS/broker/uptime"]
    time.sleep(0.3)
    assert [topic for topic, _ in healthcheck.received] == ["$SYS/broker/uptime"]
    healthcheck.publish(f"{PREFIX}/gw-a/acks", b"forged")
    assert healthcheck.puback_failures == ["Not authorized"]


@pytest.mark.broker
@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_broker_acl_confines_each_login(login: Any, v5: bool) -> None:
    # Ingest: the readings through the shared subscription, the rest through plain ones.
    ingest_readings = login("ingest", v5=v5)
    ingest_readings.subscribe(f"$share/ingest/{PREFIX}/+/readings")
    ingest_other = login("ingest", v5=v5)
    ingest_other.subscribe(f"{PREFIX}/+/status", f"{PREFIX}/+/receipts")
    # Each gateway asks for everything (Mosquitto grants the subscription and checks each
    # delivery); the broker must deliver only its own acks and inbox.
    gw_a = login("gw-a", v5=v5)
    gw_a.subscribe("#")
    gw_b = login("gw-b", v5=v5)
    gw_b.subscribe(f"{PREFIX}/+/+")

    # Everything that must be refused goes first: were any of it delivered, it would arrive
    # before the allowed messages below.
    denied = [
        (gw_a, f"{PREFIX}/gw-b/readings"),
        (gw_a, f"{PREFIX}/gw-b/status"),
        (gw_a, f"{PREFIX}/gw-b/receipts"),
        (gw_a, f"{PREFIX}/gw-b/acks"),
        (gw_a, f"{PREFIX}/gw-a/acks"),
        (gw_a, f"{PREFIX}/gw-a/inbox"),
        (gw_a, f"{PREFIX}/gw-a/readings/extra"),
        (gw_a, f"{PREFIX}/gw-a-other/readings"),
        (ingest_other, f"{PREFIX}/gw-a/readings"),
        (ingest_other, f"{PREFIX}/gw-a/status"),
    ]
    for sender, topic in denied:
        sender.publish(topic, b"denied")
    if v5:
        # MQTT 5 tells the sender; MQTT 3.1.1 has no way to, and the broker drops silently.
        assert len(gw_a.puback_failures) + len(ingest_other.puback_failures) == len(denied)
        assert set(gw_a.puback_failures) == {"Not authorized"}

    gw_a.publish(f"{PREFIX}/gw-a/readings", b"reading-a")
    gw_a.publish(f"{PREFIX}/gw-a/status", b"status-a")
    gw_a.publish(f"{PREFIX}/gw-a/receipts", b"receipt-a")
    gw_b.publish(f"{PREFIX}/gw-b/readings", b"reading-b")
    ingest_other.publish(f"{PREFIX}/gw-a/acks", b"ack-a")
    ingest_other.publish(f"{PREFIX}/gw-a/inbox", b"inbox-a")
    ingest_other.publish(f"{PREFIX}/gw-b/acks", b"ack-b")

    assert ingest_readings.wait_for(2) == [
        (f"{PREFIX}/gw-a/readings", b"reading-a"),
        (f"{PREFIX}/gw-b/readings", b"reading-b"),
    ]
    assert ingest_other.wait_for(2) == [
        (f"{PREFIX}/gw-a/status", b"status-a"),
        (f"{PREFIX}/gw-a/receipts", b"receipt-a"),
    ]
    assert gw_a.wait_for(2) == [
        (f"{PREFIX}/gw-a/acks", b"ack-a"),
        (f"{PREFIX}/gw-a/inbox", b"inbox-a"),
    ]
    assert gw_b.wait_for(1) == [(f"{PREFIX}/gw-b/acks", b"ack-b")]
    # A moment for anything that should not have come.
    time.sleep(0.3)
    assert len(ingest_readings.received) == 2
    assert len(ingest_other.received) == 2
    assert len(gw_a.received) == 2
    assert len(gw_b.received) == 1
