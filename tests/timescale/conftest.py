"""The TimescaleDB tier: PGlite with TimescaleDB (devstack.pglite) for the session.

PGlite serves one connection at a time (a second one waits until the first closes): a test
holds the ``ts`` connection only, and never opens another while it is open.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from devstack.pglite import PgliteTimescale, PgliteUnavailable


def start_pglite(**options: bool) -> PgliteTimescale:
    """A started server, or a skip saying what to install when Node.js or npm is missing."""
    try:
        return PgliteTimescale(**options).start()
    except PgliteUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pglite() -> Iterator[PgliteTimescale]:
    server = start_pglite()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def timescale_url(pglite: PgliteTimescale) -> str:
    """The session's PGlite, migrated by the real runner (every migration, once)."""
    from ingest.db import migrate

    started = time.monotonic()
    applied = migrate(pglite.url)
    assert applied and applied[0] == "0001_registry", applied
    print(f"\nmigrated PGlite+TimescaleDB in {time.monotonic() - started:.1f} s: {applied}")
    return pglite.url


@pytest.fixture
def ts(timescale_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the migrated PGlite; the only one while the test runs."""
    with psycopg.connect(timescale_url, autocommit=True, connect_timeout=10) as conn:
        yield conn
