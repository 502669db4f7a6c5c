"""The gateway's settings: validated at start, with messages that say what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway_agent.settings import GatewaySettings, SettingsError

BASE = {"GATEWAY_ID": "gw-1", "MQTT_URL": "mqtt://broker.local:1883"}


def test_defaults() -> None:
    settings = GatewaySettings.from_env(BASE)
    assert (settings.batch_size, settings.mqtt_username, settings.mqtt_protocol) == (
        50,
        "gw-1",
        "5",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"GATEWAY_ID": ""}, "GATEWAY_ID"),
        ({"GATEWAY_ID": "gw/1"}, "GATEWAY_ID"),
        ({"GATEWAY_ID": "gw-1\n"}, "GATEWAY_ID"),
        ({"MQTT_URL": "http://x"}, "MQTT_URL"),
        ({"MQTT_PROTOCOL": "4"}, "MQTT_PROTOCOL"),
        ({"GATEWAY_BATCH_SIZE": "501"}, "GATEWAY_BATCH_SIZE"),
        ({"GATEWAY_BATCH_SIZE": "2.5"}, "GATEWAY_BATCH_SIZE"),
        ({"GATEWAY_TIMEZONE": "Mars/Olympus"}, "GATEWAY_TIMEZONE"),
    ],
)
def test_bad_settings_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env({**BASE, **change})


def test_the_password_file_must_be_private_and_is_never_in_repr(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    env = {**BASE, "MQTT_PASSWORD_FILE": str(secret)}
    with pytest.raises(SettingsError, match="chmod 600"):
        GatewaySettings.from_env(env)
    os.chmod(secret, 0o600)
    settings = GatewaySettings.from_env(env)
    assert settings.mqtt_password == "s3cret"
    assert "s3cret" not in repr(settings)
