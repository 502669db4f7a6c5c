"""The gateway's settings: validated at start, with messages that say what to do."""

from __future__ import annotations

import os
import subprocess
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


# -- a client certificate (MQTT_CERT_FILE, MQTT_KEY_FILE) ------------------------------------

TLS = {**BASE, "MQTT_URL": "mqtts://broker.local:8883"}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gw-1.crt/gw-1.key, other.key (a key of another certificate), encrypted.key (gw-1's key
    under a passphrase): self-signed, as only the files' shape matters here."""
    folder = tmp_path_factory.mktemp("pems")
    for name in ("gw-1", "other"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"),
            "-days", "1", "-subj", f"/CN={name}",
        )  # fmt: skip
    _openssl(
        "pkey", "-in", str(folder / "gw-1.key"), "-aes256", "-passout", "pass:secret",
        "-out", str(folder / "encrypted.key"),
    )  # fmt: skip
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return folder


def test_a_client_certificate_is_both_files_and_the_user_name_stays_the_gateway_id(
    pems: Path,
) -> None:
    env = {**TLS, "MQTT_CERT_FILE": str(pems / "gw-1.crt"), "MQTT_KEY_FILE": str(pems / "gw-1.key")}
    settings = GatewaySettings.from_env(env)
    assert (settings.mqtt_cert_file, settings.mqtt_key_file) == (
        str(pems / "gw-1.crt"),
        str(pems / "gw-1.key"),
    )
    # No password: the user name is still the gateway id (a broker that takes the name from
    # the certificate's CN ignores it; that CN must then be the gateway id).
    assert (settings.mqtt_username, settings.mqtt_password) == ("gw-1", None)
    key_body = (pems / "gw-1.key").read_text().splitlines()[1]
    assert key_body not in repr(settings)


def test_without_a_client_certificate_both_settings_are_none() -> None:
    settings = GatewaySettings.from_env(TLS)
    assert (settings.mqtt_cert_file, settings.mqtt_key_file) == (None, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"MQTT_KEY_FILE": None}, "MQTT_KEY_FILE must be set too", id="cert-only"),
        pytest.param({"MQTT_CERT_FILE": None}, "MQTT_CERT_FILE must be set too", id="key-only"),
        pytest.param(
            {"MQTT_URL": "mqtt://broker.local:1883"}, "need TLS: set MQTT_URL to mqtts://",
            id="without-tls",
        ),
        pytest.param(
            {"MQTT_CERT_FILE": "missing.crt"}, "MQTT_CERT_FILE .*missing.crt cannot be read",
            id="cert-missing",
        ),
        pytest.param(
            {"MQTT_KEY_FILE": "missing.key"}, "MQTT_KEY_FILE .*missing.key cannot be read",
            id="key-missing",
        ),
        pytest.param({"MQTT_CERT_FILE": "."}, "MQTT_CERT_FILE .* is not a file", id="cert-dir"),
        pytest.param(
            {"MQTT_KEY_FILE": "other.key"}, r"do not load .*KEY_VALUES_MISMATCH.*belongs to",
            id="key-of-another-certificate",
        ),
        pytest.param(
            {"MQTT_KEY_FILE": "encrypted.key"}, "unencrypted private key.*no passphrase",
            id="key-with-passphrase",
        ),
        pytest.param(
            {"MQTT_CERT_FILE": "gw-1.key"}, "do not load as a PEM certificate",
            id="key-as-certificate",
        ),
    ],
)  # fmt: skip
def test_bad_client_certificate_settings_say_what_to_do(
    pems: Path, change: dict[str, str | None], message: str
) -> None:
    env: dict[str, str] = {
        **TLS,
        "MQTT_CERT_FILE": str(pems / "gw-1.crt"),
        "MQTT_KEY_FILE": str(pems / "gw-1.key"),
    }
    for name, value in change.items():
        if value is None:
            env.pop(name)
        elif name.endswith("_FILE"):
            env[name] = str(pems / value)
        else:
            env[name] = value
    with pytest.raises(SettingsError, match=message) as failure:
        GatewaySettings.from_env(env)
    for line in (pems / "gw-1.key").read_text().splitlines()[1:-1]:
        assert line not in str(failure.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_the_key_file_must_be_private_like_the_password_file(pems: Path, mode: int) -> None:
    key = pems / "gw-1.key"
    env = {**TLS, "MQTT_CERT_FILE": str(pems / "gw-1.crt"), "MQTT_KEY_FILE": str(key)}
    key.chmod(mode)
    try:
        with pytest.raises(
            SettingsError, match=f"MQTT_KEY_FILE {key} is readable by others; run: chmod 600"
        ):
            GatewaySettings.from_env(env)
        assert key.stat().st_mode & 0o777 == mode  # reported, never changed
    finally:
        key.chmod(0o600)
    key.chmod(0o400)  # stricter than 0600 is fine
    try:
        assert GatewaySettings.from_env(env).mqtt_key_file == str(key)
    finally:
        key.chmod(0o600)


def test_the_client_factory_takes_a_certificate_only_over_tls(pems: Path) -> None:
    from carewatch_contract.broker import BrokerEndpoint, make_client

    cert, key = str(pems / "gw-1.crt"), str(pems / "gw-1.key")
    plain = BrokerEndpoint.from_url("mqtt://broker.local:1883")
    with pytest.raises(ValueError, match="client certificate needs TLS: use an mqtts:// URL"):
        make_client(plain, client_id="t", cert_file=cert, key_file=key)
    tls = BrokerEndpoint.from_url("mqtts://broker.local:8883")
    with pytest.raises(ValueError, match="key_file needs its cert_file"):
        make_client(tls, client_id="t", key_file=key)
    make_client(tls, client_id="t", cert_file=cert, key_file=key)  # loads the pair, no connect
