"""The gateway outbox on a real SQLite file: order, acks, resends, nothing dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    FollowUpKind,
    FollowUpRequest,
    InboxMessage,
    ReceiptState,
    encode_reading_batch_json,
    parse_follow_up_request,
    parse_reading_batch,
    parse_receipt,
)
from gateway_agent.outbox import HISTORY_LIMIT, Outbox
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


def test_readings_taken_since_the_link_came_back_go_before_the_backlog(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    backlog = outbox.add([a_reading() for _ in range(5)])
    link_back = time.time()
    live = outbox.add([a_reading()])
    first = outbox.take_due(limit=3, resend_after_s=30, live_since=link_back)
    assert [p.seq for p in first] == [live[0].seq, backlog[0].seq, backlog[1].seq]
    rest = outbox.take_due(limit=10, resend_after_s=30, live_since=link_back)
    assert [p.seq for p in rest] == [r.seq for r in backlog[2:]]  # the backlog in order


def test_flow_control_keeps_at_most_max_in_flight_unacknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    stored = outbox.add([a_reading() for _ in range(10)])
    assert len(outbox.take_due(limit=5, resend_after_s=30, max_in_flight=4)) == 4
    assert outbox.take_due(limit=5, resend_after_s=30, max_in_flight=4) == []
    outbox.acknowledge([r.reading_id for r in stored[:3]])
    assert [p.seq for p in outbox.take_due(limit=5, resend_after_s=30, max_in_flight=4)] == [
        5,
        6,
        7,
    ]
    # Unacknowledged for longer than resend_after_s: no longer counted, and due again.
    assert [p.seq for p in outbox.take_due(limit=2, resend_after_s=0, max_in_flight=4)] == [4, 5]


def test_a_message_is_kept_once_and_its_receipts_wait_for_ingests_ack(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    message = InboxMessage(new_uuid7(), NOW, "Dr Okafor", "Retake your BP tonight.", "pt-0001")
    assert outbox.store_inbox_message(message) is True
    assert outbox.store_inbox_message(message) is False  # redelivered: nothing new queued
    (delivered,) = outbox.take_outgoing_due(resend_after_s=30)
    receipt = parse_receipt(delivered.body.encode())
    assert (delivered.topic, receipt.message_id, receipt.state) == (
        "receipts",
        message.message_id,
        ReceiptState.DELIVERED,
    )
    assert receipt.receipt_id == delivered.item_id
    assert outbox.take_outgoing_due(resend_after_s=30) == []  # in flight
    assert outbox.mark_read(message.message_id) is True
    assert outbox.mark_read(message.message_id) is False
    outbox.close()

    reopened = Outbox(path)  # a restart: the message, its read time and the receipts stay
    (kept,) = reopened.inbox_messages()
    assert kept.message == message
    assert kept.read_at is not None
    reopened.mark_all_due()
    states = [
        parse_receipt(i.body.encode()).state for i in reopened.take_outgoing_due(resend_after_s=30)
    ]
    assert states == [ReceiptState.DELIVERED, ReceiptState.READ]
    reopened.acknowledge([delivered.item_id])
    reopened.mark_all_due()
    assert len(reopened.take_outgoing_due(resend_after_s=30)) == 1


def test_a_follow_up_request_is_confirmed_by_ingests_ack(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    request = FollowUpRequest(
        new_uuid7(), "gw-1", "pt-0001", FollowUpKind.CALL_BACK, NOW, "after 5"
    )
    outbox.request_follow_up(request)
    (item,) = outbox.take_outgoing_due(resend_after_s=30)
    assert (item.item_id, item.topic) == (request.request_id, "requests")
    assert parse_follow_up_request(item.body.encode()) == request
    assert [(f.request, f.confirmed_at) for f in outbox.follow_ups("pt-0001")] == [(request, None)]
    assert outbox.follow_ups("pt-0002") == []
    outbox.acknowledge([request.request_id])
    (confirmed,) = outbox.follow_ups()
    assert confirmed.confirmed_at is not None
    outbox.mark_all_due()
    assert outbox.take_outgoing_due(resend_after_s=30) == []


def test_recent_readings_outlive_their_ack_and_are_bounded(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    mine = outbox.add([a_reading(value=float(100 + i)) for i in range(3)])
    outbox.add([a_reading(patient_id="pt-0002")])
    outbox.acknowledge([r.reading_id for r in mine])
    assert [r.value for r in outbox.recent_readings("pt-0001")] == [102.0, 101.0, 100.0]
    assert len(outbox.recent_readings()) == 4
    outbox.add([a_reading() for _ in range(HISTORY_LIMIT)])
    assert len(outbox.recent_readings(limit=HISTORY_LIMIT + 10)) == HISTORY_LIMIT
    assert 100.0 not in [r.value for r in outbox.recent_readings("pt-0001", limit=1000)]
