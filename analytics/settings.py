"""The analytics worker's settings, from the environment, validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnalyticsSettings(BaseSettings):
    """Environment of ``python -m analytics worker``.

    ``DATABASE_URL`` is required; ``RULES_FILE`` replaces the packaged ``thresholds.toml``.
    """

    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", case_sensitive=False, populate_by_name=True
    )

    database_url: str = Field(alias="DATABASE_URL", min_length=1)
    rules_file: Path | None = Field(None, alias="RULES_FILE")
    poll_interval_ms: int = Field(500, ge=10, le=60_000, alias="ANALYTICS_POLL_INTERVAL_MS")
    worker_name: str = Field("rules-1", min_length=1, max_length=100, alias="ANALYTICS_WORKER_NAME")
    # Readings per pass (cut at a transaction boundary): bounds memory after a long outage.
    batch_max_readings: int = Field(
        50_000, ge=1, le=5_000_000, alias="ANALYTICS_BATCH_MAX_READINGS"
    )
    db_wait_seconds: float = Field(30.0, ge=0, alias="ANALYTICS_DB_WAIT_SECONDS")
    # How often unacknowledged urgent flags are checked for escalation (the waits themselves
    # are in the rules file's [escalation] table).
    escalation_interval_s: float = Field(
        30.0, gt=0, le=3600, alias="ANALYTICS_ESCALATION_INTERVAL_S"
    )
    # How often the time-driven part runs for every monitored patient: silences (no reading
    # for 48 h) and flags whose value has been back in range long enough.
    sweep_interval_s: float = Field(60.0, gt=0, le=3600, alias="ANALYTICS_SWEEP_INTERVAL_S")
    # Where escalations are POSTed (JSON, no patient data); unset: a WARNING log line only.
    escalation_webhook: str | None = Field(None, alias="ANALYTICS_ESCALATION_WEBHOOK")

    @field_validator("rules_file", mode="before")
    @classmethod
    def _empty_rules_file_means_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rules_file")
    @classmethod
    def _rules_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"RULES_FILE {value} is not a readable file")
        return value
