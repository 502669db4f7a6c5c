"""The live side of the rules engine: the recent history of the patients a pass concerns,
evaluated with :mod:`analytics.signals` / :mod:`analytics.episodes`, written through the flag
store.

For each patient with new readings, a pass evaluates every rule over that patient's readings
since ``max(lookback)`` before the earliest new one (every rule sees the history it needs:
trend windows, the 14-day baseline, the previous week). Then:

- the breach signals of the *new* readings go to :func:`analytics.flag_store.apply_breaches`
  (one open flag per patient, rule and direction; severity steps up; a breach after an
  acknowledgement puts the flag back in the queue; each reading linked once);
- an active flag whose episode the engine sees resolved (back in range for ``resolve_after``)
  is resolved by ``rules``, with the time it was back in range.

Silence and waits end without any reading arriving, so :func:`sweep` repeats the evaluation at
a wall-clock ``now`` for the patients with active flags or recent readings: adherence breaches
(a device silent for 48 h) and auto-resolutions happen on time. A reading that reached
CareWatch (``ingested_at``) more than ``late_after`` after it was taken raises a late flag.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import pandas as pd
import psycopg

from analytics.episodes import episodes
from analytics.flag_store import FlagChanges, apply_breaches
from analytics.rule_kinds import AdherenceRule, BaselineRule, News2Rule, SustainedRule, TrendRule
from analytics.rules import RuleSet
from analytics.signals import BREACH, evaluate
from analytics.threshold_store import rules_for_patients

#: The namespace of the reading ids given to breaches no reading carries (a silence).
SILENCE_NAMESPACE: Final = uuid.UUID("9f7c0a52-6c1e-4d3e-9d0b-2b8f3f1a7c11")
#: A count-based sustained rule needs its run inside the history: this much is loaded.
SUSTAINED_HISTORY: Final = timedelta(days=7)
#: How far back the sweep looks for patients still being monitored.
MONITORED_WITHIN: Final = timedelta(days=30)


def lookback(rules: RuleSet) -> timedelta:
    """How much history before a reading every rule needs to judge it, and to see an
    episode resolve."""
    spans = [rules.resolve_after]
    for rule in rules.rules:
        if isinstance(rule, TrendRule):
            spans.append(rule.window if rule.statistic == "rise_from_lowest" else timedelta(14))
        elif isinstance(rule, BaselineRule):
            spans.append(timedelta(days=rule.window_days + 1))
        elif isinstance(rule, AdherenceRule):
            spans.append(
                timedelta(days=rule.of_days + 1)
                if rule.check == "days_with_readings"
                else timedelta(hours=rule.hours)
            )
        elif isinstance(rule, SustainedRule):
            spans.append(timedelta(minutes=rule.minutes) if rule.minutes else SUSTAINED_HISTORY)
        elif isinstance(rule, News2Rule):
            spans.append(timedelta(minutes=rule.window_minutes))
    return max(spans) + rules.resolve_after + timedelta(days=1)


#: A reading as the engine takes it (``received_at``: when CareWatch got it).
HISTORY_COLUMNS: Final = (
    "reading_id",
    "patient_id",
    "loinc",
    "value",
    "measured_at",
    "received_at",
)
#: Readings of registered patients only (ingest stores no other; a stray row must not wedge
#: the worker on the flags' foreign key).
_HISTORY_SELECT: Final = (
    "SELECT reading_id::text, patient_id, loinc, value, measured_at, ingested_at"
    " FROM readings JOIN patients USING (patient_id)"
)


def history_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows of ``_HISTORY_SELECT`` as the engine's readings frame."""
    readings = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    readings["measured_at"] = pd.to_datetime(readings["measured_at"], utc=True)
    readings["received_at"] = pd.to_datetime(readings["received_at"], utc=True)
    readings["value"] = readings["value"].astype("float64")
    return readings


def new_readings(conn: psycopg.Connection[Any], *, lower: int, upper: int) -> pd.DataFrame:
    """The readings stored by transactions in ``[lower, upper)``."""
    rows = conn.execute(
        _HISTORY_SELECT + " WHERE ingest_xid >= %s::text::xid8 AND ingest_xid < %s::text::xid8",
        (str(lower), str(upper)),
    ).fetchall()
    return history_frame(rows)


def load_history(
    conn: psycopg.Connection[Any], *, patient_ids: list[str], since: datetime
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The patients' readings measured since ``since`` and their attributes."""
    with conn.cursor() as cur:
        cur.execute(
            _HISTORY_SELECT + " WHERE patient_id = ANY(%s::text[]) AND measured_at >= %s",
            (patient_ids, since),
        )
        rows = cur.fetchall()
        cur.execute(
            "SELECT patient_id, program, spo2_scale FROM patients"
            " WHERE patient_id = ANY(%s::text[])",
            (patient_ids,),
        )
        patients = pd.DataFrame(cur.fetchall(), columns=["patient_id", "program", "spo2_scale"])
    return history_frame(rows), patients


class HistoryCache:
    """The recent readings of the patients a worker has seen, kept in its memory.

    Reading every concerned patient's last two weeks from the database took about 200 ms of a
    240 ms pass (300 new readings of 200 patients). The worker sees every stored reading
    exactly once (the watermark), so it keeps those weeks itself: a patient's history is read
    from the database once, and each pass's new readings are appended. A reading appended
    twice (a pass rolled back and repeated) counts once: the engine deduplicates by reading id.
    A pass reaching further back than a patient's cache covers (a reading replayed from weeks
    ago) reads that patient from the database again; what falls out of the span is dropped
    from time to time (:meth:`prune`).
    """

    def __init__(self, span: timedelta) -> None:
        self.span = span
        self._readings = history_frame([])
        self._patients = pd.DataFrame(columns=["patient_id", "program", "spo2_scale"])
        self._covered_from: dict[str, pd.Timestamp] = {}

    def add(self, readings: pd.DataFrame) -> None:
        """A pass's new readings: kept for the patients already cached (the others read
        theirs, these included, when first needed)."""
        cached = readings.loc[readings["patient_id"].isin(self._covered_from.keys())]
        if not cached.empty:
            self._readings = pd.concat([self._readings, cached], ignore_index=True)

    def history(
        self,
        conn: psycopg.Connection[Any],
        *,
        patient_ids: list[str],
        since: datetime,
        now: datetime,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The patients' readings since ``since`` and their attributes."""
        since_ts = pd.Timestamp(since)
        missing = [
            p
            for p in patient_ids
            if p not in self._covered_from or self._covered_from[p] > since_ts
        ]
        if missing:
            start = min(since_ts, pd.Timestamp(now) - pd.Timedelta(self.span))
            rows, people = load_history(conn, patient_ids=missing, since=start.to_pydatetime())
            kept = ~self._readings["patient_id"].isin(missing)
            self._readings = pd.concat([self._readings.loc[kept], rows], ignore_index=True)
            known = ~self._patients["patient_id"].isin(missing)
            self._patients = pd.concat([self._patients.loc[known], people], ignore_index=True)
            self._covered_from.update(dict.fromkeys(missing, start))
        wanted = self._readings["patient_id"].isin(patient_ids) & (
            self._readings["measured_at"] >= since_ts
        )
        people = self._patients.loc[self._patients["patient_id"].isin(patient_ids)]
        return self._readings.loc[wanted], people

    def prune(self, *, now: datetime) -> None:
        """Forget what fell out of the span."""
        horizon = pd.Timestamp(now) - pd.Timedelta(self.span)
        self._readings = self._readings.loc[self._readings["measured_at"] >= horizon]
        self._covered_from = {p: max(t, horizon) for p, t in self._covered_from.items()}

    def __len__(self) -> int:
        return len(self._readings)


def as_breaches(signals: pd.DataFrame, rules: RuleSet) -> pd.DataFrame:
    """Breach signals in the flag store's breach columns. A breach no reading carries (a
    silence, a week with too few days) gets a reading id derived from the patient, the rule
    and its time, so that applying it again links nothing twice."""
    breaching = signals.loc[signals["state"] == BREACH]
    titles = {rule.id: rule.title for rule in rules.rules}
    reading_id = [
        rid
        if rid is not None
        else str(uuid.uuid5(SILENCE_NAMESPACE, f"{patient}/{rule}/{at.isoformat()}"))
        for rid, patient, rule, at in zip(
            breaching["reading_id"],
            breaching["patient_id"],
            breaching["rule_id"],
            breaching["at"],
            strict=True,
        )
    ]
    return pd.DataFrame(
        {
            "reading_id": reading_id,
            "patient_id": breaching["patient_id"].to_numpy(),
            "rule_id": breaching["rule_id"].to_numpy(),
            "kind": breaching["kind"].to_numpy(),
            "direction": breaching["direction"].to_numpy(),
            "loinc": breaching["metric"].to_numpy(),
            "value": breaching["value"].to_numpy(),
            "measured_at": breaching["at"].to_numpy(),
            "severity": breaching["severity"].to_numpy(),
            "limit": breaching["limit"].to_numpy(),
            "label": breaching["label"].to_numpy(),
            "title": breaching["rule_id"].map(titles).to_numpy(),
            "late": breaching["late"].to_numpy(),
        }
    )


def evaluate_patients(
    conn: psycopg.Connection[Any],
    rules: RuleSet,
    *,
    patient_ids: list[str],
    since: datetime,
    now: datetime,
    cache: HistoryCache | None = None,
    in_force: Mapping[str, RuleSet] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Signals and episodes of these patients' readings since ``since`` - lookback (from
    ``cache`` when given, else from the database), each patient under the rules in force for
    them (``in_force``, read when not given)."""
    if in_force is None:
        in_force = rules_for_patients(conn, rules, patient_ids)
    start = since - lookback(rules)
    if cache is not None:
        readings, patients = cache.history(conn, patient_ids=patient_ids, since=start, now=now)
    else:
        readings, patients = load_history(conn, patient_ids=patient_ids, since=start)
    signal_parts, flag_parts = [], []
    offset = 0  # group numbers stay distinct across the rule sets
    for group_rules, members in rule_groups(in_force, patient_ids):
        mine = readings.loc[readings["patient_id"].isin(members)]
        signals = evaluate(mine, group_rules, patients=patients, now=now)
        signal_parts.append(signals.assign(group=signals["group"] + offset))
        offset += int(signals["group"].max()) + 1 if not signals.empty else 0
        flag_parts.append(episodes(signals, group_rules, now=now))
    signals = pd.concat(signal_parts, ignore_index=True)
    signals.attrs["now"] = pd.Timestamp(now)
    return signals, pd.concat(flag_parts, ignore_index=True)


def rule_groups(
    in_force: Mapping[str, RuleSet], patient_ids: Sequence[str]
) -> list[tuple[RuleSet, list[str]]]:
    """The patients grouped by the rules in force for them (program, patient overrides)."""
    groups: dict[int, tuple[RuleSet, list[str]]] = {}
    for patient_id in patient_ids:
        rules = in_force[patient_id]
        groups.setdefault(id(rules), (rules, []))[1].append(patient_id)
    return list(groups.values())


def apply_new_readings(
    conn: psycopg.Connection[Any],
    in_force: Mapping[str, RuleSet],
    signals: pd.DataFrame,
    flags: pd.DataFrame,
    *,
    new_reading_ids: set[str],
    now: datetime,
) -> tuple[FlagChanges, int]:
    """Apply the breaches of the new readings and the engine's resolutions; the flag changes
    and the number of flags the rules resolved.

    A pass can hold several episodes of one patient's rule (readings replayed after an
    outage: 93 %, back to 97 % for a day, then 90 %). They are applied in rounds, episode by
    episode, each resolved before the next one's breaches arrive, so the flags are the
    episodes the engine sees instead of one flag folding them together.
    """
    chosen = signals.loc[signals["reading_id"].isin(new_reading_ids) & (signals["state"] == BREACH)]
    total, resolved = FlagChanges(), 0
    rounds = _episode_rounds(chosen, flags)
    for number in sorted(set(rounds)):
        total += _apply_by_rules(conn, in_force, chosen.loc[rounds == number])
        resolved += resolve_back_in_range(
            conn, _episodes_of_round(chosen.loc[rounds == number], flags), now=now
        )
    return total, resolved + resolve_back_in_range(conn, flags, now=now)


_GROUP: Final = ["patient_id", "rule_id", "_direction"]


def _with_episode(breaching: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """Each breach with the opened_at of its episode (the latest one opened at or before)."""
    left = breaching.assign(
        _direction=breaching["direction"].fillna("none"), _row=range(len(breaching))
    )
    right = flags.assign(_direction=flags["direction"].fillna("none"))
    right = right.loc[:, [*_GROUP, "opened_at"]].rename(columns={"opened_at": "_episode"})
    right["_rank"] = right.sort_values("_episode").groupby(_GROUP).cumcount()
    merged = pd.merge_asof(
        left.sort_values("at"),
        right.sort_values("_episode"),
        left_on="at",
        right_on="_episode",
        by=_GROUP,
        direction="backward",
    )
    return merged.sort_values("_row")


def _episode_rounds(breaching: pd.DataFrame, flags: pd.DataFrame) -> pd.Series:
    """For each breach, which round applies it: its episode's position among the episodes
    this pass touches in its group (0 for the first)."""
    if breaching.empty or flags.empty:
        return pd.Series(0, index=breaching.index)
    merged = _with_episode(breaching, flags)
    rank = merged["_rank"].fillna(0).astype("int64")
    first = rank.groupby([merged[c] for c in _GROUP]).transform("min")
    return pd.Series((rank - first).to_numpy(), index=breaching.index)


def _episodes_of_round(breaching: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The episodes (rows of ``flags``) that these breaches belong to."""
    if breaching.empty or flags.empty:
        return flags.iloc[0:0]
    merged = _with_episode(breaching, flags)
    keys = set(zip(*(merged[c] for c in [*_GROUP, "_episode"]), strict=True))
    mask = [
        (p, r, d, o) in keys
        for p, r, d, o in zip(
            flags["patient_id"],
            flags["rule_id"],
            flags["direction"].fillna("none"),
            flags["opened_at"],
            strict=True,
        )
    ]
    return flags.loc[mask]


def _apply_by_rules(
    conn: psycopg.Connection[Any], in_force: Mapping[str, RuleSet], breaching: pd.DataFrame
) -> FlagChanges:
    """Apply breaches under the rules in force for each patient: each flag records the
    version of the rules that raised it."""
    total = FlagChanges()
    for group_rules, members in rule_groups(in_force, sorted(set(breaching["patient_id"]))):
        mine = breaching.loc[breaching["patient_id"].isin(members)]
        total += apply_breaches(conn, as_breaches(mine, group_rules), group_rules)
    return total


def resolve_back_in_range(
    conn: psycopg.Connection[Any], flags: pd.DataFrame, *, now: datetime
) -> int:
    """Resolve each active flag whose latest episode the engine sees resolved by ``now``
    (and that no breach reached after that)."""
    if flags.empty:
        return 0
    latest = (
        flags.sort_values("opened_at")
        .groupby(["patient_id", "rule_id", flags["direction"].fillna("none")], sort=False)
        .tail(1)
    )
    done = latest.loc[latest["resolved_at"].notna() & (latest["resolved_at"] <= pd.Timestamp(now))]
    if done.empty:
        return 0
    rows = conn.execute(
        "WITH back AS ("
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])"
        " AS b(patient_id, rule_id, direction, back_at)),"
        " resolved AS ("
        " UPDATE flags f SET status = 'resolved', resolved_at = b.back_at, resolved_by = 'rules',"
        " resolution_note = 'back in range'"
        " FROM back b WHERE (f.patient_id, f.rule_id, f.direction)"
        " = (b.patient_id, b.rule_id, b.direction)"
        " AND f.status <> 'resolved' AND f.last_breach_at < b.back_at"
        " RETURNING f.flag_id)"
        " INSERT INTO flag_events (flag_id, event, actor, detail)"
        " SELECT flag_id, 'resolved', 'rules', '{\"reason\": \"back in range\"}'::jsonb"
        " FROM resolved RETURNING flag_id",
        (
            done["patient_id"].tolist(),
            done["rule_id"].tolist(),
            done["direction"].fillna("none").tolist(),
            done["resolved_at"].tolist(),
        ),
    ).fetchall()
    return len(rows)


def monitored_patients(conn: psycopg.Connection[Any], *, now: datetime) -> list[str]:
    """Patients with an active flag or a reading in the last 30 days: what a sweep covers."""
    rows = conn.execute(
        "SELECT patient_id FROM flags WHERE status <> 'resolved'"
        " UNION SELECT DISTINCT patient_id FROM devices WHERE last_reading_at >= %s",
        (now - MONITORED_WITHIN,),
    ).fetchall()
    return sorted(patient_id for (patient_id,) in rows)


#: A gateway counts as online when its last message came this recently.
GATEWAY_ONLINE_WITHIN: Final = timedelta(minutes=15)


def equipment_breaches(
    conn: psycopg.Connection[Any], rules: RuleSet, *, now: datetime
) -> pd.DataFrame:
    """Breaches of the ``device_silent`` and ``gateway_offline`` rules at ``now``, from the
    devices' last readings and the gateways' state, in the flag store's breach columns. A
    device silent behind an online gateway is told apart from a home whose gateway is off."""
    rows: list[dict[str, Any]] = []
    for rule in rules.rules:
        if not isinstance(rule, AdherenceRule) or rule.check not in (
            "device_silent",
            "gateway_offline",
        ):
            continue
        limit = timedelta(hours=rule.hours)
        if rule.check == "device_silent":
            found = conn.execute(
                "SELECT d.patient_id, d.device_type, d.last_reading_at, d.device_id"
                " FROM devices d JOIN gateways g USING (gateway_id)"
                " WHERE d.last_reading_at < %(cut)s AND g.state = 'online'"
                " AND g.last_seen_at >= %(online)s ORDER BY d.patient_id, d.last_reading_at",
                {"cut": now - limit, "online": now - GATEWAY_ONLINE_WITHIN},
            ).fetchall()
            what = "device"
        else:
            found = conn.execute(
                "SELECT gp.patient_id, 'gateway', coalesce(g.last_seen_at, g.created_at),"
                " g.gateway_id FROM gateways g JOIN gateway_patients gp USING (gateway_id)"
                " WHERE coalesce(g.last_seen_at, g.created_at) < %(cut)s"
                " ORDER BY gp.patient_id",
                {"cut": now - limit},
            ).fetchall()
            what = "gateway"
        for patient_id, kind_of, last_at, equipment in found:
            at = last_at + limit
            rows.append(
                {
                    "reading_id": str(
                        uuid.uuid5(SILENCE_NAMESPACE, f"{patient_id}/{rule.id}/{equipment}/{at}")
                    ),
                    "patient_id": patient_id,
                    "rule_id": rule.id,
                    "kind": rule.kind,
                    "direction": None,
                    "loinc": kind_of if what == "device" else "gateway",
                    "value": (now - last_at) / timedelta(hours=1),
                    "measured_at": at,
                    "severity": rule.severity,
                    "limit": rule.hours,
                    "label": f"{rule.label} ({kind_of})" if what == "device" else rule.label,
                    "title": rule.title,
                    "late": False,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "reading_id", "patient_id", "rule_id", "kind", "direction", "loinc", "value",
            "measured_at", "severity", "limit", "label", "title", "late",
        ],
    )  # fmt: skip


def resolve_equipment_back(
    conn: psycopg.Connection[Any], rules: RuleSet, breaches: pd.DataFrame
) -> int:
    """Resolve the open device and gateway flags of patients no longer affected."""
    rule_ids = [
        rule.id
        for rule in rules.rules
        if isinstance(rule, AdherenceRule) and rule.check in ("device_silent", "gateway_offline")
    ]
    if not rule_ids:
        return 0
    still = [f"{p}/{r}" for p, r in zip(breaches["patient_id"], breaches["rule_id"], strict=True)]
    rows = conn.execute(
        "WITH resolved AS ("
        " UPDATE flags SET status = 'resolved', resolved_at = now(), resolved_by = 'rules',"
        " resolution_note = 'reporting again'"
        " WHERE status <> 'resolved' AND rule_id = ANY(%s::text[])"
        " AND NOT (patient_id || '/' || rule_id = ANY(%s::text[]))"
        " RETURNING flag_id)"
        " INSERT INTO flag_events (flag_id, event, actor, detail)"
        " SELECT flag_id, 'resolved', 'rules', '{\"reason\": \"reporting again\"}'::jsonb"
        " FROM resolved RETURNING flag_id",
        (rule_ids, still),
    ).fetchall()
    return len(rows)


def sweep(
    conn: psycopg.Connection[Any],
    rules: RuleSet,
    *,
    now: datetime,
    cache: HistoryCache | None = None,
) -> tuple[FlagChanges, int]:
    """The time-driven part, for every monitored patient: breaches no reading carries
    (silence, too few days, a silent device, a gateway offline; applying one again changes
    nothing) and resolutions whose wait ended or whose equipment reports again."""
    patient_ids = monitored_patients(conn, now=now)
    if not patient_ids:
        return FlagChanges(), 0
    in_force = rules_for_patients(conn, rules, patient_ids)
    signals, flags = evaluate_patients(
        conn, rules, patient_ids=patient_ids, since=now, now=now, cache=cache, in_force=in_force
    )
    unread = signals.loc[signals["reading_id"].isna()]
    changes = _apply_by_rules(conn, in_force, unread)
    equipment = equipment_breaches(conn, rules, now=now)
    if not equipment.empty:
        changes += apply_breaches(conn, equipment, rules)
    resolved = resolve_back_in_range(conn, flags, now=now)
    return changes, resolved + resolve_equipment_back(conn, rules, equipment)
