"""Every GATT vector (tests/data, a copy of ../shared/data), through the decoders and JSON.

The expected dict of a vector is a subset of the JSON form: each expected key must be present
and equal as a whole value (timestamps and status bits compared as whole objects). Under
``raw`` the expected integers are compared with the decoder's raw (unscaled) field view.
``{"invalid": true}`` vectors must be rejected with GattDecodeError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway_agent.gatt import GattDecodeError, decode, to_json_dict

# The team's vectors live in ../shared/data/gatt_vectors.json; the project keeps a copy so
# that its tests run from a clone alone. When the shared file is there, the copy must match.
VECTORS_PATH = Path(__file__).resolve().parents[1] / "data" / "gatt_vectors.json"
SHARED_VECTORS_PATH = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gatt_vectors.json"
)


def _load_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return vectors


VECTORS = _load_vectors()


def _vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['characteristic_uuid']}-{vector['hex']}"


def test_the_vectors_file_has_every_vector() -> None:
    assert len(VECTORS) == 35
    assert {vector["characteristic_uuid"] for vector in VECTORS} == {
        "2A35",
        "2A37",
        "2A1C",
        "SFLOAT",
        "FLOAT",
        "2A18",
        "2A52",
        "2A9D",
        "2A5E",
        "2A5F",
        "2A9C",
    }


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_vector(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    if expected.get("invalid") is True:
        with pytest.raises(GattDecodeError) as rejected:
            decode(vector["characteristic_uuid"], payload)
        assert vector["characteristic_uuid"] in str(rejected.value)
        return
    decoded_json = to_json_dict(decode(vector["characteristic_uuid"], payload))
    missing = sorted(set(expected) - set(decoded_json))
    assert not missing, f"decoder does not report {missing}"
    different = {
        key: {"expected": value, "decoded": decoded_json[key]}
        for key, value in expected.items()
        if decoded_json[key] != value
    }
    assert not different, different


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_vector_json_form_is_plain_json(vector: dict[str, Any]) -> None:
    if vector["expected"].get("invalid") is True:
        return
    decoded_json = to_json_dict(decode(vector["characteristic_uuid"], bytes.fromhex(vector["hex"])))
    assert json.loads(json.dumps(decoded_json, allow_nan=False)) == decoded_json
    assert decoded_json["characteristic"] == vector["characteristic_uuid"]


@pytest.mark.parametrize(
    "spelling",
    ["2A35", "2a35", "0x2A35", "0X2a35", " 2A35 ", "00002a35-0000-1000-8000-00805f9b34fb"],
)
def test_characteristic_spellings(spelling: str) -> None:
    decoded = decode(spelling, bytes.fromhex("00bdf00b009ff0"))
    assert to_json_dict(decoded)["systolic"] == 18.9


@pytest.mark.parametrize("spelling", ["sfloat", "SFloat", "float", "FLOAT"])
def test_bare_number_spellings(spelling: str) -> None:
    payload = bytes(4) if spelling.lower() == "float" else bytes(2)
    assert to_json_dict(decode(spelling, payload))["value"] == 0


@pytest.mark.parametrize("characteristic", ["2A99", "", "0x", "2A3", "heart rate"])
def test_unknown_characteristic_is_a_decode_error(characteristic: str) -> None:
    with pytest.raises(GattDecodeError, match="unsupported characteristic"):
        decode(characteristic, b"\x00\x00")


@pytest.mark.parametrize(
    ("characteristic", "hex_payload", "message"),
    [
        ("2A35", "", "2A35: 0 bytes, need at least 7 (flags + 3 SFLOAT)"),
        ("2A35", "1e8a0058007800", "flags 0x1E need exactly 19"),
        ("2A35", "00bdf00b009ff000", "1 byte trailing"),
        ("2A37", "10", "need at least 2"),
        ("2A37", "1055", "RR-interval flag set but no RR interval follows"),
        ("2A37", "10550102ff", "odd number of bytes"),
        ("2A1C", "06b00e00fe", "flags 0x06 need exactly 13"),
        ("2A18", "0001", "need at least 10"),
        ("2A52", "07", "need at least 2"),
        ("2A52", "0700", "unknown op code 7"),
        ("2A52", "0107", "unknown operator 7"),
        ("2A52", "010303", "unknown filter type 3"),
        ("2A52", "0103010a", "needs exactly 5"),
        ("2A52", "060001", "needs exactly 4"),
        ("2A9D", "00ff", "need at least 3"),
        ("2A9C", "0000", "need at least 4"),
        ("2A5E", "01acf3bef5", "flags 0x01 need exactly 12"),
        ("2A5F", "01e8f384f3", "flags 0x01 need exactly 9"),
        ("SFLOAT", "65", "need exactly 2"),
        ("FLOAT", "87d612fe00", "need exactly 4"),
    ],
)
def test_rejections_say_what_is_wrong(characteristic: str, hex_payload: str, message: str) -> None:
    with pytest.raises(GattDecodeError, match=re.escape(message)):
        decode(characteristic, bytes.fromhex(hex_payload))


def test_rfu_flag_bits_are_ignored() -> None:
    # Real cuffs send flags 0xDE: b6 and b7 are RFU on top of timestamp, pulse, user, status.
    standard = bytes.fromhex("1e8a00580078000000041114293b3c00012700")
    with_rfu = bytes((0xDE,)) + standard[1:]
    assert to_json_dict(decode("2A35", with_rfu)) == to_json_dict(decode("2A35", standard))


def test_accepts_bytearray_as_bleak_delivers_it() -> None:
    payload = bytearray.fromhex("0facf3bef5e8070b1d170839204022000066e3")
    assert to_json_dict(decode("2A5E", payload))["spo2"] == 94.0


@pytest.mark.skipif(not SHARED_VECTORS_PATH.is_file(), reason="no ../shared beside the clone")
def test_the_projects_copy_of_the_vectors_is_the_shared_file() -> None:
    shared = json.loads(SHARED_VECTORS_PATH.read_text(encoding="utf-8"))
    assert shared == VECTORS, "update tests/data/gatt_vectors.json from ../shared/data"
