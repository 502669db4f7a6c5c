"""The workspace's follow-up and lead pages through Streamlit's AppTest against the real API:
triage filters, "assign to me" and snooze on a flag; the patient page's message and call
panel; the billing page for leads (and not for clinicians)."""

from __future__ import annotations

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from analytics.rules import load_rules
from analytics.threshold_sets import load_program_templates
from analytics.threshold_store import seed_program_templates
from dashboard.api_client import CareWatchApi
from dashboard.billing_page import recent_months, summary
from dashboard.outreach_panel import call_rows, message_rows
from ingest.db import refresh_rollups
from tests.dashboard.conftest import (
    WORKSPACE_USER,
    SeededWorkspace,
    WorkspaceLogin,
)
from tests.dashboard.test_pages import RUN_TIMEOUT_S, layer_rows, page_text, run_workspace

pytestmark = pytest.mark.db


def test_assign_to_me_and_the_mine_only_filter(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    at.button(key=f"triage-mine-{seeded.fever_flag_id}").click().run()
    assert not at.exception
    assert api.flag(seeded.fever_flag_id)["assignee"] == WORKSPACE_USER

    at.toggle(key="triage_mine").set_value(True).run()
    shown = [b.key for b in at.main.button if b.key and b.key.startswith("triage-open-")]
    assert shown == [f"triage-open-{seeded.fever_flag_id}"]
    assert f"assigned to {WORKSPACE_USER}" in page_text(at)


def test_snooze_hides_one_rule_and_direction_of_one_patient(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    flag = seeded.fever_flag_id
    at.selectbox(key=f"triage-snooze-hours-{flag}").set_value(12)
    at.text_input(key=f"triage-snooze-reason-{flag}").input("known infection, on antibiotics")
    at.button(key=f"triage-snooze-{flag}").click().run()
    assert not at.exception
    assert "Snoozed high Fever for 12 h" in at.main.success[0].value
    shown = {b.key for b in at.main.button if b.key and b.key.startswith("triage-open-")}
    assert f"triage-open-{flag}" not in shown
    assert f"triage-open-{seeded.crisis_flag_id}" in shown  # her other rule still alerts
    snoozes = api._get(f"/api/v1/patients/{seeded.crisis_patient_id}/snoozes")
    assert [(s["rule_id"], s["direction"]) for s in snoozes] == [("fever", "high")]


def test_the_program_filter(workspace_env: WorkspaceLogin, seeded: SeededWorkspace) -> None:
    at = run_workspace(workspace_env)
    at.selectbox(key="triage_program").set_value("copd").run()
    shown = [b.key for b in at.main.button if b.key and b.key.startswith("triage-open-")]
    assert shown == [f"triage-open-{seeded.spo2_flag_id}"]


def test_a_message_from_the_patient_page_is_queued_for_the_gateway(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    at.button(key=f"triage-open-{seeded.crisis_flag_id}").click().run()
    patient = seeded.crisis_patient_id
    at.selectbox(key=f"message-template-{patient}").set_value(
        "Please measure your blood pressure again"
    ).run()
    text_area = next(t for t in at.text_area if t.key.startswith(f"message-text-{patient}"))
    assert text_area.value.startswith("Hello Alice, your last blood pressure")
    at.button(key=f"message-send-{patient}").click().run()
    assert not at.exception
    assert "Message queued" in at.main.success[-1].value
    sent = api.messages(patient)
    assert [(m["template_id"], m["status"], m["sender"]) for m in sent] == [
        ("repeat-bp", "queued", WORKSPACE_USER)
    ]


def test_a_call_from_the_patient_page_is_logged_with_its_outcome(
    workspace_env: WorkspaceLogin,
    seeded: SeededWorkspace,
    api: CareWatchApi,
    db: psycopg.Connection,
) -> None:
    db.execute(
        "UPDATE patients SET phone = '+1 555 0100' WHERE patient_id = %s",
        (seeded.crisis_patient_id,),
    )
    db.commit()
    at = run_workspace(workspace_env)
    at.button(key=f"triage-open-{seeded.crisis_flag_id}").click().run()
    patient = seeded.crisis_patient_id
    at.button(key=f"call-start-{patient}").click().run()
    assert not at.exception
    assert "[Phone +1 555 0100](tel:+15550100)" in [m.value for m in at.markdown]
    at.selectbox(key=f"call-outcome-{patient}").set_value("reached")
    at.text_area(key=f"call-note-{patient}").input("Feels fine; repeat the reading tonight")
    at.button(key=f"call-end-{patient}").click().run()
    assert not at.exception
    assert any("Call logged: reached the patient" in s.value for s in at.main.success)
    calls = api.calls(patient)
    assert [(c["outcome"], c["note"]) for c in calls] == [
        ("reached", "Feels fine; repeat the reading tonight")
    ]


def billing_app(api_url: str, token: str) -> None:
    """The billing page alone, as a lead's workspace runs it."""
    import functools

    from dashboard import billing_page
    from dashboard.api_client import CareWatchApi

    billing_page.render(functools.partial(CareWatchApi, api_url, token))


def test_the_billing_page_shows_the_evidence_and_offers_the_csv(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    db.execute("UPDATE patients SET monitoring_started_on = current_date - 10")
    db.execute("UPDATE users SET role = 'lead' WHERE username = %s", (WORKSPACE_USER,))
    db.commit()
    session = workspace_env.session()
    at = AppTest.from_function(
        billing_app, args=(workspace_env.api.url, session.token), default_timeout=RUN_TIMEOUT_S
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    # Six and five days with readings since the start ten days ago: 99445 each.
    assert metrics["99445 (2-15 device days)"] == "2"
    assert metrics["99454 (16+ device days)"] == "0"
    table = at.dataframe[0].value
    assert sorted(table["Patient"]) == sorted([seeded.crisis_patient_id, seeded.spo2_patient_id])
    assert set(table["Device code"]) == {"99445"}
    assert at.get("download_button")


def test_pure_parts_of_the_follow_up_and_billing_pages() -> None:
    from datetime import date

    assert recent_months(date(2026, 2, 10), 3) == ["2026-02", "2026-01", "2025-12"]
    assert summary(
        [
            {"device_code": "99454", "management_codes": "99457"},
            {"device_code": "99445", "management_codes": ""},
            {"device_code": None, "management_codes": ""},
        ]
    ) == {"99454": 1, "99445": 1, "management": 1}
    table = message_rows(
        [
            {
                "created_at": "2026-11-29T10:00:00+00:00",
                "sender": "dr.a",
                "status": "delivered",
                "email_to": "p@example.test",
                "emailed_at": None,
                "body": "Hello",
            }
        ]
    )
    assert table.loc[0, "Status"] == "Delivered, email pending"
    calls = call_rows([{"started_at": None, "caller": "dr.a", "outcome": None, "duration_s": None}])
    assert calls.loc[0, "Outcome"] == "In progress"


def tuning_app(api_url: str, token: str) -> None:
    """The tuning page alone, as a lead's workspace runs it."""
    import functools

    from dashboard import tuning_page
    from dashboard.api_client import CareWatchApi

    tuning_page.render(functools.partial(CareWatchApi, api_url, token))


def test_the_tuning_page_previews_a_change_then_saves_it_with_a_reason(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    db.execute("UPDATE users SET role = 'lead' WHERE username = %s", (WORKSPACE_USER,))
    seed_program_templates(db, load_program_templates(load_rules()))
    db.commit()
    session = workspace_env.session()
    at = AppTest.from_function(
        tuning_app, args=(workspace_env.api.url, session.token), default_timeout=RUN_TIMEOUT_S
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="tuning_program").set_value("hypertension").run()
    captions = " ".join(c.value for c in at.caption)
    assert "Locked by the program's lead: hypertensive-crisis.when.0.above" in captions
    at.number_input(key="tuning-hypertensive-crisis-when.0.above").set_value(170).run()
    changes = next(d.value for d in at.dataframe if "setting" in d.value.columns)
    crisis = changes[changes["setting"] == "when.0.above"].iloc[0]
    assert (crisis["default"], crisis["in force"], crisis["proposed"]) == ("180", "180", "170")

    at.button(key="tuning_preview_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Alerts per patient-week now", "With the proposal"]
    at.button(key="tuning_save").click().run()
    assert "Say why before saving" in at.warning[0].value
    at.text_input(key="tuning_reason").input("crisis at 170 for our post-stroke patients")
    at.button(key="tuning_save").click().run()
    assert not at.exception
    assert at.success[0].value.startswith("Saved program:hypertension@")
    author, reason, overrides, locked = db.execute(
        "SELECT author, reason, overrides, locked FROM threshold_versions"
        " WHERE scope_id = 'hypertension' ORDER BY version_id DESC LIMIT 1"
    ).fetchone()  # type: ignore[misc]
    assert (author, reason) == (WORKSPACE_USER, "crisis at 170 for our post-stroke patients")
    assert overrides == {
        "hypertensive-crisis": {"when.0.above": 170},
        "systolic-weekly-rise": {"severity": "medium"},  # the template's, kept
    }
    assert "hypertensive-crisis.when.0.above" in locked  # the lead's locks are kept too


def test_a_proposal_holds_only_what_differs_from_the_defaults() -> None:
    from dashboard.tuning_page import change_rows, with_change

    crisis = {"rule_id": "crisis", "values": {"when.0.above": 180, "when.0.severity": "critical"}}
    fever = {"rule_id": "fever", "values": {"when.0.above": 38.0}}
    proposal = with_change({}, crisis, "when.0.above", 170)
    proposal = with_change(proposal, fever, "enabled", False)
    assert proposal == {"crisis": {"when.0.above": 170}, "fever": {"enabled": False}}
    assert with_change(proposal, crisis, "when.0.above", 180) == {"fever": {"enabled": False}}
    rows = change_rows([crisis, fever], {"crisis": {"when.0.severity": "high"}}, proposal)
    assert rows.to_dict("records") == [
        {
            "rule": "crisis",
            "setting": "when.0.above",
            "default": "180",
            "in force": "180",
            "proposed": "170",
        },
        {
            "rule": "crisis",
            "setting": "when.0.severity",
            "default": "critical",
            "in force": "high",
            "proposed": "critical",
        },
        {
            "rule": "fever",
            "setting": "enabled",
            "default": "on",
            "in force": "on",
            "proposed": "off",
        },
    ]


def test_a_note_added_on_the_patient_page_is_listed_with_its_author(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, api: CareWatchApi
) -> None:
    at = run_workspace(workspace_env)
    at.button(key=f"triage-open-{seeded.spo2_flag_id}").click().run()
    patient = seeded.spo2_patient_id
    at.text_area(key=f"note-text-{patient}").input("Uses oxygen at night only")
    at.button[[b.label for b in at.button].index("Add note")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Uses oxygen at night only" in [t.value for t in at.text]
    assert [n["body"] for n in api.notes(patient)] == ["Uses oxygen at night only"]
    assert "Days with readings" in [c.get("title") for c in _chart_specs(at)]


def _chart_specs(at: AppTest) -> list[dict[str, object]]:
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def test_the_90_day_view_draws_hourly_averages_and_the_flagged_readings(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, db: psycopg.Connection
) -> None:
    refresh_rollups(db)  # what ingest's writer does every minute
    db.commit()
    at = run_workspace(workspace_env)
    at.button(key=f"triage-open-{seeded.spo2_flag_id}").click().run()
    at.radio(key="patient_period_days").set_value(90).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("hourly averages" in c.value for c in at.caption)
    flagged = layer_rows(at, "SpO2", "flagged")
    # The 93 % and 89 % readings that raised the flag are drawn themselves, as flagged points.
    assert sorted(flagged["value"]) == [89.0, 93.0]
    line = layer_rows(at, "SpO2", "readings")
    hourly = line[line["reading_id"].str.startswith("hour:")]
    hours = db.execute(
        "SELECT count(DISTINCT date_trunc('hour', measured_at)) FROM readings"
        " WHERE patient_id = %s AND loinc = '59408-5'",
        (seeded.spo2_patient_id,),
    ).fetchone()
    assert hours is not None and len(hourly) == hours[0] > 0  # one point per hour with readings


def test_hourly_points_are_mid_hour_averages() -> None:
    from dashboard.patient_page import hourly_points

    points = hourly_points(
        [
            {"loinc": "59408-5", "unit": "%", "bucket": "2026-11-29T08:00:00Z", "avg_value": 95.5},
            {"loinc": "59408-5", "unit": "%", "bucket": "2026-11-29T09:00:00Z", "avg_value": None},
        ]
    )
    assert points == [
        {
            "reading_id": "hour:59408-5:2026-11-29T08:00:00Z",
            "loinc": "59408-5",
            "unit": "%",
            "value": 95.5,
            "measured_at": "2026-11-29T08:30:00+00:00",
        }
    ]


def test_the_rule_filter_and_the_patients_call_back_history(
    workspace_env: WorkspaceLogin, seeded: SeededWorkspace, call_backs: object
) -> None:
    at = run_workspace(workspace_env)
    at.selectbox(key="triage_rule").set_value("fever").run()
    shown = [b.key for b in at.main.button if b.key and b.key.startswith("triage-open-")]
    assert shown == [f"triage-open-{seeded.fever_flag_id}"]
    at.selectbox(key="triage_rule").set_value("All").run()
    at.button(key=f"triage-open-{seeded.spo2_flag_id}").click().run()
    history = next(d.value for d in at.dataframe if "Asked" in d.value.columns)
    assert set(history["Status"]) <= {"open", "done"} and len(history) >= 1


def test_a_device_silent_while_its_gateway_is_online_is_marked() -> None:
    from datetime import UTC, datetime, timedelta

    from dashboard.patient_page import device_status

    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    online = {"gateway_state": "online"}
    assert (
        device_status({**online, "last_reading_at": (now - timedelta(hours=3)).isoformat()}, now)
        == "ok"
    )
    assert (
        device_status({**online, "last_reading_at": (now - timedelta(days=3)).isoformat()}, now)
        == "silent"
    )
    assert device_status({**online, "last_reading_at": None}, now) == "silent"
    assert (
        device_status({"gateway_state": "offline", "last_reading_at": None}, now)
        == "gateway offline"
    )
