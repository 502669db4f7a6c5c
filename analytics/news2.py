"""Home NEWS2: the National Early Warning Score 2 over sets of home vital-sign readings.

Pure core: frames in, one scored row per observation set out. No I/O, no logging, no database.

Scoring (Royal College of Physicians, National Early Warning Score (NEWS) 2, 2017; the chart is
copied in ../shared/CLINICAL.md, section NEWS2). Each of seven parameters scores 0-3:

================  =======  ======  =========  ================  =========  ========  ==========
parameter         3        2       1          0                 1          2         3
================  =======  ======  =========  ================  =========  ========  ==========
respiration /min  <= 8             9-11       12-20                        21-24     >= 25
SpO2 scale 1 %    <= 91    92-93   94-95      >= 96
SpO2 scale 2 %    <= 83    84-85   86-87      88-92; >= 93 air  93-94 O2   95-96 O2  >= 97 O2
air or oxygen              oxygen             air
systolic mmHg     <= 90    91-100  101-110    111-219                                >= 220
pulse /min        <= 40            41-50      51-90             91-110     111-130   >= 131
consciousness                                 alert                                  C, V, P, U
temperature C     <= 35.0          35.1-36.0  36.1-38.0         38.1-39.0  >= 39.1
================  =======  ======  =========  ================  =========  ========  ==========

SpO2 scale 2 applies only to patients a clinician put on it (``patients.spo2_scale == 2``);
everybody else is on scale 1. Whether a patient breathes air or supplemental oxygen comes from
the patient record (``patients.on_oxygen``), never from a reading, so it is always known.

Each chart row is a :class:`ChartRow`: ascending edges and the score of each band between
them. The chart is written at its resolution (whole numbers; temperature to 0.1 C); a value
between two of its numbers lands in a band as follows:

- respiration, pulse, temperature, consciousness, air or oxygen: an edge is the *upper end* of
  the band below it (respiration <= 8 -> 3, <= 11 -> 1, <= 20 -> 0, <= 24 -> 2, else 3;
  temperature <= 35.0 -> 3, <= 36.0 -> 1, <= 38.0 -> 0, <= 39.0 -> 1, else 2; so 36.05 C
  scores 0 and 38.05 C scores 1);
- SpO2 (both scales) and systolic: an edge is the *lower start* of the band above it
  (scale 1: < 92 -> 3, < 94 -> 2, < 96 -> 1, else 0; systolic < 91 -> 3, < 101 -> 2,
  < 111 -> 1, < 220 -> 0, else 3), as in the ``below`` limits of the threshold rules.

Every comparison allows :data:`EDGE_TOLERANCE` (1e-9), so a value that is an edge up to float
representation (100.4 F converted to 38.00000000000001 C) lands as the chart says.
Consciousness is the ACVPU level a person entered (LOINC 67775-7): 0 is Alert and scores 0;
any other level (>= 1: new Confusion, Voice, Pain, Unresponsive) scores 3. A level above 0
but below 1 is not Alert either and scores 3.

Response (RCP 2017): aggregate 0 -> ``none``; 1-4 -> ``low``, or ``low_single_3`` when one
parameter scores 3 (urgent review); 5-6 -> ``medium`` (urgent review within 1 h); 7 or more
-> ``high`` (emergency review within 30 min). See :data:`BANDS` and :data:`BAND_RESPONSES`.

Observation sets: one patient's readings are grouped greedily from the earliest. A set starts
at the patient's earliest reading not yet in a set and holds every reading measured at most
``window`` later (inclusive); the first reading after that starts the next set. So with a
30-minute window, readings 0, 29, 30 and 31 minutes after a start form the sets {0, 29, 30}
and {31, ...}; sets never span patients. Within a set each parameter takes its most recent
value (a repeated measurement supersedes the earlier one); readings measured at the same
instant are ordered by reading id as text, the largest winning (then by value, so that the
result never depends on row order).

Partial scores: at home, respiration rate and consciousness are usually not measured. A set
lacking any of the seven parameters is ``partial``: its score is the sum over the parameters
it had, a lower bound of the full score, and ``parameters`` lists exactly those. A partial score
must never be presented as a full one (../shared/CLINICAL.md). Air or oxygen is always known,
but it alone does not make a set: a set needs at least one measured parameter.

Input rows that count: the six LOINC codes of :data:`LOINC_TO_PARAMETER`, with a value and a
time. Rows with other codes, a missing value, a missing time or a missing patient are ignored.
Rows repeating a reading id are the same reading delivered again; they share the time, code and
value of the first, so they change no set and are counted once. Reading ids are compared and
returned as text. They are not hashed to reconcile one id reused for *different* readings (a
corrupt feed): hashing two million ids would cost about as much as the rest of the scoring.

Cost: no Python loop runs per reading. Sorting the readings by patient and time is the only
O(n log n) step; sets, the latest value of each parameter and the scores are numpy operations
over all rows. The output's per-set dicts and tuples are Python objects, built one combination
of parameters at a time; for large inputs they take about half of the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import repeat
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from carewatch_contract.metrics import Loinc

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: The seven NEWS2 parameters, in the chart's (and every output's) order.
PARAMETERS: Final[tuple[str, ...]] = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic",
    "pulse",
    "consciousness",
    "temperature",
)
#: The parameters that come from readings (all but air or oxygen, which the patient record gives).
MEASURED_PARAMETERS: Final[tuple[str, ...]] = tuple(
    name for name in PARAMETERS if name != "air_or_oxygen"
)
#: ACVPU level entered by a person: 0 = Alert, >= 1 = new Confusion, Voice, Pain, Unresponsive.
CONSCIOUSNESS_LOINC: Final = "67775-7"
#: The LOINC codes NEWS2 reads, and the parameter each gives.
LOINC_TO_PARAMETER: Final[Mapping[str, str]] = {
    str(Loinc.RESPIRATORY_RATE): "respiration_rate",
    str(Loinc.SPO2): "spo2",
    str(Loinc.SYSTOLIC): "systolic",
    str(Loinc.HEART_RATE): "pulse",
    CONSCIOUSNESS_LOINC: "consciousness",
    str(Loinc.BODY_TEMPERATURE): "temperature",
}
#: Response bands, least urgent first.
BANDS: Final[tuple[str, ...]] = ("none", "low", "low_single_3", "medium", "high")
#: What each response band asks for (RCP NEWS2 2017 clinical response, shortened).
BAND_RESPONSES: Final[Mapping[str, str]] = {
    "none": "aggregate 0: routine monitoring",
    "low": "aggregate 1-4: assessment by a registered nurse, who decides on closer monitoring",
    "low_single_3": "a single parameter scoring 3: urgent review",
    "medium": "aggregate 5-6: urgent review within 1 hour",
    "high": "aggregate 7 or more: emergency review within 30 minutes",
}
SPO2_SCALES: Final[tuple[int, ...]] = (1, 2)
DEFAULT_WINDOW: Final = pd.Timedelta(minutes=30)
#: A value within this of a chart edge counts as the edge (float representation, unit conversion).
EDGE_TOLERANCE: Final = 1e-9

#: Columns :func:`score_sets` needs in ``readings`` (others are ignored).
READING_COLUMNS: Final[tuple[str, ...]] = (
    "reading_id",
    "patient_id",
    "loinc",
    "value",
    "measured_at",
)
#: Columns :func:`score_sets` needs in ``patients`` (others are ignored).
PATIENT_COLUMNS: Final[tuple[str, ...]] = ("patient_id", "spo2_scale", "on_oxygen")
#: Columns of the frame :func:`score_sets` returns, in order.
SET_COLUMNS: Final[tuple[str, ...]] = (
    "patient_id",
    "set_start",
    "at",
    "score",
    "band",
    "partial",
    "parameters",
    "sub_scores",
    "values",
    "reading_ids",
    "spo2_scale",
)

_UTC_NS: Final = pd.DatetimeTZDtype(unit="ns", tz="UTC")
_NAT: Final = np.iinfo(np.int64).min  # what NaT is as int64 nanoseconds
#: Runs of readings longer than the window are laid end to end on one int64 time line (ns);
#: a new block of that line starts once it passes this.
_CHAIN_BLOCK_NS: Final = float(2**61)
#: Sets whose reading ids are sorted together (see :func:`_sorted_id_tuples`).
_ID_BLOCK_ROWS: Final = 256


# --- the chart ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChartRow:
    """One row of the NEWS2 chart: a value's score as a step function of the value.

    ``edges`` ascend; ``scores`` has one more entry: a value below the first edge scores
    ``scores[0]`` and a value past edge ``i`` scores ``scores[i + 1]``. ``edge_in`` says where a
    value equal to an edge belongs: ``"lower"`` when the chart writes the edge as the upper end
    of the band below it (``<= 8``), ``"upper"`` when it is the lower start of the band above it
    (``>= 96``, i.e. ``< 96`` stays below). Equality allows :data:`EDGE_TOLERANCE`.
    """

    edges: tuple[float, ...]
    scores: tuple[int, ...]
    edge_in: Literal["lower", "upper"]

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.edges) + 1:
            raise ValueError("a chart row needs exactly one more score than edges")
        if any(low >= high for low, high in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("chart edges must be strictly ascending")

    @property
    def cut_points(self) -> tuple[float, ...]:
        """Edges moved by the tolerance: a value strictly above cut point ``i`` is past edge
        ``i``."""
        shift = EDGE_TOLERANCE if self.edge_in == "lower" else -EDGE_TOLERANCE
        return tuple(edge + shift for edge in self.edges)

    def score(self, value: float) -> int:
        """The score of one value (the scalar twin of :meth:`scores_of`)."""
        if math.isnan(value):
            raise ValueError("a NEWS2 parameter cannot score a missing value (NaN)")
        passed = sum(1 for cut in self.cut_points if value > cut)
        return self.scores[passed]

    def scores_of(self, values: npt.ArrayLike) -> IntArray:
        """The scores of many values at once; NaN is refused as in :meth:`score`."""
        array = np.asarray(values, dtype=np.float64)
        if np.isnan(array).any():
            raise ValueError("a NEWS2 parameter cannot score a missing value (NaN)")
        passed = np.searchsorted(np.asarray(self.cut_points), array, side="left")
        return np.asarray(self.scores, dtype=np.int64)[passed]


_RESPIRATION_RATE: Final = ChartRow((8, 11, 20, 24), (3, 1, 0, 2, 3), "lower")
_SPO2_SCALE_1: Final = ChartRow((92, 94, 96), (3, 2, 1, 0), "upper")
_SPO2_SCALE_2_ON_AIR: Final = ChartRow((84, 86, 88), (3, 2, 1, 0), "upper")
_SPO2_SCALE_2_ON_OXYGEN: Final = ChartRow((84, 86, 88, 93, 95, 97), (3, 2, 1, 0, 1, 2, 3), "upper")
#: Air or oxygen as a value: 0.0 on air, 1.0 on supplemental oxygen.
_AIR_OR_OXYGEN: Final = ChartRow((0,), (0, 2), "lower")
_SYSTOLIC: Final = ChartRow((91, 101, 111, 220), (3, 2, 1, 0, 3), "upper")
_PULSE: Final = ChartRow((40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3), "lower")
_CONSCIOUSNESS: Final = ChartRow((0,), (0, 3), "lower")
_TEMPERATURE: Final = ChartRow((35.0, 36.0, 38.0, 39.0), (3, 1, 0, 1, 2), "lower")
_ROW_OF_PARAMETER: Final[Mapping[str, ChartRow]] = {
    "respiration_rate": _RESPIRATION_RATE,
    "air_or_oxygen": _AIR_OR_OXYGEN,
    "systolic": _SYSTOLIC,
    "pulse": _PULSE,
    "consciousness": _CONSCIOUSNESS,
    "temperature": _TEMPERATURE,
}


def chart_row(parameter: str, *, spo2_scale: int = 1, on_oxygen: bool = False) -> ChartRow:
    """The chart row that scores ``parameter`` for a patient on this SpO2 scale and air/oxygen.

    ``spo2_scale`` and ``on_oxygen`` matter for ``spo2`` only; ``air_or_oxygen`` scores its
    value (1.0 on oxygen, 0.0 on air).
    """
    _check_spo2_scale(spo2_scale)
    if parameter == "spo2":
        if spo2_scale == 1:
            return _SPO2_SCALE_1
        return _SPO2_SCALE_2_ON_OXYGEN if on_oxygen else _SPO2_SCALE_2_ON_AIR
    try:
        return _ROW_OF_PARAMETER[parameter]
    except KeyError:
        raise ValueError(
            f"unknown NEWS2 parameter {parameter!r} (expected one of {', '.join(PARAMETERS)})"
        ) from None


def score_parameter(
    name: str, value: float, *, spo2_scale: int = 1, on_oxygen: bool = False
) -> int:
    """The NEWS2 score (0-3) of one parameter's value.

    The scalar twin of :func:`score_parameter_values`. ``air_or_oxygen`` takes 1.0 for oxygen
    and 0.0 for air; consciousness takes the ACVPU level (0 = Alert).
    """
    return chart_row(name, spo2_scale=spo2_scale, on_oxygen=on_oxygen).score(value)


def score_parameter_values(
    name: str,
    values: npt.ArrayLike,
    *,
    spo2_scale: npt.ArrayLike = 1,
    on_oxygen: npt.ArrayLike = False,
) -> IntArray:
    """The NEWS2 scores of many values of one parameter.

    ``spo2_scale`` and ``on_oxygen`` are scalars or arrays of the values' shape (one patient
    each); they matter for ``spo2`` only.
    """
    array = np.asarray(values, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(spo2_scale), array.shape)
    if not ((scale == 1) | (scale == 2)).all():
        raise ValueError("spo2_scale must be 1 or 2")
    if name != "spo2":
        return chart_row(name).scores_of(array)
    oxygen = np.broadcast_to(np.asarray(on_oxygen, dtype=bool), array.shape)
    scale_2 = np.where(
        oxygen,
        _SPO2_SCALE_2_ON_OXYGEN.scores_of(array),
        _SPO2_SCALE_2_ON_AIR.scores_of(array),
    )
    return np.where(scale == 2, scale_2, _SPO2_SCALE_1.scores_of(array))


def response_band(score: int, any_single_3: bool) -> str:
    """The RCP response band of an aggregate score (see :data:`BANDS`).

    ``any_single_3``: some parameter scored 3, which turns a low aggregate into
    ``low_single_3`` (urgent review); it cannot happen with an aggregate below 3.
    """
    if score < 0:
        raise ValueError(f"a NEWS2 score is never negative (got {score})")
    if any_single_3 and score < 3:
        raise ValueError(f"a parameter scoring 3 makes the aggregate at least 3 (got {score})")
    if score >= 7:
        return "high"
    if score >= 5:
        return "medium"
    if any_single_3:
        return "low_single_3"
    if score >= 1:
        return "low"
    return "none"


def _response_bands(scores: IntArray, any_single_3: BoolArray) -> npt.NDArray[np.object_]:
    """The vectorised twin of :func:`response_band` (inputs consistent by construction)."""
    index = np.select(
        [scores >= 7, scores >= 5, any_single_3, scores >= 1],
        [
            BANDS.index("high"),
            BANDS.index("medium"),
            BANDS.index("low_single_3"),
            BANDS.index("low"),
        ],
        default=BANDS.index("none"),
    )
    return np.asarray(BANDS, dtype=object)[index]


def _check_spo2_scale(spo2_scale: int) -> None:
    if isinstance(spo2_scale, bool) or spo2_scale not in SPO2_SCALES:
        raise ValueError(f"spo2_scale must be 1 or 2, not {spo2_scale!r}")


# --- observation sets ---------------------------------------------------------------------------


def empty_sets() -> pd.DataFrame:
    """A frame of sets with no rows and the columns and dtypes of a full one."""
    return pd.DataFrame(
        {
            "patient_id": pd.Series(dtype=object),
            "set_start": pd.Series(dtype=_UTC_NS),
            "at": pd.Series(dtype=_UTC_NS),
            "score": pd.Series(dtype=np.int64),
            "band": pd.Series(dtype=object),
            "partial": pd.Series(dtype=bool),
            "parameters": pd.Series(dtype=object),
            "sub_scores": pd.Series(dtype=object),
            "values": pd.Series(dtype=object),
            "reading_ids": pd.Series(dtype=object),
            "spo2_scale": pd.Series(dtype=np.int64),
        }
    )


@dataclass(frozen=True, slots=True)
class ScoredSets:
    """The sets as numpy arrays, one entry per set (sorted by patient as text, then start),
    for callers that need only some sets' details (the rules engine flags a few per cent).

    ``used_source`` holds, per set and measured parameter (:data:`MEASURED_PARAMETERS`), the
    row position in the caller's ``readings`` of the value used, or -1.
    """

    patient_ids: npt.NDArray[np.object_]  # per set
    set_start: IntArray  # UTC nanoseconds
    at: IntArray
    score: IntArray
    band: npt.NDArray[np.object_]
    partial: BoolArray
    present: BoolArray  # (sets, measured parameters)
    sub_scores: IntArray  # (sets, measured parameters), 0 where absent
    values: FloatArray  # (sets, measured parameters), NaN where absent
    oxygen_score: IntArray
    oxygen_value: FloatArray
    used_source: IntArray
    spo2_scale: IntArray

    def __len__(self) -> int:
        return int(self.score.size)

    def parameters(self, set_index: int) -> tuple[str, ...]:
        """The parameters one set used, in chart order."""
        measured = [MEASURED_PARAMETERS[c] for c in np.flatnonzero(self.present[set_index])]
        return _names_with_air_or_oxygen(measured)


def score_set_arrays(
    readings: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    *,
    window: pd.Timedelta = DEFAULT_WINDOW,
) -> ScoredSets:
    """Group readings into observation sets and score each set with NEWS2, as arrays (see
    :func:`score_sets` for the rules and the frame built from them)."""
    window_ns = _window_nanoseconds(window)
    rows = _news2_rows(readings)
    width = len(MEASURED_PARAMETERS)
    if rows.parameter.size == 0:
        nothing = np.zeros(0, dtype=np.int64)
        return ScoredSets(
            np.zeros(0, dtype=object),
            nothing,
            nothing,
            nothing,
            np.zeros(0, dtype=object),
            np.zeros(0, dtype=bool),
            np.zeros((0, width), dtype=bool),
            np.zeros((0, width), dtype=np.int64),
            np.zeros((0, width)),
            nothing,
            np.zeros(0),
            np.zeros((0, width), dtype=np.int64),
            nothing,
        )
    scale_of_patient, oxygen_of_patient = _patient_settings(patients, rows.patient_ids)

    is_set_start = _set_starts(rows.patient, rows.measured_at, window_ns)
    set_of_row = np.cumsum(is_set_start) - 1
    first_row = np.flatnonzero(is_set_start)
    last_row = np.append(first_row[1:] - 1, rows.parameter.size - 1)
    set_patient = rows.patient[first_row]
    spo2_scale = scale_of_patient[set_patient]
    on_oxygen = oxygen_of_patient[set_patient]

    used_row = _latest_per_parameter(rows, set_of_row, n_sets=first_row.size)
    present = used_row >= 0
    values = np.where(present, rows.value[used_row], np.nan)
    sub_scores = np.zeros(values.shape, dtype=np.int64)
    for column, name in enumerate(MEASURED_PARAMETERS):
        has = present[:, column]
        sub_scores[has, column] = score_parameter_values(
            name, values[has, column], spo2_scale=spo2_scale[has], on_oxygen=on_oxygen[has]
        )
    oxygen_value = on_oxygen.astype(np.float64)
    oxygen_score = score_parameter_values("air_or_oxygen", oxygen_value)
    score = sub_scores.sum(axis=1) + oxygen_score
    any_single_3 = (sub_scores == 3).any(axis=1)
    return ScoredSets(
        patient_ids=rows.patient_ids[set_patient],
        set_start=rows.measured_at[first_row],
        at=rows.measured_at[last_row],
        score=score,
        band=_response_bands(score, any_single_3),
        partial=~present.all(axis=1),
        present=present,
        sub_scores=sub_scores,
        values=values,
        oxygen_score=oxygen_score,
        oxygen_value=oxygen_value,
        used_source=np.where(present, rows.source[used_row], -1),
        spo2_scale=spo2_scale,
    )


def score_sets(
    readings: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    *,
    window: pd.Timedelta = DEFAULT_WINDOW,
) -> pd.DataFrame:
    """Group readings into observation sets and score each set with NEWS2.

    ``readings`` needs the columns of :data:`READING_COLUMNS` (``measured_at`` timezone-aware);
    ``patients`` (optional) the columns of :data:`PATIENT_COLUMNS`: ``spo2_scale`` 1 or 2
    (missing patient or NaN: 1) and ``on_oxygen`` (missing: False, on air). Sets and scores as
    in the module docstring. The result has the columns of :data:`SET_COLUMNS`, one row per
    set sorted by ``patient_id`` (as text) and ``set_start``; it depends only on the set of
    readings, not on their row order or on repeated rows.
    """
    sets = score_set_arrays(readings, patients, window=window)
    if not len(sets):
        return empty_sets()
    reading_id_text = readings["reading_id"].astype(str).to_numpy(dtype=object)
    parameters, sub_score_dicts, value_dicts, reading_ids = _set_objects(
        sets.present,
        sets.sub_scores,
        sets.values,
        sets.oxygen_score,
        sets.oxygen_value,
        sets.used_source,
        reading_id_text,
    )
    return pd.DataFrame(
        {
            "patient_id": sets.patient_ids,
            "set_start": _as_utc_times(sets.set_start),
            "at": _as_utc_times(sets.at),
            "score": sets.score,
            "band": sets.band,
            "partial": sets.partial,
            "parameters": parameters,
            "sub_scores": sub_score_dicts,
            "values": value_dicts,
            "reading_ids": reading_ids,
            "spo2_scale": sets.spo2_scale,
        },
        copy=False,  # the arrays are new; consolidating them would only copy them
    )


@dataclass(frozen=True, slots=True)
class _News2Rows:
    """The readings NEWS2 uses, sorted by patient (as text) and time.

    ``patient`` indexes ``patient_ids`` (sorted text); ``measured_at`` is UTC nanoseconds;
    ``parameter`` indexes :data:`MEASURED_PARAMETERS`; ``source`` is the row's position in the
    caller's frame, whose ``reading_id`` column as text is ``reading_id_text``.
    """

    patient: IntArray
    patient_ids: npt.NDArray[np.object_]
    measured_at: IntArray
    parameter: IntArray
    value: FloatArray
    source: IntArray
    reading_id_text: npt.NDArray[np.object_]

    def reading_ids(self, rows: IntArray) -> npt.NDArray[np.object_]:
        """The reading ids of some rows, as text."""
        return self.reading_id_text[self.source[rows]]


def _news2_rows(readings: pd.DataFrame) -> _News2Rows:
    missing = [column for column in READING_COLUMNS if column not in readings.columns]
    if missing:
        raise ValueError(f"readings lack the column(s) {', '.join(missing)}")
    loinc_code, loincs = pd.factorize(readings["loinc"])
    # One entry per distinct code, and a last one for code -1 (a missing loinc).
    parameter_of_code = np.array(
        [_MEASURED_INDEX.get(str(loinc), -1) for loinc in loincs] + [-1], dtype=np.int64
    )
    parameter = parameter_of_code[loinc_code]
    value = readings["value"].to_numpy(dtype=np.float64, na_value=np.nan)
    measured_at = _utc_nanoseconds(readings["measured_at"])
    patient_code, patient_ids = _patients_by_text(readings["patient_id"])
    keep = (parameter >= 0) & ~np.isnan(value) & (measured_at != _NAT) & (patient_code >= 0)
    source = np.flatnonzero(keep)
    if source.size < keep.size:
        patient_code, measured_at = patient_code[source], measured_at[source]
    order = _patient_time_order(patient_code, measured_at)
    source = source[order]
    return _News2Rows(
        patient=patient_code[order],
        patient_ids=patient_ids,
        measured_at=measured_at[order],
        parameter=parameter[source],
        value=value[source],
        source=source,
        reading_id_text=readings["reading_id"].astype(str).to_numpy(dtype=object),
    )


_MEASURED_INDEX: Final[Mapping[str, int]] = {
    loinc: MEASURED_PARAMETERS.index(name) for loinc, name in LOINC_TO_PARAMETER.items()
}


def _patients_by_text(patient_id: pd.Series) -> tuple[IntArray, npt.NDArray[np.object_]]:
    """Codes into the distinct patient ids as text, sorted; -1 for a missing patient id."""
    code, distinct = pd.factorize(patient_id)
    text = np.asarray([str(one) for one in distinct], dtype=object)
    # Sorting the (few) distinct ids as text also merges ids that differ only in type.
    text_code, text_ids = pd.factorize(text, sort=True)
    code_of_code = np.append(text_code, -1).astype(np.int64)
    return code_of_code[code], np.asarray(text_ids, dtype=object)


def _patient_time_order(patient: IntArray, measured_at: IntArray) -> IntArray:
    """The order that sorts rows by patient, then time: a time sort, then a stable radix sort
    on the patient code 16 bits at a time (numpy sorts 16-bit keys by radix)."""
    order = np.argsort(measured_at, kind="stable")
    if patient.size == 0:
        return order
    for shift in range(0, max(int(patient.max()).bit_length(), 1), 16):
        digit = ((patient[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


def _set_starts(patient: IntArray, measured_at: IntArray, window_ns: int) -> BoolArray:
    """Which rows (sorted by patient, time) start an observation set, greedily.

    Consecutive rows at most ``window`` apart form a run; a run spanning at most the window is
    one set. Only longer runs need the greedy chain (:func:`_chain_starts`).
    """
    size = patient.size
    run_start = np.ones(size, dtype=bool)
    # Differences across patients may wrap around; those rows start a run anyway.
    run_start[1:] = (patient[1:] != patient[:-1]) | (
        (measured_at[1:] - measured_at[:-1]) > window_ns
    )
    run_of_row = np.cumsum(run_start) - 1
    run_first = np.flatnonzero(run_start)
    since_run_start = measured_at - measured_at[run_first][run_of_row]
    beyond_window = since_run_start > window_ns
    if not beyond_window.any():
        return run_start
    long_run = np.zeros(run_first.size, dtype=bool)
    long_run[run_of_row[beyond_window]] = True
    in_long_run = np.flatnonzero(long_run[run_of_row])
    starts = run_start.copy()
    chain = _chain_starts(since_run_start[in_long_run], run_start[in_long_run], window_ns)
    starts[in_long_run[chain]] = True
    return starts


def _chain_starts(since_run_start: IntArray, run_start: BoolArray, window_ns: int) -> IntArray:
    """The greedy set starts among rows of runs longer than the window.

    The runs are laid end to end on one time line ``u`` (each run its own length plus a gap
    wider than the window), so one ``searchsorted`` gives every row's ``successor``: the first
    row beyond the window from it. The set starts are the orbit of row 0 under ``successor``,
    found by pointer doubling in O(n log sets). The time line is cut into blocks that keep it
    well inside int64 (a single block unless windows and row counts are huge).
    """
    size = since_run_start.size
    run_of_row = np.cumsum(run_start) - 1
    run_first = np.flatnonzero(run_start)
    run_last = np.append(run_first[1:] - 1, size - 1)
    extent = since_run_start[run_last] + (window_ns + 1)
    before = np.cumsum(extent.astype(np.float64)) - extent
    block_of_run = (before // _CHAIN_BLOCK_NS).astype(np.int64)
    block_first_run = np.flatnonzero(np.diff(block_of_run, prepend=-1))
    block_end_run = np.append(block_first_run[1:], run_first.size)

    successor = np.empty(size + 1, dtype=np.int64)
    successor[size] = size  # past the end stays there
    for first_run, end_run in zip(block_first_run, block_end_run, strict=True):
        first, end = run_first[first_run], run_last[end_run - 1] + 1
        offset = np.cumsum(extent[first_run:end_run]) - extent[first_run:end_run]
        line = since_run_start[first:end] + offset[run_of_row[first:end] - first_run]
        successor[first:end] = first + np.searchsorted(line, line + window_ns, side="right")

    # Orbit of row 0: after step k, `reached` holds successor^j(0) for every j < 2^(k+1).
    reached = np.zeros(1, dtype=np.int64)
    jump = successor
    while True:
        further = jump[reached]
        further = further[further < size]
        if further.size == 0:
            return np.sort(reached)
        reached = np.concatenate([reached, further])
        jump = jump[jump]


def _latest_per_parameter(rows: _News2Rows, set_of_row: IntArray, *, n_sets: int) -> IntArray:
    """Row of each set's most recent reading of each measured parameter (-1 when none).

    Rows are in time order within a set, so the highest row of a (set, parameter) is its
    latest. Readings at that same instant are ranked by reading id as text, then value.
    """
    width = len(MEASURED_PARAMETERS)
    key = set_of_row * width + rows.parameter
    latest = np.full(n_sets * width, -1, dtype=np.int64)
    np.maximum.at(latest, key, np.arange(key.size, dtype=np.int64))
    at_latest_time = rows.measured_at == rows.measured_at[latest[key]]
    tied = np.bincount(key[at_latest_time], minlength=latest.size) > 1
    if tied.any():
        candidates = np.flatnonzero(at_latest_time & tied[key])
        ranked = pd.DataFrame(
            {
                "key": key[candidates],
                "reading_id": rows.reading_ids(candidates),
                "value": rows.value[candidates],
                "row": candidates,
            }
        ).sort_values(["key", "reading_id", "value"], kind="stable")
        winners = ranked.drop_duplicates("key", keep="last")
        latest[winners["key"].to_numpy()] = winners["row"].to_numpy()
    return latest.reshape(n_sets, width)


def _set_objects(
    present: BoolArray,
    sub_scores: IntArray,
    values: FloatArray,
    oxygen_score: IntArray,
    oxygen_value: FloatArray,
    used_source: IntArray,
    reading_id_text: npt.NDArray[np.object_],
) -> tuple[npt.NDArray[np.object_], ...]:
    """The per-set Python objects: parameters, sub_scores, values and reading_ids.

    Built per combination of parameters present (at most 63), so that each combination's keys
    are fixed and every step but the final dict and tuple construction is vectorised.
    ``used_source`` holds the source row of each (set, measured parameter) used, -1 if none.
    """
    n_sets, width = present.shape
    combination = present @ (1 << np.arange(width, dtype=np.int64))
    parameters = np.empty(n_sets, dtype=object)
    sub_score_dicts = np.empty(n_sets, dtype=object)
    value_dicts = np.empty(n_sets, dtype=object)
    reading_ids = np.empty(n_sets, dtype=object)
    for code in np.unique(combination):
        rows = np.flatnonzero(combination == code)
        columns = [column for column in range(width) if code >> column & 1]
        names = _names_with_air_or_oxygen([MEASURED_PARAMETERS[c] for c in columns])
        air_at = names.index("air_or_oxygen")
        parameters[rows] = _repeated(names, rows.size)
        score_columns = [sub_scores[rows, c].tolist() for c in columns]
        score_columns.insert(air_at, oxygen_score[rows].tolist())
        sub_score_dicts[rows] = _objects(_records(names, score_columns), rows.size)
        value_columns = [values[rows, c].tolist() for c in columns]
        value_columns.insert(air_at, oxygen_value[rows].tolist())
        value_dicts[rows] = _objects(_records(names, value_columns), rows.size)
        sources = used_source[np.ix_(rows, np.asarray(columns, dtype=np.int64))]
        reading_ids[rows] = _objects(_sorted_id_tuples(sources, reading_id_text), rows.size)
    return parameters, sub_score_dicts, value_dicts, reading_ids


def _names_with_air_or_oxygen(measured: Sequence[str]) -> tuple[str, ...]:
    present = {*measured, "air_or_oxygen"}
    return tuple(name for name in PARAMETERS if name in present)


def _records(names: tuple[str, ...], columns: list[list[Any]]) -> list[dict[str, Any]]:
    """One dict per row of ``columns`` (a list per name) keyed by ``names``.

    A dict display with its keys in local names builds about twice as fast as
    ``dict(zip(names, row))``; the arities are those of a set: air or oxygen plus one to six
    measured parameters.
    """
    rows = zip(*columns, strict=True)
    match names:
        case (a, b):
            return [{a: p, b: q} for p, q in rows]
        case (a, b, c):
            return [{a: p, b: q, c: r} for p, q, r in rows]
        case (a, b, c, d):
            return [{a: p, b: q, c: r, d: s} for p, q, r, s in rows]
        case (a, b, c, d, e):
            return [{a: p, b: q, c: r, d: s, e: t} for p, q, r, s, t in rows]
        case (a, b, c, d, e, f):
            return [{a: p, b: q, c: r, d: s, e: t, f: u} for p, q, r, s, t, u in rows]
        case (a, b, c, d, e, f, g):
            return [{a: p, b: q, c: r, d: s, e: t, f: u, g: v} for p, q, r, s, t, u, v in rows]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _sorted_id_tuples(
    sources: IntArray, reading_id_text: npt.NDArray[np.object_]
) -> Iterator[tuple[str, ...]]:
    """Per row of ``sources``, the reading ids of those rows sorted, as a tuple (an id that two
    readings share appears once).

    In blocks of rows: the ids of a block stay in the CPU cache while they are sorted and
    packed, instead of being fetched from all over memory once per step.
    """
    for start in range(0, sources.shape[0], _ID_BLOCK_ROWS):
        ordered = np.sort(reading_id_text[sources[start : start + _ID_BLOCK_ROWS]], axis=1)
        tuples = list(zip(*(column.tolist() for column in ordered.T), strict=True))
        for row in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
            tuples[row] = tuple(sorted(set(tuples[row])))
        yield from tuples


def _objects(items: Iterable[object], count: int) -> npt.NDArray[np.object_]:
    """An object array holding the items themselves (numpy would unpack tuples and lists)."""
    return np.fromiter(items, dtype=object, count=count)


def _repeated(item: object, count: int) -> npt.NDArray[np.object_]:
    return _objects(repeat(item, count), count)


def _patient_settings(
    patients: pd.DataFrame | None, patient_ids: npt.NDArray[np.object_]
) -> tuple[IntArray, BoolArray]:
    """SpO2 scale and on-oxygen of each patient of ``patient_ids`` (defaults: 1, air)."""
    scale = np.ones(patient_ids.size, dtype=np.int64)
    oxygen = np.zeros(patient_ids.size, dtype=bool)
    if patients is None:
        return scale, oxygen
    missing = [column for column in PATIENT_COLUMNS if column not in patients.columns]
    if missing:
        raise ValueError(f"patients lack the column(s) {', '.join(missing)}")
    known = patients.loc[patients["patient_id"].notna(), list(PATIENT_COLUMNS)]
    ids = known["patient_id"].astype(str)
    if ids.duplicated().any():
        repeated = sorted(set(ids[ids.duplicated()]))
        raise ValueError(f"patients repeats the patient_id(s) {', '.join(repeated[:5])}")
    scales = pd.to_numeric(known["spo2_scale"], errors="raise")
    if not scales.dropna().isin(SPO2_SCALES).all():
        raise ValueError("patients.spo2_scale must be 1, 2 or missing")
    on_oxygen = known["on_oxygen"]
    given_oxygen = on_oxygen.notna().to_numpy()
    if not on_oxygen[given_oxygen].isin([True, False]).all():
        raise ValueError("patients.on_oxygen must be True, False or missing")

    position = pd.Index(patient_ids).get_indexer(ids)
    ours = position >= 0
    given_scale = scales.notna().to_numpy()
    scale[position[ours & given_scale]] = scales.to_numpy()[ours & given_scale].astype(np.int64)
    oxygen[position[ours & given_oxygen]] = on_oxygen.to_numpy()[ours & given_oxygen].astype(bool)
    return scale, oxygen


def _window_nanoseconds(window: pd.Timedelta | timedelta) -> int:
    length = pd.Timedelta(window)
    if pd.isna(length) or length < pd.Timedelta(0):
        raise ValueError(f"window must be a duration of zero or more, not {window!r}")
    return int(length.value)


def _utc_nanoseconds(measured_at: pd.Series) -> IntArray:
    """``measured_at`` as int64 nanoseconds since the epoch, UTC (NaT as int64 min).

    Naive datetimes are refused, not guessed.
    """
    if isinstance(measured_at.dtype, pd.DatetimeTZDtype):
        times = pd.DatetimeIndex(measured_at)
    elif pd.api.types.is_datetime64_dtype(measured_at.dtype):
        raise ValueError("measured_at must be timezone-aware (got naive datetimes)")
    else:
        first = measured_at.dropna().head(1)
        if not first.empty:
            sample = first.iloc[0]
            if isinstance(sample, datetime) and sample.tzinfo is None:
                raise ValueError("measured_at must be timezone-aware (got naive datetimes)")
        times = pd.DatetimeIndex(pd.to_datetime(measured_at, utc=True))
    return np.asarray(times.as_unit("ns").asi8, dtype=np.int64)


def _as_utc_times(nanoseconds: IntArray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(nanoseconds.view("datetime64[ns]")).tz_localize("UTC")
