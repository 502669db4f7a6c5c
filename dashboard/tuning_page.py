"""Threshold tuning, for care-team leads: a program's (or one patient's) thresholds in a form,
rule by rule; before saving, a preview runs the backtest over the last 30 or 90 days and shows
alerts per patient-week now and with the proposal, which rules would alert more or less, and
which patients would gain or lose alerts; saving makes a new threshold version with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.api_client import ApiConnector, ApiError, JsonObject

PROGRAMS: Final = ("hypertension", "heart_failure", "copd", "diabetes", "general")
SEVERITIES: Final = ("critical", "high", "medium", "low", "info")
PREVIEW_KEY: Final = "tuning_preview"
#: The pseudo-setting that switches a rule off for a program or a patient.
ENABLED: Final = "enabled"


def settings_of(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's tunable values, with ``enabled`` (the rule on or off) first."""
    return {ENABLED: True, **rule["values"]}


def change_rows(
    rules: Sequence[Mapping[str, Any]],
    in_force: Mapping[str, Mapping[str, Any]],
    proposal: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """The settings whose proposed or in-force value differs from the default: rule,
    setting, default, in force, proposed."""
    rows = []
    for rule in rules:
        rule_id = rule["rule_id"]
        for path, default in settings_of(rule).items():
            now = in_force.get(rule_id, {}).get(path, default)
            proposed = proposal.get(rule_id, {}).get(path, default)
            if proposed != default or now != default:
                rows.append(
                    {
                        "rule": rule_id,
                        "setting": path,
                        "default": _text(default),
                        "in force": _text(now),
                        "proposed": _text(proposed),
                    }
                )
    return pd.DataFrame(rows, columns=["rule", "setting", "default", "in force", "proposed"])


def with_change(
    proposal: Mapping[str, Mapping[str, Any]], rule: Mapping[str, Any], path: str, value: Any
) -> dict[str, dict[str, Any]]:
    """``proposal`` with one setting set; a value equal to the default is no override (a
    version holds only what differs from the defaults, all of it)."""
    changed = {rule_id: dict(values) for rule_id, values in proposal.items()}
    values = changed.setdefault(rule["rule_id"], {})
    if value == settings_of(rule)[path]:
        values.pop(path, None)
    else:
        values[path] = value
    if not values:
        del changed[rule["rule_id"]]
    return changed


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def by_rule_chart(by_rule: Sequence[Mapping[str, Any]]) -> alt.Chart:
    """Flags per rule now and with the proposal, side by side."""
    frame = pd.DataFrame(by_rule).melt(
        id_vars="rule_id", value_vars=["current", "proposed"], var_name="rules", value_name="flags"
    )
    return (
        alt.Chart(frame, title="Flags per rule over the period")
        .mark_bar()
        .encode(
            y=alt.Y("rule_id:N", title=None, sort="-x"),
            x=alt.X("flags:Q", title="flags"),
            yOffset="rules:N",
            color=alt.Color("rules:N", title=None, scale=alt.Scale(range=["#9e9e9e", "#1f77b4"])),
            tooltip=["rule_id", "rules", "flags"],
        )
    )


def render(connect: ApiConnector) -> None:
    st.title("Threshold tuning")
    with connect() as api:
        rules = api.rules()["rules"]
        patients = api.patients()
    scope, scope_id = _pick_scope(patients)
    if scope_id is None:
        return
    with connect() as api:
        versions = api.threshold_versions(scope, scope_id)
    in_force_version = versions.get("in_force") or {}
    in_force = in_force_version.get("overrides") or {}
    _history(versions)
    draft_key = f"tuning_draft_{scope}_{scope_id}"
    if draft_key not in st.session_state:
        st.session_state[draft_key] = {k: dict(v) for k, v in in_force.items()}
    proposal: dict[str, dict[str, Any]] = st.session_state[draft_key]

    titles = {str(r["rule_id"]): str(r["title"]) for r in rules}
    rule_id = st.selectbox(
        "Rule", list(titles), format_func=lambda r: f"{titles[r]} ({r})", key="tuning_rule"
    )
    rule = next(r for r in rules if r["rule_id"] == rule_id)
    if rule.get("source"):
        st.caption(f"Source of the defaults: {rule['source']}")
    locked = set(in_force_version.get("locked") or [])
    for path, default in settings_of(rule).items():
        current = proposal.get(rule_id, {}).get(path, default)
        is_locked = f"{rule_id}.{path}" in locked and scope == "patient"
        value = _setting_input(rule_id, path, current, default, locked=is_locked)
        if value != current:
            proposal = with_change(proposal, rule, path, value)
            st.session_state[draft_key] = proposal
    if locked:
        st.caption("Locked by the program's lead: " + ", ".join(sorted(locked)))

    st.markdown("**Changes from the defaults**")
    changes = change_rows(rules, in_force, proposal)
    if changes.empty:
        st.caption("None: the defaults apply.")
    else:
        st.dataframe(changes, hide_index=True, use_container_width=True)
    days = st.radio("Try it on the last (days)", [30, 90], horizontal=True, key="tuning_days")
    if st.button("Preview", key="tuning_preview_button", icon=":material/query_stats:"):
        try:
            with connect() as api:
                st.session_state[PREVIEW_KEY] = (
                    scope,
                    scope_id,
                    proposal,
                    api.preview(scope, scope_id, proposal, days),
                )
        except ApiError as exc:
            st.error(str(exc))
    preview = st.session_state.get(PREVIEW_KEY)
    if preview and preview[:3] == (scope, scope_id, proposal):
        _show_preview(preview[3])
        # A program keeps its lead's locks from one version to the next.
        keep = sorted(locked) if scope == "program" else []
        _save(connect, scope, scope_id, proposal, draft_key, keep)
    elif preview:
        st.caption("The proposal changed since the preview: preview again before saving.")


def _pick_scope(patients: Sequence[JsonObject]) -> tuple[str, str | None]:
    scope = st.segmented_control(
        "Change the thresholds of", ["program", "patient"], default="program", key="tuning_scope"
    )
    if scope == "patient":
        if not patients:
            st.info("No patients in your care teams.")
            return "patient", None
        names = {str(p["patient_id"]): str(p["display_name"]) for p in patients}
        patient = st.selectbox(
            "Patient", list(names), format_func=names.__getitem__, key="tuning_patient"
        )
        return "patient", patient
    program = st.selectbox(
        "Program",
        PROGRAMS,
        format_func=lambda p: p.replace("_", " ").capitalize(),
        key="tuning_program",
    )
    return "program", program


def _setting_input(rule_id: str, path: str, current: Any, default: Any, *, locked: bool) -> Any:
    """The input of one setting, labelled with its default; its value."""
    key = f"tuning-{rule_id}-{path}"
    label = f"{path} (default {_text(default)})"
    if path == ENABLED or isinstance(default, bool):
        text = "Rule on" if path == ENABLED else label
        return st.checkbox(text, value=bool(current), key=key, disabled=locked)
    if isinstance(default, int | float):
        step = 1.0 if isinstance(default, int) else 0.1
        value = st.number_input(
            label, value=float(current), step=step, key=key, disabled=locked, format="%g"
        )
        return int(value) if isinstance(default, int) and float(value).is_integer() else value
    if default in SEVERITIES:
        return st.selectbox(
            label, SEVERITIES, index=SEVERITIES.index(str(current)), key=key, disabled=locked
        )
    return st.text_input(label, value=str(current), key=key, disabled=locked)


def _save(
    connect: ApiConnector,
    scope: str,
    scope_id: str,
    proposal: Mapping[str, Any],
    draft_key: str,
    locked: Sequence[str],
) -> None:
    reason = st.text_input("Why change them?", max_chars=1000, key="tuning_reason")
    if not st.button("Save as a new version", type="primary", key="tuning_save"):
        return
    if not reason.strip():
        st.warning("Say why before saving: the reason is kept with the version.")
        return
    try:
        with connect() as api:
            saved = api.save_thresholds(scope, scope_id, proposal, reason, locked=locked)
    except ApiError as exc:
        st.error(str(exc))
        return
    st.session_state.pop(PREVIEW_KEY, None)
    st.session_state.pop(draft_key, None)
    st.success(f"Saved {saved['label']}: in force for the next readings.")


def _history(versions: JsonObject) -> None:
    history = versions.get("history") or []
    if not history:
        st.caption("No version yet: the defaults apply.")
        return
    with st.expander(f"Versions ({len(history)})"):
        st.dataframe(
            pd.DataFrame(history)[["label", "author", "created_at", "reason"]],
            hide_index=True,
            use_container_width=True,
        )


def _show_preview(preview: JsonObject) -> None:
    now = preview["current"]["alerts_per_patient_week"]
    proposed = preview["proposed"]["alerts_per_patient_week"]
    first, second, third = st.columns(3)
    first.metric("Alerts per patient-week now", f"{now:.2f}", border=True)
    second.metric(
        "With the proposal", f"{proposed:.2f}", delta=f"{proposed - now:+.2f}", border=True
    )
    third.metric("Readings tried", f"{preview['readings']:,}", border=True)
    st.caption(
        f"Over {preview['days']} days of {preview['patients']} patients' stored readings: "
        f"the rules in force ({preview['current_version']}) against the proposal."
    )
    gaining, losing = preview["patients_gaining_alerts"], preview["patients_losing_alerts"]
    st.markdown(
        f"**Would gain alerts:** {', '.join(gaining) or 'nobody'}  \n"
        f"**Would lose alerts:** {', '.join(losing) or 'nobody'}"
    )
    if preview.get("flags_by_rule"):
        st.altair_chart(by_rule_chart(preview["flags_by_rule"]), use_container_width=True)
