"""MQTT topics of the wire contract, version 1.

All topics live under ``carewatch/v1/gateways/<gateway_id>/``. A gateway publishes only under
its own id (the broker's ACL enforces it), and ingest checks that the id in the topic matches
the id in the payload.

==============  ===================  =====  =========  ============================================
topic           direction            QoS    retained   payload
==============  ===================  =====  =========  ============================================
``readings``    gateway -> server    1      no         :class:`ReadingBatch`
``acks``        server -> gateway    1      no         :class:`Ack` (sent after the commit)
``status``      gateway -> server    1      yes        :class:`GatewayStatus` (also the last will)
``inbox``       server -> gateway    1      no         :class:`InboxMessage`
``receipts``    gateway -> server    1      no         :class:`InboxReceipt`
``requests``    gateway -> server    1      no         :class:`FollowUpRequest`
==============  ===================  =====  =========  ============================================

Receipts and requests are kept by the gateway until an ack names their ``receipt_id`` /
``request_id`` in ``committed``, exactly as readings are.
"""

from __future__ import annotations

import re

PREFIX = "carewatch/v1/gateways"

READINGS = "readings"
ACKS = "acks"
STATUS = "status"
INBOX = "inbox"
RECEIPTS = "receipts"
REQUESTS = "requests"

#: A gateway id is also a topic level and an MQTT user name, so it is kept to a safe alphabet.
GATEWAY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def gateway_topic(gateway_id: str, kind: str) -> str:
    """The topic of one kind (``readings``, ``acks``, ...) for one gateway."""
    if not GATEWAY_ID_PATTERN.fullmatch(gateway_id):
        raise ValueError(f"gateway id {gateway_id!r} is not a valid topic level")
    return f"{PREFIX}/{gateway_id}/{kind}"


def all_gateways(kind: str) -> str:
    """The subscription filter for one kind of topic from every gateway."""
    return f"{PREFIX}/+/{kind}"


def gateway_id_from_topic(topic: str) -> str | None:
    """The gateway id of a contract topic, or None when the topic is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
        return None
    return parts[3] if GATEWAY_ID_PATTERN.fullmatch(parts[3]) else None
