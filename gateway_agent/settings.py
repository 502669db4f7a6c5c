"""The gateway's settings, from the environment, validated at start.

The gateway installs with its own extra alone (bleak, paho-mqtt), so this is a plain frozen
dataclass rather than a pydantic model. Secrets come from the environment or from a file only
the gateway's user can read (``MQTT_PASSWORD_FILE``, mode 0600); they are never logged.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carewatch_contract.broker import PROTOCOLS, BrokerEndpoint
from carewatch_contract.messages import MAX_READINGS_PER_MESSAGE
from carewatch_contract.topics import GATEWAY_ID_PATTERN

OUTBOX_WARN_FRACTION = 0.8


class SettingsError(ValueError):
    """A setting is missing or wrong; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    gateway_id: str
    mqtt: BrokerEndpoint
    mqtt_protocol: str = "5"
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_ca_file: str | None = None
    outbox_path: Path = Path("gateway-outbox.sqlite")
    #: Beyond this distance from the gateway clock a live device time is not trusted.
    clock_drift_s: float = 600.0
    timezone: tzinfo | None = None  # the devices' local time zone; None = the system's
    batch_size: int = 50
    resend_after_s: float = 30.0
    heartbeat_s: float = 60.0
    #: The outbox's bound. Policy: every clinical reading is kept even beyond it (none is
    #: ever dropped); from ``OUTBOX_WARN_FRACTION`` of it the gateway warns in its logs and in
    #: its retained status, so that the care team learns the home is offline for long.
    outbox_max_readings: int = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        gateway_id = env.get("GATEWAY_ID", "")
        if not GATEWAY_ID_PATTERN.fullmatch(gateway_id):
            raise SettingsError(
                "GATEWAY_ID must be set to this gateway's id (letters, digits, '.', '_', '-')"
            )
        url = env.get("MQTT_URL")
        if not url:
            raise SettingsError("MQTT_URL must be set, e.g. mqtts://broker.example:8883")
        try:
            endpoint = BrokerEndpoint.from_url(url)
        except ValueError as exc:
            raise SettingsError(f"MQTT_URL: {exc}") from None
        protocol = env.get("MQTT_PROTOCOL", "5")
        if protocol not in PROTOCOLS:
            raise SettingsError(f"MQTT_PROTOCOL must be one of {', '.join(PROTOCOLS)}")
        tz_name = env.get("GATEWAY_TIMEZONE")
        try:
            timezone = ZoneInfo(tz_name) if tz_name else None
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"GATEWAY_TIMEZONE {tz_name!r} is not a known zone") from None
        return cls(
            gateway_id=gateway_id,
            mqtt=endpoint,
            mqtt_protocol=protocol,
            mqtt_username=env.get("MQTT_USERNAME") or endpoint.username or gateway_id,
            mqtt_password=_password(env) or endpoint.password,
            mqtt_ca_file=env.get("MQTT_CA_FILE") or None,
            outbox_path=Path(env.get("GATEWAY_OUTBOX_PATH", "gateway-outbox.sqlite")),
            clock_drift_s=_number(env, "GATEWAY_CLOCK_DRIFT_S", 600.0),
            timezone=timezone,
            batch_size=_batch_size(env),
            resend_after_s=_number(env, "GATEWAY_RESEND_AFTER_S", 30.0),
            heartbeat_s=_number(env, "GATEWAY_HEARTBEAT_S", 60.0),
            outbox_max_readings=int(_number(env, "GATEWAY_OUTBOX_MAX_READINGS", 1_000_000)),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive")
    return value


def _batch_size(env: Mapping[str, str]) -> int:
    size = _number(env, "GATEWAY_BATCH_SIZE", 50)
    if not float(size).is_integer() or size > MAX_READINGS_PER_MESSAGE:
        raise SettingsError(
            f"GATEWAY_BATCH_SIZE must be a whole number from 1 to {MAX_READINGS_PER_MESSAGE}"
        )
    return int(size)


def _password(env: Mapping[str, str]) -> str | None:
    path = env.get("MQTT_PASSWORD_FILE")
    if not path:
        return env.get("MQTT_PASSWORD") or None
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        raise SettingsError(f"MQTT_PASSWORD_FILE cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(
            f"MQTT_PASSWORD_FILE {path} is readable by others; run: chmod 600 {path}"
        )
    return file.read_text(encoding="utf-8").strip() or None
