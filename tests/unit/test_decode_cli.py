"""The decode command: one line of JSON on stdout and exit codes 0, 1 and 2.

Every vector goes through ``run()`` in-process (a subprocess per vector costs 0.1-0.5 s on
a shared machine); a handful of cases run as real processes, as the lead engineer's
``python -m gateway_agent decode`` will run, to check stdout, stderr and exit status there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway_agent.decode_cli import parse_hex, run
from tests.unit.test_gatt_vectors import VECTORS

REPO = Path(__file__).resolve().parents[2]
RUN_DECODE = "import sys; from gateway_agent.decode_cli import run; sys.exit(run(sys.argv[1:]))"


def _decode_in_subprocess(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_DECODE, *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def _vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['characteristic_uuid']}-{vector['hex']}"


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_every_vector_through_the_command(
    vector: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status = run([vector["characteristic_uuid"], vector["hex"]])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out + captured.err
    document = json.loads(lines[0])
    expected = vector["expected"]
    if expected.get("invalid") is True:
        assert status == 1
        assert document["invalid"] is True
        assert vector["characteristic_uuid"] in document["error"]
        return
    assert status == 0, captured.err
    assert captured.err == ""
    assert {key: document.get(key) for key in expected} == expected


def test_exit_0_with_observations() -> None:
    result = _decode_in_subprocess("0x2a35", "00:bd:f0:0b:00:9f:f0", "--observations")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["observations"] == [
        {"loinc": "8480-6", "unit": "mm[Hg]", "value": 18.9},
        {"loinc": "8462-4", "unit": "mm[Hg]", "value": 11.0},
        {"loinc": "8478-0", "unit": "mm[Hg]", "value": 15.9},
    ]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["2A35", "010203040506"], "2A35: 6 bytes, need at least 7 (flags + 3 SFLOAT)"),
        (["2A35", "zz"], "not hexadecimal"),
        (["2A37", ""], "2A37: 0 bytes"),
    ],
)
def test_exit_1_for_rejected_payloads(arguments: list[str], error: str) -> None:
    result = _decode_in_subprocess(*arguments)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["invalid"] is True
    assert error in document["error"]
    assert set(document) == {"invalid", "error"}


@pytest.mark.parametrize("arguments", [[], ["2A99", "00"]])
def test_exit_2_for_usage_errors(arguments: list[str]) -> None:
    result = _decode_in_subprocess(*arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage:" in result.stderr


@pytest.mark.parametrize(
    "arguments", [["2A35"], ["--observations"], ["--no-such-flag", "2A35", "00"], ["0x", "00"]]
)
def test_more_usage_errors_in_process(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage:" in captured.err


def test_hex_may_be_split_over_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["2A9D", "0c", "b0 36", "05", "0xf500", "d6-06"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["weight"] == 70.0
    assert document["height"] == 1.75


def test_a_leading_decode_subcommand_is_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["decode", "SFLOAT", "65f0"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == 10.1


def test_observations_flag_with_no_observations(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["2A52", "0101", "--observations"]) == 0
    assert json.loads(capsys.readouterr().out)["observations"] == []


def test_output_is_one_line_of_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["2A35", "1e8a00580078000000041114293b3c00012700", "--observations"]) == 0
    output = capsys.readouterr().out
    assert output.count("\n") == 1
    assert "NaN" not in output
    assert json.loads(output)["status_bits"]["cuff_too_loose"] is True


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    assert "SFLOAT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00bdf0", "00bdf0"),
        ("00 BD f0", "00bdf0"),
        ("00:bd:f0", "00bdf0"),
        ("0x00bdf0", "00bdf0"),
        ("0x00 0xbd 0xf0", "00bdf0"),
        ("", ""),
    ],
)
def test_parse_hex(text: str, expected: str) -> None:
    assert parse_hex(text).hex() == expected


@pytest.mark.parametrize("text", ["a0x5", "0g", "abc"])
def test_parse_hex_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hex(text)
