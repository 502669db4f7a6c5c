"""The ingest service's metrics, exposed at /metrics in the Prometheus text format.

Counters (``_total``): messages received, readings committed, duplicates suppressed (a
redelivered or resent reading already stored), batches committed, database errors,
quarantined items by reason, follow-up requests and inbox receipts stored. Histograms: messages
per committed batch, and the latency from a message's arrival to the commit of its batch.
Gauges: messages received and not yet committed, and how long the oldest of them has waited
(the consumer's lag; it grows while the database is away).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Sequence

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count (not thread-safe
    alone: :class:`IngestCounters` holds the lock)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, float("inf")), self._counts, strict=True):
            cumulative += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{label}"}} {cumulative}')
        lines += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return lines


class IngestCounters:
    """Thread-safe metrics. Names follow Prometheus conventions (``_total`` for counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages_received = 0
        self.readings_committed = 0
        self.duplicates_suppressed = 0
        self.batches_committed = 0
        self.database_errors = 0
        self.follow_ups_stored = 0
        self.quarantined: Counter[str] = Counter()
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.commit_latency = Histogram(LATENCY_BUCKETS_S)
        self._backlog: Callable[[], tuple[int, float]] = lambda: (0, 0.0)

    def add(
        self,
        *,
        messages: int = 0,
        committed: int = 0,
        duplicates: int = 0,
        batches: int = 0,
        database_errors: int = 0,
        follow_ups: int = 0,
        quarantined: Counter[str] | None = None,
    ) -> None:
        with self._lock:
            self.messages_received += messages
            self.readings_committed += committed
            self.duplicates_suppressed += duplicates
            self.batches_committed += batches
            self.database_errors += database_errors
            self.follow_ups_stored += follow_ups
            if quarantined:
                self.quarantined.update(quarantined)

    def observe_batch(self, size: int, latencies_s: Sequence[float]) -> None:
        """A batch of ``size`` messages committed; each message's arrival-to-commit time."""
        with self._lock:
            self.batch_size.observe(size)
            for latency in latencies_s:
                self.commit_latency.observe(latency)

    def watch_backlog(self, backlog: Callable[[], tuple[int, float]]) -> None:
        """Where the gauges come from: (messages waiting, seconds the oldest has waited)."""
        self._backlog = backlog

    def render(self) -> str:
        waiting, oldest_s = self._backlog()
        with self._lock:
            lines = [
                "# TYPE carewatch_ingest_messages_received_total counter",
                f"carewatch_ingest_messages_received_total {self.messages_received}",
                "# TYPE carewatch_ingest_readings_committed_total counter",
                f"carewatch_ingest_readings_committed_total {self.readings_committed}",
                "# TYPE carewatch_ingest_duplicates_suppressed_total counter",
                f"carewatch_ingest_duplicates_suppressed_total {self.duplicates_suppressed}",
                "# TYPE carewatch_ingest_batches_committed_total counter",
                f"carewatch_ingest_batches_committed_total {self.batches_committed}",
                "# TYPE carewatch_ingest_database_errors_total counter",
                f"carewatch_ingest_database_errors_total {self.database_errors}",
                "# TYPE carewatch_ingest_follow_ups_stored_total counter",
                f"carewatch_ingest_follow_ups_stored_total {self.follow_ups_stored}",
                "# TYPE carewatch_ingest_quarantined_total counter",
            ]
            lines += [
                f'carewatch_ingest_quarantined_total{{reason="{reason}"}} {count}'
                for reason, count in sorted(self.quarantined.items())
            ]
            lines += self.batch_size.render("carewatch_ingest_batch_messages")
            lines += self.commit_latency.render("carewatch_ingest_commit_latency_seconds")
        lines += [
            "# TYPE carewatch_ingest_pending_messages gauge",
            f"carewatch_ingest_pending_messages {waiting}",
            "# TYPE carewatch_ingest_oldest_pending_seconds gauge",
            f"carewatch_ingest_oldest_pending_seconds {oldest_s:.3f}",
        ]
        return "\n".join(lines) + "\n"
