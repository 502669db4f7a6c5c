"""Sends the care team's stored messages: to the patient's gateway inbox over MQTT (QoS 1,
marked sent once the broker acknowledges it) and by email through SMTP when asked.

A thread of its own with its own MQTT connection, polling the messages not yet sent (an
index covers exactly those) every ``interval_s``, or at once when poked after a new message.
Several ingest workers may run one each: a message is claimed with ``FOR UPDATE SKIP LOCKED``.
A failure is recorded on the message (the workspace shows it) and retried on the next pass,
up to :data:`ingest.messages.MAX_ATTEMPTS`. No message text is ever logged.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import psycopg

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint, make_client, start_connecting
from carewatch_contract.messages import InboxMessage, encode_inbox_message
from ingest import messages
from ingest.settings import IngestSettings

log = logging.getLogger(__name__)

#: How long the broker may take to acknowledge one inbox message.
PUBLISH_TIMEOUT_S = 5.0


class MessageDispatcher:
    def __init__(self, settings: IngestSettings, *, interval_s: float = 1.0) -> None:
        self._settings = settings
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None  # kept between passes
        self._thread = threading.Thread(target=self._run, name="message-dispatch", daemon=True)
        self._endpoint = BrokerEndpoint.from_url(settings.mqtt_url)
        self._client = make_client(
            self._endpoint,
            client_id=f"{settings.mqtt_client_id}-dispatch",
            protocol=settings.mqtt_protocol,
            username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )

    def start(self) -> None:
        start_connecting(self._client, self._endpoint, protocol=self._settings.mqtt_protocol)
        self._client.loop_start()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self.close()

    def close(self) -> None:
        """Close the database connection kept between passes (also of a dispatcher that was
        only ever asked for :meth:`send_pending`)."""
        if self._conn is not None:
            self._conn.close()

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def poke(self) -> None:
        """A message was just stored: look now rather than at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_pending()
            except psycopg.Error as exc:
                log.warning("message dispatch: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("message dispatch failed; retrying at the next pass")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def send_pending(self) -> int:
        """One pass over both channels; how many messages went out."""
        if self._conn is None or self._conn.closed:
            # Autocommit: between passes the connection holds no transaction (the rules'
            # transaction-id horizon is server-wide); each message has its own.
            self._conn = psycopg.connect(self._settings.database_url, autocommit=True)
        sent = 0
        try:
            if self._client.is_connected():
                sent += self._pass(self._conn, "gateway", self._publish)
            if self._settings.smtp_host:
                sent += self._pass(self._conn, "email", self._email)
        except psycopg.OperationalError:
            self._conn.close()  # a new one at the next pass
            raise
        return sent

    def _pass(self, conn: psycopg.Connection[Any], channel: str, send: Any) -> int:
        """Each waiting message in a transaction of its own (claimed, sent, recorded), so that
        one that fails, however it fails, never undoes the record of those sent before it."""
        sent = 0
        while not self._stop.is_set():
            with conn.transaction():
                claimed = messages.claim_unsent(conn, channel=channel, limit=1)
                if not claimed:
                    return sent
                message = claimed[0]
                try:
                    error = send(message)
                except Exception as exc:  # recorded on the message, retried later
                    error = f"could not be sent ({type(exc).__name__})"
                messages.mark_sent(conn, message.message_id, channel=channel, error=error)
            if error is None:
                sent += 1
            else:
                log.warning("message %s not sent by %s: %s", message.message_id, channel, error)
        return sent

    def _publish(self, message: messages.OutgoingMessage) -> str | None:
        assert message.gateway_id is not None
        payload = encode_inbox_message(
            InboxMessage(
                message_id=message.message_id,
                sent_at=message.created_at.astimezone(UTC),
                sender=message.sender_name,
                text=message.body,
                patient_id=message.patient_id,
            )
        )
        info = self._client.publish(
            topics.gateway_topic(message.gateway_id, topics.INBOX), payload, qos=1
        )
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # not connected, or the queue refused it
            return f"the broker did not take it ({exc})"
        if not info.is_published():
            return f"the broker did not acknowledge it within {PUBLISH_TIMEOUT_S:g} s"
        return None

    def _email(self, message: messages.OutgoingMessage) -> str | None:
        settings = self._settings
        assert message.email_to is not None and settings.smtp_host
        mail = EmailMessage()
        mail["From"] = settings.smtp_from
        mail["To"] = message.email_to
        mail["Subject"] = "A message from your care team"
        mail["Date"] = datetime.now(UTC)
        mail.set_content(
            f"{message.body}\n\n{message.sender_name}, your CareWatch care team\n"
            "Please do not reply to this email; use your CareWatch box or call your care team."
        )
        try:
            with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.smtp_username and settings.smtp_password:
                    smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            return f"the mail server refused or could not be reached ({type(exc).__name__})"
        return None
