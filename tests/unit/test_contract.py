"""The wire contract: what the gateway encodes, ingest parses back, and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from carewatch_contract import topics
from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    Ack,
    AckRejection,
    ContractError,
    DeviceTime,
    DeviceType,
    Reading,
    ReadingBatch,
    TimeSource,
    encode_ack,
    encode_reading_batch,
    parse_ack,
    parse_reading_batch,
    reading_to_dict,
)

NOW = datetime(2026, 11, 29, 7, 30, tzinfo=UTC)


def a_reading(**changes: object) -> Reading:
    fields: dict[str, object] = {
        "reading_id": new_uuid7(),
        "measurement_id": new_uuid7(),
        "seq": 1,
        "patient_id": "pt-0001",
        "device_id": "C0:FF:EE:00:01:01",
        "device_type": DeviceType.BLOOD_PRESSURE,
        "loinc": "8480-6",
        "unit": "mm[Hg]",
        "value": 138.0,
        "measured_at": NOW - timedelta(minutes=1),
        "time_source": TimeSource.DEVICE,
        "received_at": NOW,
        "characteristic": "2A35",
        "raw_hex": "1e8a00580078000000041114293b3c00012700",
        "device_time": DeviceTime(2026, 11, 29, 7, 29, 0),
    }
    fields.update(changes)
    return Reading(**fields)  # type: ignore[arg-type]


def message(*readings: dict[str, object], **envelope: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "gateway_id": "gw-1",
        "sent_at": NOW.isoformat(),
        "readings": list(readings),
    }
    body.update(envelope)
    return json.dumps(body).encode()


def test_batch_round_trips_exactly() -> None:
    readings = (a_reading(), a_reading(loinc="8462-4", value=88.0, seq=2))
    parsed = parse_reading_batch(encode_reading_batch(ReadingBatch("gw-1", NOW, readings)))
    assert parsed.gateway_id == "gw-1"
    assert parsed.readings == readings
    assert parsed.rejected == ()


def test_one_bad_reading_does_not_spoil_the_batch() -> None:
    good = reading_to_dict(a_reading())
    bad = reading_to_dict(a_reading(value=900.0))
    parsed = parse_reading_batch(message(good, bad))
    assert [r.reading_id for r in parsed.readings] == [good["reading_id"]]
    assert [(r.reading_id, r.reason) for r in parsed.rejected] == [
        (bad["reading_id"], "implausible_value")
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": 900}, "implausible_value"),
        ({"loinc": "59408-5", "unit": "%", "value": 140}, "implausible_value"),
        ({"unit": "kPa"}, "unit_mismatch"),
        ({"loinc": "1234-5"}, "unknown_metric"),
        ({"value": "138"}, "bad_field"),
        ({"value": True}, "bad_field"),
        ({"measured_at": "2026-11-29T07:30:00"}, "bad_time"),
        ({"reading_id": "not-a-uuid"}, "bad_field"),
        ({"raw": {"characteristic": "2A35", "hex": "zz"}}, "bad_field"),
        ({"device": {"id": "x", "type": "toaster"}}, "bad_field"),
        ({"patient_id": ""}, "bad_field"),
    ],
)
def test_readings_out_of_contract_are_rejected_with_a_reason(
    change: dict[str, object], reason: str
) -> None:
    item = reading_to_dict(a_reading())
    item.update(change)
    parsed = parse_reading_batch(message(item))
    assert parsed.readings == ()
    assert parsed.rejected[0].reason == reason


def test_nan_and_infinity_are_refused() -> None:
    item = reading_to_dict(a_reading())
    for value in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(item).replace('"value": 138.0', f'"value": {value}')
        parsed = parse_reading_batch(message(json.loads(raw)))
        assert parsed.rejected[0].reason == "not_finite"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"v": 2, "gateway_id": "gw-1"}', "unknown_version"),
        (b'{"v": true}', "unknown_version"),
        (
            b'{"v": 1, "gateway_id": "gw-1", "sent_at": "2026-11-29T07:30:00+00:00"}',
            "missing_field",
        ),
        (
            b'{"v": 1, "gateway_id": "gw-1", "sent_at": "2026-11-29T07:30:00+00:00",'
            b' "readings": []}',
            "bad_batch",
        ),
        (
            b'{"v": 1, "gateway_id": "gw/1", "sent_at": "2026-11-29T07:30:00+00:00",'
            b' "readings": [{}]}',
            "bad_field",
        ),
        (b"[" * 100_000, "bad_json"),
    ],
)
def test_unusable_envelopes_raise_contract_error(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_reading_batch(payload)
    assert caught.value.reason == reason


def test_the_same_reading_twice_in_a_message_counts_once() -> None:
    item = reading_to_dict(a_reading())
    assert len(parse_reading_batch(message(item, item)).readings) == 1


def test_ack_round_trips() -> None:
    ack = Ack("gw-1", (new_uuid7(),), (AckRejection(new_uuid7(), "implausible_value"),))
    assert parse_ack(encode_ack(ack)) == ack


def test_topics_carry_the_version_and_the_gateway() -> None:
    topic = topics.gateway_topic("gw-1", topics.READINGS)
    assert topic == "carewatch/v1/gateways/gw-1/readings"
    assert topics.gateway_id_from_topic(topic) == "gw-1"
    assert topics.gateway_id_from_topic("carewatch/v2/gateways/gw-1/readings") is None
    with pytest.raises(ValueError, match="not a valid topic level"):
        topics.gateway_topic("gw/+", topics.READINGS)


def test_uuid7_ids_are_unique_and_time_ordered() -> None:
    ids = [new_uuid7() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    prefixes = [i[:13] for i in ids]  # the 48-bit millisecond timestamp
    assert prefixes == sorted(prefixes)
