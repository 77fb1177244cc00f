"""Run report: totals, latency, reconciliation by record id sets, dead letters and the assembled audit log."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cxone_runs.layout import RunLayout, group_index_of
from cxone_runs.report import NOT_SENT_REASONS, RunReport, describe_accounting
from include.cxone_import import sync
from include.cxone_import.engine import DUPLICATE, FAILED, IMPORTED
from include.cxone_import.pipeline import reject_gate_tripped
from include.cxone_import.state import (
    DECISION_LISTED,
    DECISION_STALE,
    DECISION_UNCHANGED,
    DECISION_UPDATE,
    DECISION_UNCONFIRMED,
    read_changes,
    read_decided_rows,
)
from include.cxone_import.storage import (
    ensure_parent,
    iter_jsonl,
    iter_rows_of,
    read_json,
    read_parquet,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)

NOT_SENT = "not_sent"
UNCHANGED = "unchanged"  # the list already holds this record exactly as it is (include/cxone_import/state.py)


class RunFailedError(RuntimeError):
    """The run finished and wrote its report, but its result needs a person (failed records, too many rejects)."""


@dataclass(frozen=True)
class Reconciliation:
    """input = imported + duplicate + rejected + failed, checked on row-number sets."""

    ok: bool
    input_rows: int
    accounted: int
    missing: list[int]
    double_counted: list[int]
    unknown: list[int]

    def describe(self) -> str:
        if self.ok:
            return f"all {self.input_rows} input records accounted for exactly once"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} input rows have no outcome (first rows: {self.missing[:10]})")
        if self.double_counted:
            parts.append(f"{len(self.double_counted)} rows have more than one outcome (first rows: {self.double_counted[:10]})")
        if self.unknown:
            parts.append(f"{len(self.unknown)} outcomes name rows not in the input (first rows: {self.unknown[:10]})")
        return "; ".join(parts)


def group_summaries(layout: RunLayout) -> list[dict[str, Any]]:
    """Each import group's summary; a group's updates and removals (``sync/outcomes-{g}.json``) come as one more
    summary of their requests, so totals, latency and the rate chart count every request the run made."""
    summaries = [read_json(p) for p in layout.group_summaries()]
    for path in layout.sync_summaries():
        counts = read_json(path)
        summaries.append({"group_index": group_index_of(path), "sync": True, "batch_metrics": counts.get("metrics", [])})
    return summaries


def sync_counts(layout: RunLayout) -> dict[str, dict[str, int]]:
    """How the run's updates and removals ended: ``updates`` and ``removals`` by outcome, removals also by reason
    (``"{reason}:{outcome}"``)."""
    outcomes = sync.read_outcomes(layout)
    updates = outcomes[outcomes["action"] == sync.UPDATE]["outcome"].value_counts()
    removals = outcomes[outcomes["action"] == sync.REMOVE]
    return {"updates": {str(k): int(v) for k, v in updates.items()},
            "removals": {str(k): int(v) for k, v in removals["outcome"].value_counts().items()},
            "removals_by_reason": {f"{r}:{o}": int(n) for (r, o), n in removals.groupby(["reason", "outcome"]).size().items()}}


# The outcomes of valid input rows, each counted by one total (``rejected`` counts the rest of the input).
ROW_OUTCOMES = {IMPORTED: "imported", DUPLICATE: "duplicates", UNCHANGED: "unchanged", sync.UPDATED: "updated",
                sync.STALE: "stale", FAILED: "failed", NOT_SENT: "not_sent"}
# What a removal request can end as (``removal_failed`` in the totals: the contact may still be on the list).
REMOVAL_OUTCOMES = (sync.REMOVED_OUTCOME, sync.NOT_ON_LIST, sync.REMOVAL_HELD, FAILED)


class RowAccounting(TypedDict):
    """``input = rejected + the outcomes of the valid rows``, as counts (the reconciliation checks the row sets)."""

    input: int
    rejected: int
    outcomes: dict[str, int]  # totals key -> rows (imported, duplicates, unchanged, updated, stale, failed, not_sent)
    accounted: int  # rejected + every outcome
    unknown_outcomes: dict[str, int]  # outcomes no total counts (a bug when not empty)
    ok: bool


class RemovalAccounting(TypedDict):
    """Removals are contacts, not input rows: each planned removal ends in exactly one of ``REMOVAL_OUTCOMES``. A
    consent removal's row is counted ``rejected`` among the input rows; a mirror removal has no input row."""

    planned: dict[str, int]  # reason -> removals planned
    outcomes: dict[str, dict[str, int]]  # reason -> outcome -> removals
    by_outcome: dict[str, int]  # outcome -> removals (all reasons)
    sent: bool  # False on a dry run or a held run: nothing was asked of CXone, nothing to account for
    ok: bool  # sent: every reason's outcomes add up to what was planned; not sent: no outcome
    rows_rejected: int  # consent removals: their input rows are among ``rejected``
    without_input_row: int  # mirror removals: the export no longer holds the contact
    rejected_left_on_list: int  # contacts on the list rejected tonight for another reason: no request, left as they are


def row_accounting(input_rows: int, rejected: int, counts: Mapping[str, int]) -> RowAccounting:
    """The run's row arithmetic from every valid row's outcome (``counts``: outcome -> rows)."""
    outcomes = {total: int(counts.get(outcome, 0)) for outcome, total in ROW_OUTCOMES.items()}
    unknown = {str(name): int(n) for name, n in counts.items() if name not in ROW_OUTCOMES and n}
    accounted = int(rejected) + sum(outcomes.values()) + sum(unknown.values())
    return {"input": int(input_rows), "rejected": int(rejected), "outcomes": outcomes, "accounted": accounted,
            "unknown_outcomes": unknown, "ok": accounted == int(input_rows) and not unknown}


def removal_accounting(plan: sync.SyncPlan, removals_by_reason: Mapping[str, int], *, sent: bool) -> RemovalAccounting:
    """The run's removal arithmetic: what was planned per reason against what each removal came to."""
    planned = {reason: int(plan["removals"].get(reason, 0)) for reason in sync.REMOVAL_REASONS}
    outcomes: dict[str, dict[str, int]] = {reason: {} for reason in planned}
    for name, count in removals_by_reason.items():
        reason, _, outcome = name.partition(":")
        outcomes.setdefault(reason, {})[outcome] = outcomes.get(reason, {}).get(outcome, 0) + int(count)
    by_outcome: dict[str, int] = {}
    for per_reason in outcomes.values():
        for outcome, count in per_reason.items():
            by_outcome[outcome] = by_outcome.get(outcome, 0) + count
    ended = {reason: sum(per_reason.values()) for reason, per_reason in outcomes.items()}
    known = set(by_outcome) <= set(REMOVAL_OUTCOMES)
    ok = known and (all(ended.get(r, 0) == planned.get(r, 0) for r in outcomes.keys() | planned.keys()) if sent
                    else not any(ended.values()))
    return {"planned": planned, "outcomes": outcomes, "by_outcome": by_outcome, "sent": sent, "ok": ok,
            "rows_rejected": sum(planned[r] for r in sync.CONSENT_REASONS),
            "without_input_row": planned[sync.MIRROR_ABSENT],
            "rejected_left_on_list": int(plan.get("rejected_on_list", 0))}


STOP_RULES = ("cxone_configuration", "list_lease_lost")  # failures that stop a run's sending without retries


def stopping_failure(failures: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The first recorded failure that stopped the run's sending (a configuration error, a lost list), or None."""
    return next((f for f in failures or [] if f.get("rule") in STOP_RULES), None)


def _unsent_rows(layout: RunLayout, valid_parts: int) -> list[tuple[np.ndarray, _Codes]]:
    """After a stop: the rows of groups no import task wrote outcomes for, or, when chunk planned no groups, every
    valid row the run did not leave out; all ``not_sent``."""
    groups = layout.group_files()
    if groups:
        paths = [p for p in groups if not layout.outcome_file(group_index_of(p)).exists()]
    elif not layout.outcomes_dir.exists():
        paths = [layout.valid_part(n) for n in range(valid_parts)]
    else:
        paths = []
    left_out = np.concatenate([rows for rows, _ in _left_out(layout)] or [np.zeros(0, dtype=np.int64)])
    parts = []
    for path in paths:
        rows = read_parquet(path, columns=["row_number"])["row_number"].to_numpy(dtype=np.int64)
        parts.append(_same_outcome(rows[~np.isin(rows, left_out)], NOT_SENT))
    return parts


def load_outcomes(layout: RunLayout, *, dry_run: bool = False, stopped_parts: int | None = None) -> pd.DataFrame:
    """Row number and outcome of every imported/duplicate/failed/unchanged row (only those two columns: this is
    the part of the report that grows with the list); on a dry run the planned rows, as ``not_sent``. Outcomes
    are read as Arrow dictionary codes, never as one string per row."""
    if dry_run:
        parts = [
            _same_outcome(read_parquet(p, columns=["row_number"])["row_number"].to_numpy(dtype=np.int64), NOT_SENT)
            for p in layout.group_files()
        ]
        updates = read_decided_rows(layout, DECISION_UPDATE)
        if len(updates):
            parts.append(_same_outcome(updates, NOT_SENT))
    else:
        parts = [_outcome_codes(p) for p in layout.outcome_files()]
        parts += _update_outcomes(layout)
        if stopped_parts is not None:  # a stop: what no import task answered for was never sent
            parts.extend(_unsent_rows(layout, stopped_parts))
    for rows, outcome in _left_out(layout):
        parts.append(_same_outcome(rows, outcome))
    if not parts:
        return pd.DataFrame({"row_number": pd.Series(dtype="int64"), "outcome": pd.Series(dtype="str")})
    # the categories of what is there, sorted (as astype("category") gives them)
    names = sorted({name for _, chunks in parts for name in _tally(chunks)})
    code_of = {name: code for code, name in enumerate(names)}
    codes = np.concatenate([_recoded(chunks, code_of) for _, chunks in parts])
    rows = np.concatenate([rows for rows, _ in parts])
    del parts
    outcome = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(pd.Index(names, dtype="str")))
    return pd.DataFrame({"row_number": rows, "outcome": outcome}, copy=False)


def outcome_counts(layout: RunLayout) -> dict[str, int]:
    """How many rows ended in each outcome, as :func:`load_outcomes` would count them, a group file at a time: what
    the run summary needs without holding every row's outcome (``notify_webhook``)."""
    counts: dict[str, int] = {}
    for path in layout.outcome_files():
        for name, count in _tally(_outcome_codes(path)[1]).items():
            counts[name] = counts.get(name, 0) + count
    for _, chunks in _update_outcomes(layout):
        for name, count in _tally(chunks).items():
            counts[name] = counts.get(name, 0) + count
    for rows, outcome in _left_out(layout):
        counts[outcome] = counts.get(outcome, 0) + len(rows)
    return counts


def _left_out(layout: RunLayout) -> list[tuple[np.ndarray, str]]:
    """The records the run did not send because the list holds them, with their outcome: ``unchanged`` (CXone
    acknowledged this very content) and ``duplicate`` (CXone answered duplicate for this very content before)."""
    found = [(read_decided_rows(layout, DECISION_UNCHANGED), UNCHANGED),
             (read_decided_rows(layout, DECISION_UNCONFIRMED), DUPLICATE),
             (read_decided_rows(layout, DECISION_STALE), sync.STALE)]
    return [(rows, outcome) for rows, outcome in found if len(rows)]


def _update_outcomes(layout: RunLayout) -> list[tuple[np.ndarray, _Codes]]:
    """The valid rows the run sent as updates and what each came to (``updated``, or created after a 404)."""
    outcomes = sync.read_outcomes(layout)
    updates = outcomes[outcomes["action"] == sync.UPDATE]
    if not len(updates):
        return []
    names = sorted(updates["outcome"].unique().tolist())
    codes = updates["outcome"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return [(updates["row_number"].to_numpy(np.int64), [(codes, names)])]


_Codes = list[tuple[np.ndarray, list[str]]]  # (dictionary indices, dictionary) per chunk of a part's outcomes


def _same_outcome(rows: np.ndarray, outcome: str) -> tuple[np.ndarray, _Codes]:
    return rows, [(np.zeros(len(rows), dtype=np.int8), [outcome])]


def _outcome_codes(path: Any) -> tuple[np.ndarray, _Codes]:
    """A group's row numbers and its outcomes as dictionary codes."""
    with path.open("rb") as handle:
        table = pq.read_table(handle, columns=["row_number", "outcome"], read_dictionary=["outcome"], use_threads=False)
    if table["outcome"].null_count:
        raise ValueError(f"{path}: a row has no outcome")
    chunks = [(c.indices.to_numpy(zero_copy_only=False), c.dictionary.to_pylist()) for c in table["outcome"].chunks]
    return table["row_number"].to_numpy().astype(np.int64, copy=False), chunks


def _tally(chunks: _Codes) -> dict[str, int]:
    """How many of a part's rows hold each outcome (only those its rows hold: a dictionary may name more)."""
    counts: dict[str, int] = {}
    for indices, dictionary in chunks:
        for name, count in zip(dictionary, np.bincount(indices, minlength=len(dictionary)).tolist(), strict=True):
            if count:
                counts[name] = counts.get(name, 0) + count
    return counts


def _recoded(chunks: _Codes, code_of: dict[str, int]) -> np.ndarray:
    """A part's outcome codes in the run's categories."""
    recoded = [
        np.array([code_of.get(name, -1) for name in dictionary], dtype=np.int8)[indices] for indices, dictionary in chunks
    ]
    return np.concatenate(recoded) if recoded else np.empty(0, dtype=np.int8)


def reconcile(layout: RunLayout, *, extract_parts: int, outcomes: pd.DataFrame) -> Reconciliation:
    """Compare the set of input row numbers with rejected + imported + duplicate + failed + unchanged row numbers.
    Row numbers (from 1) index two small tallies instead of being sorted: memory follows the list's length in
    bytes, not in 8-byte numbers, and input parts are read one at a time."""
    inputs, accounted = _RowTally(), _RowTally()
    for n in range(extract_parts):
        inputs.add(read_parquet(layout.extract_part(n), columns=["row_number"])["row_number"].to_numpy(dtype=np.int64))
    rejected = read_parquet(layout.rejects_parquet, columns=["row_number"])["row_number"].to_numpy(dtype=np.int64)
    accounted.add(np.unique(rejected))
    accounted.add(outcomes["row_number"].to_numpy(dtype=np.int64))
    size = max(len(inputs.counts), len(accounted.counts))
    seen, counted = inputs.padded(size) > 0, accounted.padded(size)
    missing = np.flatnonzero(seen & (counted == 0))
    double_counted = np.flatnonzero(counted > 1)
    unknown = np.flatnonzero(~seen & (counted > 0))
    return Reconciliation(
        ok=bool(inputs.total == accounted.total and not len(double_counted) and not len(missing) and not len(unknown)),
        input_rows=inputs.total,
        accounted=accounted.total,
        missing=[int(x) for x in missing[:1000]],
        double_counted=[int(x) for x in double_counted[:1000]],
        unknown=[int(x) for x in unknown[:1000]],
    )


_TALLY_SLICE = 1 << 18


class _RowTally:
    """How often each row number was seen (0, 1 or 2 for "more than once"), one byte per row number."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.uint8)
        self.total = 0

    def add(self, rows: np.ndarray) -> None:
        self.total += len(rows)
        if not len(rows):
            return
        if int(rows.min()) < 1:
            raise ValueError(f"row numbers start at 1, got {int(rows.min())}")
        top = int(rows.max()) + 1
        if top > len(self.counts):
            self.counts = self.padded(max(top, 2 * len(self.counts)))  # parts come in row order: grow in few steps
        for start in range(0, len(rows), _TALLY_SLICE):  # bounded temporaries, whatever the list's size
            values, times = np.unique(rows[start : start + _TALLY_SLICE], return_counts=True)
            self.counts[values] = np.minimum(self.counts[values] + np.minimum(times, 2), 2).astype(np.uint8)

    def padded(self, size: int) -> np.ndarray:
        if size <= len(self.counts):
            return self.counts
        grown = np.zeros(size, dtype=np.uint8)
        grown[: len(self.counts)] = self.counts
        return grown


def _counts_of(outcomes: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in outcomes["outcome"].value_counts().items() if v} if len(outcomes) else {}


def totals(validated: dict[str, Any], outcomes: pd.DataFrame | Mapping[str, int], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and latency over the whole run; success rate is over ALL input records, rejected included.
    ``outcomes``: every row's outcome (:func:`load_outcomes`) or how many rows ended in each (:func:`outcome_counts`)."""
    counts = outcomes if isinstance(outcomes, Mapping) else _counts_of(outcomes)
    # A resumed batch carries the metrics of the attempt that acknowledged it, so sums cover the whole run.
    all_metrics = [m for s in summaries for m in s["batch_metrics"]]
    latencies = np.array([m["latency_ms"] for m in all_metrics if m["latency_ms"] > 0], dtype=float)
    input_rows = int(validated["input_rows"])
    imported, duplicates, failed, unchanged = (int(counts.get(k, 0)) for k in (IMPORTED, DUPLICATE, FAILED, UNCHANGED))
    on_server = imported + duplicates + unchanged + int(counts.get(sync.UPDATED, 0))
    return {
        "input": input_rows,
        "rejected": int(validated["rejected_rows"]),
        "valid": int(validated["valid_rows"]),
        "imported": imported,
        "duplicates": duplicates,
        "failed": failed,
        "unchanged": unchanged,
        "not_sent": int(counts.get(NOT_SENT, 0)),
        "updated": int(counts.get(sync.UPDATED, 0)),
        "stale": int(counts.get(sync.STALE, 0)),
        "confirmed_on_retry": sum(int(m.get("confirmed_on_retry", 0)) for m in all_metrics),
        "success_rate_percent": round(100.0 * on_server / input_rows, 2) if input_rows else 0.0,
        "import_rate_percent": round(100.0 * imported / input_rows, 2) if input_rows else 0.0,
        "batches": len(all_metrics),
        "batches_resumed": sum(1 for m in all_metrics if m.get("resumed")),
        "requests": sum(int(m["requests"]) for m in all_metrics),
        "attempts": sum(int(m["attempts"]) for m in all_metrics),
        "rate_limited": sum(int(m["rate_limited"]) for m in all_metrics),
        "average_batch_latency_ms": round(float(latencies.mean()), 2) if len(latencies) else 0.0,
        "p95_batch_latency_ms": round(float(np.percentile(latencies, 95)), 2) if len(latencies) else 0.0,
    }


LATENCY_BUCKET_BOUNDS_MS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
TIMELINE_BUCKET_CHOICES_S = (1, 2, 5, 10, 30, 60, 300, 900, 3600)
TIMELINE_MAX_BUCKETS = 120


def latency_histogram(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch latencies in fixed buckets (the last one open-ended) plus percentiles: the same size for any run."""
    latencies = np.array([m["latency_ms"] for m in metrics if m["latency_ms"] > 0], dtype=float)
    counts = np.bincount(np.searchsorted(LATENCY_BUCKET_BOUNDS_MS, latencies, side="left"),
                         minlength=len(LATENCY_BUCKET_BOUNDS_MS) + 1)
    percentile = (lambda q: round(float(np.percentile(latencies, q)), 2)) if len(latencies) else (lambda q: 0.0)
    return {
        "upper_bounds_ms": list(LATENCY_BUCKET_BOUNDS_MS),
        "counts": [int(c) for c in counts],
        "batches": int(len(latencies)),
        "p50_ms": percentile(50),
        "p95_ms": percentile(95),
        "p99_ms": percentile(99),
        "max_ms": round(float(latencies.max()), 2) if len(latencies) else 0.0,
    }


def request_timeline(metrics: list[dict[str, Any]], budget_per_minute: float | None) -> dict[str, Any]:
    """HTTP attempts per time bucket (at most 120 of 1 s to 1 h), each batch's attempts spread over its send time,
    with the connection's budget, the busiest 60 s (requests counted over a sliding 60 s window, so a run shorter
    than a minute shows all its requests) and the first second's requests (the limiter starts with a catch-up burst
    above its steady rate), for the rate chart of the report tab."""
    timed = [m for m in metrics if m.get("started_at") and m.get("finished_at")]
    empty = {"start": None, "bucket_seconds": TIMELINE_BUCKET_CHOICES_S[0], "attempts": [],
             "budget_requests_per_minute": budget_per_minute, "peak_requests_per_minute": 0,
             "peak_window_start_s": None, "first_second_requests": 0,
             "steady_requests_per_second": round(budget_per_minute / 60, 2) if budget_per_minute else None}
    if not timed:
        return empty
    started = pd.to_datetime([m["started_at"] for m in timed], utc=True, format="ISO8601")
    finished = pd.to_datetime([m["finished_at"] for m in timed], utc=True, format="ISO8601")
    origin = started.min()
    begin = (started - origin).total_seconds().to_numpy()
    end = np.maximum((finished - origin).total_seconds().to_numpy(), begin)
    attempts = np.array([max(int(m.get("attempts") or 0), int(m.get("requests") or 0), 1) for m in timed])
    batch = np.repeat(np.arange(len(timed)), attempts)
    nth = np.arange(len(batch)) - np.repeat(np.cumsum(attempts) - attempts, attempts)
    sent_at = np.sort(begin[batch] + (nth + 0.5) / attempts[batch] * (end[batch] - begin[batch]))
    span = float(end.max()) + 1e-9
    bucket = next((s for s in TIMELINE_BUCKET_CHOICES_S if span / s <= TIMELINE_MAX_BUCKETS), TIMELINE_BUCKET_CHOICES_S[-1])
    counts = np.bincount((sent_at // bucket).astype(int), minlength=int(span // bucket) + 1)
    in_window = np.searchsorted(sent_at, sent_at + 60.0, side="left") - np.arange(len(sent_at))  # [t, t + 60 s)
    busiest = int(np.argmax(in_window))
    return {
        **empty,
        "start": origin.isoformat(),
        "bucket_seconds": int(bucket),
        "attempts": [int(c) for c in counts],
        "peak_requests_per_minute": int(in_window[busiest]),
        "peak_window_start_s": round(float(sent_at[busiest]), 3),
        "first_second_requests": int(np.searchsorted(sent_at, 1.0, side="left")),
    }


def throughput(summaries: list[dict[str, Any]], budget_per_minute: float | None) -> dict[str, Any]:
    """Compact aggregates of the per-batch metrics for the report tab: it reads report.json only."""
    metrics = [m for s in summaries for m in s["batch_metrics"]]
    return {"batch_latency": latency_histogram(metrics), "request_rate": request_timeline(metrics, budget_per_minute)}


def write_dead_letter(layout: RunLayout, groups: list[dict[str, Any]]) -> int:
    """Failed records in the API record shape plus their row and last error, ready for a redrive run."""
    ensure_parent(layout.dead_letter)
    written = 0
    with layout.dead_letter.open("w") as handle:
        for group in groups:
            index = int(group["group_index"])
            outcome_file = layout.outcome_file(index)
            if not outcome_file.exists():
                continue
            outcomes = read_parquet(outcome_file, columns=["row_number", "outcome", "detail"])
            failed = outcomes[outcomes["outcome"] == FAILED]
            if not len(failed):
                continue
            errors = dict(zip(failed["row_number"].astype("int64"), failed["detail"], strict=True))
            failed_rows = failed["row_number"].to_numpy(np.int64)
            for batch in iter_rows_of(layout.group_file(index), failed_rows, ["record_json"], slice_rows=_RECORD_SLICE):
                for row_number, record_json in zip(batch.column("row_number").to_pylist(),
                                                   batch.column("record_json").to_pylist(), strict=True):
                    record = json.loads(record_json)
                    record["_sourceRowNumber"] = row_number
                    record["_lastError"] = errors[row_number]
                    handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                    written += 1
    return written


_RECORD_SLICE = 8192  # the dead letters' group slices: records are decoded only for the failed rows


def assemble_audit_log(layout: RunLayout) -> int:
    """One JSON Lines audit log per run from the tasks' audit parts: rejected records, batches, webhook deliveries."""
    return write_jsonl(
        layout.audit_log, (entry for part in layout.audit_parts() for entry in iter_jsonl(part))
    )


def build_report(
    layout: RunLayout,
    *,
    run: dict[str, Any],
    extracted: dict[str, Any],
    validated: dict[str, Any],
    groups: list[dict[str, Any]],
    webhook: dict[str, Any] | None,
    max_reject_share: float | None = None,
    budget_per_minute: float | None = None,
    failures: list[dict[str, Any]] | None = None,
) -> RunReport:
    """Write report.json, the dead-letter file and the audit log; raise if the run's result needs a person.

    Over ``max_reject_share`` nothing was sent: the valid rows are ``not_sent``. ``failures`` are the task failures
    recorded on the way (a retried import attempt, say); they are listed, the outcomes decide the status."""
    held = reject_gate_tripped(validated, max_reject_share)
    stop = stopping_failure(failures)
    outcomes = load_outcomes(layout, dry_run=bool(run.get("dry_run")) or held,
                             stopped_parts=int(validated.get("parts", 0)) if stop else None)
    summaries = group_summaries(layout)
    reconciliation = reconcile(layout, extract_parts=int(extracted["parts"]), outcomes=outcomes)
    numbers = totals(validated, outcomes, summaries)
    rows = row_accounting(numbers["input"], numbers["rejected"], _counts_of(outcomes))
    dead_letters = write_dead_letter(layout, groups or [])
    webhook = webhook or {"events": 0, "delivered": 0, "failed": 0}
    audit_entries = assemble_audit_log(layout)
    reject_share = numbers["rejected"] / numbers["input"] if numbers["input"] else 0.0
    problems: list[str] = []
    if not reconciliation.ok:
        problems.append("reconciliation failed: " + reconciliation.describe())
    if not rows["ok"]:
        problems.append(f"the outcomes do not add up: {rows['accounted']} counted for {rows['input']} input rows"
                        + (f" (outcomes no total counts: {rows['unknown_outcomes']})" if rows["unknown_outcomes"] else ""))
    if numbers["failed"]:
        problems.append(
            f"{numbers['failed']} records failed to import; they are in {layout.dead_letter} with their last error "
            f"(trigger a run with redrive_run_id={run.get('run_id')!r} to send exactly those again)"
        )
    if stop is not None:
        problems.append(f"{numbers['not_sent']} records were not sent: {stop['task']} stopped: {stop['message']}")
    if held:
        problems.append(
            f"{numbers['rejected']} of {numbers['input']} rows rejected ({reject_share:.1%}), over max_reject_share "
            f"{max_reject_share:.1%}: nothing was sent; fix the export (see {layout.rejects_csv}) or raise the "
            "threshold for this run"
        )
    changes = read_changes(layout)
    notices = change_notices(changes, duplicates_of_listed=_duplicates_of_listed(layout, outcomes))
    sync_section = sync_report(layout, dry_run=bool(run.get("dry_run")) or held)
    if sync_section is not None:
        for outcome in (sync.REMOVED_OUTCOME, sync.NOT_ON_LIST, sync.REMOVAL_HELD):
            numbers[outcome] = int(sync_section["removals"].get(outcome, 0))
        numbers["removal_failed"] = int(sync_section["removals"].get(FAILED, 0))
        notices += sync_notices(sync_section)
        if not sync_section["removals_reconciled"]:
            problems.append("removals not reconciled: " + sync_section["removals_detail"])
        if sync_section.get("dnc", {}).get("dnc_failed"):
            problems.append(f"{sync_section['dnc']['dnc_failed']} numbers of contacts who withdrew consent could not be "
                            "put into the DNC group (dnc_group_id): see the audit log's dnc entries")
        if numbers["removal_failed"]:
            problems.append(f"{numbers['removal_failed']} removals failed: those contacts may still be on the list "
                            "(see the audit log's removal entries)")
    report: RunReport = {
        "run": run,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "source_uri": extracted.get("source_uri"),
        "held_by_reject_gate": held,
        "not_sent_reason": ("reject_gate" if held else "dry_run" if run.get("dry_run") else stop["rule"] if stop else None)
        if numbers["not_sent"] else None,
        **({"failure": {k: stop.get(k) for k in ("task", "error", "rule", "column", "source", "message")}} if stop else {}),
        "task_failures": failures or [],
        "totals": numbers,
        "reject_share": round(reject_share, 4),
        "rejects_by_rule": validated.get("rejects_by_rule", {}),
        "normalised": validated.get("normalised", {}),
        "changes": changes,
        "sync": sync_section,
        "notices": notices,
        "reconciliation": {"ok": reconciliation.ok, "detail": reconciliation.describe()},
        "accounting": {"rows": rows, "removals": sync_section["accounting"] if sync_section else None},
        "webhook": webhook,
        "throughput": throughput(summaries, budget_per_minute),
        "timings_seconds": {"validation": validated.get("validation_seconds"), "schema": validated.get("schema_seconds")},
        "files": {
            "report": str(layout.report),
            "rejects_csv": str(layout.rejects_csv),
            "audit_log": str(layout.audit_log),
            "dead_letter": str(layout.dead_letter),
            "batch_results": str(layout.batch_results),
        },
        "audit_entries": audit_entries,
        "dead_letters": dead_letters,
        "status": "failed" if problems else "success",
        "problems": problems,
    }
    write_jsonl(
        layout.batch_results,
        (m for s in sorted(summaries, key=lambda s: s["group_index"]) for m in s["batch_metrics"]),
    )
    write_json(layout.report, report)
    log.info(
        "report: input %d, rejected %d, imported %d, duplicates %d, unchanged %d, failed %d, success rate %.2f%%",
        numbers["input"], numbers["rejected"], numbers["imported"], numbers["duplicates"], numbers["unchanged"],
        numbers["failed"], numbers["success_rate_percent"],
    )
    return report


def sync_report(layout: RunLayout, *, dry_run: bool) -> dict[str, Any] | None:
    """The report's ``sync``: the plan (what a dry run would do), the updates and removals by outcome, and whether
    every planned removal has exactly one outcome. None when the run planned no sync (append)."""
    plan = sync.read_plan(layout)
    if plan is None:
        return None
    counts = sync_counts(layout)
    planned = sum(plan["removals"].values())
    outcomes = sync.read_outcomes(layout)
    removed_ids = outcomes.loc[outcomes["action"] == sync.REMOVE, "contact_id"]
    sent = not dry_run and bool(layout.sync_ops_files())
    accounting = removal_accounting(plan, counts["removals_by_reason"], sent=sent)
    reconciled = accounting["ok"] and (not sent or (len(removed_ids) == planned and removed_ids.is_unique))
    detail = (f"{planned} removals planned {accounting['planned']}, {len(removed_ids)} outcomes "
              f"{accounting['by_outcome']} ({int(removed_ids.duplicated().sum())} contacts with more than one)"
              if sent else "nothing sent")
    dnc: dict[str, int] = {}  # the call_lists profile's DNC entries for withdrawn consent (dnc_group_id)
    for path in layout.sync_summaries():
        for name, count in (read_json(path).get("dnc") or {}).items():
            dnc[name] = dnc.get(name, 0) + int(count)
    return {"mode": plan["mode"], "plan": plan, "dry_run": dry_run, **counts, "removals_reconciled": reconciled,
            "removals_detail": detail, "accounting": accounting, **({"dnc": dnc} if dnc else {})}


def sync_notices(section: Mapping[str, Any]) -> list[str]:
    """What a reader must know about the run's updates and removals."""
    plan = section["plan"]
    notices = []
    if section["dry_run"]:
        notices.append(f"dry run ({plan['mode']}): would create {plan['creates']}, update {plan['updates']} and remove "
                       f"{sum(plan['removals'].values())} records ({plan['removals']})")
    held = section["removals"].get(sync.REMOVAL_HELD, 0)
    if held:
        notices.append(f"{held} mirror removals were held (over max_removal_share {plan['mirror_share']:.1%} of the list "
                       "without approval, or not approved): those contacts stay on the list")
    if plan.get("rejected_on_list"):
        notices.append(f"{plan['rejected_on_list']} contacts on the list were rejected tonight for a reason other than "
                       "consent: they were left on the list as they were")
    if plan.get("withdrawn_unknown"):
        notices.append(f"{plan['withdrawn_unknown']} records withdraw consent for contacts the list's state does not "
                       "know: no removal was sent for them (the list may hold them if something else put them there)")
    stale = plan.get("stale") or {}
    if stale.get("updates") or stale.get("removals"):
        notices.append(f"backfill: {stale.get('updates', 0)} updates and {stale.get('removals', 0)} consent removals "
                       "were not made because the list holds a newer day's version (stale)")
    if plan.get("backfill") and plan["mode"] == "mirror":
        notices.append("backfill: the run is older than the newest day the list holds, so mirror removed nothing")
    return notices


def _duplicates_of_listed(layout: RunLayout, outcomes: pd.DataFrame) -> int:
    """Records sent whose contact the list held with other content, answered ``duplicate``: CXone kept its own."""
    listed = read_decided_rows(layout, DECISION_LISTED)
    if not len(listed) or not len(outcomes):
        return 0
    duplicate = outcomes["row_number"].to_numpy()[(outcomes["outcome"] == DUPLICATE).to_numpy()]
    return int(np.isin(duplicate, listed).sum())


def change_notices(changes: Mapping[str, Any] | None, *, duplicates_of_listed: int = 0) -> list[str]:
    """What a reader of the report must know about how the run used the list's state (never hidden in a count)."""
    if not changes:
        return []
    notices = []
    state = changes.get("state") or {}
    where = f"list {state.get('list_id')} on {state.get('tenant')}" if state else "the list"
    if changes.get("mode") == "new_list":
        notices.append(f"{where} was created by this run (or would be, on a dry run): it starts with an empty "
                       "state, every valid record is sent")
    elif changes.get("mode") == "not_compared":
        notices.append("the list's tenant could not be named (no CXone connection): nothing compared")
    for unreadable in changes.get("unreadable") or []:
        notices.append(f"the state of {where} could not be read ({unreadable}); it was set aside and the records it "
                       "held were sent in full")
    migrated = changes.get("migrated")
    if migrated:
        notices.append(
            f"the state kept for list {state.get('list_id')} before states were keyed by tenant was adopted for "
            f"{state.get('tenant')} ({migrated['contacts']} contacts; {migrated['present_unconfirmed']} answered "
            f"duplicate by an earlier run, their content not confirmed; {migrated['unexplained_taken_as_acknowledged']} "
            "with no run folder left to check, taken as acknowledged)")
    if changes.get("unconfirmed"):
        notices.append(
            f"{changes['unconfirmed']} records were not sent again: CXone answered duplicate for this very content on "
            "an earlier run, so the list holds these contacts with content it never confirmed; they count as "
            "duplicate (the records API does not update a stored record)")
    if duplicates_of_listed:
        notices.append(
            f"{duplicates_of_listed} changed records were answered duplicate: the list keeps the version it "
            "acknowledged before (the records API does not update a stored record)")
    return notices


def build_failed_report(layout: RunLayout, *, run: dict[str, Any], failures: list[dict[str, Any]]) -> RunReport:
    """The report of a run that stopped before its records could be validated (a file-level error, storage):
    which task failed, on which file, column and rule, and that nothing was sent."""
    first = failures[0] if failures else {"task": None, "message": "an upstream task failed without recording why"}
    problems = [
        f"{f.get('task')} failed: {f.get('message')}" + (" (the file must be fixed; no retry)" if f.get("rule") else "")
        for f in failures
    ] or [first["message"]]
    problems.append("nothing was sent to CXone")
    empty = pd.DataFrame({"row_number": pd.Series(dtype="int64"), "outcome": pd.Series(dtype="str")})
    numbers = totals({"input_rows": 0, "rejected_rows": 0, "valid_rows": 0}, empty, [])
    report: RunReport = {
        "run": run,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "source_uri": first.get("source"),
        "failure": {k: first.get(k) for k in ("task", "error", "rule", "column", "source", "message")},
        "task_failures": failures,
        "totals": numbers,
        "reject_share": 0.0,
        "rejects_by_rule": {},
        "normalised": {},
        "reconciliation": {"ok": False, "detail": "not reconciled: the input could not be read"},
        "webhook": {"events": 0, "delivered": 0, "failed": 0},
        "files": {"report": str(layout.report)},
        "dead_letters": 0,
        "status": "failed",
        "problems": problems,
    }
    write_json(layout.report, report)
    log.info("report: the run failed in %s (%s)", first.get("task"), first.get("rule") or first.get("error"))
    return report


def describe_changes(changes: Mapping[str, Any]) -> str:
    """Which state the run compared against and what it left out, in one line."""
    state = changes.get("state")
    if not state:
        return f"none ({changes.get('mode')})"
    contacts = changes.get("state_contacts")
    return (f"list {state['list_id']} on {state['tenant']}" + (f", {contacts} contacts" if contacts is not None else "")
            + f" ({changes.get('mode')}): {changes.get('unchanged', 0)} left unchanged, "
            f"{changes.get('unconfirmed', 0)} not sent again (answered duplicate before)")


def format_report(report: RunReport) -> str:
    """The report as a person reads it at the end of a run."""
    t = report["totals"]
    lines = [
        f"CXone import report ({report['status'].upper()})  run {report['run'].get('run_id')}",
        f"  source            {report.get('source_uri')}",
        f"  contact list      {report['run'].get('contact_list_id')}",
        f"  input records     {t['input']}",
        f"  rejected          {t['rejected']}  {report.get('rejects_by_rule')}",
        f"  imported          {t['imported']}  (confirmed on retry: {t['confirmed_on_retry']})",
        f"  duplicates        {t['duplicates']}",
        f"  unchanged         {t.get('unchanged', 0)}  (CXone acknowledged them as they are; not sent)",
        f"  failed            {t['failed']}",
        *([f"  updated           {t.get('updated', 0)}  stale {t.get('stale', 0)}  (sync {report['sync']['mode']})",
           f"  removed           {t.get('removed', 0)}  not on list {t.get('not_on_list', 0)}  held "
           f"{t.get('removal_held', 0)}  failed {t.get('removal_failed', 0)}  planned {report['sync']['plan']['removals']}"]
          if report.get("sync") else []),
        *([f"  not sent          {t['not_sent']} ({NOT_SENT_REASONS.get(report.get('not_sent_reason'), 'not sent')})"]
          if t.get("not_sent") else []),
        *([f"  state compared    {describe_changes(report['changes'])}"] if report.get("changes") else []),
        f"  success rate      {t['success_rate_percent']}% of all input records (imported + duplicates + unchanged + updated)",
        f"  batches           {t['batches']} ({t['batches_resumed']} resumed), {t['requests']} requests, {t['rate_limited']} answered 429",
        f"  batch latency     avg {t['average_batch_latency_ms']} ms, p95 {t['p95_batch_latency_ms']} ms",
        f"  normalised        {report.get('normalised') or 'nothing'}",
        f"  reconciliation    {report['reconciliation']['detail']}",
        *([f"  arithmetic        {describe_accounting(report['accounting'])}"] if report.get("accounting") else []),
        f"  webhook           {report['webhook'].get('delivered', 0)} of {report['webhook'].get('events', 0)} events delivered",
    ]
    lines += [f"  {name:<17} {path}" for name, path in report["files"].items()]
    lines += [f"  NOTE: {n}" for n in report.get("notices", [])]
    lines += [f"  PROBLEM: {p}" for p in report.get("problems", [])]
    return "\n".join(lines)
