"""CareWatch analytics: the rules that turn readings into flags a clinician must look at.

- :mod:`analytics.rules` is the pure core: the threshold rule set (``thresholds.toml``) and a
  vectorised evaluation of readings against it. No I/O apart from reading the TOML.
- :mod:`analytics.flag_store` is the thin PostgreSQL shell that opens and updates flags.
- :mod:`analytics.worker` evaluates each stored reading exactly once, through a watermark of
  transaction ids, and writes the flags in the same transaction.
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """Base of the errors raised by the analytics package."""
