"""The rules worker: evaluates every stored reading exactly once and writes the flags.

Exactly once, through a watermark of transaction ids. Ingest stores each reading with the id
of the transaction that stored it (``readings.ingest_xid``). A pass, in one transaction:

1. locks this worker's row of ``rules_watermark`` (``processed_below`` = *lower*);
2. takes *upper* = the xmin of the current snapshot: every transaction with a smaller id has
   finished, so every reading it stored is visible now and no later commit can add one below
   *upper* (a reading committed late by a long transaction waits for the next pass, it is
   never skipped);
3. optionally lowers *upper* to bound the batch, always at a transaction boundary;
4. reads the readings with ``lower <= ingest_xid < upper``, evaluates them, applies the
   breaches, sets ``processed_below = upper`` and commits.

Flags and the watermark commit together, so a crash repeats a whole pass or none of it.
A transaction left open elsewhere holds *upper* back (nothing is lost; passes wait for it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from analytics import live
from analytics.escalation import (
    LogNotifier,
    Notifier,
    WebhookNotifier,
    escalate_due,
    escalation_summary,
    notify_all,
)
from analytics.flag_store import FlagChanges
from analytics.rules import RuleSet, load_rules
from analytics.settings import AnalyticsSettings
from analytics.signals import BREACH
from analytics.threshold_store import rules_for_patients

log = logging.getLogger(__name__)

DEFAULT_WORKER: Final = "rules-1"
DEFAULT_MAX_READINGS: Final = 50_000
RECONNECT_BACKOFF_INITIAL_S: Final = 0.5
RECONNECT_BACKOFF_MAX_S: Final = 30.0
#: After this long without progress the worker checks for readings held back, and says so.
STALL_WARNING_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 5


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did.

    ``lower``/``upper``: the transaction-id window it covered (``upper`` is the new watermark).
    ``readings``: readings in the window whose metric some rule uses; ``breaches``: their
    (reading, rule) breaches; ``changes``: what became of the flags.
    """

    worker: str
    lower: int
    upper: int
    readings: int
    breaches: int
    changes: FlagChanges
    #: The window was cut short to bound the batch: more readings are ready right now.
    more_ready: bool = False
    #: Flags the rules resolved: back in range for the rule set's resolve_after.
    resolved: int = 0


def run_once(
    conn: psycopg.Connection[Any],
    rules: RuleSet,
    *,
    worker: str = DEFAULT_WORKER,
    max_readings: int = DEFAULT_MAX_READINGS,
    cache: live.HistoryCache | None = None,
) -> PassResult:
    """Evaluate the readings stored since this worker's last pass, in one committed transaction.

    ``conn`` must have no transaction in progress (this function commits) and run at READ
    COMMITTED, the default. ``max_readings`` bounds a pass at a transaction boundary (a pass
    takes every reading of the transactions it includes, so it may exceed the bound when one
    transaction stored more). ``cache`` (:class:`analytics.live.HistoryCache`) spares reading
    the patients' history from the database on every pass.
    """
    if max_readings < 1:
        raise ValueError(f"max_readings must be at least 1, not {max_readings}")
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("run_once needs a connection with no transaction in progress")
    with conn.transaction():
        lower = _lock_watermark(conn, worker=worker)
        horizon = _snapshot_horizon(conn)
        if horizon <= lower:
            return PassResult(worker, lower, lower, 0, 0, FlagChanges())
        upper = _bounded_upper(conn, lower=lower, upper=horizon, max_readings=max_readings)
        new = live.new_readings(conn, lower=lower, upper=upper)
        changes, breaches, resolved = FlagChanges(), 0, 0
        if not new.empty:
            now = datetime.now(UTC)
            if cache is not None:
                cache.add(new)
            patient_ids = sorted(set(new["patient_id"]))
            in_force = rules_for_patients(conn, rules, patient_ids)  # read once a pass
            signals, flags = live.evaluate_patients(
                conn,
                rules,
                patient_ids=patient_ids,
                since=new["measured_at"].min().to_pydatetime(),
                now=now,
                cache=cache,
                in_force=in_force,
            )
            new_ids = set(new["reading_id"])
            breaches = int(
                ((signals["state"] == BREACH) & signals["reading_id"].isin(new_ids)).sum()
            )
            changes, resolved = live.apply_new_readings(
                conn, in_force, signals, flags, new_reading_ids=new_ids, now=now
            )
        conn.execute(
            "UPDATE rules_watermark SET processed_below = %s::text::xid8, updated_at = now()"
            " WHERE worker = %s",
            (str(upper), worker),
        )
    return PassResult(
        worker=worker,
        lower=lower,
        upper=upper,
        readings=len(new),
        breaches=breaches,
        changes=changes,
        more_ready=upper < horizon,
        resolved=resolved,
    )


def _lock_watermark(conn: psycopg.Connection[Any], *, worker: str) -> int:
    """This worker's ``processed_below``, its row locked until commit; 0 on the first pass.

    ``ON CONFLICT DO UPDATE`` locks the row like ``SELECT ... FOR UPDATE`` and creates it when
    absent, in one statement: a second worker of the same name waits here for the first to
    commit and then reads the watermark that worker left.
    """
    row = conn.execute(
        "INSERT INTO rules_watermark AS w (worker, processed_below) VALUES (%s, '0'::xid8)"
        " ON CONFLICT (worker) DO UPDATE SET worker = w.worker"
        " RETURNING w.processed_below::text",
        (worker,),
    ).fetchone()
    assert row is not None  # RETURNING always yields the inserted or locked row
    return int(row[0])


def _snapshot_horizon(conn: psycopg.Connection[Any]) -> int:
    """The current snapshot's xmin: every transaction with a smaller id has finished."""
    row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
    assert row is not None
    return int(row[0])


def _bounded_upper(
    conn: psycopg.Connection[Any], *, lower: int, upper: int, max_readings: int
) -> int:
    """``upper``, or a smaller transaction id that keeps the pass near ``max_readings``.

    The cut falls after the transaction holding the (max_readings + 1)-th reading, so a pass
    never splits one transaction's readings and always makes progress.
    """
    row = conn.execute(
        "WITH cut AS ("
        "  SELECT ingest_xid FROM readings"
        "  WHERE ingest_xid >= %(lower)s::text::xid8 AND ingest_xid < %(upper)s::text::xid8"
        "  ORDER BY ingest_xid OFFSET %(max)s LIMIT 1)"
        " SELECT (SELECT min(r.ingest_xid)::text FROM readings r, cut"
        "         WHERE r.ingest_xid > cut.ingest_xid AND r.ingest_xid < %(upper)s::text::xid8),"
        "        EXISTS (SELECT 1 FROM cut)",
        {"lower": str(lower), "upper": str(upper), "max": max_readings},
    ).fetchone()
    assert row is not None
    next_transaction, over_bound = row
    if over_bound and next_transaction is not None:
        return int(next_transaction)
    return upper


def run_forever(
    settings: AnalyticsSettings, stop: threading.Event, *, rules: RuleSet | None = None
) -> None:
    """Run passes until ``stop`` is set; survive database outages by reconnecting.

    Polls every ``settings.poll_interval_ms`` (immediately again while a bounded pass left
    more readings ready). ``rules`` default to ``settings.rules_file`` (or the packaged
    defaults), loaded once here and never on the hot path.
    """
    if rules is None:
        rules = load_rules(settings.rules_file)
    poll_interval_s = settings.poll_interval_ms / 1000
    backoff_s = RECONNECT_BACKOFF_INITIAL_S
    conn: psycopg.Connection[Any] | None = None
    log.info(
        "rules worker %s started: rules version %s (%d rules), polling every %d ms",
        settings.worker_name,
        rules.version,
        len(rules.rules),
        settings.poll_interval_ms,
    )
    stalled_since: float | None = None
    notifier = (
        WebhookNotifier(settings.escalation_webhook)
        if settings.escalation_webhook
        else LogNotifier()
    )
    next_escalation = next_sweep = time.monotonic()
    cache = live.HistoryCache(live.lookback(rules) + timedelta(days=1))
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S)
                    log.info("rules worker %s connected to the database", settings.worker_name)
                started = time.monotonic()
                result = run_once(
                    conn,
                    rules,
                    worker=settings.worker_name,
                    max_readings=settings.batch_max_readings,
                    cache=cache,
                )
                backoff_s = RECONNECT_BACKOFF_INITIAL_S
                _log_pass(result, elapsed_s=time.monotonic() - started)
                if time.monotonic() >= next_sweep:
                    now = datetime.now(UTC)
                    cache.prune(now=now)
                    with conn.transaction():
                        swept, resolved = live.sweep(conn, rules, now=now, cache=cache)
                    if swept.opened or swept.updated or resolved:
                        log.info(
                            "sweep: %d flag(s) opened, %d updated, %d resolved back in range",
                            swept.opened,
                            swept.updated,
                            resolved,
                        )
                    next_sweep = time.monotonic() + settings.sweep_interval_s
                if time.monotonic() >= next_escalation:
                    escalate(conn, rules, notifier)
                    next_escalation = time.monotonic() + settings.escalation_interval_s
                if result.upper > result.lower:
                    stalled_since = None
                elif stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since >= STALL_WARNING_S:
                    _warn_if_readings_wait(conn, lower=result.lower)
                    stalled_since = time.monotonic()
                if result.more_ready:
                    continue
                stop.wait(poll_interval_s)
            except pg_errors.TransactionRollback as exc:
                # Deadlock or serialization failure against a concurrent worker: the pass was
                # rolled back as a whole; run it again.
                log.warning("rules pass rolled back (%s); retrying", type(exc).__name__)
                stop.wait(min(poll_interval_s, 1.0))
            except psycopg.OperationalError as exc:
                log.warning(
                    "database unavailable (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                    backoff_s,
                )
                _close_quietly(conn)
                conn = None
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
    finally:
        _close_quietly(conn)
        log.info("rules worker %s stopped", settings.worker_name)


def escalate(conn: psycopg.Connection[Any], rules: RuleSet, notifier: Notifier) -> int:
    """Record the escalations due now, commit them, then notify; how many there were."""
    with conn.transaction():
        escalations = escalate_due(conn, rules, now=datetime.now(UTC))
    if escalations:
        log.info("escalated %d flag(s): %s", len(escalations), escalation_summary(escalations))
        notify_all(conn, escalations, notifier)
    return len(escalations)


def _warn_if_readings_wait(conn: psycopg.Connection[Any], *, lower: int) -> None:
    """Say so when committed readings wait behind a transaction left open on the server:
    flags are delayed (never lost) until it ends."""
    waiting = conn.execute(
        "SELECT count(*) FROM readings WHERE ingest_xid >= %s::text::xid8", (str(lower),)
    ).fetchone()
    blocker = conn.execute(
        "SELECT pid, datname, state, now() - xact_start FROM pg_stat_activity"
        " WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1"
    ).fetchone()
    conn.rollback()
    if waiting and waiting[0] and blocker:
        log.warning(
            "%d reading(s) wait for the rules: the oldest open transaction on the server "
            "(pid %s, database %s, %s, open for %s) holds them back; end it or set "
            "idle_in_transaction_session_timeout",
            waiting[0],
            *blocker,
        )


def _log_pass(result: PassResult, *, elapsed_s: float) -> None:
    level = logging.INFO if result.readings or result.changes.opened else logging.DEBUG
    log.log(
        level,
        "rules pass: %d readings, %d breaches, %d flags opened, %d updated, "
        "%d severity raised in %.3f s%s",
        result.readings,
        result.breaches,
        result.changes.opened,
        result.changes.updated,
        result.changes.severity_raised,
        elapsed_s,
        " (more ready)" if result.more_ready else "",
    )


def _close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None and not conn.closed:
        try:
            conn.close()
        except psycopg.Error as exc:  # closing a broken connection must not stop the loop
            log.debug("closing the database connection failed: %s", exc)
