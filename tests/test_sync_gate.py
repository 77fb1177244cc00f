"""The bulk-removal guard's decisions (include/cxone_import/sync_gate.py); the approval itself, under the real
scheduler and through the REST API, is in test_sync_stack.py."""

from __future__ import annotations

import pytest

from include.cxone_import import sync_gate
from cxone_runs.layout import RunLayout

PLAN = {"mode": "mirror", "creates": 12, "updates": 3, "state_records": 1000,
        "removals": {"mirror_absent": 80, "consent_withdrawn": 4}, "mirror_share": 0.08, "stale": {},
        "samples": {"mirror_absent": ["cr***01", "cr***02"], "consent_withdrawn": ["cr***09"]},
        "rejected_on_list": 0, "withdrawn_unknown": 0, "backfill": False}


@pytest.fixture
def layout(tmp_path):
    return RunLayout(tmp_path / "run")


def write_plan(layout, **changes):
    from include.cxone_import.storage import write_json

    write_json(layout.sync_plan, {**PLAN, **changes})
    return sync_gate.read_plan(layout)


@pytest.mark.parametrize(("changes", "share", "asks"), [
    pytest.param({}, 0.05, True, id="8%-above-5%"),
    pytest.param({}, 0.10, False, id="8%-within-10%"),
    pytest.param({"mode": "upsert", "removals": {"consent_withdrawn": 400}, "mirror_share": 0.0}, 0.05, False,
                 id="consent-removals-never-wait"),
    pytest.param({"removals": {"mirror_absent": 0}, "mirror_share": 0.0}, 0.0, False, id="nothing-to-remove"),
])
def test_only_a_mirror_share_above_the_bound_asks_a_human(layout, changes, share, asks):
    plan = write_plan(layout, **changes)
    assert sync_gate.needs_approval(plan, share) is asks
    decided = sync_gate.decide_without_asking(layout, plan, share)
    if asks:
        assert decided is None and sync_gate.read_decision(layout) is None
    else:
        assert decided.mirror_removals == sync_gate.APPROVED
        assert sync_gate.read_decision(layout) == decided


def test_a_gate_that_runs_again_asks_again(layout):
    plan = write_plan(layout)
    sync_gate.record_decision(layout, sync_gate.HELD, "rejected by alice", "alice")
    assert sync_gate.decide_without_asking(layout, plan, 0.05) is None  # a cleared run's gate asks again
    assert sync_gate.read_decision(layout).decided_by == "alice"  # until then the import tasks hold


def test_the_approver_sees_counts_per_reason_samples_and_what_each_answer_does(layout):
    body = sync_gate.approval_body(write_plan(layout), 0.05, 24)
    assert "**80** records" in body and "**8.0%** of the 1,000 records" in body
    assert "| no longer in tonight's export (mirror; this approval decides) | 80 | cr***01, cr***02 |" in body
    assert "consent withdrawn (removed whatever the answer: an obligation) | 4 | cr***09" in body
    assert "no answer within 24 h" in body and "`removal_held`" in body
