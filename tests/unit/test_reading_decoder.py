"""The hot-path decoder gives exactly what the reference parser gives, and is used for clean
messages (otherwise the comparison would hold trivially)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch_contract import reading_decoder
from carewatch_contract.messages import (
    ContractError,
    DeviceTime,
    DeviceType,
    ParsedBatch,
    TimeSource,
    parse_reading_batch,
    reading_to_dict,
)
from carewatch_contract.reading_decoder import decode_reading_batch
from tests.unit.test_contract import a_reading, message

# Mutations: a field of a reading (or of the envelope) set to a value that is valid, odd but
# valid, or wrong in one of the ways the contract refuses.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "x" * 65,
            "pt-0002",
            "tab\there",
            "\x00",
            "8480-6",
            "8867-4",
            "mm[Hg]",
            "kg",
            "%",
            "device",
            "gateway",
            "heart_rate",
            "2026-11-29T07:29:00+00:00",
            "2026-11-29T07:29:00Z",
            "2026-11-29T07:29:00",
            "2026-11-29T07:29:00+15:00",
            "1999-12-31T23:59:59+00:00",
            "2026-11-29 07:29:00.123456-05:00",
            "2027-01-01T00:00:00+00:00",
            "0190e1a2-7b3c-7d4e-8f50-61728394a5b6",
            "0190E1A2-7B3C-7D4E-8F50-61728394A5B6",
            "{0190e1a2-7b3c-7d4e-8f50-61728394a5b6}",
            "0190e1a27b3c7d4e8f5061728394a5b6",
            "AABBCC",
            "aa bb cc",
            "abc",
            "zz",
        ]
    ),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["id", "type", "hex", "year"]), st.integers(), max_size=2),
)
READING_FIELDS = [
    "reading_id",
    "measurement_id",
    "seq",
    "patient_id",
    "device",
    "loinc",
    "unit",
    "value",
    "measured_at",
    "time_source",
    "received_at",
    "device_time",
    "raw",
]
NESTED_FIELDS = {
    "device": ["id", "type"],
    "raw": ["characteristic", "hex"],
    "device_time": ["year", "month", "day", "hours", "minutes", "seconds"],
}


def reading_dict(**changes: Any) -> dict[str, Any]:
    return reading_to_dict(a_reading(**changes))


def outcome(parse: Any, payload: bytes) -> ParsedBatch | tuple[str, str]:
    try:
        return parse(payload)
    except ContractError as exc:
        return (exc.reason, exc.detail)


def assert_same(payload: bytes) -> None:
    assert outcome(decode_reading_batch, payload) == outcome(parse_reading_batch, payload)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    readings = [
        reading_dict(value=draw(st.sampled_from([138.0, 20.0, 300.0])), seq=i)
        for i in range(draw(st.integers(1, 4)))
    ]
    body: dict[str, Any] = {
        "v": 1,
        "gateway_id": "gw-1",
        "sent_at": "2026-11-29T07:30:00+00:00",
        "readings": readings,
    }
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["envelope", "reading", "nested", "drop"]))
        if where == "envelope":
            body[draw(st.sampled_from(["v", "gateway_id", "sent_at", "readings"]))] = draw(
                ODD_VALUES
            )
        elif isinstance(body["readings"], list) and body["readings"]:
            target = draw(st.sampled_from(body["readings"]))
            if not isinstance(target, dict):
                continue
            if where == "reading":
                target[draw(st.sampled_from(READING_FIELDS))] = draw(ODD_VALUES)
            elif where == "drop":
                target.pop(draw(st.sampled_from(READING_FIELDS)), None)
            else:
                name = draw(st.sampled_from(sorted(NESTED_FIELDS)))
                if isinstance(target.get(name), dict):
                    target[name][draw(st.sampled_from(NESTED_FIELDS[name]))] = draw(ODD_VALUES)
    if draw(st.booleans()) and isinstance(body["readings"], list) and body["readings"]:
        body["readings"].append(body["readings"][0])  # the same reading twice
    encoded = json.dumps(body).encode()
    if draw(st.integers(0, 9)) == 0:  # a byte-level change
        at = draw(st.integers(0, len(encoded) - 1))
        encoded = encoded[:at] + bytes([draw(st.integers(0, 255))]) + encoded[at + 1 :]
    return encoded


@settings(max_examples=400, deadline=None)
@given(mutated_messages())
def test_generated_and_mutated_messages_parse_the_same_both_ways(payload: bytes) -> None:
    assert_same(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b"null",
        b"\xef\xbb\xbf{}",
        b'{"v":1}',
        b'{"v":1.0,"gateway_id":"gw-1","sent_at":"2026-11-29T07:30:00+00:00","readings":[]}',
        message(reading_dict(), v=True),
        message(reading_dict(), v=2),
        message(reading_dict(value=float("nan"))),
        message(reading_dict(), gateway_id="gw 1"),
        message(*[reading_dict(seq=i) for i in range(501)]),
        message(reading_dict()).replace(b'"seq": 1', b'"seq": 1, "seq": 2'),
        message(reading_dict()).replace(b'"value": 138.0', b'"value": 1e999'),
        message(reading_dict()).replace(b'"value": 138.0', b'"value": NaN'),
        message(reading_dict()).replace(b'"value": 138.0', b'"value": 138'),
        message(reading_dict()).replace(b'"seq": 1', b'"seq": 1.0'),
        message(reading_dict()).replace(b'"pt-0001"', b'"pt-\\ud800"'),
        message(reading_dict()).replace(b'"device_time"', b'"\x80evice_time"'),  # bad UTF-8
        message(reading_dict()).replace(b'"pt-0001"', '"pt-é"'.encode()),
        message(reading_dict(raw_hex="AABB")),
        message(reading_dict(seq=2**63 - 1)),
        message(reading_dict(seq=2**63)),
        message(reading_dict(seq=2**64 - 1)),
        message(reading_dict(seq=-1)),
        message(reading_dict(device_time=None)),
        message(reading_dict(device_time=DeviceTime(0, 0, 0, 0, 0, 0))),
        message(reading_dict(time_source=TimeSource.GATEWAY)),
        message(reading_dict(device_type=DeviceType.PULSE_OXIMETER)),
    ],
)
def test_edge_cases_parse_the_same_both_ways(payload: bytes) -> None:
    assert_same(payload)


def test_clean_messages_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def reference_must_not_be_needed(payload: bytes) -> ParsedBatch:
        raise AssertionError("a clean message fell back to the reference parser")

    twice = reading_dict()
    payloads = [
        message(*[reading_dict(seq=i, value=120.0 + i) for i in range(10)]),
        message(reading_dict(device_time=None, time_source=TimeSource.GATEWAY)),
        message(twice, twice),  # one reading twice: counted once, still clean
    ]
    expected = [parse_reading_batch(p) for p in payloads]
    monkeypatch.setattr(reading_decoder, "parse_reading_batch", reference_must_not_be_needed)
    assert [decode_reading_batch(p) for p in payloads] == expected
    assert [len(batch.readings) for batch in expected] == [10, 1, 1]


def test_a_bad_reading_is_explained_by_the_reference_parser() -> None:
    payload = message(reading_dict(seq=1), reading_dict(seq=2, value=900.0))
    parsed = decode_reading_batch(payload)
    assert [r.seq for r in parsed.readings] == [1]
    assert [(r.reason, r.detail.split(":")[0]) for r in parsed.rejected] == [
        ("implausible_value", "readings[1]")
    ]
