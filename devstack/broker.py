"""Embedded MQTT broker for ``make demo`` and ``make test`` (used when MQTT_URL is unset).

Mosquitto when its binary is installed (MQTT 5 and 3.1.1, shared subscriptions, persistence),
otherwise amqtt from PyPI in a subprocess (MQTT 3.1.1 only: no shared subscriptions, no
MQTT 5 properties, and queued messages are lost when it stops). Either listens on a free port
of 127.0.0.1 with anonymous access; its folder is ``<home>/mosquitto`` or ``<home>/amqtt``
(``devstack.default_home()``) and holds the log (``mosquitto.log`` / ``amqtt.log``), the
generated ``mosquitto.conf`` and Mosquitto's persistence file ``mosquitto.db``.

Running as root: Mosquitto 2.x started as root switches to the account named by ``user``
(default ``mosquitto``, or ``nobody`` if that account does not exist) right after opening its
listeners, so it could no longer write a log or persistence file in a root-owned folder
(``user root`` would avoid that, but keeps a network daemon running as root and makes
Mosquitto warn). We therefore name that account in the config, give it the broker folder and
let it reach the folder (``devstack.grant_traverse``), and write the log through a file
descriptor we open ourselves (``log_dest stderr``). amqtt runs as the current user.

Run ``python -m devstack.broker`` to start a broker in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from devstack import (
    REPO_ROOT,
    DevstackError,
    FolderLock,
    default_home,
    ensure_home,
    grant_traverse,
    stop_child,
    stop_orphan,
)
from devstack.ports import free_port

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "find_mosquitto"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
BrokerKind = Literal["mosquitto", "amqtt"]
Preference = Literal["auto", "mosquitto", "amqtt"]

_PROTOCOLS: dict[BrokerKind, str] = {"mosquitto": "5", "amqtt": "3.1.1"}
# Debian and Ubuntu install mosquitto into /usr/sbin, which is not on an ordinary user's PATH.
_SBIN_DIRS = "/usr/sbin:/usr/local/sbin:/opt/homebrew/sbin"
_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = re.compile("address already in use", re.IGNORECASE)


class EmbeddedBrokerError(DevstackError):
    """The embedded MQTT broker could not be started or stopped."""


class _PortTaken(EmbeddedBrokerError):
    """Another process bound the port between free_port() and the broker's bind()."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: on PATH, or in an sbin folder (Debian: /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=_SBIN_DIRS)


class EmbeddedBroker:
    """An MQTT broker on 127.0.0.1: Mosquitto if installed, else amqtt.

    Use as a context manager (``with EmbeddedBroker() as broker: connect(broker.url)``) or call
    ``start()`` / ``stop()``. ``prefer="amqtt"`` forces the fallback (tests use it even where
    Mosquitto exists); ``prefer="mosquitto"`` fails if Mosquitto is not installed.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        prefer: Preference = "auto",
        port: int | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        mosquitto_path: str | None = None,
    ) -> None:
        """Choose the broker; nothing runs until ``start()``. ``port=None`` picks a free port."""
        if prefer not in ("auto", "mosquitto", "amqtt"):
            raise ValueError(f"prefer must be 'auto', 'mosquitto' or 'amqtt', not {prefer!r}")
        self._mosquitto = None if prefer == "amqtt" else mosquitto_path or find_mosquitto()
        if prefer == "mosquitto" and self._mosquitto is None:
            raise EmbeddedBrokerError(
                "mosquitto is not installed (not on PATH nor in /usr/sbin); install it "
                "(apt install mosquitto) or use the amqtt fallback"
            )
        self.kind: BrokerKind = "mosquitto" if self._mosquitto else "amqtt"
        self.data_dir = (
            Path(data_dir).expanduser().absolute() if data_dir else default_home() / self.kind
        )
        if "\n" in str(self.data_dir):
            raise EmbeddedBrokerError(f"broker folder path contains a newline: {self.data_dir!r}")
        self.log_file = self.data_dir / f"{self.kind}.log"
        self.config_file = self.data_dir / "mosquitto.conf"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.start_seconds: float | None = None
        self._requested_port = port
        self._pid_file = self.data_dir / "broker.pid"
        self._lock = FolderLock(self.data_dir / "broker.lock", f"the broker folder {self.data_dir}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        """Highest MQTT version the broker speaks: "5" (Mosquitto) or "3.1.1" (amqtt)."""
        return _PROTOCOLS[self.kind]

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedBrokerError("embedded broker is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """e.g. mqtt://127.0.0.1:PORT"""
        return f"mqtt://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the broker and wait until it answers an MQTT CONNECT.

        On any failure the broker process is stopped again before the error is raised.
        """
        if self._proc is not None:
            return self
        started = time.monotonic()
        try:
            ensure_home(self.data_dir.parent)
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            if not os.access(self.data_dir, os.W_OK | os.X_OK):
                raise EmbeddedBrokerError(
                    f"{self.data_dir} is not writable for uid {os.geteuid()} (created by a run "
                    "as root?); delete it or run as the user who created it"
                )
            self._lock.acquire()
            self._stop_leftover_broker()
            attempts = 1 if self._requested_port else _PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                port = self._requested_port or free_port(HOST)
                try:
                    self._launch(port)
                    break
                except _PortTaken:
                    if attempt == attempts:
                        raise
                    log.info("port %d was taken before the broker could bind it; retrying", port)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self.start_seconds = time.monotonic() - started
        log.info(
            "embedded %s broker ready at %s (MQTT %s) in %.2f s (pid %d, log %s)",
            self.kind,
            self.url,
            self.protocol,
            self.start_seconds,
            self._proc.pid if self._proc else -1,
            self.log_file,
        )
        return self

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file), then SIGKILL. Safe to call twice."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                stop_child(proc, [(signal.SIGTERM, self.stop_timeout)], f"embedded {self.kind}")
                self._pid_file.unlink(missing_ok=True)
                log.info("embedded %s broker stopped (pid %d)", self.kind, proc.pid)
        finally:
            self._port = None
            self._lock.release()
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------

    def _marker(self) -> str:
        """An argument only our broker process for this folder has (see stop_orphan)."""
        return str(self.config_file if self.kind == "mosquitto" else self.data_dir)

    def _stop_leftover_broker(self) -> None:
        """Stop a broker left running on this folder by a run that was killed."""
        try:
            pid = int(self._pid_file.read_text().split()[0])
        except FileNotFoundError:
            return
        except (IndexError, ValueError):
            pid = None
        # We hold the folder lock, so a broker process still using it has no owner left.
        if pid is not None:
            stop_orphan(pid, self._marker(), [(signal.SIGTERM, self.stop_timeout)], self.kind)
        self._pid_file.unlink(missing_ok=True)

    def _command(self, port: int) -> tuple[list[str], dict[str, str]]:
        if self.kind == "mosquitto":
            assert self._mosquitto is not None
            self._write_mosquitto_config(port)
            return [self._mosquitto, "-c", str(self.config_file)], dict(os.environ)
        # `python -m devstack.broker` must find this package even without an editable install.
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "devstack.broker", "--amqtt", str(port)]
        return [*cmd, "--data-dir", str(self.data_dir)], {**os.environ, "PYTHONPATH": pythonpath}

    def _write_mosquitto_config(self, port: int) -> None:
        account = self._mosquitto_account()
        lines = [
            "# Generated by devstack.broker at every start: edits are overwritten.",
            "# Local development broker only: anonymous clients, loopback interface only.",
            "# The compose stack's Mosquitto (deploy/mosquitto/mosquitto.conf) instead requires",
            "# a password per client (password_file) and limits each one's topics (acl_file).",
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "",
            "# Keep sessions and queued messages across broker restarts.",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 30",
            "# Messages queued for a persistent-session subscriber that is offline; the",
            "# default (1000) would drop QoS 1 readings while the ingest service is down.",
            "max_queued_messages 100000",
            "",
            f"# devstack redirects stderr into {self.log_file.name} (see devstack/broker.py).",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if account is not None:
            lines += [
                "",
                "# Started as root: Mosquitto switches to this account.",
                f"user {account}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _mosquitto_account(self) -> str | None:
        """As root, the account Mosquitto will switch to, owning the broker folder."""
        if os.geteuid() != 0:
            return None
        for name in ("mosquitto", "nobody"):  # Mosquitto's own choice, see `man mosquitto.conf`
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            grant_traverse(self.data_dir, entry.pw_uid, entry.pw_gid)
            for path in [self.data_dir, *self.data_dir.iterdir()]:
                if path.lstat().st_uid != entry.pw_uid:
                    os.lchown(path, entry.pw_uid, entry.pw_gid)
            return name
        log.warning("neither a 'mosquitto' nor a 'nobody' account exists; Mosquitto runs as root")
        return "root"

    def _launch(self, port: int) -> None:
        cmd, env = self._command(port)
        with self.log_file.open("ab") as log_fh:
            log_offset = log_fh.tell()
            # start_new_session: Ctrl-C in `make demo` must not reach the broker before the
            # services using it have stopped.
            self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._port = port
        self._pid_file.write_text(f"{self._proc.pid}\n")
        self._wait_ready(log_offset)

    def _wait_ready(self, log_offset: int) -> None:
        assert self._proc is not None and self._port is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                output = self._log_since(log_offset)
                self._proc = None
                self._pid_file.unlink(missing_ok=True)
                if _ADDRESS_IN_USE.search(output):
                    raise _PortTaken(
                        f"embedded {self.kind} could not listen on {HOST}:{self._port}, "
                        "which another process uses; pick another port or leave port unset "
                        f"to get a free one (see {self.log_file})"
                    )
                raise EmbeddedBrokerError(
                    f"embedded {self.kind} exited with code {code} while starting; "
                    f"see {self.log_file}:\n{output[-2000:]}"
                )
            # Short probes, so that a broker that died (port taken) is noticed quickly.
            error = mqtt_handshake(self._port, timeout=0.5)
            if error is None:
                if self._proc.poll() is None:  # else another process answered on our port
                    return
                continue
            last_error = error
            if time.monotonic() > deadline:
                raise EmbeddedBrokerError(
                    f"embedded {self.kind} did not accept MQTT connections within "
                    f"{self.start_timeout:.0f} s; see {self.log_file} (last error: {last_error})"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


def mqtt_handshake(port: int, host: str = HOST, timeout: float = 2.0) -> str | None:
    """Connect with MQTT 3.1.1 and disconnect; None on success, else what went wrong."""
    import paho.mqtt.client as mqtt

    outcome: list[str] = []

    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        outcome.append("" if not reason_code.is_failure else f"CONNACK {reason_code}")

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"devstack-probe-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    try:
        deadline = time.monotonic() + timeout
        while not outcome and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    finally:
        client.disconnect()
        client.loop(timeout=0.05)  # sends DISCONNECT and closes the socket
    if not outcome:
        return f"no CONNACK from {host}:{port} within {timeout:.0f} s"
    return outcome[0] or None


# -- subprocess entry points -------------------------------------------------------------


def _serve_amqtt(port: int) -> None:
    """Run amqtt on 127.0.0.1:port until SIGTERM/SIGINT (the broker behind prefer="amqtt")."""
    import asyncio

    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        # Only anonymous auth: no $SYS publisher or packet logger (noise in the log).
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    async def serve() -> None:
        broker = Broker(config)  # must be created inside the running event loop
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await broker.start()
        log.info("amqtt broker listening on %s:%d (pid %d)", HOST, port, os.getpid())
        await stopping.wait()
        await broker.shutdown()

    asyncio.run(serve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.broker",
        description="Run the embedded development MQTT broker in the foreground until Ctrl-C.",
    )
    parser.add_argument("--prefer", choices=["auto", "mosquitto", "amqtt"], default="auto")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--amqtt", type=int, metavar="PORT", help="internal: serve amqtt only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.amqtt is not None:
        logging.getLogger("transitions").setLevel(logging.WARNING)
        _serve_amqtt(args.amqtt)
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the broker, not orphan it
    with EmbeddedBroker(args.data_dir, prefer=args.prefer, port=args.port) as broker:
        print(f"MQTT_URL={broker.url}  (MQTT {broker.protocol}, {broker.kind}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
