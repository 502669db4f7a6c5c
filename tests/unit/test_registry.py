"""The device registry: loading, validation messages, enrolment and its atomic write."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from carewatch_contract.messages import DeviceType
from gateway_agent.devices import EnrolledDevice
from gateway_agent.registry import (
    RegistryEntry,
    RegistryError,
    enroll,
    load_entries,
    load_registry,
    toml_string,
    unenroll,
)

GOOD = """
# a comment the operator wrote
[[devices]]
address = "c0:ff:ee:00:01:03"
type = "blood_pressure"
patient_id = "patient-1"
name = "Cuff"

[[devices]]
address = "C0:FF:EE:00:02:01"
type = "glucose_meter"
patient_id = "patient-2"
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "devices.toml"


def test_a_missing_file_is_an_empty_registry(path: Path) -> None:
    assert load_registry(path) == []
    assert not path.exists()


def test_load_gives_enrolled_devices_with_upper_case_addresses(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    assert load_registry(path) == [
        EnrolledDevice("C0:FF:EE:00:01:03", DeviceType.BLOOD_PRESSURE, "patient-1"),
        EnrolledDevice("C0:FF:EE:00:02:01", DeviceType.GLUCOSE_METER, "patient-2"),
    ]
    assert [e.name for e in load_entries(path)] == ["Cuff", None]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            'address = "C0:FF:EE:00:01:03"\ntype = "toaster"\npatient_id = "p"',
            "device entry 1 (C0:FF:EE:00:01:03): field 'type': unknown device type 'toaster'",
        ),
        (
            'address = "C0:FF:EE:00:01"\ntype = "thermometer"\npatient_id = "p"',
            "device entry 1 (C0:FF:EE:00:01): field 'address': 'C0:FF:EE:00:01' is not a "
            "Bluetooth address",
        ),
        (
            'address = "C0:FF:EE:00:01:03"\ntype = "thermometer"',
            "device entry 1 (C0:FF:EE:00:01:03): field 'patient_id' is missing",
        ),
        (
            'address = "C0:FF:EE:00:01:03"\ntype = "thermometer"\npatient_id = "  "',
            "field 'patient_id' is empty",
        ),
        (
            'address = "C0:FF:EE:00:01:03"\ntype = "thermometer"\npatient_id = 7',
            "field 'patient_id' must be a string",
        ),
        ('type = "thermometer"\npatient_id = "p"', "device entry 1: field 'address' is missing"),
        (
            'address = "C0:FF:EE:00:01:03"\ntype = "thermometer"\npatient = "p"',
            "device entry 1 (C0:FF:EE:00:01:03): unknown field(s) patient",
        ),
        (
            f'address = "C0:FF:EE:00:01:03"\ntype = "thermometer"\npatient_id = "{"x" * 65}"',
            "field 'patient_id' is longer than 64 characters",
        ),
    ],
)
def test_an_invalid_entry_names_the_entry_and_the_field(
    path: Path, entry: str, expected: str
) -> None:
    path.write_text(f"[[devices]]\n{entry}\n", encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)


def test_a_duplicate_address_names_both_entries(path: Path) -> None:
    path.write_text(
        GOOD + '\n[[devices]]\naddress = "C0:FF:EE:00:01:03"\ntype = "thermometer"\n'
        'patient_id = "patient-3"\n',
        encoding="utf-8",
    )
    with pytest.raises(RegistryError, match=r"device entry 3 .*already enrolled in device entry 1"):
        load_registry(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[devices]\n", "not valid TOML"),
        ('devices = "C0:FF:EE:00:01:03"\n', "'devices' must be a list"),
        ('[[device]]\naddress = "C0:FF:EE:00:01:03"\n', "unknown top-level key(s) device"),
        ("devices = [1]\n", "device entry 1: must be a table"),
    ],
)
def test_a_malformed_file_is_a_registry_error(path: Path, text: str, expected: str) -> None:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert expected in str(caught.value)


def test_enroll_creates_the_file_readable_by_its_owner_only(path: Path) -> None:
    entry = enroll(
        path, address="c0:ff:ee:00:01:03", device_type=DeviceType.BLOOD_PRESSURE, patient_id="p1"
    )
    assert entry == RegistryEntry("C0:FF:EE:00:01:03", DeviceType.BLOOD_PRESSURE, "p1")
    assert load_entries(path) == [entry]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_enroll_appends_and_keeps_comments_and_entries(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    path.chmod(0o640)  # the operator's own mode is kept
    enroll(path, address="C0:FF:EE:00:03:01", device_type="thermometer", patient_id="patient-1")
    text = path.read_text(encoding="utf-8")
    assert text.startswith(GOOD)
    assert "# a comment the operator wrote" in text
    assert [d.device_id for d in load_registry(path)] == [
        "C0:FF:EE:00:01:03",
        "C0:FF:EE:00:02:01",
        "C0:FF:EE:00:03:01",
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_enroll_rewrites_a_registry_that_cannot_be_appended_to(path: Path) -> None:
    path.write_text(
        'devices = [{address = "C0:FF:EE:00:01:03", type = "heart_rate", patient_id = "p"}]\n',
        encoding="utf-8",
    )
    enroll(path, address="C0:FF:EE:00:01:04", device_type="heart_rate", patient_id="q")
    assert [d.device_id for d in load_registry(path)] == ["C0:FF:EE:00:01:03", "C0:FF:EE:00:01:04"]


def test_enroll_refuses_a_duplicate_address_in_any_case(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(RegistryError, match="C0:FF:EE:00:01:03 is already enrolled"):
        enroll(path, address="c0:FF:ee:00:01:03", device_type="thermometer", patient_id="p9")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"address": "nope", "device_type": "thermometer", "patient_id": "p"}, "'address'"),
        ({"address": "C0:FF:EE:00:01:09", "device_type": "oven", "patient_id": "p"}, "'type'"),
        (
            {"address": "C0:FF:EE:00:01:09", "device_type": "thermometer", "patient_id": ""},
            "'patient_id'",
        ),
    ],
)
def test_enroll_validates_the_new_entry_and_writes_nothing(
    path: Path, fields: dict[str, str], expected: str
) -> None:
    with pytest.raises(RegistryError, match=f"new entry: field {expected}"):
        enroll(path, **fields)  # type: ignore[arg-type]
    assert not path.exists()


def test_enroll_refuses_to_touch_a_malformed_registry(path: Path) -> None:
    path.write_text("[[devices]\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid TOML"):
        enroll(path, address="C0:FF:EE:00:01:09", device_type="thermometer", patient_id="p")
    assert path.read_text(encoding="utf-8") == "[[devices]\n"


def test_enroll_writes_atomically_leaving_no_temporary_file(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    original = path.stat().st_ino
    enroll(path, address="C0:FF:EE:00:03:01", device_type="thermometer", patient_id="p")
    assert path.stat().st_ino != original  # a new file renamed over the old one
    assert sorted(p.name for p in path.parent.iterdir()) == ["devices.toml"]


def test_a_name_that_is_not_text_is_refused_before_writing(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(RegistryError, match="field 'name' must be a string"):
        enroll(
            path,
            address="C0:FF:EE:00:03:01",
            device_type="thermometer",
            patient_id="p",
            name=7,  # type: ignore[arg-type]
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["devices.toml"]


@pytest.mark.parametrize(
    "value",
    ['quote " and back\\slash', "tab\tnew\nline\r", "ctrl \x01 \x1f del \x7f", "ünïcødé ✓", ""],
)
def test_strings_round_trip_through_toml(path: Path, value: str) -> None:
    assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value
    if value:
        enroll(
            path,
            address="C0:FF:EE:00:03:01",
            device_type="thermometer",
            patient_id="p-1",
            name=value,
        )
        assert load_entries(path)[0].name == value


def test_unenroll_removes_one_device_and_keeps_the_others_and_the_mode(path: Path) -> None:
    path.write_text(GOOD, encoding="utf-8")
    path.chmod(0o600)
    removed = unenroll(path, address="c0:ff:ee:00:01:03")
    assert (removed.address, removed.patient_id) == ("C0:FF:EE:00:01:03", "patient-1")
    assert [e.address for e in load_entries(path)] == ["C0:FF:EE:00:02:01"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(RegistryError, match="no device with address C0:FF:EE:00:01:03"):
        unenroll(path, address="C0:FF:EE:00:01:03")
    assert [e.address for e in load_entries(path)] == ["C0:FF:EE:00:02:01"]
