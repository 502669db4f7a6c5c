"""US Medicare remote patient monitoring (RPM) billing evidence, counted from the facts.

Source: ``../shared/CLINICAL.md``, "RPM billing" (CY2026 Physician Fee Schedule as
summarised by RPM billing guides). Nothing here is typed in by a person: device days come
from the readings, minutes and live interactions from the care-time log.

Device supply, per 30-day period from the episode start (the day monitoring began):
periods are ``[start, start + 30 d)``, ``[start + 30 d, start + 60 d)``, ... and a period
counts the local calendar days with at least one reading (several readings on one day count
once, so a period never has more than 30).

- 99454: readings on 16 or more days of the period;
- 99445 (new for 2026): readings on 2-15 days; billed instead of 99454, never both;
- nothing below 2 days.

Treatment management, per calendar month:

- a code needs at least one live, interactive communication with the patient in the month
  (e.g. an answered call);
- 99470 (new for 2026): 10-19 minutes; billed instead of 99457, never with it;
- 99457: the first 20 minutes; 99458: each further full 20 minutes (40 minutes are
  99457 + 99458, 39 are 99457 alone, 60 are 99457 + 2 x 99458);
- nothing under 10 minutes or without a live interaction.

Minutes are summed as entered (floats, no rounding of single entries); the month's total is
then rounded *down* to whole minutes for the thresholds and the report (a 19.9-minute month is
19 minutes: 99470, not 99457). A total within :data:`MINUTE_TOLERANCE` below a whole minute
counts as that minute, so that floating-point error (three entries of 20/3 minutes) does not
cost a minute.

Days and months are local calendar days in ``tz`` (a reading at 02:00 UTC can belong to the
previous day in New York); care time belongs to the day and month in which it started.

What a month's report lists (:func:`billing_evidence`), one row per patient and period:

- each 30-day period whose last day (``period_end``, inclusive) falls in the month; a 31-day
  month can hold two, and then the patient has two rows with the management columns repeated;
- when none ends in the month (a period can span a whole February), the period covering the
  month's last day, or, in a month still running, the period covering ``today``; it belongs to
  a later month's bill, which ``period_ends_in_month`` and ``reason`` say;
- a period still running at report time (its last day is ``today`` or later) has
  ``period_complete`` False and the code its days earn so far; a month still running has
  ``month_complete`` False and the management codes so far. Facts dated after ``today`` are
  ignored, so a past report can be reproduced from a later, fuller history;
- a patient whose monitoring had not begun has one row with no period and zero figures, as
  has a patient with no readings or no care time.

``reason`` says, in words for a billing clerk, why a code does not apply or may not be billed
yet ("" when every code on the row can be billed). 99453 (set-up, once per episode) is not
computed here.

Pure: frames in, a frame out; no I/O, no database. The clock is read only when ``today`` is
not given.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from analytics import AnalyticsError

DEVICE_SUPPLY_16_DAYS: Final = "99454"
DEVICE_SUPPLY_2_DAYS: Final = "99445"
MANAGEMENT_FIRST_20_MINUTES: Final = "99457"
MANAGEMENT_EACH_FURTHER_20_MINUTES: Final = "99458"
MANAGEMENT_FIRST_10_MINUTES: Final = "99470"

#: Device supply is counted per period of this many days from the episode start.
PERIOD_DAYS: Final = 30
#: Days with readings a period needs for 99454, and for 99445.
FULL_DEVICE_DAYS: Final = 16
SHORT_DEVICE_DAYS: Final = 2
#: Whole minutes a month needs for 99470; each block of this many for 99457, then 99458.
SHORT_MANAGEMENT_MINUTES: Final = 10
MANAGEMENT_BLOCK_MINUTES: Final = 20
#: Floating-point slack when rounding a month's summed minutes down to whole minutes.
MINUTE_TOLERANCE: Final = 1e-6

EVIDENCE_COLUMNS: Final[tuple[str, ...]] = (
    "patient_id",
    "month",
    "period_start",
    "period_end",
    "period_complete",
    "period_ends_in_month",
    "device_days",
    "device_code",
    "month_complete",
    "management_minutes",
    "live_interactions",
    "management_codes",
    "reason",
)

_EPOCH: Final = date(1970, 1, 1)
#: Cell starts a spreadsheet would run as a formula (CSV injection): such text is quoted.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


class BillingInputError(AnalyticsError, ValueError):
    """The episodes, readings, care time or report month cannot be used; the message says why."""


# --- the codes -------------------------------------------------------------------------------


def device_code(days: int) -> str | None:
    """The device-supply code a 30-day period with readings on ``days`` days earns: 99454 from
    16 days, 99445 for 2-15 days, None below 2."""
    if not 0 <= days <= PERIOD_DAYS:
        raise BillingInputError(f"a {PERIOD_DAYS}-day period has 0-{PERIOD_DAYS} days, not {days}")
    if days >= FULL_DEVICE_DAYS:
        return DEVICE_SUPPLY_16_DAYS
    if days >= SHORT_DEVICE_DAYS:
        return DEVICE_SUPPLY_2_DAYS
    return None


def whole_minutes(total: float) -> int:
    """A month's summed minutes rounded down to whole minutes (19.9 -> 19), with
    :data:`MINUTE_TOLERANCE` of slack for floating-point error (3 x 20/3 -> 20)."""
    if not math.isfinite(total) or total < 0:
        raise BillingInputError(f"minutes must be a finite number >= 0, not {total!r}")
    return math.floor(total + MINUTE_TOLERANCE)


def management_codes(minutes: float, live: bool) -> tuple[str, ...]:
    """The treatment-management codes of a calendar month with ``minutes`` in total (rounded
    down to whole minutes) and, when ``live``, at least one live interaction: () without a
    live interaction or under 10 minutes; ("99470",) for 10-19; ("99457",) for 20-39, plus
    one "99458" for each further full 20 minutes."""
    whole = whole_minutes(minutes)
    if not live or whole < SHORT_MANAGEMENT_MINUTES:
        return ()
    if whole < MANAGEMENT_BLOCK_MINUTES:
        return (MANAGEMENT_FIRST_10_MINUTES,)
    further = (whole - MANAGEMENT_BLOCK_MINUTES) // MANAGEMENT_BLOCK_MINUTES
    return (MANAGEMENT_FIRST_20_MINUTES,) + (MANAGEMENT_EACH_FURTHER_20_MINUTES,) * further


def codes_text(codes: Sequence[str]) -> str:
    """Codes as a billing office writes them: ``("99457", "99458", "99458")`` ->
    ``"99457+99458x2"``; () -> ""."""
    return "+".join(
        code if count == 1 else f"{code}x{count}" for code, count in Counter(codes).items()
    )


# --- the reasons -----------------------------------------------------------------------------


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def device_reason(
    days: int, *, period_end: date | None, complete: bool, ends_in_month: bool
) -> str:
    """Why a period's device supply cannot be billed with this month (yet): "" when it can.
    ``period_end`` None means monitoring had not begun by the report's last day."""
    if period_end is None:
        return "device supply: monitoring had not begun"
    code = device_code(days)
    if days == 0:
        facts = "no readings"
    elif code is None:
        facts = f"readings on {_days(days)}, {SHORT_DEVICE_DAYS} needed"
    else:
        facts = f"readings on {_days(days)} ({code})"
    if ends_in_month and complete:
        return "" if code else f"device supply: {facts}"
    so_far = "" if complete else "so far "
    if ends_in_month:
        return f"device supply: period runs to {period_end.isoformat()}, {so_far}{facts}"
    return (
        f"device supply: period ends {period_end.isoformat()}, bill it with "
        f"{period_end:%Y-%m}; {so_far}{facts}"
    )


def management_reason(minutes: float, live_interactions: int, *, month_complete: bool) -> str:
    """Why the month's treatment management earns no code (yet): "" when its codes can be
    billed. ``minutes`` is the month's exact total."""
    codes = management_codes(minutes, live_interactions > 0)
    whole = whole_minutes(minutes)
    if codes:
        facts = codes_text(codes)
    elif minutes == 0:
        facts = "no time recorded this month"
    else:
        problems = []
        if whole < SHORT_MANAGEMENT_MINUTES:
            problems.append(f"{whole} of {SHORT_MANAGEMENT_MINUTES} minutes")
        if live_interactions == 0:
            problems.append("no live interaction this month")
        facts = " and ".join(problems)
    if month_complete:
        return "" if codes else f"treatment management: {facts}"
    return f"treatment management: month still running, so far {facts}"


# --- the report ------------------------------------------------------------------------------


def billing_evidence(
    episodes: pd.DataFrame,
    readings: pd.DataFrame,
    care_time: pd.DataFrame,
    *,
    month: date,
    tz: str = "UTC",
    today: date | None = None,
) -> pd.DataFrame:
    """The RPM billing evidence of ``month`` (its first day), with days and months counted in
    the time zone ``tz``, as known on ``today`` (a local date; the clock's when None).

    ``episodes``: ``patient_id``, ``episode_start`` (a date; one episode per patient).
    ``readings``: ``patient_id``, ``measured_at`` (timezone-aware). ``care_time``:
    ``patient_id``, ``started_at`` (timezone-aware), ``minutes`` (> 0), ``live`` (bool).
    Readings and care time of patients without an episode are ignored.

    One row per patient of ``episodes`` and reported period (see the module docstring), sorted
    by patient and period, with :data:`EVIDENCE_COLUMNS`: ``period_start`` and ``period_end``
    (the period's first and last day, dates or None), ``device_days``, ``device_code``
    (None, "99454" or "99445"), ``management_minutes`` (whole, rounded down),
    ``live_interactions``, ``management_codes`` (e.g. "99457+99458x2"), ``reason``.
    """
    zone = _zone(tz)
    first_day, last_day = _month_days(month)
    if today is None:
        today = datetime.now(zone).date()
    _check_plain_date("today", today)
    if today < first_day:
        raise BillingInputError(
            f"the {month:%Y-%m} report cannot be made before the month begins (today {today})"
        )
    today_number = _day_number(today)
    # the last day of the month with facts in it at report time
    report_day = min(_day_number(last_day), today_number)

    starts = _episode_starts(episodes)
    periods = _reported_periods(
        starts,
        first_day=_day_number(first_day),
        last_day=_day_number(last_day),
        report_day=report_day,
    )
    period_starts_known = periods["period_start_day"].dropna()
    earliest = int(period_starts_known.min()) if not period_starts_known.empty else today_number
    reading_days = _reading_days(readings, tz, from_day=earliest, to_day=today_number)
    periods["device_days"] = _device_days(periods, reading_days)
    management = _management_totals(
        care_time, tz, first_day=_day_number(first_day), last_day=report_day
    )
    rows = periods.merge(management, on="patient_id", how="left", validate="many_to_one")
    minutes = rows["minutes"].fillna(0.0).to_numpy(dtype=float)
    live = rows["live"].fillna(0).to_numpy(dtype=np.int64)
    has_period = rows["period_start_day"].notna().to_numpy()
    start_numbers = rows["period_start_day"].fillna(0).to_numpy(dtype=np.int64)
    end_numbers = start_numbers + PERIOD_DAYS - 1
    period_starts = [
        _from_day_number(n) if p else None for n, p in zip(start_numbers, has_period, strict=True)
    ]
    period_ends = [
        _from_day_number(n) if p else None for n, p in zip(end_numbers, has_period, strict=True)
    ]
    period_complete = has_period & (end_numbers < today_number)
    ends_in_month = rows["ends_in_month"].to_numpy(dtype=bool)
    month_complete = last_day < today
    device_days = rows["device_days"].to_numpy(dtype=np.int64)

    device_codes = [device_code(int(days)) for days in device_days]
    codes = [management_codes(total, count > 0) for total, count in zip(minutes, live, strict=True)]
    reasons = [
        "; ".join(
            text
            for text in (
                device_reason(
                    int(days), period_end=end, complete=bool(complete), ends_in_month=bool(ends)
                ),
                management_reason(float(total), int(count), month_complete=month_complete),
            )
            if text
        )
        for days, end, complete, ends, total, count in zip(
            device_days, period_ends, period_complete, ends_in_month, minutes, live, strict=True
        )
    ]
    frame = pd.DataFrame(
        {
            "patient_id": rows["patient_id"].to_numpy(dtype=object),
            "month": f"{month:%Y-%m}",
            "period_start": pd.Series(period_starts, dtype=object),
            "period_end": pd.Series(period_ends, dtype=object),
            "period_complete": pd.Series(period_complete, dtype=bool),
            "period_ends_in_month": pd.Series(ends_in_month, dtype=bool),
            "device_days": pd.Series(device_days, dtype=np.int64),
            "device_code": pd.Series(device_codes, dtype=object),
            "month_complete": month_complete,
            "management_minutes": pd.Series([whole_minutes(m) for m in minutes], dtype=np.int64),
            "live_interactions": pd.Series(live, dtype=np.int64),
            "management_codes": pd.Series([codes_text(c) for c in codes], dtype=object),
            "reason": pd.Series(reasons, dtype=object),
        },
        columns=list(EVIDENCE_COLUMNS),
    )
    return frame.astype({"month_complete": bool, "month": object})


def evidence_csv(frame: pd.DataFrame) -> str:
    """The evidence as CSV for a billing office: a header row, :data:`EVIDENCE_COLUMNS` in that
    order (other columns dropped), ISO dates, "yes"/"no" for the flags, "" for no value, CRLF
    line ends (RFC 4180). Text that a spreadsheet would run as a formula (starting with =, +,
    -, @) is prefixed with an apostrophe."""
    missing = [column for column in EVIDENCE_COLUMNS if column not in frame.columns]
    if missing:
        raise BillingInputError(f"the evidence lacks the column(s) {', '.join(missing)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EVIDENCE_COLUMNS)
    for row in frame.loc[:, list(EVIDENCE_COLUMNS)].itertuples(index=False, name=None):
        writer.writerow([_csv_cell(value) for value in row])
    return out.getvalue()


def _csv_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, datetime | pd.Timestamp):
        raise BillingInputError(f"the evidence holds a time {value!r} where a date belongs")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | np.integer):
        return str(int(value))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


# --- inputs ----------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BillingInputError(f"unknown time zone {tz!r}") from exc


def _check_plain_date(name: str, value: object) -> None:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise BillingInputError(f"{name} must be a datetime.date, not {value!r}")


def _month_days(month: date) -> tuple[date, date]:
    _check_plain_date("month", month)
    if month.day != 1:
        raise BillingInputError(f"month must be the first day of a month, not {month}")
    next_month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return month, next_month - timedelta(days=1)


def _day_number(day: date) -> int:
    return (day - _EPOCH).days


def _from_day_number(number: int) -> date:
    return _EPOCH + timedelta(days=int(number))


def _require_columns(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise BillingInputError(f"{name} lacks the column(s) {', '.join(missing)}")


def _local_day_numbers(times: pd.Series, tz: str, name: str) -> np.ndarray:
    """Timezone-aware instants as local calendar days in ``tz`` (days since 1970-01-01).
    The zone goes to pandas by name: an order of magnitude faster than a ZoneInfo object on
    millions of rows, with the same days."""
    if times.empty:
        return np.empty(0, dtype=np.int64)
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise BillingInputError(
            f"{name} must be timezone-aware timestamps (dtype {times.dtype}); "
            "use pd.to_datetime(..., utc=True) on instants"
        )
    if times.isna().any():
        raise BillingInputError(f"{name} has missing timestamps")
    wall = times.dt.tz_convert(tz).dt.tz_localize(None).to_numpy()
    return wall.astype("datetime64[D]").astype(np.int64)


def _episode_starts(episodes: pd.DataFrame) -> pd.DataFrame:
    """patient_id and start_day (day number) per patient."""
    _require_columns(episodes, "episodes", ("patient_id", "episode_start"))
    if episodes["patient_id"].isna().any():
        raise BillingInputError("episodes has a missing patient_id")
    repeated = episodes["patient_id"][episodes["patient_id"].duplicated()]
    if not repeated.empty:
        raise BillingInputError(
            f"episodes has more than one episode for {len(repeated.unique())} patient(s), "
            f"e.g. {repeated.iloc[0]!r}: report one episode per patient"
        )
    start_days = []
    for start in episodes["episode_start"]:
        if isinstance(start, pd.Timestamp | datetime) or not isinstance(start, date):
            raise BillingInputError(f"episode_start must be a datetime.date, not {start!r}")
        start_days.append(_day_number(start))
    return pd.DataFrame(
        {
            "patient_id": episodes["patient_id"].to_numpy(dtype=object),
            "start_day": np.asarray(start_days, dtype=np.int64),
        }
    )


def _reported_periods(
    starts: pd.DataFrame, *, first_day: int, last_day: int, report_day: int
) -> pd.DataFrame:
    """The periods a month's report lists, per patient: patient_id, period_start_day (day
    number, NaN for a patient whose monitoring had not begun by ``report_day``), ends_in_month.

    Period k of a patient runs from start + 30k to start + 30k + 29. Listed: the periods whose
    last day is in [first_day, last_day] and that began by report_day (at most two: periods
    end 30 days apart); else the one covering report_day."""
    start = starts["start_day"].to_numpy(dtype=np.int64)
    last_offset = PERIOD_DAYS - 1
    # first period ending on or after first_day: ceil((first_day - start - 29) / 30), >= 0
    first_k = np.maximum(0, -((start + last_offset - first_day) // PERIOD_DAYS))
    last_k = np.minimum(
        (last_day - start - last_offset) // PERIOD_DAYS, (report_day - start) // PERIOD_DAYS
    )
    patients = starts["patient_id"].to_numpy(dtype=object)
    pieces = []
    for offset in (0, 1):
        k = first_k + offset
        listed = k <= last_k
        pieces.append((patients[listed], start[listed] + PERIOD_DAYS * k[listed], True))
    none_ends = first_k > last_k
    covering = none_ends & (start <= report_day)
    covering_k = (report_day - start[covering]) // PERIOD_DAYS
    pieces.append((patients[covering], start[covering] + PERIOD_DAYS * covering_k, False))
    frames = [
        pd.DataFrame(
            {
                "patient_id": pd.Series(ids, dtype=object),
                "period_start_day": pd.Series(days, dtype="float64"),
                "ends_in_month": pd.Series(np.full(len(ids), ends), dtype=bool),
            }
        )
        for ids, days, ends in pieces
    ]
    not_begun = none_ends & (start > report_day)
    frames.append(
        pd.DataFrame(
            {
                "patient_id": pd.Series(patients[not_begun], dtype=object),
                "period_start_day": pd.Series(np.full(not_begun.sum(), np.nan), dtype="float64"),
                "ends_in_month": pd.Series(np.zeros(not_begun.sum(), dtype=bool), dtype=bool),
            }
        )
    )
    periods = pd.concat(frames, ignore_index=True)
    return periods.sort_values(["patient_id", "period_start_day"], kind="stable").reset_index(
        drop=True
    )


def _reading_days(readings: pd.DataFrame, tz: str, *, from_day: int, to_day: int) -> pd.DataFrame:
    """Each (patient_id, day) with at least one reading on a local day in [from_day, to_day],
    once."""
    _require_columns(readings, "readings", ("patient_id", "measured_at"))
    days = _local_day_numbers(readings["measured_at"], tz, "readings.measured_at")
    keep = (days >= from_day) & (days <= to_day)
    frame = pd.DataFrame(
        {
            "patient_id": readings["patient_id"].to_numpy(dtype=object)[keep],
            "day": days[keep],
        }
    )
    return frame.drop_duplicates(ignore_index=True)


def _device_days(periods: pd.DataFrame, reading_days: pd.DataFrame) -> np.ndarray:
    """Days with a reading in each period (row) of ``periods``."""
    counts = np.zeros(len(periods), dtype=np.int64)
    if reading_days.empty or periods.empty:
        return counts
    keyed = periods.loc[periods["period_start_day"].notna(), ["patient_id", "period_start_day"]]
    keyed = keyed.assign(
        row=keyed.index.to_numpy(), start=keyed["period_start_day"].astype(np.int64)
    )
    joined = keyed.merge(reading_days, on="patient_id", how="inner")
    inside = (joined["day"] >= joined["start"]) & (joined["day"] < joined["start"] + PERIOD_DAYS)
    per_row = joined.loc[inside].groupby("row").size()
    counts[per_row.index.to_numpy(dtype=np.int64)] = per_row.to_numpy(dtype=np.int64)
    return counts


def _management_totals(
    care_time: pd.DataFrame, tz: str, *, first_day: int, last_day: int
) -> pd.DataFrame:
    """Per patient: minutes (exact sum) and live (count) of care time started on a local day
    in [first_day, last_day]."""
    _require_columns(care_time, "care_time", ("patient_id", "started_at", "minutes", "live"))
    columns = {"patient_id": pd.Series(dtype=object), "minutes": pd.Series(dtype=float)}
    empty = pd.DataFrame({**columns, "live": pd.Series(dtype=np.int64)})
    if care_time.empty:
        return empty
    minutes = pd.to_numeric(care_time["minutes"], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(minutes) & (minutes > 0)).all():
        raise BillingInputError("care_time.minutes must be numbers > 0")
    if not pd.api.types.is_bool_dtype(care_time["live"].dtype):
        raise BillingInputError(
            f"care_time.live must be booleans (dtype {care_time['live'].dtype})"
        )
    days = _local_day_numbers(care_time["started_at"], tz, "care_time.started_at")
    keep = (days >= first_day) & (days <= last_day)
    frame = pd.DataFrame(
        {
            "patient_id": care_time["patient_id"].to_numpy(dtype=object)[keep],
            "minutes": minutes[keep],
            "live": care_time["live"].to_numpy(dtype=bool)[keep].astype(np.int64),
        }
    )
    if frame.empty:
        return empty
    return frame.groupby("patient_id", as_index=False, sort=False).agg(
        minutes=("minutes", "sum"), live=("live", "sum")
    )
