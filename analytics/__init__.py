"""CareWatch analytics: the rules that turn readings into flags a clinician must look at.

Pure core (no I/O besides reading the rules file):

- :mod:`analytics.rules` and :mod:`analytics.rule_kinds`: the rule set (``thresholds.toml``):
  thresholds, sustained, trends, baselines, adherence, NEWS2; settings and escalation waits.
- :mod:`analytics.signals`: every rule's verdicts over all readings, vectorised;
  :mod:`analytics.episodes`: the flags they amount to; :mod:`analytics.news2`: the home
  NEWS2 score; :mod:`analytics.bp_stage`: blood-pressure stage from weekly averages.
- :mod:`analytics.backtest`: the engine over a CSV or the database's history.

Thin PostgreSQL shells:

- :mod:`analytics.worker` evaluates each stored reading exactly once, through a watermark of
  transaction ids, with :mod:`analytics.live` (the engine over the patients concerned), and
  writes flags through :mod:`analytics.flag_store` in the same transaction; it also sweeps for
  silences and ended waits, and escalates (:mod:`analytics.escalation`).
- :mod:`analytics.flag_lifecycle`: assignment and snoozes.
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """Base of the errors raised by the analytics package."""
