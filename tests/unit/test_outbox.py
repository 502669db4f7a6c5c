"""The gateway outbox on a real SQLite file: order, acks, resends, nothing dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carewatch_contract.messages import encode_reading_batch_json, parse_reading_batch
from gateway_agent.outbox import Outbox
from tests.unit.test_contract import NOW, a_reading


def test_readings_are_numbered_in_order_and_numbers_are_never_reused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    first = outbox.add([a_reading(), a_reading()])
    assert [r.seq for r in first] == [1, 2]
    outbox.acknowledge([r.reading_id for r in first])
    again = outbox.add([a_reading()])
    assert [r.seq for r in again] == [3]


def test_a_reading_leaves_only_when_acked(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    stored = outbox.add([a_reading(), a_reading(), a_reading()])
    due = outbox.take_due(limit=10, resend_after_s=30)
    assert [p.seq for p in due] == [1, 2, 3]
    assert outbox.take_due(limit=10, resend_after_s=30) == []  # in flight, not yet due again
    outbox.acknowledge([stored[0].reading_id], [(stored[1].reading_id, "implausible_value")])
    assert outbox.pending_count() == 1
    assert outbox.rejected() == [(stored[1].reading_id, "implausible_value")]
    outbox.mark_all_due()  # a reconnect
    assert [p.reading_id for p in outbox.take_due(limit=10, resend_after_s=30)] == [
        stored[2].reading_id
    ]


def test_unacked_readings_are_resent_after_the_timeout(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.add([a_reading()])
    assert len(outbox.take_due(limit=10, resend_after_s=30)) == 1
    assert len(outbox.take_due(limit=10, resend_after_s=0)) == 1


def test_outbox_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    stored = outbox.add([a_reading(), a_reading()])
    outbox.close()
    reopened = Outbox(path)
    assert reopened.pending_count() == 2
    assert reopened.integrity_check() == "ok"
    assert [r.seq for r in reopened.add([a_reading()])] == [3]
    due = reopened.take_due(limit=10, resend_after_s=30)
    assert [p.reading_id for p in due][:2] == [r.reading_id for r in stored]


def test_pending_bodies_form_a_valid_message(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    stored = outbox.add([a_reading(), a_reading(loinc="8462-4", value=88.0)])
    due = outbox.take_due(limit=10, resend_after_s=30)
    parsed = parse_reading_batch(encode_reading_batch_json("gw-1", NOW, [p.body for p in due]))
    assert parsed.readings == tuple(stored)
    assert json.loads(due[0].body)["seq"] == 1


def test_undecodable_bytes_are_kept_for_inspection(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.record_undecodable(
        device_id="C0:FF:EE:00:01:01", characteristic="2A35", payload=b"\x01\x02", error="short"
    )
    assert outbox.undecodable() == [("C0:FF:EE:00:01:01", "2A35", "0102", "short")]
    assert outbox.pending_count() == 0


def test_progress_is_remembered_with_the_readings_it_belongs_to(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    outbox.add([a_reading()], remember=("glucose_meter_last_record", 41))
    outbox.add([], remember=("glucose_meter_last_record", 42))  # a record with no reading
    outbox.close()
    reopened = Outbox(path)
    assert reopened.recall("glucose_meter_last_record") == 42
    assert reopened.pending_count() == 1
    with pytest.raises(ValueError, match="next_seq"):
        reopened.remember("next_seq", 1)
