"""Bad input on a real broker and PostgreSQL: every kind goes to the quarantine with its reason
and raw payload, is counted in /metrics, never enters the readings, and ingest stays up; then
10,000 hostile payloads."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from functools import partial

import psycopg
import pytest

from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import ReadingBatch, encode_reading_batch, reading_to_dict
from ingest.consumer import ReadingConsumer
from ingest.counters import IngestCounters
from tests.conftest import BrokerInfo
from tests.integration.test_ingest import Gateway, count, quarantined, wait_until
from tests.unit.test_contract import NOW, a_reading

pytestmark = [pytest.mark.db, pytest.mark.broker]


def message(gateway_id: str, **reading_changes: object) -> dict[str, object]:
    """A one-reading message as a JSON-ready dict."""
    reading = reading_to_dict(a_reading(**reading_changes))
    return {"v": 1, "gateway_id": gateway_id, "sent_at": NOW.isoformat(), "readings": [reading]}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def gateway(broker: BrokerInfo, home: tuple[str, str]) -> Iterator[Gateway]:
    peer = Gateway(broker, home[0])
    yield peer
    peer.close()


def bad_payloads(gateway_id: str, patient_id: str) -> dict[str, tuple[bytes, str | None]]:
    """reason -> (payload, the gateway it is published as: None = the home's)."""

    def reading(**changes: object) -> bytes:
        return dumps(message(gateway_id, **{"patient_id": patient_id, **changes}))

    nan = reading().replace(b'"value": 138.0', b'"value": NaN')
    assert b"NaN" in nan
    huge = dumps({**message(gateway_id, patient_id=patient_id), "padding": "x" * (300 * 1024)})
    return {
        "bad_json": (b'{"v": 1, "readings": [', None),
        "unknown_version": (dumps({**message(gateway_id, patient_id=patient_id), "v": 7}), None),
        "unknown_gateway": (
            dumps(message(f"stranger-{gateway_id}", patient_id=patient_id)),
            f"stranger-{gateway_id}",
        ),
        "patient_not_bound": (reading(patient_id="pt-somebody-else"), None),
        "unit_mismatch": (reading(unit="kg"), None),
        "implausible_value": (reading(value=900.0), None),
        "not_finite": (nan, None),
        "too_large": (huge, None),
    }


def test_each_kind_of_bad_input_is_quarantined_with_its_reason_and_counted(
    db: psycopg.Connection,
    home: tuple[str, str],
    gateway: Gateway,
    consumer: tuple[ReadingConsumer, IngestCounters],
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    worker, counters = consumer
    cases = bad_payloads(gateway_id, patient_id)
    spo2 = dumps(message(gateway_id, patient_id=patient_id, loinc="59408-5", unit="%", value=140.0))
    for payload, as_gateway in cases.values():
        gateway.publish(payload, as_gateway)
    gateway.publish(spo2)
    good = a_reading(patient_id=patient_id)
    gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (good,))))

    expected = len(cases) + 1
    assert wait_until(lambda: len(quarantined(db, "reason", unique_id)) >= expected, 30), (
        quarantined(db, "reason, detail", unique_id)
    )
    assert wait_until(
        lambda: (
            count(db, "SELECT count(*) FROM readings WHERE reading_id = %s", good.reading_id) == 1
        )
    ), "a good reading after the bad ones is stored: ingest kept running"
    rows = quarantined(db, "reason, payload_size, truncated, length(payload)", unique_id)
    reasons = sorted(r[0] for r in rows)
    assert reasons == sorted([*cases, "implausible_value"])
    too_large = next(r for r in rows if r[0] == "too_large")
    assert too_large[1] > 256 * 1024 and too_large[2] is True and too_large[3] < too_large[1]
    # The raw payload is kept for inspection: the bad JSON byte for byte.
    kept = db.execute(
        "SELECT payload FROM quarantine WHERE reason = 'bad_json' AND gateway_id = %s",
        (gateway_id,),
    ).fetchone()
    assert kept is not None and bytes(kept[0]) == cases["bad_json"][0]
    assert count(db, "SELECT count(*) FROM readings WHERE patient_id = %s", patient_id) == 1
    metrics = counters.render()
    for reason in cases:
        line = next(
            (m for m in metrics.splitlines() if f'quarantined_total{{reason="{reason}"}}' in m),
            None,
        )
        assert line is not None, f"{reason} is not counted in /metrics"
        assert int(line.rsplit(" ", 1)[1]) >= 1
    assert worker.connected and worker.writer_alive


def hostile(gateway_id: str, patient_id: str, rng: random.Random) -> bytes:
    """One payload a broken or malicious gateway might send; never a valid reading."""
    base = message(
        gateway_id, patient_id=patient_id, reading_id=new_uuid7(), measurement_id=new_uuid7()
    )
    item: dict[str, object] = base["readings"][0]  # type: ignore[index]
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        text = json.dumps(base)
        return text[: rng.randrange(1, len(text) - 1)].encode()
    if kind == 2:
        item["value"] = rng.choice([1e308 * 10, -1.0, 10**400, "138", None, [], {}, True])
    elif kind == 3:  # a required field missing (device_time is optional)
        del item[rng.choice(sorted(set(item) - {"device_time"}))]
    elif kind == 4:
        item["unit"] = rng.choice(["kg", "", "mmHg", "\x00", "%" * 300])
    elif kind == 5:
        item["loinc"] = rng.choice(["0000-0", "", "8480-6' OR 1=1 --", "x" * 5000])
    elif kind == 6:
        item["measured_at"] = rng.choice(["yesterday", "2026-13-40T99:00:00Z", 0, "1900-01-01"])
    elif kind == 7:
        base["v"] = rng.choice([0, 2, "1", None, True])
    elif kind == 8:
        item["reading_id"] = rng.choice(["", "not-a-uuid", 5, "x" * 100])
    elif kind == 9:  # nested deeper than json.dumps (or a careless parser) can go
        depth = rng.randrange(100, 5000)
        base["readings"] = "NESTED"
        return json.dumps(base).replace('"NESTED"', "[" * depth + "1" + "]" * depth).encode()
    elif kind == 10:
        item["value"] = rng.choice([900.0, -40.0, 5000.0])  # impossible systolic
    else:
        base["readings"] = rng.choice([[], "many", [1], None])
    return json.dumps(base).encode()


@pytest.mark.slow
def test_ten_thousand_hostile_payloads_are_all_quarantined_and_ingest_stays_up(
    db: psycopg.Connection,
    home: tuple[str, str],
    gateway: Gateway,
    consumer: tuple[ReadingConsumer, IngestCounters],
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    worker, _counters = consumer
    rng = random.Random(20261129)
    payloads = [hostile(gateway_id, patient_id, rng) for _ in range(10_000)]
    topic = f"carewatch/v1/gateways/{gateway_id}/readings"

    def quarantined_at_least(n: int) -> bool:
        return len(quarantined(db, "quarantine_id", unique_id)) >= n

    # In chunks that stay under the broker's queue for one client (Mosquitto's default
    # max_queued_messages is 1,000: beyond it the broker itself drops QoS 1 messages).
    for start in range(0, len(payloads), 500):
        chunk = payloads[start : start + 500]
        for info in [gateway.client.publish(topic, payload, qos=1) for payload in chunk]:
            info.wait_for_publish(30)
        assert wait_until(partial(quarantined_at_least, start + len(chunk)), 60), (
            f"ingest stopped quarantining after {start} hostile payloads"
        )
    good = a_reading(patient_id=patient_id)
    gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (good,))))

    assert wait_until(
        lambda: (
            count(db, "SELECT count(*) FROM readings WHERE reading_id = %s", good.reading_id) == 1
        ),
        180,
    ), "ingest did not get through the hostile payloads to the good reading"
    stored = len(quarantined(db, "quarantine_id", unique_id))
    print(f"10,000 hostile payloads: {stored} quarantine rows")
    assert stored == len(payloads)  # one row each: one reading per message, or the message
    assert count(db, "SELECT count(*) FROM readings WHERE patient_id = %s", patient_id) == 1
    assert worker.connected and worker.writer_alive
