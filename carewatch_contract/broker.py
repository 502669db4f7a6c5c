"""How gateway and server reach the MQTT broker: endpoint parsing and a configured paho client.

``MQTT_URL`` is ``mqtt://host:port`` or ``mqtts://host:port`` (TLS). Credentials may be given in
the URL, but separate settings are better: a URL is easily logged. :meth:`BrokerEndpoint.redacted`
is the only form that may be logged.

Over TLS a client may also prove who it is with a client certificate (``cert_file`` and
``key_file``, PEM) instead of, or besides, a password; see :func:`make_client`.

paho is imported inside :func:`make_client`, so the contract package stays free of
dependencies.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> BrokerEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(
                f"MQTT URL must start with mqtt:// or mqtts://, got scheme {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("MQTT URL has no host, e.g. mqtt://127.0.0.1:1883")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def redacted(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def make_client(
    endpoint: BrokerEndpoint,
    *,
    client_id: str,
    protocol: str = "5",
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    manual_ack: bool = False,
    persistent_session: bool = True,
) -> mqtt.Client:
    """A paho 2.x client with credentials, TLS, reconnect backoff and a persistent session.

    A persistent session keeps the subscription and the unacknowledged QoS 1 messages on the
    broker while the client is away, which is what makes redelivery after a crash possible.

    ``cert_file`` (the client certificate, with any intermediates after it) and ``key_file``
    (its unencrypted private key), both PEM, make the client present a certificate in the TLS
    handshake; ``key_file`` may be left out when ``cert_file`` holds the key too. Both are
    read here, so a missing or mismatched file fails now rather than at connect. They need
    TLS (``mqtts://``): a ValueError otherwise.
    """
    import paho.mqtt.client as mqtt

    if key_file and not cert_file:
        raise ValueError("a client key_file needs its cert_file (the client certificate)")
    if cert_file and not endpoint.tls:
        raise ValueError(
            "a client certificate needs TLS: use an mqtts:// URL "
            f"(got {endpoint.redacted()}), or leave out the certificate and key"
        )
    if protocol not in PROTOCOLS:
        raise ValueError(f"MQTT protocol must be one of {PROTOCOLS}, got {protocol!r}")
    version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    kwargs: dict[str, object] = {}
    if version == mqtt.MQTTv311:
        kwargs["clean_session"] = not persistent_session
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        manual_ack=manual_ack,
        **kwargs,  # type: ignore[arg-type]
    )
    user = username or endpoint.username
    secret = password or endpoint.password
    if user:
        client.username_pw_set(user, secret)
    if endpoint.tls:
        client.tls_set(
            ca_certs=ca_file,
            certfile=cert_file or None,
            keyfile=key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)  # 0 = unbounded; the gateway's outbox bounds what it sends
    return client


def start_connecting(
    client: mqtt.Client,
    endpoint: BrokerEndpoint,
    *,
    protocol: str = "5",
    persistent_session: bool = True,
    keepalive: int = 30,
) -> None:
    """Start connecting in the background (``loop_start`` must follow or precede).

    On MQTT 5 a persistent session is ``clean_start=False`` with a session expiry of a day; on
    3.1.1 it is the client's ``clean_session=False`` set by :func:`make_client`.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if protocol == "5":
        properties = Properties(PacketTypes.CONNECT)
        if persistent_session:
            properties.SessionExpiryInterval = 86_400
        client.connect_async(
            endpoint.host,
            endpoint.port,
            keepalive=keepalive,
            clean_start=not persistent_session,
            properties=properties,
        )
    else:
        client.connect_async(
            endpoint.host,
            endpoint.port,
            keepalive=keepalive,
            clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        )
