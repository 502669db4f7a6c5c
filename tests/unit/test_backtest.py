"""``python -m analytics backtest``: a CSV of readings in, the flags and alerts per
patient-week out, as a table or as JSON; clear errors for a file it cannot use; and the
tuning preview (current against proposed rules)."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analytics.__main__ import main
from analytics.backtest import (
    BacktestInputError,
    compare,
    load_patients_csv,
    load_readings_csv,
    run_backtest,
)
from analytics.rules import load_rules, rules_from_mapping
from bench.rpm_history import History, generate_history, write_csv


@pytest.fixture(scope="module")
def history() -> History:
    return generate_history(patients=40, days=28, seed=3)


@pytest.fixture(scope="module")
def readings_csv(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backtest") / "readings.csv"
    write_csv(history, path)
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["backtest", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_every_flag_with_the_fields_the_tuning_page_reads(
    readings_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_json(capsys, "--readings", str(readings_csv))
    assert set(result) == {"flags", "alerts_per_patient_week"}
    assert result["alerts_per_patient_week"] > 0
    flags = result["flags"]
    kinds = {flag["kind"] for flag in flags}
    assert {"threshold", "adherence", "baseline"} <= kinds
    for flag in flags:
        assert {"patient_id", "kind", "metric", "direction", "severity", "opened_at"} <= set(flag)
        assert flag["direction"] in ("high", "low", None)
        assert pd.Timestamp(flag["opened_at"]).tzinfo is not None
        if flag["kind"] == "news2":
            assert {"score", "parameters", "partial"} <= set(flag)
            assert flag["metric"] == "news2"
    opened = [flag["opened_at"] for flag in flags]
    assert opened == sorted(opened)


def test_the_cli_gives_what_the_function_gives(
    readings_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_json(capsys, "--readings", str(readings_csv))
    direct = run_backtest(load_readings_csv(readings_csv), load_rules())
    assert len(cli["flags"]) == len(direct.flags)
    assert cli["alerts_per_patient_week"] == pytest.approx(direct.alerts_per_patient_week, 1e-3)


def test_a_stricter_rules_file_raises_more_alerts(
    readings_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = resources.files("analytics").joinpath("thresholds.toml").read_text()
    stricter = tmp_path / "stricter.toml"
    stricter.write_text(text.replace("above = 180", "above = 150"))
    default = run_json(capsys, "--readings", str(readings_csv))
    strict = run_json(capsys, "--readings", str(readings_csv), "--rules", str(stricter))
    assert strict["alerts_per_patient_week"] > default["alerts_per_patient_week"]


def test_the_table_names_each_flag_and_the_rate(
    readings_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backtest", "--readings", str(readings_csv)]) == 0
    out = capsys.readouterr().out
    assert "Alerts per patient-week:" in out
    assert "Flags per rule:" in out
    assert "no-readings-48h" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("8480-6", "1234-5", 1), "unknown metric '1234-5'"),
        (lambda t: t.replace("mm[Hg]", "mmHg", 1), "must be in mm[Hg], not 'mmHg'"),
        (lambda t: t.replace("+00:00", "", 1), "needs a UTC offset"),
        (lambda t: t.replace("patient_id,", "patient,", 1), "missing column(s) patient_id"),
    ],
)
def test_a_file_it_cannot_use_gets_a_clear_error(
    readings_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Any,
    message: str,
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(change(readings_csv.read_text()))
    assert main(["backtest", "--readings", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert re.search(r"line \d+:|column", err)


def test_the_tuning_preview_names_the_patients_who_gain_or_lose_alerts(history: History) -> None:
    readings = history.readings.rename(columns={"metric": "loinc"})
    data = tomllib.loads(resources.files("analytics").joinpath("thresholds.toml").read_text())
    current = rules_from_mapping(data)
    for rule in data["rules"]:
        if rule["id"] == "hypertensive-crisis":
            rule["when"][0]["above"] = 160
    proposed = rules_from_mapping(data)
    preview = compare(readings, current, proposed, patients=history.patients)
    assert preview.proposed.alerts_per_patient_week > preview.current.alerts_per_patient_week
    assert preview.gaining and not preview.losing
    assert preview.as_json()["patients_gaining_alerts"] == preview.gaining


def test_blank_ids_and_times_are_named_or_unknown_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text(
        "patient_id,metric,value,unit,measured_at,reading_id,received_at\n"
        "p1,8480-6,190,mm[Hg],2026-09-01T07:00:00+00:00,,\n"
        "p1,8480-6,191,mm[Hg],2026-09-01T08:00:00+00:00,,2026-09-04T08:00:00+00:00\n"
    )
    frame = load_readings_csv(path)
    assert frame["reading_id"].tolist() == ["csv-2", "csv-3"]
    assert frame["received_at"].isna().tolist() == [True, False]
    path.write_text(
        "patient_id,metric,value,unit,measured_at\n,8480-6,190,mm[Hg],2026-09-01T07:00:00+00:00\n"
    )
    with pytest.raises(BacktestInputError, match="line 2: patient_id is empty"):
        load_readings_csv(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p1,copd,3,false", "line 2: spo2_scale '3'"),
        ("p1,copd,2,yes", "line 2: on_oxygen 'yes'"),
        ("p1,vegan,1,false", "line 2: program 'vegan'"),
    ],
)
def test_a_patients_file_with_odd_values_is_refused_by_line(
    tmp_path: Path, row: str, message: str
) -> None:
    path = tmp_path / "patients.csv"
    path.write_text(f"patient_id,program,spo2_scale,on_oxygen\n{row}\n")
    with pytest.raises(BacktestInputError, match=message):
        load_patients_csv(path)
    path.write_text("patient_id,program,spo2_scale,on_oxygen\np1,copd,2,TRUE\np2,,,\n")
    loaded = load_patients_csv(path)
    assert loaded["spo2_scale"].tolist()[0] == 2 and loaded["on_oxygen"].tolist()[0] is True
