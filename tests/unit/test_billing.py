"""RPM billing evidence (analytics.billing): every code edge, local days, periods, the CSV.

The rules are written out here a second time from ../shared/CLINICAL.md ("RPM billing",
CY2026): 99454 from 16 device days in a 30-day period, 99445 for 2-15; per calendar month with
a live interaction, 99470 for 10-19 minutes, 99457 from 20 plus 99458 per further full 20. A
row-by-row reference (plain Python, zoneinfo) checks the vectorised frame on random facts.
"""

from __future__ import annotations

import csv
import io
import math
import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics import AnalyticsError
from analytics.billing import (
    EVIDENCE_COLUMNS,
    MINUTE_TOLERANCE,
    BillingInputError,
    billing_evidence,
    codes_text,
    device_code,
    device_reason,
    evidence_csv,
    management_codes,
    management_reason,
    whole_minutes,
)

NEW_YORK = "America/New_York"
MARCH = date(2026, 3, 1)
#: A report day after March and after every period that ends in it.
AFTER_MARCH = date(2026, 4, 15)
NOON = time(12, 0)
#: Starting on 2 March, the first 30-day period is 2-31 March: it ends in March.
MARCH_PERIOD_START = date(2026, 3, 2)


# --- building the facts ----------------------------------------------------------------------


def at(day: date, clock: time = NOON, tz: str = "UTC") -> datetime:
    """The UTC instant of a wall-clock time on a local day in ``tz``."""
    return datetime.combine(day, clock, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def episodes_frame(starts: dict[str, date]) -> pd.DataFrame:
    return pd.DataFrame(
        {"patient_id": list(starts), "episode_start": list(starts.values())}
    ).astype({"patient_id": object, "episode_start": object})


def readings_frame(rows: list[tuple[str, datetime]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["patient_id", "measured_at"])
    return frame.astype({"patient_id": object, "measured_at": "datetime64[ns, UTC]"})


def care_frame(rows: list[tuple[str, datetime, float, bool]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["patient_id", "started_at", "minutes", "live"])
    return frame.astype(
        {"patient_id": object, "started_at": "datetime64[ns, UTC]", "minutes": float, "live": bool}
    )


def daily_readings(
    patient: str, first: date, days: int, clock: time = NOON, tz: str = "UTC"
) -> list[tuple[str, datetime]]:
    """One reading a day at ``clock`` local time, on ``days`` days from ``first``."""
    return [(patient, at(first + timedelta(days=n), clock, tz)) for n in range(days)]


def evidence(
    starts: dict[str, date],
    readings: list[tuple[str, datetime]] | None = None,
    care: list[tuple[str, datetime, float, bool]] | None = None,
    *,
    month: date = MARCH,
    tz: str = "UTC",
    today: date | None = AFTER_MARCH,
) -> pd.DataFrame:
    return billing_evidence(
        episodes_frame(starts),
        readings_frame(readings or []),
        care_frame(care or []),
        month=month,
        tz=tz,
        today=today,
    )


def only_row(frame: pd.DataFrame) -> dict[str, Any]:
    assert len(frame) == 1, frame
    record: dict[str, Any] = frame.to_dict("records")[0]
    return record


# --- the codes at every edge -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "expected"),
    [(0, None), (1, None), (2, "99445"), (15, "99445"), (16, "99454"), (30, "99454")],
)
def test_device_code_at_each_edge(days: int, expected: str | None) -> None:
    assert device_code(days) == expected


@pytest.mark.parametrize("days", [-1, 31])
def test_a_period_cannot_have_more_days_than_it_lasts(days: int) -> None:
    with pytest.raises(BillingInputError, match="0-30 days"):
        device_code(days)


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (0, ()),
        (9, ()),
        (9.99, ()),
        (10, ("99470",)),
        (19, ("99470",)),
        (19.9, ("99470",)),
        (20, ("99457",)),
        (39, ("99457",)),
        (39.99, ("99457",)),
        (40, ("99457", "99458")),
        (59, ("99457", "99458")),
        (60, ("99457", "99458", "99458")),
        (100, ("99457", "99458", "99458", "99458", "99458")),
    ],
)
def test_management_codes_at_each_edge_with_a_live_interaction(
    minutes: float, expected: tuple[str, ...]
) -> None:
    assert management_codes(minutes, live=True) == expected


@pytest.mark.parametrize("minutes", [9, 10, 19, 20, 39, 40, 60])
def test_no_management_code_without_a_live_interaction(minutes: float) -> None:
    assert management_codes(minutes, live=False) == ()


def test_minutes_are_rounded_down_after_an_exact_sum() -> None:
    assert whole_minutes(19.9) == 19
    assert whole_minutes(20 - 10 * MINUTE_TOLERANCE) == 19
    # three thirds of 20 minutes are 20 minutes, whatever floating point makes of them
    thirds = sum([20 / 3] * 3)
    assert whole_minutes(thirds) == 20
    assert whole_minutes(sum([0.1] * 100)) == 10  # 9.99999999999998 in floating point
    assert whole_minutes(0) == 0


@pytest.mark.parametrize("total", [-1.0, math.nan, math.inf])
def test_whole_minutes_refuses_impossible_totals(total: float) -> None:
    with pytest.raises(BillingInputError):
        whole_minutes(total)


@pytest.mark.parametrize(
    ("codes", "text"),
    [
        ((), ""),
        (("99470",), "99470"),
        (("99457",), "99457"),
        (("99457", "99458"), "99457+99458"),
        (("99457", "99458", "99458"), "99457+99458x2"),
    ],
)
def test_codes_are_written_as_a_billing_office_writes_them(
    codes: tuple[str, ...], text: str
) -> None:
    assert codes_text(codes) == text


# --- the reasons -----------------------------------------------------------------------------

END = date(2026, 3, 31)


@pytest.mark.parametrize(
    ("days", "complete", "ends_in_month", "reason"),
    [
        (16, True, True, ""),
        (2, True, True, ""),
        (1, True, True, "device supply: readings on 1 day, 2 needed"),
        (0, True, True, "device supply: no readings"),
        (
            5,
            False,
            True,
            "device supply: period runs to 2026-03-31, so far readings on 5 days (99445)",
        ),
        (
            1,
            False,
            True,
            "device supply: period runs to 2026-03-31, so far readings on 1 day, 2 needed",
        ),
        (
            20,
            True,
            False,
            "device supply: period ends 2026-03-31, bill it with 2026-03; "
            "readings on 20 days (99454)",
        ),
        (
            0,
            False,
            False,
            "device supply: period ends 2026-03-31, bill it with 2026-03; so far no readings",
        ),
    ],
)
def test_device_reason_in_words(
    days: int, complete: bool, ends_in_month: bool, reason: str
) -> None:
    assert device_reason(days, period_end=END, complete=complete, ends_in_month=ends_in_month) == (
        reason
    )


def test_device_reason_before_monitoring_began() -> None:
    reason = device_reason(0, period_end=None, complete=False, ends_in_month=False)
    assert reason == "device supply: monitoring had not begun"


@pytest.mark.parametrize(
    ("minutes", "live", "month_complete", "reason"),
    [
        (20, 1, True, ""),
        (10, 2, True, ""),
        (9.9, 1, True, "treatment management: 9 of 10 minutes"),
        (45, 0, True, "treatment management: no live interaction this month"),
        (5, 0, True, "treatment management: 5 of 10 minutes and no live interaction this month"),
        (0, 0, True, "treatment management: no time recorded this month"),
        (25, 1, False, "treatment management: month still running, so far 99457"),
        (3, 1, False, "treatment management: month still running, so far 3 of 10 minutes"),
    ],
)
def test_management_reason_in_words(
    minutes: float, live: int, month_complete: bool, reason: str
) -> None:
    assert management_reason(minutes, live, month_complete=month_complete) == reason


# --- device days through the frame -----------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "code"),
    [(0, None), (1, None), (2, "99445"), (15, "99445"), (16, "99454"), (30, "99454")],
)
def test_device_days_edges_through_the_report(days: int, code: str | None) -> None:
    row = only_row(
        evidence({"p": MARCH_PERIOD_START}, daily_readings("p", MARCH_PERIOD_START, days))
    )
    assert (row["period_start"], row["period_end"]) == (MARCH_PERIOD_START, date(2026, 3, 31))
    assert row["period_complete"] is True
    assert row["period_ends_in_month"] is True
    assert row["device_days"] == days
    assert row["device_code"] == code
    assert row["reason"].startswith("device supply") == (code is None)


def test_duplicate_readings_on_one_day_count_once() -> None:
    day = MARCH_PERIOD_START
    readings = [("p", at(day, time(hour, 0))) for hour in (0, 6, 12, 18, 23)] * 2
    assert only_row(evidence({"p": day}, readings))["device_days"] == 1
    readings += [("p", at(day + timedelta(days=1), time(7, 0)))] * 3
    row = only_row(evidence({"p": day}, readings))
    assert (row["device_days"], row["device_code"]) == (2, "99445")


def test_the_30th_day_belongs_to_the_next_period() -> None:
    start = MARCH  # periods: 1-30 March (days 0-29), then 31 March - 29 April
    readings = [("p", at(start)), ("p", at(start + timedelta(days=29)))]
    readings.append(("p", at(start + timedelta(days=30))))
    march = only_row(evidence({"p": start}, readings))
    assert (march["period_start"], march["period_end"]) == (MARCH, date(2026, 3, 30))
    assert (march["device_days"], march["device_code"]) == (2, "99445")
    april = only_row(
        evidence({"p": start}, readings, month=date(2026, 4, 1), today=date(2026, 5, 2))
    )
    assert (april["period_start"], april["period_end"]) == (date(2026, 3, 31), date(2026, 4, 29))
    assert (april["device_days"], april["device_code"]) == (1, None)


def test_readings_before_the_episode_do_not_count() -> None:
    readings = daily_readings("p", MARCH_PERIOD_START - timedelta(days=10), 11)
    assert only_row(evidence({"p": MARCH_PERIOD_START}, readings))["device_days"] == 1


# --- local days ------------------------------------------------------------------------------


def test_a_reading_at_2330_local_is_that_local_day_not_the_utc_one() -> None:
    # episode 8 February: periods 8 Feb - 9 Mar, then 10 Mar - 8 Apr
    start = date(2026, 2, 8)
    late_evening = at(date(2026, 3, 9), time(23, 30), NEW_YORK)
    assert late_evening == datetime(2026, 3, 10, 3, 30, tzinfo=UTC)  # the next day in UTC
    readings = [("p", at(date(2026, 3, 1), NOON, NEW_YORK)), ("p", late_evening)]
    new_york = only_row(evidence({"p": start}, readings, tz=NEW_YORK))
    assert new_york["period_end"] == date(2026, 3, 9)
    assert (new_york["device_days"], new_york["device_code"]) == (2, "99445")
    utc = only_row(evidence({"p": start}, readings, tz="UTC"))
    assert (utc["device_days"], utc["device_code"]) == (1, None)


def test_care_time_late_on_the_last_local_evening_counts_in_that_month() -> None:
    call = at(date(2026, 3, 31), time(23, 30), NEW_YORK)  # 03:30 UTC on 1 April
    care = [("p", call, 20.0, True)]
    march = only_row(evidence({"p": MARCH_PERIOD_START}, care=care, tz=NEW_YORK))
    assert (march["management_minutes"], march["management_codes"]) == (20, "99457")
    in_utc = only_row(evidence({"p": MARCH_PERIOD_START}, care=care, tz="UTC"))
    assert (in_utc["management_minutes"], in_utc["management_codes"]) == (0, "")


@pytest.mark.parametrize("clock", [time(0, 30), time(23, 30)])
def test_a_month_with_the_spring_dst_change_counts_every_local_day(clock: time) -> None:
    # New York moved from UTC-5 to UTC-4 on 8 March 2026: a fixed offset puts the 00:30 or
    # 23:30 readings of one side of the change on a neighbouring day, and loses days.
    readings = daily_readings("p", MARCH_PERIOD_START, 30, clock, NEW_YORK)
    readings.append(("p", at(date(2026, 4, 1), NOON, NEW_YORK)))  # the next period
    row = only_row(evidence({"p": MARCH_PERIOD_START}, readings, tz=NEW_YORK))
    assert (row["device_days"], row["device_code"]) == (30, "99454")


@pytest.mark.parametrize("clock", [time(0, 30), time(23, 30)])
def test_readings_on_15_local_days_across_the_spring_change_are_15_days(clock: time) -> None:
    readings = daily_readings("p", MARCH_PERIOD_START, 15, clock, NEW_YORK)  # 2-16 March
    row = only_row(evidence({"p": MARCH_PERIOD_START}, readings, tz=NEW_YORK))
    assert (row["device_days"], row["device_code"]) == (15, "99445")


def test_a_month_with_the_autumn_dst_change_counts_minutes_by_local_month() -> None:
    # New York went back from UTC-4 to UTC-5 on 1 November 2026
    november = date(2026, 11, 1)
    care = [
        ("p", at(date(2026, 10, 31), time(23, 30), NEW_YORK), 30.0, True),  # October
        ("p", at(november, time(0, 30), NEW_YORK), 12.0, True),
        ("p", at(november, time(1, 30), NEW_YORK), 4.0, False),  # the hour that happens twice
        ("p", at(date(2026, 11, 30), time(23, 30), NEW_YORK), 4.0, False),  # 04:30 UTC, 1 Dec
        ("p", at(date(2026, 12, 1), time(0, 30), NEW_YORK), 30.0, True),  # December
    ]
    start = date(2026, 10, 3)  # periods 3 Oct - 1 Nov, 2 Nov - 1 Dec
    readings = daily_readings("p", date(2026, 11, 2), 30, time(23, 30), NEW_YORK)
    row = only_row(
        evidence({"p": start}, readings, care, month=november, tz=NEW_YORK, today=date(2026, 12, 9))
    )
    assert (row["period_start"], row["period_end"]) == (date(2026, 10, 3), date(2026, 11, 1))
    assert (row["management_minutes"], row["live_interactions"]) == (20, 1)
    assert row["management_codes"] == "99457"
    # the 2 Nov - 1 Dec period ends in December, with all 30 late-evening days
    december = evidence(
        {"p": start}, readings, month=date(2026, 12, 1), tz=NEW_YORK, today=date(2027, 1, 5)
    )
    assert december["period_end"].tolist() == [date(2026, 12, 1), date(2026, 12, 31)]
    assert december["device_days"].tolist() == [30, 0]


# --- minutes through the frame ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "codes"),
    [
        (9, ""),
        (10, "99470"),
        (19, "99470"),
        (20, "99457"),
        (39, "99457"),
        (40, "99457+99458"),
        (59, "99457+99458"),
        (60, "99457+99458x2"),
    ],
)
def test_management_minute_edges_through_the_report(minutes: int, codes: str) -> None:
    # one live call of 5 minutes and the rest as non-live work, in three entries
    rest = (minutes - 5) / 3
    care = [("p", at(date(2026, 3, 3)), 5.0, True)]
    care += [("p", at(date(2026, 3, 10 + n)), rest, False) for n in range(3)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, care=care))
    assert (row["management_minutes"], row["live_interactions"]) == (minutes, 1)
    assert row["management_codes"] == codes
    expected_reason = "" if codes else f"treatment management: {minutes} of 10 minutes"
    assert row["reason"] == "device supply: no readings" + (
        f"; {expected_reason}" if expected_reason else ""
    )


def test_a_199_minute_month_is_19_minutes() -> None:
    care = [("p", at(date(2026, 3, 3)), 12.5, True), ("p", at(date(2026, 3, 4)), 7.4, False)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, care=care))
    assert (row["management_minutes"], row["management_codes"]) == (19, "99470")


def test_no_live_interaction_no_management_code_whatever_the_minutes() -> None:
    care = [("p", at(date(2026, 3, 3 + n)), 20.0, False) for n in range(3)]
    row = only_row(
        evidence({"p": MARCH_PERIOD_START}, daily_readings("p", MARCH_PERIOD_START, 16), care)
    )
    assert (row["management_minutes"], row["live_interactions"]) == (60, 0)
    assert (row["device_code"], row["management_codes"]) == ("99454", "")
    assert row["reason"] == "treatment management: no live interaction this month"


def test_each_live_interaction_is_counted() -> None:
    care = [("p", at(date(2026, 3, 3 + n)), 4.0, n % 2 == 0) for n in range(5)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, care=care))
    assert (row["management_minutes"], row["live_interactions"]) == (20, 3)
    assert row["management_codes"] == "99457"


def test_a_live_call_in_another_month_does_not_count() -> None:
    care = [("p", at(date(2026, 2, 27)), 5.0, True), ("p", at(date(2026, 3, 5)), 25.0, False)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, care=care))
    assert (row["management_minutes"], row["live_interactions"]) == (25, 0)
    assert row["management_codes"] == ""


def test_every_code_applies_and_the_reason_is_empty() -> None:
    care = [("p", at(date(2026, 3, 3)), 41.0, True)]
    row = only_row(
        evidence({"p": MARCH_PERIOD_START}, daily_readings("p", MARCH_PERIOD_START, 20), care)
    )
    assert row == {
        "patient_id": "p",
        "month": "2026-03",
        "period_start": MARCH_PERIOD_START,
        "period_end": date(2026, 3, 31),
        "period_complete": True,
        "period_ends_in_month": True,
        "device_days": 20,
        "device_code": "99454",
        "month_complete": True,
        "management_minutes": 41,
        "live_interactions": 1,
        "management_codes": "99457+99458",
        "reason": "",
    }


# --- which periods a month lists -------------------------------------------------------------


def test_two_periods_ending_in_one_month_make_two_rows_with_the_month_repeated() -> None:
    # episode 1 January: periods 31 Jan - 1 Mar and 2 - 31 Mar both end in March
    readings = daily_readings("p", date(2026, 2, 20), 10) + daily_readings(
        "p", date(2026, 3, 2), 17
    )
    care = [("p", at(date(2026, 3, 3)), 12.0, True)]
    frame = evidence({"p": date(2026, 1, 1)}, readings, care)
    assert frame["period_start"].tolist() == [date(2026, 1, 31), date(2026, 3, 2)]
    assert frame["period_end"].tolist() == [date(2026, 3, 1), date(2026, 3, 31)]
    assert frame["device_days"].tolist() == [10, 17]
    assert frame["device_code"].tolist() == ["99445", "99454"]
    assert frame["management_codes"].tolist() == ["99470", "99470"]
    assert frame["management_minutes"].tolist() == [12, 12]


def test_a_february_without_a_period_end_lists_the_period_covering_its_last_day() -> None:
    # episode 1 January: 1-30 Jan, then 31 Jan - 1 Mar spans the whole of February
    readings = daily_readings("p", date(2026, 2, 1), 16)
    row = only_row(
        evidence({"p": date(2026, 1, 1)}, readings, month=date(2026, 2, 1), today=AFTER_MARCH)
    )
    assert (row["period_start"], row["period_end"]) == (date(2026, 1, 31), date(2026, 3, 1))
    assert (row["period_complete"], row["period_ends_in_month"]) == (True, False)
    assert (row["device_days"], row["device_code"]) == (16, "99454")
    assert row["reason"] == (
        "device supply: period ends 2026-03-01, bill it with 2026-03; readings on 16 days (99454); "
        "treatment management: no time recorded this month"
    )


def test_a_running_period_is_listed_with_the_code_it_has_so_far() -> None:
    readings = daily_readings("p", MARCH_PERIOD_START, 16)
    care = [("p", at(date(2026, 3, 3)), 22.0, True)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, readings, care, today=date(2026, 3, 20)))
    assert (row["period_complete"], row["month_complete"]) == (False, False)
    assert (row["device_days"], row["device_code"]) == (16, "99454")
    assert row["management_codes"] == "99457"
    assert row["reason"] == (
        "device supply: period runs to 2026-03-31, so far readings on 16 days (99454); "
        "treatment management: month still running, so far 99457"
    )


def test_a_period_is_complete_only_once_its_last_day_is_over() -> None:
    readings = daily_readings("p", MARCH_PERIOD_START, 30)
    on_last_day = only_row(evidence({"p": MARCH_PERIOD_START}, readings, today=date(2026, 3, 31)))
    assert (on_last_day["period_complete"], on_last_day["month_complete"]) == (False, False)
    next_day = only_row(evidence({"p": MARCH_PERIOD_START}, readings, today=date(2026, 4, 1)))
    assert (next_day["period_complete"], next_day["month_complete"]) == (True, True)


def test_in_a_running_month_the_period_covering_today_is_listed() -> None:
    # episode 15 Feb: its first period, 15 Feb - 16 Mar, ends in March
    february = date(2026, 2, 1)
    before = only_row(evidence({"p": date(2026, 2, 15)}, month=february, today=date(2026, 2, 10)))
    assert (before["period_start"], before["device_code"]) == (None, None)
    assert before["reason"].startswith("device supply: monitoring had not begun; ")
    after = only_row(evidence({"p": date(2026, 2, 15)}, month=february, today=date(2026, 2, 20)))
    assert (after["period_start"], after["period_end"]) == (date(2026, 2, 15), date(2026, 3, 16))
    assert (after["period_complete"], after["period_ends_in_month"]) == (False, False)


def test_a_period_that_has_not_begun_is_not_listed() -> None:
    # episode 31 Jan: 31 Jan - 1 Mar and 2 - 31 Mar end in March; on 1 March only the first
    # has begun
    frame = evidence({"p": date(2026, 1, 31)}, today=date(2026, 3, 1))
    assert frame["period_start"].tolist() == [date(2026, 1, 31)]
    frame = evidence({"p": date(2026, 1, 31)}, today=date(2026, 3, 2))
    assert frame["period_start"].tolist() == [date(2026, 1, 31), date(2026, 3, 2)]


def test_a_patient_whose_monitoring_had_not_begun_has_one_empty_row() -> None:
    row = only_row(evidence({"p": date(2026, 4, 3)}))
    assert (row["period_start"], row["period_end"]) == (None, None)
    assert (row["period_complete"], row["device_days"], row["device_code"]) == (False, 0, None)
    assert row["reason"] == (
        "device supply: monitoring had not begun; treatment management: no time recorded this month"
    )


def test_patients_with_nothing_still_appear_with_zero_figures() -> None:
    starts = {"quiet": MARCH_PERIOD_START, "busy": MARCH_PERIOD_START}
    frame = evidence(starts, daily_readings("busy", MARCH_PERIOD_START, 3))
    assert frame["patient_id"].tolist() == ["busy", "quiet"]
    quiet = frame.loc[frame["patient_id"] == "quiet"].iloc[0]
    assert (quiet["device_days"], quiet["device_code"]) == (0, None)
    assert (quiet["management_minutes"], quiet["live_interactions"]) == (0, 0)
    assert quiet["management_codes"] == ""
    assert quiet["reason"] == (
        "device supply: no readings; treatment management: no time recorded this month"
    )


def test_facts_of_patients_without_an_episode_are_ignored() -> None:
    readings = daily_readings("stranger", MARCH_PERIOD_START, 20)
    care = [("stranger", at(date(2026, 3, 3)), 30.0, True)]
    frame = evidence({"p": MARCH_PERIOD_START}, readings, care)
    assert frame["patient_id"].tolist() == ["p"]
    assert (frame.loc[0, "device_days"], frame.loc[0, "management_minutes"]) == (0, 0)


def test_facts_dated_after_today_are_ignored() -> None:
    readings = daily_readings("p", MARCH_PERIOD_START, 30)
    care = [("p", at(date(2026, 3, 3)), 5.0, True), ("p", at(date(2026, 3, 25)), 20.0, False)]
    row = only_row(evidence({"p": MARCH_PERIOD_START}, readings, care, today=date(2026, 3, 16)))
    assert row["device_days"] == 15  # 2-16 March: today's readings count
    assert (row["management_minutes"], row["management_codes"]) == (5, "")


def test_no_patients_give_an_empty_report_with_every_column() -> None:
    frame = evidence({})
    assert frame.empty
    assert tuple(frame.columns) == EVIDENCE_COLUMNS


def test_without_today_the_clock_decides() -> None:
    frame = evidence({"p": date(2020, 1, 1)}, month=date(2020, 1, 1), today=None)
    assert frame["month_complete"].tolist() == [True]


# --- refused inputs --------------------------------------------------------------------------


def test_inputs_that_cannot_be_used_are_refused() -> None:
    episodes = episodes_frame({"p": MARCH_PERIOD_START})
    readings = readings_frame([])
    care = care_frame([])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"month": date(2026, 3, 2)}, "first day"),
        ({"month": datetime(2026, 3, 1, tzinfo=UTC)}, "datetime.date"),
        ({"month": MARCH, "today": date(2026, 2, 28)}, "before the month begins"),
        ({"month": MARCH, "tz": "Mars/Olympus_Mons"}, "unknown time zone"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BillingInputError, match=message):
            billing_evidence(episodes, readings, care, **({"today": AFTER_MARCH} | kwargs))


def test_naive_timestamps_are_refused() -> None:
    naive = pd.DataFrame({"patient_id": ["p"], "measured_at": [datetime(2026, 3, 3, 12)]})  # noqa: DTZ001
    with pytest.raises(BillingInputError, match="timezone-aware"):
        billing_evidence(
            episodes_frame({"p": MARCH_PERIOD_START}),
            naive,
            care_frame([]),
            month=MARCH,
            today=AFTER_MARCH,
        )


def test_two_episodes_for_one_patient_are_refused() -> None:
    episodes = pd.DataFrame(
        {"patient_id": ["p", "p"], "episode_start": [MARCH, MARCH_PERIOD_START]}
    )
    with pytest.raises(BillingInputError, match="more than one episode"):
        billing_evidence(
            episodes, readings_frame([]), care_frame([]), month=MARCH, today=AFTER_MARCH
        )


@pytest.mark.parametrize("minutes", [0.0, -5.0, math.nan])
def test_care_time_without_positive_minutes_is_refused(minutes: float) -> None:
    care = care_frame([("p", at(date(2026, 3, 3)), minutes, True)])
    with pytest.raises(BillingInputError, match="minutes"):
        billing_evidence(
            episodes_frame({"p": MARCH_PERIOD_START}),
            readings_frame([]),
            care,
            month=MARCH,
            today=AFTER_MARCH,
        )


def test_billing_errors_are_analytics_errors_and_value_errors() -> None:
    assert issubclass(BillingInputError, AnalyticsError)
    assert issubclass(BillingInputError, ValueError)


# --- the CSV ---------------------------------------------------------------------------------


def test_the_csv_has_a_header_stable_columns_and_iso_dates() -> None:
    starts = {"p": date(2026, 1, 1), "q": date(2026, 4, 3)}
    readings = daily_readings("p", date(2026, 3, 2), 17)
    care = [("p", at(date(2026, 3, 3)), 61.0, True)]
    frame = evidence(starts, readings, care)
    shuffled = frame[list(reversed(frame.columns))].assign(extra=1)
    text = evidence_csv(shuffled)
    assert text == (
        "patient_id,month,period_start,period_end,period_complete,period_ends_in_month,"
        "device_days,device_code,month_complete,management_minutes,live_interactions,"
        "management_codes,reason\r\n"
        "p,2026-03,2026-01-31,2026-03-01,yes,yes,0,,yes,61,1,99457+99458x2,"
        "device supply: no readings\r\n"
        "p,2026-03,2026-03-02,2026-03-31,yes,yes,17,99454,yes,61,1,99457+99458x2,\r\n"
        "q,2026-03,,,no,no,0,,yes,0,0,,"
        "device supply: monitoring had not begun; treatment management: no time recorded this "
        "month\r\n"
    )
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [row["period_end"] for row in parsed] == ["2026-03-01", "2026-03-31", ""]


def test_the_csv_defuses_text_a_spreadsheet_would_run() -> None:
    frame = evidence({"=HYPERLINK(1)": MARCH_PERIOD_START, "-1": MARCH_PERIOD_START})
    rows = list(csv.reader(io.StringIO(evidence_csv(frame))))
    assert [row[0] for row in rows[1:]] == ["'-1", "'=HYPERLINK(1)"]


def test_the_csv_needs_every_evidence_column() -> None:
    frame = evidence({"p": MARCH_PERIOD_START}).drop(columns=["reason"])
    with pytest.raises(BillingInputError, match="reason"):
        evidence_csv(frame)


# --- properties ------------------------------------------------------------------------------


@given(minutes=st.floats(min_value=0, max_value=500), live=st.booleans())
def test_management_codes_never_mix_the_first_codes(minutes: float, live: bool) -> None:
    codes = management_codes(minutes, live)
    whole = math.floor(minutes + MINUTE_TOLERANCE)
    assert not ("99470" in codes and "99457" in codes)
    assert codes.count("99470") <= 1 and codes.count("99457") <= 1
    assert ("99458" in codes) <= ("99457" in codes)
    assert bool(codes) == (live and whole >= 10)
    if "99457" in codes:
        assert codes.count("99458") == (whole - 20) // 20


ZONES = ["UTC", NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]
FIRST_INSTANT = datetime(2025, 12, 1, tzinfo=UTC)
SPAN_MINUTES = 150 * 24 * 60  # December 2025 to April 2026, across both DST changes south


def reference_row_facts(
    episode_start: date,
    period_start: date | None,
    instants: list[datetime],
    care: list[tuple[datetime, float, bool]],
    *,
    tz: str,
    month: date,
    today: date,
) -> tuple[int, float, int]:
    """Device days, exact minutes and live interactions, one fact at a time with zoneinfo."""
    zone = ZoneInfo(tz)
    days = set()
    if period_start is not None:
        period_end = period_start + timedelta(days=29)
        for instant in instants:
            day = instant.astimezone(zone).date()
            if max(period_start, episode_start) <= day <= min(period_end, today):
                days.add(day)
    minutes, live = 0.0, 0
    for started, length, is_live in care:
        day = started.astimezone(zone).date()
        if (day.year, day.month) == (month.year, month.month) and day <= today:
            minutes += length
            live += int(is_live)
    return len(days), minutes, live


patient_facts = st.fixed_dictionaries(
    {
        "start_offset": st.integers(min_value=0, max_value=140),
        "readings": st.lists(st.integers(min_value=0, max_value=SPAN_MINUTES), max_size=60),
        "care": st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=SPAN_MINUTES),
                st.floats(min_value=0.01, max_value=45, allow_nan=False),
                st.booleans(),
            ),
            max_size=6,
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    patients=st.lists(patient_facts, min_size=1, max_size=5),
    tz=st.sampled_from(ZONES),
    month_index=st.integers(min_value=0, max_value=4),
    today_offset=st.integers(min_value=0, max_value=70),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_report_matches_a_fact_by_fact_reference_in_any_order(
    patients: list[dict[str, Any]], tz: str, month_index: int, today_offset: int, seed: int
) -> None:
    month = [
        date(2025, 12, 1),
        date(2026, 1, 1),
        date(2026, 2, 1),
        date(2026, 3, 1),
        date(2026, 4, 1),
    ][month_index]
    today = month + timedelta(days=today_offset)
    starts: dict[str, date] = {}
    readings: list[tuple[str, datetime]] = []
    care: list[tuple[str, datetime, float, bool]] = []
    for number, facts in enumerate(patients):
        patient = f"pt-{number}"
        starts[patient] = date(2025, 12, 1) + timedelta(days=facts["start_offset"])
        readings += [(patient, FIRST_INSTANT + timedelta(minutes=m)) for m in facts["readings"]]
        care += [
            (patient, FIRST_INSTANT + timedelta(minutes=m), length, live)
            for m, length, live in facts["care"]
        ]
    frame = evidence(starts, readings, care, month=month, tz=tz, today=today)

    # the same facts in another order give the same report
    shuffler = random.Random(seed)
    shuffled = billing_evidence(
        episodes_frame(dict(shuffler.sample(list(starts.items()), len(starts)))),
        readings_frame(shuffler.sample(readings, len(readings))),
        care_frame(shuffler.sample(care, len(care))),
        month=month,
        tz=tz,
        today=today,
    )
    pd.testing.assert_frame_equal(frame, shuffled)

    assert tuple(frame.columns) == EVIDENCE_COLUMNS
    assert sorted(set(frame["patient_id"])) == sorted(starts)
    assert frame.groupby("patient_id").size().between(1, 2).all()
    month_last = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    for row in frame.to_dict("records"):
        patient = row["patient_id"]
        start = starts[patient]
        if row["period_start"] is None:
            assert start > min(month_last, today)
        else:
            assert (row["period_start"] - start).days % 30 == 0
            assert row["period_end"] - row["period_start"] == timedelta(days=29)
            assert row["period_ends_in_month"] == (month <= row["period_end"] <= month_last)
            assert row["period_complete"] == (row["period_end"] < today)
            assert row["period_start"] <= today
        days, minutes, live = reference_row_facts(
            start,
            row["period_start"],
            [instant for who, instant in readings if who == patient],
            [(when, length, is_live) for who, when, length, is_live in care if who == patient],
            tz=tz,
            month=month,
            today=today,
        )
        assert 0 <= row["device_days"] <= 30
        assert row["device_days"] == days
        assert row["device_code"] == ("99454" if days >= 16 else "99445" if days >= 2 else None)
        assert row["management_minutes"] == math.floor(minutes + MINUTE_TOLERANCE)
        assert row["live_interactions"] == live
        codes = row["management_codes"]
        assert not ("99470" in codes and "99457" in codes)
        assert codes == codes_text(management_codes(minutes, live > 0))
        assert (codes == "") == (live == 0 or row["management_minutes"] < 10)
        assert (row["reason"] == "") == (
            row["device_code"] is not None
            and row["period_complete"]
            and row["period_ends_in_month"]
            and codes != ""
            and row["month_complete"]
        )
