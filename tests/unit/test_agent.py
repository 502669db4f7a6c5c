"""The gateway's core path on real device bytes: decode, clinical time, ids, outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from carewatch_contract.messages import DeviceType, TimeSource
from gateway_agent.agent import GatewayAgent, build_readings, clinical_time
from gateway_agent.devices import EnrolledDevice
from gateway_agent.gatt.date_time import DateTimeFields
from gateway_agent.gatt.encode import blood_pressure_measurement
from gateway_agent.outbox import Outbox

LONDON = ZoneInfo("Europe/London")
RECEIVED = datetime(2026, 11, 29, 7, 31, 9, tzinfo=UTC)
CUFF = EnrolledDevice("C0:FF:EE:00:01:01", DeviceType.BLOOD_PRESSURE, "pt-0001")
# A real-device vector (Nordic's test, ../shared/data/gatt_vectors.json): 138/88, MAP 120,
# pulse 60, device year "not known".
NORDIC_BP = bytes.fromhex("1e8a00580078000000041114293b3c00012700")


def when(fields: DateTimeFields | None, *, stored: bool = False) -> tuple[datetime, TimeSource]:
    result = clinical_time(
        fields, received_at=RECEIVED, tz=UTC, max_drift_s=600, stored_record=stored
    )
    return result.measured_at, result.source


def test_a_device_clock_within_the_drift_is_trusted() -> None:
    device = DateTimeFields(2026, 11, 29, 7, 25, 0)
    assert when(device) == (datetime(2026, 11, 29, 7, 25, tzinfo=UTC), TimeSource.DEVICE)


@pytest.mark.parametrize(
    "device",
    [
        None,  # no timestamp sent
        DateTimeFields(0, 4, 17, 20, 41, 59),  # year not known (Nordic's vector)
        DateTimeFields(2026, 11, 29, 6, 0, 0),  # 91 minutes off
        DateTimeFields(2026, 13, 40, 0, 0, 0),  # not a date
    ],
)
def test_otherwise_the_gateway_time_is_used_and_marked(device: DateTimeFields | None) -> None:
    assert when(device) == (RECEIVED, TimeSource.GATEWAY)


def test_a_stored_record_keeps_its_own_old_time_but_not_a_future_one() -> None:
    last_week = DateTimeFields(2026, 11, 22, 7, 30, 0)
    assert when(last_week, stored=True) == (
        datetime(2026, 11, 22, 7, 30, tzinfo=UTC),
        TimeSource.DEVICE,
    )
    next_week = DateTimeFields(2026, 12, 6, 7, 30, 0)
    assert when(next_week, stored=True) == (RECEIVED, TimeSource.GATEWAY)


def test_a_blood_pressure_value_becomes_one_reading_per_metric() -> None:
    readings = build_readings(
        CUFF, "2A35", NORDIC_BP, received_at=RECEIVED, tz=LONDON, max_drift_s=600
    )
    assert [(r.loinc, r.unit, r.value) for r in readings] == [
        ("8480-6", "mm[Hg]", 138.0),
        ("8462-4", "mm[Hg]", 88.0),
        ("8478-0", "mm[Hg]", 120.0),
        ("8867-4", "/min", 60.0),
    ]
    assert len({r.measurement_id for r in readings}) == 1
    assert len({r.reading_id for r in readings}) == 4
    assert {r.raw_hex for r in readings} == {NORDIC_BP.hex()}
    assert {r.time_source for r in readings} == {TimeSource.GATEWAY}  # year 0


def test_a_missing_mean_arterial_pressure_is_absent_not_2047() -> None:
    payload = blood_pressure_measurement(systolic=120, diastolic=80)  # MAP sent as NaN
    readings = build_readings(CUFF, "2A35", payload, received_at=RECEIVED, tz=UTC, max_drift_s=600)
    assert [r.loinc for r in readings] == ["8480-6", "8462-4"]


def test_a_stored_record_replayed_is_the_same_reading_a_live_one_is_not() -> None:
    payload = blood_pressure_measurement(
        systolic=150, diastolic=95, timestamp=datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    )

    def ids(stored: bool) -> list[str]:
        return [
            r.reading_id
            for r in build_readings(
                CUFF,
                "2A35",
                payload,
                received_at=RECEIVED,
                tz=UTC,
                max_drift_s=600,
                stored_record=stored,
            )
        ]

    assert ids(stored=True) == ids(stored=True)
    assert set(ids(stored=False)).isdisjoint(ids(stored=False))


def test_replaying_a_pending_stored_record_adds_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox, tz=UTC)
    payload = blood_pressure_measurement(
        systolic=150, diastolic=95, timestamp=datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    )
    first = agent.accept(CUFF, "2A35", payload, received_at=RECEIVED, stored_record=True)
    again = agent.accept(CUFF, "2A35", payload, received_at=RECEIVED, stored_record=True)
    assert len(first) == 2 and again == []
    assert outbox.pending_count() == 2


def test_bytes_that_do_not_decode_are_kept_and_never_published(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox, tz=UTC)
    assert agent.accept(CUFF, "2A35", bytes.fromhex("010203040506")) == []
    assert outbox.pending_count() == 0
    [(device_id, characteristic, hex_bytes, error)] = outbox.undecodable()
    assert (device_id, characteristic, hex_bytes) == (CUFF.device_id, "2A35", "010203040506")
    assert "7" in error  # says how many bytes it needed


def test_live_readings_reach_the_outbox_numbered_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    woken: list[bool] = []
    agent = GatewayAgent(outbox, tz=UTC, on_new_readings=lambda: woken.append(True))
    now = datetime.now(UTC)
    payload = blood_pressure_measurement(systolic=121, diastolic=79, timestamp=now, pulse_rate=64)
    stored = agent.accept(CUFF, "2A35", payload, received_at=now + timedelta(seconds=2))
    assert [r.seq for r in stored] == [1, 2, 3]
    assert {r.time_source for r in stored} == {TimeSource.DEVICE}
    assert woken == [True]
    assert [s.device_id for s in agent.device_statuses()] == [CUFF.device_id]
