"""MQTT clients that look at what the broker holds and routes (not a test)."""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from carewatch_contract.broker import BrokerEndpoint


class TopicCounter:
    """Subscribes to ``topic`` (QoS 1, clean session) and counts what it receives."""

    def __init__(self, url: str, topic: str) -> None:
        endpoint = BrokerEndpoint.from_url(url)
        self.count = 0
        self._topic = topic
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"faults-monitor-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(endpoint.host, endpoint.port, keepalive=30)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.count += 1

    def __enter__(self) -> Self:
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.__exit__(None, None, None)
            raise AssertionError(f"the monitor could not subscribe to {self._topic}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def take_over_session(url: str, client_id: str, quiet_s: float = 1.0) -> list[tuple[str, bytes]]:
    """Connect as ``client_id`` to the session the broker kept for it (MQTT 5, clean start
    off), take every message it queued, acknowledging each, until none came for ``quiet_s``;
    end the session; return the messages' topics and payloads."""
    endpoint = BrokerEndpoint.from_url(url)
    messages: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    connected = threading.Event()
    present: list[bool] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        present.append(bool(flags.session_present))
        connected.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with lock:
            messages.append((message.topic, message.payload))

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.on_connect = on_connect
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 60
    client.connect(endpoint.host, endpoint.port, keepalive=30, clean_start=False,
                   properties=properties)  # fmt: skip
    client.loop_start()
    try:
        assert connected.wait(10), f"could not connect as {client_id}"
        assert present == [True], f"the broker kept no session for {client_id}"
        seen = -1
        while seen != len(messages):
            seen = len(messages)
            time.sleep(quiet_s)
    finally:
        ending = Properties(PacketTypes.DISCONNECT)
        ending.SessionExpiryInterval = 0  # the session ends with this connection
        client.disconnect(properties=ending)
        client.loop_stop()
    return messages
