"""A pre-forking launcher of ``python -m ingest serve`` for the crash cycles (not a test).

Importing the ingest service (FastAPI, pandas for the rules, psycopg) takes about two seconds
of CPU on a slow machine, which twenty crash-and-restart cycles would pay twenty times. This
process imports it once, then, for each command on stdin, forks a child that runs the very
same entry point as ``python -m ingest serve``, ``ingest.__main__.main``, with its output in
its own log file. Nothing of the service exists before the fork: its settings are read, its
database pool, MQTT client, threads and HTTP server are made in the child, which is a process
of its own that ends as the real one does (here: ``os._exit(70)`` at the failpoint). Started
with ``OPENBLAS_NUM_THREADS=1``: BLAS worker threads (numpy, under pandas) would not survive
the fork, and the ingest service does no linear algebra.

Protocol, one line each way per child::

    -> run <log file> <argument>...      e.g. run /tmp/x/ingest-3.log serve --port 8123
    <- pid <child pid>
    <- exit <child pid> <exit code>      (negative: killed by that signal)
"""

from __future__ import annotations

import os
import sys

import uvicorn  # noqa: F401 - the slow imports, done once

from ingest.__main__ import main
from ingest.api import app  # noqa: F401


def _child(log_file: str, argv: list[str]) -> None:
    """In the forked child: output to its log file, then the service; never returns."""
    code = 1
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve_commands() -> None:
    for line in sys.stdin:
        command, log_file, *argv = line.split()
        if command != "run":
            raise SystemExit(f"unknown command {command!r}")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(log_file, argv)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve_commands()
