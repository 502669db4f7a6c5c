"""FHIR R4 (4.0.1) JSON for CareWatch's readings and patients, as plain dicts; no I/O.

- :func:`observations` maps reading rows (as :func:`ingest.readings.patient_readings` returns
  them) to Observations following the R4 vital-signs profiles: one per reading, except that
  the systolic and diastolic readings of one measurement become one blood-pressure panel
  (85354-9) with two components, as the ``bp`` profile requires. The mean arterial pressure of
  that measurement is the panel's third component: LOINC lists 8478-0 among the members of
  85354-9 and the profile's component slicing is open, so one cuff measurement stays one
  resource. A MAP without a systolic/diastolic pair stays an Observation of its own.
- Capillary glucose (41653-7) is not a vital sign (it is in no vital-signs profile, and
  LOINC classes it as chemistry): its category is ``laboratory``, the category of results of
  analyses of a specimen (here capillary blood), whoever ran the analysis.
- The device is not a resource this server serves: an Observation names it by a logical
  reference (``identifier`` plus ``display``), never by a ``reference`` that would not
  resolve.
- :func:`parse_date_filters` turns the ``date`` search parameter into a half-open UTC window.

The resources carry no ``meta.profile``: the R4 body-height profile requires cm or [in_i],
and CareWatch stores metres, so a profile claim would not hold for every resource.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from carewatch_contract.metrics import Loinc, metric_for

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
PATIENT_IDENTIFIER_SYSTEM = "urn:carewatch:patient"
READING_IDENTIFIER_SYSTEM = "urn:carewatch:reading"
DEVICE_IDENTIFIER_SYSTEM = "urn:carewatch:device"
PROGRAM_TAG_SYSTEM = "urn:carewatch:program"

BP_PANEL = "85354-9"
#: The general oxygen-saturation code the R4 ``oxygensat`` profile requires beside 59408-5.
OXYGEN_SATURATION = "2708-6"

#: LOINC's own display (long common name) of each code CareWatch sends; the catalog's shorter
#: name goes into ``code.text``.
LOINC_DISPLAY: dict[str, str] = {
    BP_PANEL: "Blood pressure panel with all children optional",
    Loinc.SYSTOLIC: "Systolic blood pressure",
    Loinc.DIASTOLIC: "Diastolic blood pressure",
    Loinc.MEAN_ARTERIAL_PRESSURE: "Mean blood pressure",
    Loinc.HEART_RATE: "Heart rate",
    Loinc.SPO2: "Oxygen saturation in Arterial blood by Pulse oximetry",
    OXYGEN_SATURATION: "Oxygen saturation in Arterial blood",
    Loinc.BODY_WEIGHT: "Body weight",
    Loinc.BODY_HEIGHT: "Body height",
    Loinc.BMI: "Body mass index (BMI) [Ratio]",
    Loinc.BODY_FAT: "Percentage of body fat Measured",
    Loinc.BODY_TEMPERATURE: "Body temperature",
    Loinc.RESPIRATORY_RATE: "Respiratory rate",
    Loinc.GLUCOSE: "Glucose [Mass/volume] in Capillary blood by Glucometer",
}

#: Metrics whose category is not vital-signs.
_LABORATORY = frozenset({Loinc.GLUCOSE})
_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}

#: Human unit text for a UCUM code (``Quantity.unit``); per metric where one code reads
#: differently (``/min`` is beats for a pulse, breaths for respiration).
_UNIT_TEXT = {
    "mm[Hg]": "mmHg",
    "%": "%",
    "Cel": "°C",
    "[degF]": "°F",
    "kg": "kg",
    "[lb_av]": "lb",
    "g": "g",
    "m": "m",
    "cm": "cm",
    "[in_i]": "in",
    "kg/m2": "kg/m2",
    "mg/dL": "mg/dL",
    "mmol/L": "mmol/L",
    "/min": "/min",
}
_UNIT_TEXT_BY_METRIC: dict[tuple[str, str], str] = {
    (Loinc.HEART_RATE, "/min"): "beats/minute",
    (Loinc.RESPIRATORY_RATE, "/min"): "breaths/minute",
}

_DEVICE_DISPLAY = {
    "blood_pressure": "Blood pressure monitor",
    "pulse_oximeter": "Pulse oximeter",
    "weight_scale": "Weight scale",
    "body_composition": "Body composition scale",
    "thermometer": "Thermometer",
    "glucose_meter": "Glucose meter",
    "heart_rate": "Heart rate sensor",
}

_GATEWAY_TIME_NOTE = (
    "Time of receipt by the gateway: the device gave no usable time of measurement."
)

_MAX_OFFSET = timedelta(hours=14)

#: FHIR's ``id`` datatype.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

_ISSUE_SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
#: The R4 IssueType value set (required binding of OperationOutcome.issue.code).
# fmt: off
_ISSUE_TYPES = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
})
# fmt: on


class FhirError(ValueError):
    """Something that cannot be expressed in FHIR, or a FHIR request that cannot be served."""


class FhirMappingError(FhirError):
    """A row that cannot become a valid FHIR resource (unknown metric, naive time, bad id)."""


class FhirSearchError(FhirError):
    """A search parameter value that is malformed or not supported; the message names it."""


# --- Observations -----------------------------------------------------------------------------


def observations(rows: Iterable[Mapping[str, Any]], *, patient_id: str) -> list[dict[str, Any]]:
    """The Observations of a patient's reading rows, in the rows' order.

    ``rows`` are dicts as :func:`ingest.readings.patient_readings` returns them (reading_id,
    measured_at, loinc, unit, value, time_source, device_id, device_type, measurement_id).
    Each reading becomes one Observation with the reading id as its id, except that a
    measurement with exactly one systolic and one diastolic reading becomes one
    blood-pressure panel whose id is the measurement id, placed where its first reading was;
    its MAP (when it has exactly one) is the panel's third component. A measurement with
    two systolic or two diastolic readings is ambiguous and is not paired. Every reading id
    is kept in ``identifier`` (system ``urn:carewatch:reading``), panels included.

    Raises :class:`FhirMappingError` for a metric outside the catalog, a naive
    ``measured_at``, or an id that is not a FHIR id.
    """
    rows = list(rows)
    subject = {"reference": f"Patient/{_fhir_id(patient_id, 'patient id')}"}
    panels = _bp_panels(rows)
    panel_of = {index: panel for panel, members in enumerate(panels) for index in members}
    emitted: set[int] = set()
    result: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        panel = panel_of.get(index)
        if panel is None:
            result.append(_single_observation(row, subject))
        elif panel not in emitted:
            emitted.add(panel)
            result.append(_panel_observation([rows[i] for i in panels[panel]], subject))
    return result


def _bp_panels(rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The row indexes of each measurement that pairs: systolic, diastolic[, MAP]."""
    by_measurement: dict[str, dict[str, list[int]]] = {}
    for index, row in enumerate(rows):
        if row["loinc"] in (Loinc.SYSTOLIC, Loinc.DIASTOLIC, Loinc.MEAN_ARTERIAL_PRESSURE):
            codes = by_measurement.setdefault(str(row["measurement_id"]), {})
            codes.setdefault(str(row["loinc"]), []).append(index)
    panels: list[list[int]] = []
    for codes in by_measurement.values():
        systolic = codes.get(Loinc.SYSTOLIC, [])
        diastolic = codes.get(Loinc.DIASTOLIC, [])
        mean = codes.get(Loinc.MEAN_ARTERIAL_PRESSURE, [])
        if len(systolic) == 1 and len(diastolic) == 1:
            panels.append(systolic + diastolic + (mean if len(mean) == 1 else []))
    return panels


def _single_observation(row: Mapping[str, Any], subject: dict[str, str]) -> dict[str, Any]:
    loinc = _loinc(row)
    category = "laboratory" if loinc in _LABORATORY else "vital-signs"
    return _observation(
        row,
        resource_id=_fhir_id(str(row["reading_id"]), "reading id"),
        reading_ids=[str(row["reading_id"])],
        category=category,
        code=_code(loinc),
        subject=subject,
        value_quantity=_quantity(row),
    )


def _panel_observation(
    members: Sequence[Mapping[str, Any]], subject: dict[str, str]
) -> dict[str, Any]:
    first = members[0]  # the systolic reading: its time, device and time source stand
    panel = {
        "coding": [{"system": LOINC_SYSTEM, "code": BP_PANEL, "display": LOINC_DISPLAY[BP_PANEL]}],
        "text": "Blood pressure",
    }
    return _observation(
        first,
        resource_id=_fhir_id(str(first["measurement_id"]), "measurement id"),
        reading_ids=[str(m["reading_id"]) for m in members],
        category="vital-signs",
        code=panel,
        subject=subject,
        components=[{"code": _code(_loinc(m)), "valueQuantity": _quantity(m)} for m in members],
    )


def _observation(
    row: Mapping[str, Any],
    *,
    resource_id: str,
    reading_ids: list[str],
    category: str,
    code: dict[str, Any],
    subject: dict[str, str],
    value_quantity: dict[str, Any] | None = None,
    components: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An Observation in the element order of the specification; ``row`` gives its time,
    time source and device."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "identifier": [{"system": READING_IDENTIFIER_SYSTEM, "value": r} for r in reading_ids],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY_SYSTEM,
                        "code": category,
                        "display": _CATEGORY_DISPLAY[category],
                    }
                ]
            }
        ],
        "code": code,
        "subject": subject,
        "effectiveDateTime": _fhir_datetime(row["measured_at"]),
    }
    if value_quantity is not None:
        resource["valueQuantity"] = value_quantity
    if str(row.get("time_source")) == "gateway":
        resource["note"] = [{"text": _GATEWAY_TIME_NOTE}]
    device = _device(row)
    if device is not None:
        resource["device"] = device
    if components is not None:
        resource["component"] = components
    return resource


def _loinc(row: Mapping[str, Any]) -> str:
    loinc = str(row["loinc"])
    if metric_for(loinc) is None or loinc not in LOINC_DISPLAY:
        raise FhirMappingError(
            f"reading {row.get('reading_id')}: LOINC {loinc!r} is not a metric CareWatch carries"
        )
    return loinc


def _code(loinc: str) -> dict[str, Any]:
    """The CodeableConcept of a catalog metric (SpO2 also carries 2708-6)."""
    metric = metric_for(loinc)
    assert metric is not None  # checked by _loinc
    coding = [{"system": LOINC_SYSTEM, "code": loinc, "display": LOINC_DISPLAY[loinc]}]
    if loinc == Loinc.SPO2:
        coding.append(
            {
                "system": LOINC_SYSTEM,
                "code": OXYGEN_SATURATION,
                "display": LOINC_DISPLAY[OXYGEN_SATURATION],
            }
        )
    return {"coding": coding, "text": metric.display}


def _quantity(row: Mapping[str, Any]) -> dict[str, Any]:
    value = row["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FhirMappingError(f"reading {row.get('reading_id')}: value {value!r} is not a number")
    unit = str(row["unit"])
    text = _UNIT_TEXT_BY_METRIC.get((str(row["loinc"]), unit), _UNIT_TEXT.get(unit, unit))
    return {"value": value, "unit": text, "system": UCUM_SYSTEM, "code": unit}


def _device(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A logical reference to the device (no Device resource is served)."""
    device_id = row.get("device_id")
    if not device_id:
        return None
    device_type = str(row.get("device_type") or "")
    display = _DEVICE_DISPLAY.get(device_type, device_type.replace("_", " ").capitalize())
    reference: dict[str, Any] = {
        "identifier": {"system": DEVICE_IDENTIFIER_SYSTEM, "value": str(device_id)}
    }
    if display:
        reference["display"] = display
    return reference


def _fhir_datetime(value: datetime) -> str:
    """ISO 8601 with the value's own offset (``Z`` for UTC); in UTC where the offset is one a
    FHIR dateTime cannot carry (seconds, or beyond ±14:00)."""
    offset = value.utcoffset() if isinstance(value, datetime) else None
    if offset is None:
        raise FhirMappingError(f"time {value!r} is not a datetime with a time zone")
    if offset.seconds % 60 or offset.microseconds or abs(offset) > _MAX_OFFSET:
        value, offset = value.astimezone(UTC), timedelta(0)
    text = value.isoformat()
    return text.removesuffix("+00:00") + "Z" if not offset else text


def _fhir_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _FHIR_ID.fullmatch(value):
        raise FhirMappingError(
            f"{what} {value!r} is not a FHIR id (1-64 of A-Z, a-z, 0-9, '-' and '.')"
        )
    return value


# --- Patient, Bundle, OperationOutcome ---------------------------------------------------------


def patient_resource(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Patient from a patients row (patient_id, display_name, birth_date, phone, program).

    The name is kept whole as ``name.text``: splitting a display name into family and given
    names would be a guess. The care program is a ``meta.tag`` (system
    ``urn:carewatch:program``); FHIR's Patient has no element for it.
    """
    patient_id = _fhir_id(str(row["patient_id"]), "patient id")
    resource: dict[str, Any] = {"resourceType": "Patient", "id": patient_id}
    program = row.get("program")
    if program:
        resource["meta"] = {"tag": [{"system": PROGRAM_TAG_SYSTEM, "code": str(program)}]}
    resource["identifier"] = [{"system": PATIENT_IDENTIFIER_SYSTEM, "value": patient_id}]
    name = (row.get("display_name") or "").strip()
    if name:
        resource["name"] = [{"text": name}]
    phone = (row.get("phone") or "").strip()
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone}]
    birth_date = row.get("birth_date")
    if birth_date is not None:
        if isinstance(birth_date, datetime) or not isinstance(birth_date, date):
            raise FhirMappingError(f"patient {patient_id}: birth_date {birth_date!r} is not a date")
        resource["birthDate"] = birth_date.isoformat()
    return resource


def searchset_bundle(
    resources: Sequence[Mapping[str, Any]], *, self_url: str, base_url: str | None = None
) -> dict[str, Any]:
    """A searchset Bundle of ``resources`` (all search matches), ``total`` their number.

    ``self_url`` is the absolute URL of the search. Each entry's ``fullUrl`` is
    ``{base_url}/{resourceType}/{id}``; without ``base_url`` the base is ``self_url`` less its
    query and last path segment, which is right for a type-level search such as
    ``https://host/fhir/Observation?patient=p1``; pass ``base_url`` for any other form.
    """
    parts = urlsplit(self_url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"self_url {self_url!r} is not an absolute URL")
    if base_url is None:
        path = parts.path.rstrip("/").removesuffix("/_search")
        base_url = urlunsplit((parts.scheme, parts.netloc, path.rpartition("/")[0], "", ""))
    base_url = base_url.rstrip("/")
    entries = []
    for resource in resources:
        kind, resource_id = resource.get("resourceType"), resource.get("id")
        if not kind or not resource_id:
            raise FhirMappingError("a Bundle entry needs a resource with resourceType and id")
        entries.append(
            {
                "fullUrl": f"{base_url}/{kind}/{resource_id}",
                "resource": dict(resource),
                "search": {"mode": "match"},
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": self_url}],
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome with one issue, e.g. ``("error", "invalid", "date: ...")``.

    ``severity`` is fatal, error, warning or information; ``code`` is an R4 IssueType code
    (invalid, not-found, not-supported, forbidden, exception...). Anything else raises
    ``ValueError``: it is the caller's mistake, not the client's.
    """
    if severity not in _ISSUE_SEVERITIES:
        raise ValueError(f"issue severity {severity!r} is not one of {sorted(_ISSUE_SEVERITIES)}")
    if code not in _ISSUE_TYPES:
        raise ValueError(f"issue code {code!r} is not an R4 IssueType code")
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# --- The date search parameter -----------------------------------------------------------------

_PREFIXES = frozenset({"eq", "ge", "gt", "le", "lt"})
_DATE_VALUE = re.compile(
    r"(?P<prefix>[a-z]{2})?"
    r"(?P<year>[0-9]{4})"
    r"(?:-(?P<month>[0-9]{2})"
    r"(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<offset>Z|[+-][0-9]{2}:[0-9]{2})?"
    r")?)?)?"
)
#: A '+' of an offset that a query string decoded as a space: "...T10:00:00 01:00".
_PLUS_AS_SPACE = re.compile(r"(T[0-9:.]+) ([0-9]{2}:[0-9]{2})$")
_FORMS = "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.s]][Z|+hh:mm|-hh:mm]"


def parse_date_filters(
    values: Sequence[str], *, tz: tzinfo = UTC
) -> tuple[datetime | None, datetime | None]:
    """The half-open UTC window ``[since, until)`` of FHIR ``date`` search values.

    Each value is ``[prefix]YYYY``, ``-MM``, ``-DD``, or a dateTime (``Thh:mm``, seconds and
    fraction optional, offset ``Z`` or ``+hh:mm``); its precision makes it a range (a year, a
    month, a day, a minute, a second...). Values without an offset are in ``tz`` (UTC by
    default). Prefixes, for readings that are points in time, per FHIR search rules:

    - ``eq`` (or none): within the range; ``ge``: from its start; ``gt``: from its end;
    - ``le``: before its end (so ``le2026-11-01`` includes the whole day); ``lt``: before its
      start.

    Several values all apply (AND): the window is their intersection, ``None`` where
    unbounded. A window whose ``since`` is not before ``until`` matches nothing.

    Raises :class:`FhirSearchError` naming the value for another prefix (ne, sa, eb, ap), a
    malformed value or an impossible date.
    """
    if isinstance(values, str):
        raise TypeError("parse_date_filters takes a list of values, not one string")
    since: datetime | None = None
    until: datetime | None = None
    for value in values:
        prefix, start, end = _date_range(value, tz)
        low = {"eq": start, "ge": start, "gt": end}.get(prefix)
        high = {"eq": end, "le": end, "lt": start}.get(prefix)
        if low is not None and (since is None or low > since):
            since = low
        if high is not None and (until is None or high < until):
            until = high
    return since, until


def _date_range(value: str, tz: tzinfo) -> tuple[str, datetime, datetime]:
    """(prefix, start, end) of one date search value, in UTC."""
    if not isinstance(value, str):
        raise FhirSearchError(f"date: {value!r} is not a string")
    text = _PLUS_AS_SPACE.sub(r"\1+\2", value)
    match = _DATE_VALUE.fullmatch(text)
    if match is None:
        raise FhirSearchError(f"date: {value!r} is not a FHIR date ({_FORMS})")
    prefix = match["prefix"] or "eq"
    if prefix not in _PREFIXES:
        raise FhirSearchError(
            f"date: prefix {prefix!r} of {value!r} is not supported (eq, ge, gt, le, lt)"
        )
    fraction = match["fraction"] or ""
    if len(fraction) > 6:
        raise FhirSearchError(f"date: {value!r} is more precise than microseconds")
    zone = _offset(match["offset"], value) if match["offset"] else tz
    try:
        start, end = _bounds(match, fraction, zone)
        return prefix, start.astimezone(UTC), end.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise FhirSearchError(f"date: {value!r} is not a valid date or time ({exc})") from None


def _bounds(match: re.Match[str], fraction: str, zone: tzinfo) -> tuple[datetime, datetime]:
    """Start and end of the range a matched value's precision spans (wall clock in zone)."""
    year = int(match["year"])
    if match["month"] is None:
        return datetime(year, 1, 1, tzinfo=zone), datetime(year + 1, 1, 1, tzinfo=zone)
    month = int(match["month"])
    if match["day"] is None:
        start = datetime(year, month, 1, tzinfo=zone)
        return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    start = datetime(year, month, int(match["day"]), tzinfo=zone)
    if match["hour"] is None:
        step = timedelta(days=1)
    else:
        start = start.replace(
            hour=int(match["hour"]),
            minute=int(match["minute"]),
            second=int(match["second"] or 0),
            microsecond=int(fraction.ljust(6, "0")) if fraction else 0,
        )
        if match["second"] is None:
            step = timedelta(minutes=1)
        else:
            step = timedelta(microseconds=10 ** (6 - len(fraction)))
    # Wall-clock arithmetic: in a zone with daylight saving a day may last 23 or 25 hours.
    return start, start + step


def _offset(text: str, value: str) -> tzinfo:
    if text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if minutes > 59 or timedelta(hours=hours, minutes=minutes) > _MAX_OFFSET:
        raise FhirSearchError(f"date: offset {text!r} of {value!r} is out of range (±14:00)")
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
