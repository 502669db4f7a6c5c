"""The /metrics text: histogram buckets are cumulative, gauges come from the consumer."""

from __future__ import annotations

from collections import Counter

from ingest.counters import Histogram, IngestCounters


def test_a_histogram_counts_cumulatively_with_inf_sum_and_count() -> None:
    histogram = Histogram((1, 5, 10))
    for value in (0.5, 1, 3, 7, 100):
        histogram.observe(value)
    assert histogram.render("x") == [
        "# TYPE x histogram",
        'x_bucket{le="1"} 2',
        'x_bucket{le="5"} 3',
        'x_bucket{le="10"} 4',
        'x_bucket{le="+Inf"} 5',
        "x_sum 111.500000",
        "x_count 5",
    ]


def test_metrics_render_counters_by_reason_histograms_and_the_backlog_gauges() -> None:
    counters = IngestCounters()
    counters.add(messages=3, committed=2, duplicates=1, batches=1, follow_ups=1)
    counters.add(quarantined=Counter({"bad_json": 2, "too_large": 1}))
    counters.observe_batch(3, [0.004, 0.02, 0.3])
    counters.watch_backlog(lambda: (42, 7.5))
    text = counters.render()
    for line in (
        "carewatch_ingest_messages_received_total 3",
        "carewatch_ingest_duplicates_suppressed_total 1",
        "carewatch_ingest_follow_ups_stored_total 1",
        'carewatch_ingest_quarantined_total{reason="bad_json"} 2',
        'carewatch_ingest_quarantined_total{reason="too_large"} 1',
        'carewatch_ingest_batch_messages_bucket{le="5"} 1',
        'carewatch_ingest_commit_latency_seconds_bucket{le="0.025"} 2',
        "carewatch_ingest_commit_latency_seconds_count 3",
        "carewatch_ingest_pending_messages 42",
        "carewatch_ingest_oldest_pending_seconds 7.500",
    ):
        assert line in text.splitlines(), line
