"""The ingest service's counters, exposed at /metrics in the Prometheus text format."""

from __future__ import annotations

import threading
from collections import Counter


class IngestCounters:
    """Thread-safe counters. Names follow Prometheus conventions (``_total`` for counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages_received = 0
        self.readings_committed = 0
        self.duplicates_suppressed = 0
        self.batches_committed = 0
        self.database_errors = 0
        self.quarantined: Counter[str] = Counter()

    def add(
        self,
        *,
        messages: int = 0,
        committed: int = 0,
        duplicates: int = 0,
        batches: int = 0,
        database_errors: int = 0,
        quarantined: Counter[str] | None = None,
    ) -> None:
        with self._lock:
            self.messages_received += messages
            self.readings_committed += committed
            self.duplicates_suppressed += duplicates
            self.batches_committed += batches
            self.database_errors += database_errors
            if quarantined:
                self.quarantined.update(quarantined)

    def render(self) -> str:
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
                "# TYPE carewatch_ingest_quarantined_total counter",
            ]
            lines += [
                f'carewatch_ingest_quarantined_total{{reason="{reason}"}} {count}'
                for reason, count in sorted(self.quarantined.items())
            ]
        return "\n".join(lines) + "\n"
