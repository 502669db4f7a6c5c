"""The workspace's API client against the real ingest API and a real PostgreSQL."""

from __future__ import annotations

import socket
import uuid

import psycopg
import pytest

from analytics.flag_store import resolve_flag
from analytics.rules import SEVERITY_RANK
from dashboard.api_client import (
    DEFAULT_API_URL,
    ApiAuthError,
    ApiConflictError,
    ApiError,
    ApiNotFoundError,
    ApiUnreachableError,
    CareWatchApi,
    parse_api_time,
    user_header_value,
)
from tests.dashboard.conftest import CallBacks, RunningApi, SeededWorkspace


@pytest.mark.db
def test_flags_come_in_triage_order(api: CareWatchApi, seeded: SeededWorkspace) -> None:
    flags = api.flags()

    assert [flag["flag_id"] for flag in flags] == [
        seeded.spo2_flag_id,  # critical, opened three days ago
        seeded.crisis_flag_id,  # critical, opened two days ago
        seeded.fever_flag_id,  # medium
    ]
    ranks = [SEVERITY_RANK[flag["severity"]] for flag in flags]
    assert ranks == sorted(ranks, reverse=True)
    crisis = flags[1]
    assert crisis["patient_name"] == seeded.crisis_patient_name
    assert crisis["status"] == "open"
    assert crisis["unit"] == "mm[Hg]"
    assert crisis["threshold"]["above"] == 180
    assert crisis["worst_value"] == 192
    assert crisis["breach_count"] == 2
    assert api.flag_counts() == {"critical": 2, "high": 0, "medium": 1, "low": 0, "info": 0}
    assert api.flags(patient_id=seeded.spo2_patient_id)[0]["worst_value"] == 89


@pytest.mark.db
def test_acknowledge_changes_status_and_names_the_clinician(
    api: CareWatchApi, seeded: SeededWorkspace
) -> None:
    flag = api.acknowledge(seeded.crisis_flag_id, note="called the patient")

    assert flag["status"] == "acknowledged"
    assert flag["acknowledged_by"] == "Dr Client"
    assert flag["events"][-1]["detail"] == {"note": "called the patient"}
    assert [f["flag_id"] for f in api.flags(status="acknowledged")] == [seeded.crisis_flag_id]
    assert seeded.crisis_flag_id not in [f["flag_id"] for f in api.flags(status="open")]
    assert api.acknowledge(seeded.crisis_flag_id)["status"] == "acknowledged"  # harmless twice


@pytest.mark.db
def test_acknowledging_a_resolved_flag_is_a_conflict(
    api: CareWatchApi, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    resolve_flag(db, flag_id=seeded.fever_flag_id, actor="Dr Other", note="paracetamol")
    db.commit()

    with pytest.raises(ApiConflictError, match="resolved"):
        api.acknowledge(seeded.fever_flag_id)


@pytest.mark.db
def test_flag_detail_lists_the_readings_that_raised_it(
    api: CareWatchApi, seeded: SeededWorkspace
) -> None:
    flag = api.flag(seeded.crisis_flag_id)

    assert {reading["reading_id"] for reading in flag["readings"]} == seeded.crisis_reading_ids
    assert {reading["value"] for reading in flag["readings"]} == {192, 124}


@pytest.mark.db
def test_patients_readings_and_thresholds(api: CareWatchApi, seeded: SeededWorkspace) -> None:
    patients = {p["patient_id"]: p for p in api.patients()}
    assert patients[seeded.crisis_patient_id]["display_name"] == seeded.crisis_patient_name
    assert patients[seeded.crisis_patient_id]["open_flags"] == 2

    patient = api.patient(seeded.crisis_patient_id)
    assert {d["device_type"] for d in patient["devices"]} == {"blood_pressure", "thermometer"}
    assert {d["gateway_state"] for d in patient["devices"]} == {"online"}

    readings = api.readings(seeded.spo2_patient_id, 7, loinc="59408-5")
    times = [parse_api_time(r["measured_at"]) for r in readings]
    assert times == sorted(times)
    assert seeded.spo2_89_reading_id in {r["reading_id"] for r in readings}
    assert len(api.readings(seeded.spo2_patient_id, 1)) == 1  # only the 89 % of 20 h ago

    thresholds = api.thresholds("8480-6")
    assert thresholds["version"]
    assert [(line["limit"], line["severity"]) for line in thresholds["lines"]] == [
        (180, "critical"),
        (91, "high"),  # NEWS2: systolic <= 90 scores 3
    ]


@pytest.mark.db
def test_an_unknown_patient_is_not_found(api: CareWatchApi, seeded: SeededWorkspace) -> None:
    with pytest.raises(ApiNotFoundError, match="no such patient"):
        api.patient("pt-nobody")
    with pytest.raises(ApiNotFoundError, match="no such flag"):
        api.flag(987654321)


@pytest.mark.db
def test_a_wrong_token_gives_an_error_that_says_what_to_do(api_server: RunningApi) -> None:
    wrong = "not-the-token-1234"
    with CareWatchApi(api_server.url, wrong) as client, pytest.raises(ApiAuthError) as error:
        client.flags()

    message = str(error.value)
    assert message == ("your session has ended or the token is not valid: log in again")
    assert error.value.status_code == 401
    assert wrong not in message


def test_an_unreachable_api_gives_an_error_that_says_what_to_do() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with CareWatchApi(url, "some-token") as client, pytest.raises(ApiUnreachableError) as error:
        client.patients()

    assert str(error.value).startswith(
        f"cannot reach the CareWatch API at {url}: is ingest running?"
    )
    assert "some-token" not in str(error.value)


def test_from_env_reads_url_token_and_user() -> None:
    environ = {
        "CAREWATCH_API_URL": "http://api.example:8000/",
        "CAREWATCH_API_TOKEN": "t0ken",
        "CAREWATCH_USER": "Dr Lee",
    }
    with CareWatchApi.from_env(environ=environ) as client:
        assert (client.base_url, client.user) == ("http://api.example:8000", "Dr Lee")
        assert "t0ken" not in repr(client)
    with CareWatchApi.from_env(environ={"CAREWATCH_API_TOKEN": "t0ken"}) as client:
        assert (client.base_url, client.user) == (DEFAULT_API_URL, "clinician")


def test_from_env_without_a_token_says_what_to_set() -> None:
    with pytest.raises(ApiAuthError, match="CAREWATCH_API_TOKEN is not set"):
        CareWatchApi.from_env(environ={"CAREWATCH_API_URL": "http://127.0.0.1:8000"})


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ApiError, match="must be an http"):
        CareWatchApi("127.0.0.1:8000", "t0ken")


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("Dr  Lee ", "Dr Lee"),
        ("", "clinician"),
        ("Zoë Ångström", "Zo%C3%AB %C3%85ngstr%C3%B6m"),
        ("100% sure", "100%25 sure"),
        ("x" * 70, "x" * 64),
        ("é" * 11, "%C3%A9" * 10),  # never a cut escape
    ],
)
def test_user_names_travel_as_ascii_header_values(name: str, header: str) -> None:
    assert user_header_value(name) == header


@pytest.mark.db
def test_a_non_ascii_clinician_name_reaches_the_audit(
    api_server: RunningApi, seeded: SeededWorkspace
) -> None:
    with CareWatchApi(api_server.url, api_server.token, user="Zoë") as client:
        flag = client.acknowledge(seeded.fever_flag_id)

    assert flag["acknowledged_by"] == "Zoë"  # percent-encoded on the wire, decoded by the API


def test_a_token_with_impossible_characters_is_a_clear_error_not_a_traceback() -> None:
    with pytest.raises(ApiAuthError, match="CAREWATCH_API_TOKEN"):
        CareWatchApi("http://127.0.0.1:8000", "tök€n")


def test_a_bad_url_error_never_echoes_its_password() -> None:
    with pytest.raises(ApiError) as caught:
        CareWatchApi("ftp://admin:hunter2@example.invalid", "token")
    assert "hunter2" not in str(caught.value)


@pytest.mark.db
def test_follow_ups_are_listed_newest_first_and_closed_as_the_clinician(
    api: CareWatchApi, seeded: SeededWorkspace, call_backs: CallBacks
) -> None:
    listed = api.follow_ups()

    assert [(f["request_id"], f["patient_name"], f["note"]) for f in listed] == [
        (call_backs.bruno_request_id, seeded.spo2_patient_name, "Short of breath*"),
        (call_backs.alice_request_id, seeded.crisis_patient_name, None),
    ]
    asked = parse_api_time(listed[0]["requested_at"])
    assert asked is not None and asked.tzinfo is not None
    assert [f["request_id"] for f in api.follow_ups("done")] == [call_backs.done_request_id]
    assert len(api.follow_ups("all")) == 3

    closed = api.close_follow_up(call_backs.alice_request_id, note="Called back, all fine")

    assert (closed["status"], closed["closed_by"], closed["close_note"]) == (
        "done",
        "Dr Client",
        "Called back, all fine",
    )
    assert api.follow_ups(patient_id=seeded.crisis_patient_id) == []
    with pytest.raises(ApiConflictError, match="already done \\(by Dr Client"):
        api.close_follow_up(call_backs.alice_request_id)
    with pytest.raises(ApiNotFoundError):
        api.close_follow_up(str(uuid.uuid4()))
