"""The gateway's settings, from the environment, validated at start.

The gateway installs with its own extra alone (bleak, paho-mqtt), so this is a plain frozen
dataclass rather than a pydantic model. Secrets come from the environment or from a file only
the gateway's user can read (``MQTT_PASSWORD_FILE``, mode 0600); they are never logged.

Instead of (or besides) a password, the gateway may log in with a client certificate over TLS:
``MQTT_CERT_FILE`` (the certificate chain, PEM) and ``MQTT_KEY_FILE`` (its unencrypted private
key, PEM, mode 0600 like the password file). Their paths may be logged, the key never.
"""

from __future__ import annotations

import os
import ssl
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
    mqtt_cert_file: str | None = None  # client certificate (PEM), with mqtt_key_file
    mqtt_key_file: str | None = None
    outbox_path: Path = Path("gateway-outbox.sqlite")
    #: Beyond this distance from the gateway clock a live device time is not trusted.
    clock_drift_s: float = 600.0
    timezone: tzinfo | None = None  # the devices' local time zone; None = the system's
    batch_size: int = 50
    resend_after_s: float = 30.0
    #: Flow control: readings sent and not yet acknowledged, at most (a replay after days
    #: offline goes as fast as ingest acknowledges, never queued up in memory).
    max_in_flight: int = 2000
    #: The patient's page on http://127.0.0.1:<port>/ (messages, readings, call back); 0 = off.
    page_port: int = 8765
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
        cert_file, key_file = _client_certificate(env, endpoint)
        return cls(
            gateway_id=gateway_id,
            mqtt=endpoint,
            mqtt_protocol=protocol,
            mqtt_username=env.get("MQTT_USERNAME") or endpoint.username or gateway_id,
            mqtt_password=_password(env) or endpoint.password,
            mqtt_ca_file=env.get("MQTT_CA_FILE") or None,
            mqtt_cert_file=cert_file,
            mqtt_key_file=key_file,
            outbox_path=Path(env.get("GATEWAY_OUTBOX_PATH", "gateway-outbox.sqlite")),
            clock_drift_s=_number(env, "GATEWAY_CLOCK_DRIFT_S", 600.0),
            timezone=timezone,
            batch_size=_batch_size(env),
            resend_after_s=_number(env, "GATEWAY_RESEND_AFTER_S", 30.0),
            max_in_flight=_max_in_flight(env),
            page_port=_page_port(env),
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


def _max_in_flight(env: Mapping[str, str]) -> int:
    value = _number(env, "GATEWAY_MAX_IN_FLIGHT", 2000)
    if value != int(value) or value < 1:
        raise SettingsError("GATEWAY_MAX_IN_FLIGHT must be a whole number of readings, at least 1")
    return int(value)


def _page_port(env: Mapping[str, str]) -> int:
    raw = env.get("GATEWAY_PAGE_PORT", "").strip()
    if not raw:
        return 8765
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError("GATEWAY_PAGE_PORT must be a TCP port (1-65535), or 0 for no page")
    return int(raw)


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
    file = _file("MQTT_PASSWORD_FILE", path, private=True)
    return file.read_text(encoding="utf-8").strip() or None


def _file(name: str, path: str, *, private: bool = False) -> Path:
    """The file the setting ``name`` points to; with ``private``, refused unless only its owner
    may read or write it (mode 0600 or stricter), as a secret's file must be."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        raise SettingsError(f"{name} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SettingsError(f"{name} {path} is not a file")
    if private and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(f"{name} {path} is readable by others; run: chmod 600 {path}")
    return file


def _client_certificate(
    env: Mapping[str, str], endpoint: BrokerEndpoint
) -> tuple[str | None, str | None]:
    """``MQTT_CERT_FILE`` and ``MQTT_KEY_FILE``: both or neither, over TLS, and a pair that
    loads (a certificate and the unencrypted key that belongs to it)."""
    cert, key = env.get("MQTT_CERT_FILE") or None, env.get("MQTT_KEY_FILE") or None
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        missing = "MQTT_KEY_FILE" if key is None else "MQTT_CERT_FILE"
        raise SettingsError(
            f"{missing} must be set too: a client certificate needs both MQTT_CERT_FILE (the "
            "certificate) and MQTT_KEY_FILE (its private key); set both, or neither"
        )
    if not endpoint.tls:
        raise SettingsError(
            "MQTT_CERT_FILE and MQTT_KEY_FILE need TLS: set MQTT_URL to mqtts://..., "
            "or unset them to log in with a password"
        )
    _file("MQTT_CERT_FILE", cert)
    _file("MQTT_KEY_FILE", key, private=True)
    try:
        # An empty passphrase rather than None: None would make OpenSSL prompt on a terminal.
        ssl.create_default_context().load_cert_chain(cert, key, password="")
    except (ssl.SSLError, OSError) as exc:
        # The reason is OpenSSL's (e.g. KEY_VALUES_MISMATCH), never the key's contents.
        raise SettingsError(
            f"MQTT_CERT_FILE {cert} and MQTT_KEY_FILE {key} do not load as a PEM certificate "
            f"and its unencrypted private key ({getattr(exc, 'reason', None) or exc}); "
            "check that the key belongs to the certificate and has no passphrase"
        ) from None
    return cert, key
