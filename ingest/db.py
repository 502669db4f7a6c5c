"""Database access for the server side: a bounded wait at start, migrations, the pool."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "ingest.migrations"
# Any fixed 64-bit number: only one process migrates at a time.
MIGRATION_LOCK_ID = 0x6361726577617463


class DatabaseUnavailable(RuntimeError):
    """The database did not answer within the configured wait."""


def wait_for_database(url: str, timeout_s: float) -> None:
    """Return once the database accepts a connection; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"PostgreSQL did not answer within {timeout_s:.0f} s: {exc}. "
                    "Check DATABASE_URL and that the server is running."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _migration_files(storage: str) -> list[tuple[str, str]]:
    """(version, sql) in order; a file ``NNNN_name.<storage>.sql`` applies to one storage kind."""
    chosen: dict[str, tuple[str, str]] = {}
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        stem = name.removesuffix(".sql")
        base, _, variant = stem.partition(".")
        if variant and variant != storage:
            continue
        chosen[base] = (base, entry.read_text(encoding="utf-8"))
    return [chosen[key] for key in sorted(chosen)]


def storage_kind(conn: psycopg.Connection) -> str:
    """``timescale`` when the TimescaleDB extension is installed or can be, else ``native``.

    An extension that is available but not preloaded (``shared_preload_libraries``) cannot be
    created: that is native storage, with a warning.
    """
    installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if installed.fetchone():
        return "timescale"
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if not available:
        return "native"
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION timescaledb")
    except psycopg.Error as exc:
        log.warning(
            "TimescaleDB is installed but cannot be enabled (%s); using native partitioning",
            type(exc).__name__,
        )
        return "native"
    return "timescale"


def migrate(url: str) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " storage text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT storage FROM schema_migrations LIMIT 1").fetchone()
            storage = row[0] if row else storage_kind(conn)
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in _migration_files(storage):
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, storage) VALUES (%s, %s)",
                        (version, storage),
                    )
                log.info("applied migration %s (%s storage)", version, storage)
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now


def ensure_partitions(conn: psycopg.Connection) -> None:
    """Create the coming months' reading partitions (a no-op on TimescaleDB)."""
    conn.execute("SELECT carewatch_ensure_reading_partitions()")


def migrated_storage(conn: psycopg.Connection) -> str:
    """``native`` or ``timescale``: the storage kind the migrations chose for this database."""
    row = conn.execute("SELECT storage FROM schema_migrations LIMIT 1").fetchone()
    if row is None:
        raise RuntimeError("the database is not migrated: run ingest.db.migrate first")
    return str(row[0])


@dataclass(frozen=True, slots=True)
class RollupRefresh:
    """What :func:`refresh_rollups` did. ``refreshed`` is False when it left the work to
    TimescaleDB's policies; the counts are known on native storage only."""

    storage: str
    refreshed: bool
    new_readings: int | None = None
    hourly_buckets: int | None = None
    daily_buckets: int | None = None


def refresh_rollups(
    conn: psycopg.Connection, *, force: bool = False, rebuild: bool = False
) -> RollupRefresh:
    """Bring the hourly and daily rollups (``readings_hourly``, ``readings_daily``) up to date.

    Native storage: ``carewatch_refresh_rollups()`` recomputes only the buckets touched by
    readings committed since its last run, in the caller's transaction (commit promptly: a
    concurrent refresh waits for it). ``rebuild=True`` recomputes every bucket (needed only
    after readings were deleted). Cheap when nothing is new, so it may run often.

    TimescaleDB: the continuous aggregates' policies refresh them, so this does nothing unless
    ``force`` (or ``rebuild``) asks to refresh them now, which needs an autocommit connection
    (``refresh_continuous_aggregate`` cannot run inside a transaction).
    """
    storage = migrated_storage(conn)
    if storage != "timescale":
        row = conn.execute(
            "SELECT new_readings, hourly_buckets, daily_buckets FROM carewatch_refresh_rollups(%s)",
            (rebuild,),
        ).fetchone()
        assert row is not None  # a function with OUT parameters returns one row
        return RollupRefresh(storage, True, int(row[0]), int(row[1]), int(row[2]))
    if not (force or rebuild):
        return RollupRefresh(storage, False)
    if not conn.autocommit:
        raise ValueError("refreshing continuous aggregates needs an autocommit connection")
    for view in ("readings_hourly", "readings_daily"):
        conn.execute(
            sql.SQL("CALL refresh_continuous_aggregate({}, NULL, NULL)").format(sql.Literal(view))
        )
    return RollupRefresh(storage, True)


def make_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    name: str = "carewatch",
    role: str | None = None,
) -> ConnectionPool:
    """A pool; with ``role``, every connection works as that database role (``SET ROLE``):
    the API's is ``carewatch_app``, which can only append to the audit log."""

    def configure(conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))  # type: ignore[arg-type]
        conn.commit()

    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=True,
        timeout=10.0,
        # Checked as it is handed out: after a database restart a pooled connection is dead,
        # and the first request given it would fail (tests/faults: quick restart).
        check=ConnectionPool.check_connection,
        # psycopg_pool retries a lost connection with a doubling pause (1, 2, 4 ... s) for
        # up to reconnect_timeout (default 300 s): after a one-minute outage during which the
        # workspace kept asking, the API stayed down for another 40 s. Giving up after 5 s
        # ends each chain; the next request then tries at once (tests/faults: within 10 s).
        reconnect_timeout=5.0,
        configure=configure if role else None,
    )
