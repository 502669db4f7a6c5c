"""``python -m gateway_agent decode <CHARACTERISTIC> <HEX>``: decode one characteristic value.

Prints exactly one JSON object on one line to stdout:
- exit 0: the decoded fields (see ``gateway_agent.gatt.to_json_dict``), plus an
  "observations" list of {loinc, unit, value} with ``--observations``;
- exit 1: ``{"invalid": true, "error": "<why>"}`` when the hex or the payload is rejected;
- exit 2: usage errors (missing arguments, unknown characteristic) go to stderr instead.

The hex may contain spaces, colons, dashes or a 0x prefix, and may be split over several
arguments: ``decode 2A35 00:bd:f0 0b 00 9f f0``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from gateway_agent.gatt import (
    SUPPORTED_CHARACTERISTICS,
    GattDecodeError,
    decode,
    normalize_characteristic,
    to_json_dict,
)
from gateway_agent.observations import observations_from

_HEX_SEPARATORS = re.compile(r"[\s:,_-]+")


def _parser() -> argparse.ArgumentParser:
    supported = ", ".join(f"{key} ({name})" for key, name in SUPPORTED_CHARACTERISTICS.items())
    parser = argparse.ArgumentParser(
        prog="python -m gateway_agent decode",
        description="Decode one Bluetooth LE health characteristic value and print it as JSON.",
        epilog=f"Characteristics: {supported}.",
    )
    parser.add_argument(
        "characteristic", help='16-bit UUID such as "2A35" or "0x2a35", or SFLOAT / FLOAT'
    )
    parser.add_argument(
        "hex",
        nargs="+",
        help='the value as hex, e.g. "00bdf00b009ff0" or "00 bd f0 0b 00 9f f0"',
    )
    parser.add_argument(
        "--observations",
        action="store_true",
        help="also list the canonical observations (LOINC code, UCUM unit, value)",
    )
    return parser


def parse_hex(text: str) -> bytes:
    """The bytes of ``text``: hex digits, optionally in groups separated by spaces, colons,
    commas, dashes or underscores, each group optionally prefixed with 0x.

    ValueError when what remains is not an even number of hex digits.
    """
    groups = (group for group in _HEX_SEPARATORS.split(text) if group)
    cleaned = "".join(group[2:] if group[:2] in ("0x", "0X") else group for group in groups)
    if len(cleaned) % 2:
        raise ValueError(f"odd number of hex digits ({len(cleaned)})")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"not hexadecimal: {text!r}") from None


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, allow_nan=False))


def run(argv: list[str]) -> int:
    """Run the decode command; returns the exit status.

    ``argv`` holds the arguments after ``decode``; a leading "decode" itself is skipped, so
    ``run(sys.argv[1:])`` works whether or not the caller strips the subcommand.
    """
    if argv[:1] == ["decode"]:
        argv = argv[1:]
    parser = _parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help (0) and usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else 2
    if normalize_characteristic(arguments.characteristic) is None:
        parser.print_usage(sys.stderr)
        print(
            f"{parser.prog}: unsupported characteristic {arguments.characteristic!r}; "
            f"supported: {', '.join(SUPPORTED_CHARACTERISTICS)}",
            file=sys.stderr,
        )
        return 2
    try:
        payload = parse_hex(" ".join(arguments.hex))
        decoded = decode(arguments.characteristic, payload)
    except (GattDecodeError, ValueError) as error:
        _print_json({"invalid": True, "error": str(error)})
        return 1
    document = to_json_dict(decoded)
    if arguments.observations:
        document["observations"] = [
            {"loinc": observation.loinc, "unit": observation.unit, "value": observation.value}
            for observation in observations_from(decoded)
        ]
    _print_json(document)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
