"""The ingest service's settings, from the environment, validated at start."""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_API_TOKEN = "carewatch-dev-token"  # noqa: S105 - refused outside development


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    environment: Literal["development", "test", "production"] = Field(
        "production", alias="CAREWATCH_ENV"
    )
    database_url: str = Field(alias="DATABASE_URL", repr=False)  # may hold a password
    mqtt_url: str = Field(alias="MQTT_URL", repr=False)
    mqtt_protocol: Literal["5", "3.1.1"] = Field("5", alias="MQTT_PROTOCOL")
    mqtt_username: str | None = Field(None, alias="MQTT_USERNAME")
    mqtt_password: SecretStr | None = Field(None, alias="MQTT_PASSWORD")
    mqtt_ca_file: str | None = Field(None, alias="MQTT_CA_FILE")
    # A client certificate instead of (or besides) the password, over TLS (PEM files).
    mqtt_cert_file: str | None = Field(None, alias="MQTT_CERT_FILE")
    mqtt_key_file: str | None = Field(None, alias="MQTT_KEY_FILE")
    # Unique per worker: the broker keeps each worker's session (and its unacked messages).
    mqtt_client_id: str = Field(
        default_factory=lambda: f"carewatch-ingest-{socket.gethostname()}",
        alias="INGEST_CLIENT_ID",
    )
    # With a group, workers share one subscription ($share/<group>/...) to scale out.
    mqtt_shared_group: str | None = Field(None, alias="INGEST_SHARED_GROUP")
    consume: bool = Field(True, alias="INGEST_CONSUME")
    batch_max_messages: int = Field(200, ge=1, le=10_000, alias="INGEST_BATCH_MAX_MESSAGES")
    # How long a batch waits to fill once its first message is in. Short: under load batches
    # fill while the previous one commits; when quiet, a reading need not wait for company
    # (bench: publish-to-commit p50 12 ms / p99 23 ms at 1,000 readings/s with 5 ms, 76 / 118
    # ms with 50 ms, at the same peak throughput).
    batch_max_wait_ms: int = Field(10, ge=1, le=5_000, alias="INGEST_BATCH_MAX_WAIT_MS")
    max_payload_bytes: int = Field(256 * 1024, alias="INGEST_MAX_PAYLOAD_BYTES")
    quarantine_keep_bytes: int = Field(16 * 1024, alias="INGEST_QUARANTINE_KEEP_BYTES")
    # How often the native rollups (readings_hourly/daily) take in new readings, seconds;
    # TimescaleDB's continuous aggregates refresh by their own policies.
    rollup_interval_s: float = Field(60.0, gt=0, alias="INGEST_ROLLUP_INTERVAL_S")
    api_token: SecretStr = Field(SecretStr(DEVELOPMENT_API_TOKEN), alias="CAREWATCH_API_TOKEN")
    # The database role the API works as (migration 0009 creates it): it can read and write
    # the application's tables but only append to the audit log. The connecting user must be
    # that role or a member of it.
    api_db_role: str = Field("carewatch_app", alias="CAREWATCH_API_DB_ROLE")
    # Workspace sessions: a token ends after this long unused, and at the latest after
    # api_session_max_hours.
    api_session_idle_minutes: float = Field(30.0, gt=0, alias="CAREWATCH_SESSION_IDLE_MINUTES")
    api_session_max_hours: float = Field(12.0, gt=0, alias="CAREWATCH_SESSION_MAX_HOURS")
    # Peers trusted to name the end user's address in X-CareWatch-Client (the workspace calls
    # the API for its users: without this, every login would count against its address).
    trusted_proxy_list: str = Field("127.0.0.1,::1", alias="CAREWATCH_TRUSTED_PROXIES")
    # Failed logins allowed in login_window_minutes, per user name and per client address.
    login_failures_per_username: int = Field(5, ge=1, alias="CAREWATCH_LOGIN_FAILURES_PER_USER")
    login_failures_per_client: int = Field(20, ge=1, alias="CAREWATCH_LOGIN_FAILURES_PER_CLIENT")
    login_window_minutes: float = Field(15.0, gt=0, alias="CAREWATCH_LOGIN_WINDOW_MINUTES")
    # The clinic's time zone: billing counts its calendar days and months in it.
    clinic_tz: str = Field("UTC", alias="CAREWATCH_CLINIC_TZ")
    # Calls: each call gets a room under this base URL (<base>/<call id>) of the clinic's
    # video service; unset: calls by phone only.
    video_base_url: str | None = Field(None, alias="CAREWATCH_VIDEO_BASE_URL")
    # Messages by email (optional): the clinic's SMTP relay. Unset host: email is off.
    smtp_host: str | None = Field(None, alias="SMTP_HOST")
    smtp_port: int = Field(587, ge=1, le=65535, alias="SMTP_PORT")
    smtp_starttls: bool = Field(True, alias="SMTP_STARTTLS")
    smtp_username: str | None = Field(None, alias="SMTP_USERNAME")
    smtp_password: SecretStr | None = Field(None, alias="SMTP_PASSWORD")
    smtp_from: str = Field("care-team@carewatch.invalid", alias="SMTP_FROM")
    # How often stored messages are looked for to send (they are also sent at once).
    message_interval_s: float = Field(1.0, gt=0, alias="INGEST_MESSAGE_INTERVAL_S")
    db_wait_seconds: float = Field(30.0, alias="INGEST_DB_WAIT_SECONDS")
    rules_file: str | None = Field(None, alias="RULES_FILE")
    # Fault injection for the fault tests only (refused outside CAREWATCH_ENV=test):
    # "after_commit" ends the process right after a batch commits, before any ack is sent.
    failpoint: Literal["after_commit"] | None = Field(None, alias="CAREWATCH_FAILPOINT")

    @model_validator(mode="after")
    def _refuse_default_secrets_outside_development(self) -> IngestSettings:
        if (
            self.environment != "development"
            and self.api_token.get_secret_value() == DEVELOPMENT_API_TOKEN
        ):
            raise ValueError(
                "CAREWATCH_API_TOKEN is the development default; set a real token "
                "(or CAREWATCH_ENV=development for a local run)"
            )
        if self.failpoint is not None and self.environment != "test":
            raise ValueError("CAREWATCH_FAILPOINT is for the fault tests: CAREWATCH_ENV=test only")
        return self

    @property
    def trusted_proxies(self) -> frozenset[str]:
        """The addresses of ``CAREWATCH_TRUSTED_PROXIES`` (comma-separated)."""
        return frozenset(a.strip() for a in self.trusted_proxy_list.split(",") if a.strip())

    @property
    def readings_subscription(self) -> str:
        from carewatch_contract import topics

        topic_filter = topics.all_gateways(topics.READINGS)
        if self.mqtt_shared_group:
            return f"$share/{self.mqtt_shared_group}/{topic_filter}"
        return topic_filter


@lru_cache(maxsize=1)
def get_settings() -> IngestSettings:
    return IngestSettings()  # type: ignore[call-arg]
