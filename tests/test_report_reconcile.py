"""The report's row-level parts: outcomes read as dictionary codes, reconciliation by row-number tallies, the
dead-letter file; each checked against the plain pandas/numpy computation they replace."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from upath import UPath

from include.cxone_import import report
from include.cxone_import.state import DECISION_UNCHANGED, DECISION_UNCONFIRMED
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import write_parquet


@pytest.fixture
def layout(tmp_path):
    return RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")


def _outcomes(layout, index, rows, outcomes, details=None):
    write_parquet(layout.outcome_file(index), pd.DataFrame({
        "row_number": pd.Series(rows, dtype="int64"), "contact_id": [f"c{r}" for r in rows], "outcome": outcomes,
        "batch_id": "b", "detail": details or [""] * len(rows),
    }))


def _decided(layout, decisions: dict[int, int]) -> None:
    """The chunk step's decision file: rows the list holds as they are (unchanged) or answered duplicate before."""
    write_parquet(layout.changes_decision, pd.DataFrame({
        "row_number": np.array(list(decisions), dtype=np.int64), "fingerprint": np.arange(len(decisions), dtype=np.uint64),
        "decision": np.array(list(decisions.values()), dtype=np.int8)}))


def _reference_outcomes(layout, dry_run=False):
    """load_outcomes as it was: pandas frames, concatenated, outcome as a category."""
    files, column = (layout.group_files(), None) if dry_run else (layout.outcome_files(), "outcome")
    frames = [pd.read_parquet(p.path, columns=["row_number"] + ([column] if column else [])) for p in files]
    frames = [f.assign(outcome=report.NOT_SENT) if dry_run else f for f in frames]
    for decision, outcome in ((DECISION_UNCHANGED, report.UNCHANGED), (DECISION_UNCONFIRMED, report.DUPLICATE)):
        rows = report.read_decided_rows(layout, decision)
        if len(rows):
            frames.append(pd.DataFrame({"row_number": rows, "outcome": outcome}))
    outcomes = pd.concat(frames, ignore_index=True)
    outcomes["outcome"] = outcomes["outcome"].astype("category")
    return outcomes


def test_outcomes_are_the_rows_and_categories_of_the_files(layout):
    _outcomes(layout, 0, [1, 2, 3], ["imported", "failed", "imported"])
    _outcomes(layout, 1, [5, 6], ["duplicate", "duplicate"])
    _decided(layout, {4: DECISION_UNCHANGED, 7: DECISION_UNCHANGED, 9: DECISION_UNCONFIRMED})
    pd.testing.assert_frame_equal(report.load_outcomes(layout), _reference_outcomes(layout))


def test_dry_run_outcomes_are_the_planned_rows(layout):
    write_parquet(layout.group_file(0), pd.DataFrame({"row_number": pd.Series([3, 1], dtype="int64")}))
    pd.testing.assert_frame_equal(report.load_outcomes(layout, dry_run=True), _reference_outcomes(layout, dry_run=True))


def _reference_reconcile(inputs, accounted):
    values, counts = np.unique(accounted, return_counts=True)
    unique = np.unique(inputs)
    return {"ok": bool(len(inputs) == len(accounted) and len(values) == len(accounted) and np.array_equal(values, unique)),
            "input_rows": len(inputs), "accounted": len(accounted),
            "missing": np.setdiff1d(unique, values).tolist()[:1000], "double_counted": values[counts > 1].tolist()[:1000],
            "unknown": np.setdiff1d(values, unique).tolist()[:1000]}


@pytest.mark.parametrize(
    ("rejected", "sent"),
    [
        pytest.param([2, 2, 9], [1, 3, 4, 5, 6, 7, 8, 10], id="all-once"),
        pytest.param([2], [1, 3, 4, 4, 6, 7, 8, 10, 12], id="missing-double-unknown"),
        pytest.param([], [], id="nothing-sent"),
        pytest.param([1], list(range(2, 3000)), id="unknown-beyond-the-input"),
    ],
)
def test_reconcile_tallies_agree_with_set_arithmetic(layout, rejected, sent):
    inputs = np.arange(1, 11, dtype=np.int64)
    write_parquet(layout.extract_part(0), pd.DataFrame({"row_number": inputs[:4]}))
    write_parquet(layout.extract_part(1), pd.DataFrame({"row_number": inputs[4:]}))
    write_parquet(layout.rejects_parquet, pd.DataFrame({"row_number": pd.Series(rejected, dtype="int64")}))
    outcomes = pd.DataFrame({"row_number": pd.Series(sent, dtype="int64"), "outcome": "imported"})
    result = report.reconcile(layout, extract_parts=2, outcomes=outcomes)
    accounted = np.concatenate([np.unique(np.array(rejected, dtype=np.int64)), np.array(sent, dtype=np.int64)])
    assert result.__dict__ == _reference_reconcile(inputs, accounted)


def test_dead_letter_holds_the_failed_records_in_file_order(layout):
    from include.cxone_import.pipeline import GROUP_SCHEMA
    import pyarrow as pa

    rows = list(range(1, 20_001))  # more than one slice of the group file
    records = [json.dumps({"contactId": f"c{r}", "n": "ü"}, ensure_ascii=False) for r in rows]
    write_parquet(layout.group_file(0), pa.table({"row_number": rows, "batch_index": [r // 100 for r in rows],
                                                  "batch_id": ["b"] * len(rows), "contact_id": [f"c{r}" for r in rows],
                                                  "record_json": records, "listed_before": [False] * len(rows),
                                                  "sent_unanswered": [False] * len(rows)},
                                                 schema=GROUP_SCHEMA))
    failed = {5: "HTTP 400: x", 9000: "HTTP 400: y", 19_999: "HTTP 400: z"}
    _outcomes(layout, 0, rows, ["failed" if r in failed else "imported" for r in rows],
              [failed.get(r, "") for r in rows])
    assert report.write_dead_letter(layout, [{"group_index": 0}]) == 3
    with layout.dead_letter.open("r") as handle:
        lines = handle.read().splitlines()
    assert lines == [
        json.dumps({"contactId": f"c{r}", "n": "ü", "_sourceRowNumber": r, "_lastError": failed[r]}, separators=(",", ":"))
        for r in sorted(failed)
    ]


def test_outcome_counts_are_what_load_outcomes_counts(layout):
    """notify_webhook's totals come from counts read a file at a time; they are the report's."""
    _outcomes(layout, 0, [1, 2, 3], ["imported", "failed", "imported"])
    _outcomes(layout, 1, [5, 6, 8], ["duplicate", "duplicate", "imported"])
    _decided(layout, {4: DECISION_UNCHANGED, 7: DECISION_UNCHANGED, 9: DECISION_UNCONFIRMED})
    validated = {"input_rows": 9, "rejected_rows": 1, "valid_rows": 8}

    counts = report.outcome_counts(layout)

    assert counts == {"imported": 3, "failed": 1, "duplicate": 3, "unchanged": 2}  # row 9: duplicate before, not sent
    assert counts == report.load_outcomes(layout)["outcome"].value_counts().to_dict()
    assert report.totals(validated, counts, []) == report.totals(validated, report.load_outcomes(layout), [])


PLAN = {"mode": "mirror", "creates": 0, "updates": 3, "removals": {"consent_withdrawn": 4, "consent_expired": 2,
                                                                   "mirror_absent": 3},
        "stale": {"updates": 0, "removals": 0}, "rejected_on_list": 5}


def test_every_input_row_is_in_one_outcome_and_rejected_counts_the_rest():
    counts = {"imported": 50, "duplicate": 4, "unchanged": 30, "updated": 3, "stale": 2, "failed": 1}
    rows = report.row_accounting(100, 10, counts)
    assert rows["ok"] and rows["accounted"] == 100
    assert rows["outcomes"] == {"imported": 50, "duplicates": 4, "unchanged": 30, "updated": 3, "stale": 2,
                                "failed": 1, "not_sent": 0}


@pytest.mark.parametrize(
    ("counts", "unknown"),
    [pytest.param({"imported": 89, "gone": 1}, {"gone": 1}, id="an-outcome-no-total-counts"),
     pytest.param({"imported": 89}, {}, id="a-row-without-outcome"),
     pytest.param({"imported": 91}, {}, id="one-row-too-many")],
)
def test_outcomes_that_do_not_add_up_are_caught(counts, unknown):
    rows = report.row_accounting(100, 10, counts)
    assert not rows["ok"] and rows["unknown_outcomes"] == unknown


def test_each_planned_removal_ends_in_one_outcome_per_reason():
    by_reason = {"consent_withdrawn:removed": 3, "consent_withdrawn:not_on_list": 1, "consent_expired:removed": 2,
                 "mirror_absent:removal_held": 3}
    removals = report.removal_accounting(PLAN, by_reason, sent=True)
    assert removals["ok"]
    assert removals["outcomes"]["consent_withdrawn"] == {"removed": 3, "not_on_list": 1}
    assert removals["by_outcome"] == {"removed": 5, "not_on_list": 1, "removal_held": 3}
    # removals are contacts, not input rows: consent removals' rows are rejected ones, mirror removals have none
    assert (removals["rows_rejected"], removals["without_input_row"], removals["rejected_left_on_list"]) == (6, 3, 5)


@pytest.mark.parametrize(
    ("by_reason", "sent"),
    [pytest.param({"consent_withdrawn:removed": 4, "consent_expired:removed": 1, "mirror_absent:removed": 3}, True,
                  id="one-removal-without-outcome"),
     pytest.param({"consent_withdrawn:removed": 3, "consent_expired:removed": 3, "mirror_absent:removed": 3}, True,
                  id="outcomes-under-the-wrong-reason"),
     pytest.param({"consent_withdrawn:gone": 4, "consent_expired:removed": 2, "mirror_absent:removed": 3}, True,
                  id="an-outcome-a-removal-cannot-have"),
     pytest.param({"consent_withdrawn:removed": 1}, False, id="an-outcome-of-a-run-that-sent-nothing")],
)
def test_removals_that_do_not_add_up_are_caught(by_reason, sent):
    assert not report.removal_accounting(PLAN, by_reason, sent=sent)["ok"]


def test_a_dry_run_accounts_for_no_removal():
    assert report.removal_accounting(PLAN, {}, sent=False)["ok"]


def test_the_arithmetic_line_names_every_count():
    accounting = {"rows": report.row_accounting(20, 2, {"imported": 15, "updated": 3}),
                  "removals": report.removal_accounting(PLAN, {"consent_withdrawn:removed": 4,
                                                               "consent_expired:not_on_list": 2,
                                                               "mirror_absent:removal_held": 3}, sent=True)}
    assert report.describe_accounting(accounting) == (
        "input 20 = rejected 2 + imported 15 + updated 3; removals planned 9 = removed 4 + not_on_list 2 + "
        "removal_held 3")
