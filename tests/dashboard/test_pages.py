"""The workspace's pages through Streamlit's AppTest, against the real ingest API.

Streamlit's AppTest runs ``dashboard/app.py`` in-process as ``streamlit run`` would; the app
talks over HTTP to the API that ``api_server`` serves. Altair charts show up in the element
tree as ``vega_lite_chart`` nodes whose ``proto.spec`` is the Vega-Lite JSON.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import psycopg
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from dashboard import charts
from dashboard.api_client import CareWatchApi
from dashboard.login_page import SESSION_KEY
from dashboard.triage_page import time_ago, what_fired
from tests.dashboard.conftest import (
    APP_PATH,
    WORKSPACE_PASSWORD,
    WORKSPACE_USER,
    CallBacks,
    SeededWorkspace,
    WorkspaceLogin,
)

RUN_TIMEOUT_S = 60


def run_workspace(login: WorkspaceLogin | None, **context: Any) -> AppTest:
    """A fresh session of the workspace, logged in as dr.test (``login``) or at the login page
    (None), run once; fails on any uncaught exception."""
    at = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT_S)
    at.context = context
    if login is not None:
        at.session_state[SESSION_KEY] = login.session()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _card_extra(key: str | None) -> bool:
    """The buttons of a flag card's "More" menu and of the follow-up panel."""
    return bool(key) and any(
        part in str(key)
        for part in ("-mine-", "-snooze-", "message-send-", "call-start-", "note-form-")
    )


def page_text(at: AppTest) -> str:
    """Every Markdown and caption text on the page, without Markdown escapes."""
    texts = [element.value for element in (*at.markdown, *at.caption, *at.header, *at.title)]
    return "\n".join(texts).replace("\\", "")


def chart_specs(at: AppTest) -> list[dict[str, Any]]:
    """The vital charts' specs (not the adherence calendar's)."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    return [spec for spec in specs if spec.get("title") != "Days with readings"]


def layer_names(spec: dict[str, Any]) -> list[str]:
    return [layer.get("name", "") for layer in spec.get("layer", [])]


def layer_rows(at: AppTest, title: str, layer_name: str) -> pd.DataFrame:
    """The rows Streamlit sends to the browser for one layer of the chart titled ``title``."""
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        if spec.get("title") != title:
            continue
        layer = next(layer for layer in spec["layer"] if layer.get("name") == layer_name)
        dataset = next(d for d in chart.proto.datasets if d.name == layer["data"]["name"])
        return convert_arrow_bytes_to_pandas_df(dataset.data.data)
    raise AssertionError(f"no chart titled {title!r}")


@pytest.mark.db
def test_triage_page_shows_the_counts_and_the_queue(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace
) -> None:
    at = run_workspace(workspace_env)

    assert {metric.label: metric.value for metric in at.metric} == {
        "Critical": "2",
        "High": "0",
        "Medium": "1",
        "Low": "0",
    }
    text = page_text(at)
    assert seeded.crisis_patient_name in text
    assert "Hypertensive crisis · Systolic 192 mm[Hg] > 180" in text
    assert "SpO2 89 % < 92" in text
    assert "worst 192 mm[Hg] · last 192 mm[Hg] · 2 readings · opened 2 d ago" in text
    assert "Temperature 38.4 °C > 38" in text
    # Most severe first, then oldest first: the SpO2 flag opened a day before the crisis.
    assert text.index(seeded.spo2_patient_name) < text.index("Hypertensive crisis")
    assert text.index("Hypertensive crisis") < text.index("Fever")
    assert [b.key for b in at.button if b.key and b.key.startswith("triage-ack-")] == [
        f"triage-ack-{seeded.spo2_flag_id}",
        f"triage-ack-{seeded.crisis_flag_id}",
        f"triage-ack-{seeded.fever_flag_id}",
    ]
    assert [alert.value for alert in at.sidebar.success] == ["API ready"]
    assert "**Dr Test** · clinician" in [m.value for m in at.sidebar.markdown]


@pytest.mark.db
def test_acknowledge_on_the_queue_acknowledges_through_the_api_as_the_clinician(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)

    at.button(key=f"triage-ack-{seeded.crisis_flag_id}").click().run()

    assert not at.exception
    flag = api.flag(seeded.crisis_flag_id)
    assert (flag["status"], flag["acknowledged_by"]) == ("acknowledged", WORKSPACE_USER)
    assert [alert.value for alert in at.main.success] == [
        f"Acknowledged: Hypertensive crisis for {seeded.crisis_patient_name}."
    ]
    keys = {b.key for b in at.button}
    assert f"triage-ack-{seeded.crisis_flag_id}" not in keys  # acknowledged: no button
    assert f"triage-open-{seeded.crisis_flag_id}" in keys  # still in the queue
    assert f"Acknowledged by {WORKSPACE_USER} just now" in page_text(at)


@pytest.mark.db
def test_an_acknowledged_flag_is_resolved_with_a_note(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    api.acknowledge(seeded.fever_flag_id)
    at = run_workspace(workspace_env)
    flag_id = seeded.fever_flag_id

    at.button(key=f"triage-resolve-{flag_id}").click().run()  # no note yet
    assert api.flag(flag_id)["status"] == "acknowledged"
    assert [alert.value for alert in at.main.error] == [
        "Say why the flag is resolved before resolving."
    ]
    at.text_input(key=f"triage-note-{flag_id}").set_value("Paracetamol, afebrile on call").run()
    at.button(key=f"triage-resolve-{flag_id}").click().run()

    assert not at.exception
    flag = api.flag(flag_id)
    assert (flag["status"], flag["resolution_note"]) == (
        "resolved",
        "Paracetamol, afebrile on call",
    )
    assert f"triage-open-{flag_id}" not in {b.key for b in at.button}


@pytest.mark.db
def test_the_status_filter_narrows_the_queue(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    api.acknowledge(seeded.fever_flag_id)
    at = run_workspace(workspace_env)

    at.segmented_control(key="triage_statuses").set_value(["acknowledged"]).run()

    assert not at.exception
    assert {b.key for b in at.main.button if not _card_extra(b.key)} == {
        f"triage-open-{seeded.fever_flag_id}",
        f"triage-resolve-{seeded.fever_flag_id}",
    }
    at.multiselect(key="triage_severities").set_value(["critical"]).run()
    assert [alert.value for alert in at.info] == ["No flags match these filters."]


@pytest.mark.db
def test_open_patient_shows_charts_with_thresholds_and_flagged_readings(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace
) -> None:
    at = run_workspace(workspace_env, timezone="Europe/Berlin")

    at.button(key=f"triage-open-{seeded.crisis_flag_id}").click().run()

    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["patient"] == seeded.crisis_patient_id
    assert at.selectbox(key="patient_picker").value == seeded.crisis_patient_id
    assert [header.value for header in at.header] == [seeded.crisis_patient_name]
    specs = chart_specs(at)
    assert [spec["title"] for spec in specs] == ["Blood pressure", "Temperature"]
    blood_pressure, temperature = specs
    assert layer_names(blood_pressure) == [
        "readings",
        "thresholds",
        "threshold_labels",
        "flagged",
    ]
    assert layer_names(temperature) == ["readings", "thresholds", "threshold_labels", "flagged"]
    # What the browser gets: UTC instants as ISO strings, and a window domain of such strings
    # (numbers there collapse every point onto the left edge in Streamlit's Vega).
    x = blood_pressure["layer"][0]["encoding"]["x"]
    assert (x["field"], x["type"], x["scale"]["type"]) == ("measured_utc", "temporal", "time")
    assert all(isinstance(v, str) and v.endswith("Z") for v in x["scale"]["domain"])
    rows = layer_rows(at, "Blood pressure", "readings")
    assert rows["measured_utc"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()
    assert "Times in Europe/Berlin" in page_text(at)
    # The patient's own flags, with the acknowledge buttons of the patient page.
    assert {b.key for b in at.main.button if not _card_extra(b.key)} == {
        f"patient-ack-{seeded.crisis_flag_id}",
        f"patient-ack-{seeded.fever_flag_id}",
    }


@pytest.mark.db
def test_patient_page_period_picker_and_acknowledge(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    at.button(key=f"triage-open-{seeded.spo2_flag_id}").click().run()

    at.radio(key="patient_period_days").set_value(30).run()
    assert not at.exception
    assert [spec["title"] for spec in chart_specs(at)] == ["SpO2"]

    at.button(key=f"patient-ack-{seeded.spo2_flag_id}").click().run()
    assert not at.exception
    assert api.flag(seeded.spo2_flag_id)["status"] == "acknowledged"

    at.selectbox(key="patient_picker").set_value(seeded.crisis_patient_id).run()
    assert not at.exception
    assert at.query_params["patient"] == seeded.crisis_patient_id
    assert [header.value for header in at.header] == [seeded.crisis_patient_name]


@pytest.mark.db
@pytest.mark.parametrize(
    ("spo2_scale", "labels"),
    [
        (1, ["SpO2 < 94 %", "SpO2 <= 91 % (NEWS2 score 3)"]),
        (2, ["SpO2 < 88 % (scale 2)", "SpO2 <= 83 % (scale 2, NEWS2 score 3)"]),
    ],
)
def test_the_spo2_chart_draws_only_the_thresholds_of_the_patients_spo2_scale(
    workspace_env: WorkspaceLogin,
    seeded: SeededWorkspace,
    db: psycopg.Connection,
    spo2_scale: int,
    labels: list[str],
) -> None:
    db.execute(
        "UPDATE patients SET spo2_scale = %s WHERE patient_id = %s",
        (spo2_scale, seeded.spo2_patient_id),
    )
    db.commit()
    at = run_workspace(workspace_env)

    at.button(key=f"triage-open-{seeded.spo2_flag_id}").click().run()

    assert not at.exception, [e.value for e in at.exception]
    assert sorted(layer_rows(at, "SpO2", "thresholds")["label"]) == labels
    assert sorted(layer_rows(at, "SpO2", "threshold_labels")["label"]) == labels
    assert f"rules in force for this patient (SpO2 scale {spo2_scale})" in page_text(at)


@pytest.mark.db
def test_an_empty_queue_says_there_is_nothing_to_do(
    workspace_env: WorkspaceLogin, db: psycopg.Connection
) -> None:
    at = run_workspace(workspace_env)

    assert [alert.value for alert in at.main.success] == [
        "No open flags. New flags appear here within seconds of the rules raising them."
    ]
    assert {metric.value for metric in at.metric} == {"0"}


@pytest.mark.db
def test_call_back_requests_are_listed_above_the_flags_and_marked_done(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, call_backs: CallBacks, api: CareWatchApi
) -> None:
    bruno, alice = call_backs.bruno_request_id, call_backs.alice_request_id
    at = run_workspace(workspace_env)

    assert [subheader.value for subheader in at.subheader] == ["Call-back requests", "Flags"]
    text = page_text(at)
    assert f"**{seeded.spo2_patient_name}** · asked for a call back 2 h ago" in text
    assert "“Short of breath*”" in text
    assert f"**{seeded.crisis_patient_name}** · asked for a call back 1 h ago" in text
    assert "No note." in text
    assert "Old one" not in text  # done already
    # Newest first (by when they reached the care team), above the flags.
    keys = [str(b.key) for b in at.button]
    assert [key for key in keys if key.startswith("callback-done-")] == [
        f"callback-done-{bruno}",
        f"callback-done-{alice}",
    ]
    assert keys.index(f"callback-done-{alice}") < keys.index(f"triage-ack-{seeded.spo2_flag_id}")

    at.text_input(key=f"callback-note-{bruno}").set_value("Called, inhaler technique").run()
    at.button(key=f"callback-done-{bruno}").click().run()

    assert not at.exception, [e.value for e in at.exception]
    done = {f["request_id"]: f for f in api.follow_ups("done")}
    assert (done[bruno]["closed_by"], done[bruno]["close_note"]) == (
        WORKSPACE_USER,
        "Called, inhaler technique",
    )
    assert [alert.value for alert in at.main.success] == [
        f"Done: call back for {seeded.spo2_patient_name}."
    ]
    assert f"callback-done-{bruno}" not in {b.key for b in at.button}

    at.button(key=f"callback-done-{alice}").click().run()  # the note is optional

    assert not at.exception
    assert {f["request_id"]: f["close_note"] for f in api.follow_ups("done")}[alice] is None
    assert api.follow_ups() == []
    assert "No open call-back requests." in page_text(at)


@pytest.mark.db
def test_a_call_back_request_done_meanwhile_is_explained_and_open_patient_works(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, call_backs: CallBacks, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    api.close_follow_up(call_backs.alice_request_id)  # a colleague was quicker

    at.button(key=f"callback-done-{call_backs.alice_request_id}").click().run()

    assert not at.exception
    [error] = [alert.value for alert in at.main.error]
    assert error.startswith(
        "Could not mark the call-back request done: the follow-up request is already done "
        "(by Dr Client at "
    )
    at.button(key=f"callback-open-{call_backs.bruno_request_id}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["patient"] == seeded.spo2_patient_id


@pytest.mark.db
def test_no_call_back_requests_is_a_quiet_line(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace
) -> None:
    at = run_workspace(workspace_env)

    assert "No open call-back requests." in page_text(at)
    assert not [b.key for b in at.button if b.key and b.key.startswith("callback-")]


def log_in_through_the_form(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_unreachable_api_is_explained_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CAREWATCH_API_URL", f"http://127.0.0.1:{port}")

    at = log_in_through_the_form(run_workspace(None), "dr.test", "whatever it is")

    expected = f"cannot reach the CareWatch API at http://127.0.0.1:{port}: is ingest running?"
    assert [alert.value for alert in at.error] and at.error[0].value.startswith(expected)


@pytest.mark.db
def test_login_page_refuses_a_wrong_password_then_logs_in_and_out(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace
) -> None:
    workspace_env.session()  # gives the ward the seeded patients
    at = run_workspace(None)
    assert at.title[0].value == "CareWatch" and not at.sidebar.markdown

    log_in_through_the_form(at, WORKSPACE_USER, "not the password")
    assert [e.value for e in at.error] == [
        "wrong user name or password, or the account is not active"
    ]
    assert SESSION_KEY not in at.session_state

    log_in_through_the_form(at, WORKSPACE_USER, WORKSPACE_PASSWORD)
    assert "**Dr Test** · clinician" in [m.value for m in at.sidebar.markdown]
    assert seeded.crisis_patient_name in page_text(at)  # the triage queue, with ward's patients

    at.sidebar.button(key="logout").click().run()
    assert SESSION_KEY not in at.session_state
    assert [i.value for i in at.info] == ["You have logged out."]


@pytest.mark.db
def test_an_ended_session_returns_to_the_login_with_a_notice(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    at = run_workspace(workspace_env)
    db.execute("UPDATE api_sessions SET last_used_at = now() - interval '2 hours'")
    db.commit()

    at.run()

    assert not at.exception
    assert SESSION_KEY not in at.session_state
    assert [i.value for i in at.info] == ["Your session has ended: log in again."]


@pytest.mark.db
def test_a_clinician_sees_only_their_teams_patients_in_the_workspace(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    session = workspace_env.session()
    db.execute("DELETE FROM team_patients WHERE patient_id = %s", (seeded.spo2_patient_id,))
    db.commit()
    at = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT_S)
    at.session_state[SESSION_KEY] = session
    at.run()

    text = page_text(at)
    assert seeded.crisis_patient_name in text
    assert seeded.spo2_patient_name not in text


# --- pure parts ------------------------------------------------------------------------------


def test_vital_chart_layers_readings_thresholds_and_flagged_points() -> None:
    start = datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    frame = charts.readings_frame(
        [
            {
                "reading_id": f"r{index}",
                "loinc": loinc,
                "value": value,
                "unit": "mm[Hg]",
                "measured_at": f"2026-03-0{day}T07:00:00+00:00",
            }
            for index, (day, loinc, value) in enumerate(
                [(1, "8480-6", 142), (1, "8462-4", 88), (2, "8480-6", 192), (2, "8462-4", 124)]
            )
        ],
        flagged_reading_ids={"r2", "r3"},
    )
    thresholds = charts.thresholds_frame(
        [
            {"metric": "8480-6", "limit": 180, "severity": "critical", "label": "Systolic > 180"},
            {"metric": "8462-4", "limit": 120, "severity": "critical", "label": "Diastolic > 120"},
        ]
    )

    chart = charts.vital_chart(
        frame,
        thresholds,
        title="Blood pressure",
        unit="mm[Hg]",
        window=(start - timedelta(days=1), start + timedelta(days=2)),
    )

    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    rules, flagged = spec["layer"][1], spec["layer"][3]
    assert (rules["name"], rules["mark"]["type"], rules["mark"]["strokeDash"]) == (
        "thresholds",
        "rule",
        [6, 4],
    )
    assert rules["encoding"]["color"]["scale"] == {
        "domain": ["critical"],
        "range": [charts.SEVERITY_COLOURS["critical"]],
    }
    assert (flagged["name"], flagged["mark"]["type"], flagged["mark"]["color"]) == (
        "flagged",
        "point",
        charts.FLAGGED_COLOUR,
    )
    flagged_rows = spec["datasets"][flagged["data"]["name"]]
    assert sorted(row["value"] for row in flagged_rows) == [124, 192]
    assert frame["measured_utc"].iloc[0] == "2026-03-01T07:00:00.000Z"
    assert frame["series"].tolist() == ["Systolic", "Diastolic", "Systolic", "Diastolic"]
    readings_colour = spec["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert readings_colour == ["Systolic", "Diastolic"]


def test_a_vital_without_thresholds_or_flags_is_a_single_layer() -> None:
    frame = charts.readings_frame(
        [
            {
                "reading_id": "r1",
                "loinc": "8867-4",
                "value": 72,
                "unit": "/min",
                "measured_at": "2026-03-01T07:00:00Z",
            }
        ]
    )

    chart = charts.vital_chart(frame, charts.thresholds_frame([]), title="Heart rate", unit="/min")

    assert [layer["name"] for layer in chart.to_dict()["layer"]] == ["readings"]


def test_panels_group_blood_pressure_and_keep_other_metrics() -> None:
    panels = charts.panels_for(["59408-5", "8462-4", "8480-6", "39156-5"])

    assert [(p.title, tuple(p.loincs)) for p in panels] == [
        ("Blood pressure", ("8480-6", "8462-4")),
        ("SpO2", ("59408-5",)),
        ("Body mass index", ("39156-5",)),
    ]


@pytest.mark.parametrize(
    ("elapsed", "text"),
    [
        (timedelta(seconds=-30), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=12), "12 min ago"),
        (timedelta(hours=3, minutes=50), "3 h ago"),
        (timedelta(hours=47), "47 h ago"),
        (timedelta(days=4, hours=5), "4 d ago"),
    ],
)
def test_time_ago(elapsed: timedelta, text: str) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert time_ago(now - elapsed, now) == text


def test_what_fired_names_the_metric_the_value_and_the_limit() -> None:
    flag = {
        "loinc": "59408-5",
        "unit": "%",
        "worst_value": 89.0,
        "title": "SpO2 below target",
        "threshold": {"metric": "59408-5", "below": 92.0, "label": "SpO2 <= 91 %"},
    }
    assert what_fired(flag) == "SpO2 89 % < 92"
    other_metric = {**flag, "threshold": {"metric": "8462-4", "above": 120, "label": "Dia > 120"}}
    assert what_fired(other_metric) == "Dia > 120"
