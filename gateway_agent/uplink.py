"""The gateway's link to the broker: publishes the outbox, applies acks, keeps status.

- QoS 1, a client id and credentials per gateway, a persistent session, reconnect with
  backoff (paho's own, 1 s doubling to 30 s).
- A retained ``status`` message says ``online`` on connect; the last will says ``offline``
  when the connection drops without a goodbye.
- Readings leave the outbox only when an ack names them (see :mod:`gateway_agent.outbox`).
- Flow control: at most ``max_in_flight`` readings are sent and unacknowledged at any time;
  the rest wait in the outbox (not in paho's memory). Readings taken since the link came
  back go before the backlog, so a days-long backlog replays in order, as fast as ingest
  acknowledges, while a new reading is sent within one batch.
- Messages for the patient arrive on ``inbox``; each is stored with its ``delivered``
  receipt queued in the same transaction. Receipts and the patient's follow-up requests are
  published from the outbox until ingest's ack names them.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import paho.mqtt.client as mqtt

from carewatch_contract import topics
from carewatch_contract.broker import make_client, start_connecting
from carewatch_contract.messages import (
    ContractError,
    GatewayState,
    GatewayStatus,
    encode_reading_batch_json,
    encode_status,
    parse_ack,
    parse_inbox_message,
)
from gateway_agent.agent import GatewayAgent
from gateway_agent.outbox import Outbox
from gateway_agent.settings import OUTBOX_WARN_FRACTION, GatewaySettings

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, settings: GatewaySettings, outbox: Outbox, agent: GatewayAgent) -> None:
        self._settings = settings
        self._outbox = outbox
        self._agent = agent
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, name="uplink", daemon=True)
        gid = settings.gateway_id
        self._topic_readings = topics.gateway_topic(gid, topics.READINGS)
        self._topic_status = topics.gateway_topic(gid, topics.STATUS)
        self._topic_acks = topics.gateway_topic(gid, topics.ACKS)
        self._topic_inbox = topics.gateway_topic(gid, topics.INBOX)
        self._live_since: float | None = None
        self._client = make_client(
            settings.mqtt,
            client_id=f"carewatch-gw-{gid}",
            protocol=settings.mqtt_protocol,
            username=settings.mqtt_username,
            password=settings.mqtt_password,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
            persistent_session=True,
        )
        self._client.will_set(
            self._topic_status,
            encode_status(GatewayStatus(gid, GatewayState.OFFLINE)),
            qos=1,
            retain=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wake(self) -> None:
        """New readings are in the outbox: publish them now rather than at the next tick."""
        self._wake.set()

    def start(self) -> None:
        log.info("gateway connecting to %s", self._settings.mqtt.redacted())
        start_connecting(
            self._client,
            self._settings.mqtt,
            protocol=self._settings.mqtt_protocol,
            persistent_session=True,
        )
        self._client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        """Say offline, disconnect. Unacked readings stay in the outbox for next time."""
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        if self.connected:
            info = self._client.publish(
                self._topic_status, self._status(GatewayState.OFFLINE), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):  # the connection dropped
                info.wait_for_publish(timeout=3)
        self._client.disconnect()
        self._client.loop_stop()

    def _status(self, state: GatewayState) -> bytes:
        pending = self._outbox.pending_count()
        warnings = outbox_warnings(pending, self._settings.outbox_max_readings)
        if warnings:
            log.warning(
                "the outbox holds %d unacknowledged readings (bound %d): %s; none is dropped",
                pending,
                self._settings.outbox_max_readings,
                ", ".join(warnings),
            )
        return encode_status(
            GatewayStatus(
                gateway_id=self._settings.gateway_id,
                state=state,
                at=datetime.now(UTC),
                software=_software_version(),
                outbox_pending=pending,
                devices=self._agent.device_statuses(),
                warnings=warnings,
            )
        )

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("broker refused the gateway's connection: %s", reason_code)
            return
        client.subscribe([(self._topic_acks, 1), (self._topic_inbox, 1)])
        client.publish(self._topic_status, self._status(GatewayState.ONLINE), qos=1, retain=True)
        self._outbox.mark_all_due()
        self._live_since = time.time()
        self._connected.set()
        self._wake.set()
        log.info("gateway connected; %d reading(s) pending", self._outbox.pending_count())

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("gateway disconnected (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        try:
            if message.topic == self._topic_acks:
                ack = parse_ack(message.payload)
                self._outbox.acknowledge(
                    ack.committed, [(r.reading_id, r.reason) for r in ack.rejected]
                )
                for rejection in ack.rejected:
                    log.warning(
                        "ingest rejected %s (%s); a reading is kept aside in the outbox",
                        rejection.reading_id,
                        rejection.reason,
                    )
                self._wake.set()  # room in the window: send more
            elif message.topic == self._topic_inbox:
                if self._outbox.store_inbox_message(parse_inbox_message(message.payload)):
                    log.info("a message for the patient arrived")
                self._wake.set()  # publish its receipt
        except ContractError as exc:
            log.warning("ignoring a malformed message on %s: %s", message.topic, exc.reason)
        except sqlite3.Error as exc:
            # Nothing is lost: unapplied acks mean readings are sent again and counted as
            # duplicates; an unstored inbox message is not receipted.
            log.error("the outbox could not record a message on %s: %s", message.topic, exc)

    # -- publishing loop -----------------------------------------------------------------

    def _publish_loop(self) -> None:
        next_heartbeat = 0.0
        backoff = 1.0
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self.connected:
                continue
            try:
                next_heartbeat = self._publish_due(next_heartbeat)
                backoff = 1.0
            except sqlite3.Error as exc:
                log.error("the outbox cannot be read (%s); retrying in %.0f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def _publish_due(self, next_heartbeat: float) -> float:
        """Publish every due reading, in order, and the heartbeat when it is time; return
        the time of the next heartbeat."""
        for item in self._outbox.take_outgoing_due(resend_after_s=self._settings.resend_after_s):
            topic = topics.gateway_topic(self._settings.gateway_id, item.topic)
            self._client.publish(topic, item.body.encode(), qos=1)
        while not self._stop.is_set() and self.connected:
            due = self._outbox.take_due(
                limit=self._settings.batch_size,
                resend_after_s=self._settings.resend_after_s,
                live_since=self._live_since,
                max_in_flight=self._settings.max_in_flight,
            )
            if not due:
                break
            payload = encode_reading_batch_json(
                self._settings.gateway_id, datetime.now(UTC), [p.body for p in due]
            )
            self._client.publish(self._topic_readings, payload, qos=1)
        now = time.monotonic()
        if now >= next_heartbeat and self.connected:
            self._client.publish(
                self._topic_status, self._status(GatewayState.ONLINE), qos=1, retain=True
            )
            next_heartbeat = now + self._settings.heartbeat_s
        return next_heartbeat


def outbox_warnings(pending: int, bound: int) -> tuple[str, ...]:
    """The status warnings for an outbox holding ``pending`` readings under ``bound``."""
    if pending > bound:
        return ("outbox_over_bound",)
    if pending >= OUTBOX_WARN_FRACTION * bound:
        return ("outbox_near_bound",)
    return ()


def _software_version() -> str:
    try:
        return f"carewatch-gateway/{version('carewatch')}"
    except PackageNotFoundError:
        return "carewatch-gateway/unknown"
