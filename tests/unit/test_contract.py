"""The wire contract: what the gateway encodes, ingest parses back, and what it refuses."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch_contract import topics
from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    Ack,
    AckRejection,
    ContractError,
    DeviceStatus,
    DeviceTime,
    DeviceType,
    FollowUpKind,
    FollowUpRequest,
    GatewayState,
    GatewayStatus,
    InboxMessage,
    InboxReceipt,
    Reading,
    ReadingBatch,
    ReceiptState,
    TimeSource,
    encode_ack,
    encode_follow_up_request,
    encode_inbox_message,
    encode_reading_batch,
    encode_receipt,
    encode_status,
    parse_ack,
    parse_follow_up_request,
    parse_inbox_message,
    parse_reading_batch,
    parse_receipt,
    parse_status,
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


@pytest.mark.parametrize("patient_id", [None, "pt-1"])
def test_inbox_message_round_trips_with_or_without_a_patient(patient_id: str | None) -> None:
    message = InboxMessage(new_uuid7(), NOW, "Dr Okafor", "Please retake your BP.", patient_id)
    assert parse_inbox_message(encode_inbox_message(message)) == message


@pytest.mark.parametrize("receipt_id", [None, new_uuid7()])
def test_receipt_round_trips_with_or_without_its_id(receipt_id: str | None) -> None:
    receipt = InboxReceipt(new_uuid7(), ReceiptState.READ, NOW, receipt_id)
    assert parse_receipt(encode_receipt(receipt)) == receipt


def test_follow_up_request_round_trips() -> None:
    request = FollowUpRequest(
        new_uuid7(), "gw-1", "pt-1", FollowUpKind.CALL_BACK, NOW, "after 5 pm", new_uuid7()
    )
    assert parse_follow_up_request(encode_follow_up_request(request)) == request
    bare = FollowUpRequest(new_uuid7(), "gw-1", "pt-1", FollowUpKind.CALL_BACK, NOW)
    assert parse_follow_up_request(encode_follow_up_request(bare)) == bare


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "visit_me"}, "bad_field"),
        ({"request_id": "not-a-uuid"}, "bad_field"),
        ({"note": "x" * 501}, "bad_field"),
        ({"patient_id": ""}, "bad_field"),
        ({"at": "2026-11-29T07:30:00"}, "bad_time"),
    ],
)
def test_a_malformed_follow_up_request_is_refused(change: dict[str, object], reason: str) -> None:
    request = FollowUpRequest(new_uuid7(), "gw-1", "pt-1", FollowUpKind.CALL_BACK, NOW)
    body = json.loads(encode_follow_up_request(request)) | change
    with pytest.raises(ContractError) as refused:
        parse_follow_up_request(json.dumps(body).encode())
    assert refused.value.reason == reason


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


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
FIELD_NAMES = st.sampled_from(
    [
        "v",
        "gateway_id",
        "sent_at",
        "readings",
        "reading_id",
        "measurement_id",
        "seq",
        "patient_id",
        "device",
        "id",
        "type",
        "loinc",
        "unit",
        "value",
        "measured_at",
        "time_source",
        "received_at",
        "device_time",
        "raw",
        "hex",
        "characteristic",
        "state",
        "devices",
        "software",
        "outbox_pending",
        "at",
        "committed",
        "rejected",
        "reason",
        "message_id",
        "sender",
        "text",
        "battery_percent",
        "last_seen",
        "receipt_id",
        "request_id",
        "kind",
        "note",
        "in_reply_to",
    ]
)


def mutated_reading() -> st.SearchStrategy[dict[str, object]]:
    """A valid reading with a few fields replaced by arbitrary JSON values."""
    return st.builds(
        lambda changes: {**reading_to_dict(a_reading()), **changes},
        st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=3),
    )


PARSERS = [
    parse_reading_batch,
    parse_ack,
    parse_status,
    parse_inbox_message,
    parse_receipt,
    parse_follow_up_request,
]


@settings(max_examples=300, deadline=None)
@given(
    envelope=st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6),
    readings=st.lists(mutated_reading(), max_size=3),
    parser_index=st.integers(0, len(PARSERS) - 1),
)
def test_parsers_raise_nothing_but_contract_error(
    envelope: dict[str, object], readings: list[dict[str, object]], parser_index: int
) -> None:
    body = {"v": 1, "gateway_id": "gw-1", "sent_at": NOW.isoformat(), "readings": readings}
    body.update(envelope)
    try:
        payload = json.dumps(body).encode()
    except (ValueError, UnicodeEncodeError):
        return
    with contextlib.suppress(ContractError):  # any other exception fails the test
        PARSERS[parser_index](payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": 1, "gateway_id": "gw-1", "sent_at": "2026-11-29T07:30:00+00:00", "readings": ['
        + b'{"value": '
        + b"9" * 5000
        + b"}]}",
        b'{"v": 1, "gateway_id": "gw-1", "state": "online", "devices": 5}',
        b'{"v": 1, "gateway_id": "gw-1", "state": "online", "software": "\\ud800"}',
        b'{"v": 1, "gateway_id": "gw-1", "state": "online", "software": "a\\u0000b"}',
    ],
)
def test_hostile_values_found_in_review_are_contract_errors(payload: bytes) -> None:
    parser = parse_status if b'"state"' in payload else parse_reading_batch
    with pytest.raises(ContractError):
        parser(payload)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": 10**400}, "not_finite"),
        ({"measured_at": "9999-12-31T23:59:59-15:00"}, "bad_time"),
        ({"measured_at": "2026-11-29T07:30:00+20:00"}, "bad_time"),
        ({"measured_at": "1999-12-31T23:59:59+00:00"}, "bad_time"),
        ({"measured_at": "2026-11-29T09:30:00+00:00"}, "bad_time"),  # 2 h after received
        ({"patient_id": "pt\x00"}, "bad_field"),
    ],
)
def test_times_and_values_the_database_could_not_hold_are_rejected(
    change: dict[str, object], reason: str
) -> None:
    item = reading_to_dict(a_reading())
    item.update(change)
    parsed = parse_reading_batch(message(item))
    assert [r.reason for r in parsed.rejected] == [reason]


def test_a_gateway_id_with_a_trailing_newline_is_refused() -> None:
    assert topics.gateway_id_from_topic("carewatch/v1/gateways/gw-1\n/readings") is None


def test_status_round_trips_with_its_warnings() -> None:
    status = GatewayStatus(
        "gw-1",
        GatewayState.ONLINE,
        at=NOW,
        software="carewatch-gateway/0.1.0",
        outbox_pending=812_000,
        devices=(DeviceStatus("C0:FF:EE:00:01:01", DeviceType.BLOOD_PRESSURE, NOW, 81),),
        warnings=("outbox_near_bound",),
    )
    assert parse_status(encode_status(status)) == status


def test_outbox_warnings_start_near_the_bound_and_nothing_is_dropped_past_it() -> None:
    from gateway_agent.uplink import outbox_warnings

    assert outbox_warnings(799, 1000) == ()
    assert outbox_warnings(800, 1000) == ("outbox_near_bound",)
    assert outbox_warnings(1001, 1000) == ("outbox_over_bound",)
