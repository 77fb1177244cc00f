"""``report.json``: what the report task writes for a run (``include/cxone_import/report.py`` builds it) and the
report pages, the failure event and the tools read, named once; and the words both the report pages and the report
in the task log use for it (why rows were not sent, the run's arithmetic in a line)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

from cxone_runs.layout import RunLayout

# why a run's valid rows were not sent (``not_sent_reason``)
NOT_SENT_REASONS = {"dry_run": "dry run", "reject_gate": "held: too many rejects",
                    "cxone_configuration": "stopped: configuration error", "list_lease_lost": "stopped: lost the list"}


class RunReport(TypedDict):
    """One run's report. A run that stopped before validation (``build_failed_report``) writes only the required
    keys and ``failure``; the sections marked not required are written by a run that got that far."""

    run: dict[str, Any]  # dag_id, run_id, contact_list_id, dry_run, logical_date, sync_mode, ...
    generated_at: str
    source_uri: str | None
    status: str  # success | failed
    problems: list[str]
    task_failures: list[dict[str, Any]]  # the failures tasks recorded, first task first
    totals: dict[str, Any]  # input, rejected, valid, imported, duplicates, failed, unchanged, not_sent, ... rates
    reject_share: float
    rejects_by_rule: dict[str, int]
    normalised: dict[str, int]
    reconciliation: dict[str, Any]  # ok, detail
    webhook: dict[str, Any]  # events, delivered, failed, ...
    files: dict[str, str]  # name -> path of the run's files
    dead_letters: int
    failure: NotRequired[dict[str, Any]]  # the task failure that stopped the run: task, error, rule, column, message
    held_by_reject_gate: NotRequired[bool]
    not_sent_reason: NotRequired[str | None]  # reject_gate | dry_run | the stopping failure's rule
    changes: NotRequired[dict[str, Any] | None]  # how the run used the list's state
    sync: NotRequired[dict[str, Any] | None]  # updates and removals (list sync)
    notices: NotRequired[list[str]]
    accounting: NotRequired[dict[str, Any]]  # rows (input = rejected + each outcome), removals
    throughput: NotRequired[dict[str, Any]]  # batch_latency, request_rate
    timings_seconds: NotRequired[dict[str, float | None]]
    audit_entries: NotRequired[int]


def read_report(layout: RunLayout) -> RunReport | None:
    """The run's report; None while it has none (the run is going, or stopped before its report task)."""
    try:
        return json.loads(layout.report.read_text())
    except FileNotFoundError:
        return None


def describe_accounting(accounting: Mapping[str, Any]) -> str:
    """The run's arithmetic in a line: input rows = rejected + each outcome; removals planned = their outcomes."""
    rows = accounting["rows"]
    line = (f"input {rows['input']} = rejected {rows['rejected']} + "
            + " + ".join(f"{name} {n}" for name, n in rows["outcomes"].items() if n)
            + "".join(f" + {name} {n} (unknown)" for name, n in rows["unknown_outcomes"].items())
            + ("" if rows["ok"] else f" -> {rows['accounted']}: DOES NOT ADD UP"))
    removals = accounting.get("removals")
    if removals and (removals["sent"] or sum(removals["planned"].values())):
        line += (f"; removals planned {sum(removals['planned'].values())} = "
                 + (" + ".join(f"{name} {n}" for name, n in removals["by_outcome"].items()) or "0")
                 + ("" if removals["ok"] else ": DOES NOT ADD UP")
                 + ("" if removals["sent"] else " (not sent)"))
    return line
