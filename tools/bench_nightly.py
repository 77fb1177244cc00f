"""Second and third nightly runs (issues 12 and 20): only new and changed contacts are sent, and what CXone answered
``duplicate`` is never called unchanged.

    python -m tools.bench_nightly --rows 200000 --latency-ms 100 --rpm 6000 [--new 0.01 --changed 0.01]
    python -m tools.bench_nightly --rows 200000 --rpm 1000 --new 0 --changed 0.01 --withdrawn 0.005 --sync-mode upsert
    python -m tools.bench_nightly --mode local --rows 200000 --rpm 1000 --new 0 --changed 0.01 --withdrawn 0.005 \
        --sync-mode upsert --nights 2

With ``--sync-mode upsert`` (issue 22) the changed records are updated (one PUT each) and ``--withdrawn`` of the
valid contacts, revoked in night 2's export, removed (one DELETE each); the table then shows updates, removals,
the requests expected (new/100 + updates + removals), the sending rate against the budget (from the first to the
last request the sandbox logged for the night) and over the import phase (first import task's start to the last
one's end), and where the import phase went (``phases``: task start-up, the wait before the first request, ...).

``--mode dagtest`` (default): one process, one sandbox (its own process), one storage; each night is a
scheduled-style run of its own day under ``dag.test()``, tasks in this process, mapped import tasks one after
another. ``--mode local``: what a user runs, a real LocalExecutor stack (``tools.bench.local_stack``: api-server,
scheduler, dag-processor, sandbox as plain processes), the user's settings (``airflow_settings.yaml``: pool,
parallel groups; the connection's default sender threads), each night a run of its own day triggered through the
REST API with the same conf and waited for; mapped import tasks run at the same time. Either way: night 1 imports a generated export (2% bad rows) into an
empty list; night 2 reads the same export with ``--new`` of contacts added and ``--changed`` of the valid ones
edited (a custom field: the records API answers them duplicate and keeps its version); night 3 reads night 2's
export again (an export that did not change). The nights follow a 200-row warm-up run on another list. Prints one table: records sent, requests the
sandbox answered, wall time, the chunk task (which folds the list's state and compares) and the outcomes, and
nights 2 and 3 as a share of night 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import requests
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cxone_provider.connection_form import DEFAULT_MAX_CONCURRENCY
from tools.bench import DAG_ID, Sandbox, finished_run, local_stack, task_metrics, task_windows
from tools.localrun import ROOT, connection_env, patched_env, run_dag, run_report
from tools.sample_data import generate_crm_export

NIGHT_1 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
LIST_ID = "bench-nightly"
BATCH_SIZE = 100  # records per create request (the DAG's default batch_size)
DAGTEST_CONCURRENCY = 16  # sender threads under dag.test(), as in the figures recorded so far


def next_night_export(source: Path, target: Path, valid_ids: frozenset[str], *, new: float, changed: float, seed: int,
                      withdrawn: float = 0.0) -> tuple[int, int, int]:
    """The same export with ``changed`` of its valid contacts edited, ``withdrawn`` others revoked and ``new``
    contacts appended."""
    table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                                         column_types={c: pa.string() for c in _header(source)}))
    rng = np.random.default_rng(seed)
    ids = table["contact_id"].to_numpy(zero_copy_only=False)
    first = ~_duplicated(ids)
    valid = pc.is_in(table["contact_id"], value_set=pa.array(sorted(valid_ids), pa.string()))
    candidates = np.flatnonzero(first & pc.fill_null(valid, False).to_numpy(zero_copy_only=False))
    n_changed = int(round(len(valid_ids) * changed))
    edit = np.zeros(table.num_rows, dtype=bool)
    edit[rng.choice(candidates, n_changed, replace=False)] = True
    tier = table["tier"]
    table = table.set_column(table.schema.get_field_index("tier"), "tier",
                             pc.if_else(pa.array(edit), pc.binary_join_element_wise("changed-", tier, ""), tier))
    n_withdrawn = int(round(len(valid_ids) * withdrawn))
    revoke = np.zeros(table.num_rows, dtype=bool)
    revoke[rng.choice(np.setdiff1d(candidates, np.flatnonzero(edit)), n_withdrawn, replace=False)] = True
    table = table.set_column(table.schema.get_field_index("opt_in_status"), "opt_in_status",
                             pc.if_else(pa.array(revoke), pa.scalar("revoked"), table["opt_in_status"]))
    n_new = int(round(len(valid_ids) * new))
    template = table.take(pa.array(rng.choice(candidates, n_new)))
    phone_columns = [c for c in table.column_names if c.endswith("_phone")]
    for column in phone_columns:
        template = template.set_column(template.schema.get_field_index(column), column, pa.array([""] * n_new, pa.string()))
    template = template.set_column(template.schema.get_field_index("contact_id"), "contact_id",
                                   pa.array([f"crm-new-{n:09d}" for n in range(n_new)], pa.string()))
    template = template.set_column(template.schema.get_field_index(phone_columns[0]), phone_columns[0],
                                   pa.array([f"+4930{n:08d}" for n in range(n_new)], pa.string()))  # unused range
    pacsv.write_csv(pa.concat_tables([table, template]), target)
    return n_new, n_changed, n_withdrawn


def _header(path: Path) -> list[str]:
    with path.open() as handle:
        return handle.readline().strip().lstrip("\ufeff").split(",")


def _duplicated(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values.astype(str), return_index=True)
    out = np.ones(len(values), dtype=bool)
    out[first] = False
    return out


def expected_requests(n_new: int, n_changed: int, n_withdrawn: int, batch_size: int = BATCH_SIZE) -> int:
    """Night 2 under sync: the new records in batches, one PUT per changed record, one DELETE per removal."""
    return -(-n_new // batch_size) + n_changed + n_withdrawn


class DagTestNights:
    """Each night a ``dag.test()`` run in this process, against a sandbox of its own."""

    label = "dag.test() (tasks in one process, mapped import tasks one after another)"

    def __init__(self, sandbox: Sandbox, storage: Path, args: argparse.Namespace) -> None:
        self.cxone_url = sandbox.urls["cxone_url"]
        self.storage = storage
        self.env = {
            **connection_env(self.cxone_url, sandbox.urls["webhook_url"], requests_per_minute=args.rpm,
                             max_concurrency=threads(args)),
            "CXONE_IMPORT_STORAGE_BASE": f"file://{storage}",
        }

    def run(self, conf: dict[str, Any], logical_date: datetime) -> dict[str, Any]:
        with patched_env(self.env):
            started = time.monotonic()
            dag_run = run_dag(conf, logical_date=logical_date)
            seconds = time.monotonic() - started
        return {"state": str(getattr(dag_run.state, "value", dag_run.state)), "run_id": dag_run.run_id,
                "seconds": seconds, "windows": task_windows(dag_run.run_id)}


class StackNights:
    """Each night a run triggered through the REST API of a running LocalExecutor stack, and waited for."""

    label = ("LocalExecutor stack (scheduler, dag-processor, api-server; every task its own process, mapped import "
             "tasks at the same time; pool and parallel groups from airflow_settings.yaml)")

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.cxone_url = stack.sandbox_url
        self.storage = stack.storage_base

    def run(self, conf: dict[str, Any], logical_date: datetime) -> dict[str, Any]:
        started = time.time()
        dag_run = self.stack.trigger(DAG_ID, conf=conf, logical_date=logical_date.isoformat())
        run = finished_run(self.stack, dag_run["dag_run_id"])
        return {"state": run["state"], "run_id": dag_run["dag_run_id"],
                "seconds": datetime.fromisoformat(run["end"]).timestamp() - started, "windows": run["windows"]}


def night(runner: DagTestNights | StackNights, source: Path, day: int, args: argparse.Namespace,
          list_id: str = LIST_ID) -> dict[str, Any]:
    stats_url = runner.cxone_url + "/_sandbox/stats"
    before = requests.get(stats_url, timeout=10).json()
    run = runner.run({"source_uri": f"file://{source}", "contact_list_id": list_id, "sync_mode": args.sync_mode},
                     NIGHT_1 + timedelta(days=day))
    after = requests.get(stats_url, timeout=10).json()
    log = [r for r in requests.get(runner.cxone_url + "/_sandbox/requests", timeout=60).json()["requests"]
           if r["contact_list_id"] == list_id and r["status"] != 429]
    night_log = log[len(log) - (after["records_requests"] - before["records_requests"]):] if log else []
    span = (night_log[-1]["at"] - night_log[0]["at"]) if len(night_log) > 1 else 0.0
    report = run_report(runner.storage, run["run_id"]) or {}
    totals = report.get("totals", {})
    metrics = task_metrics(runner.storage, run["run_id"])
    chunk_s = next((m["seconds"] for m in metrics if m["task"] == "chunk"), None)
    phases = import_phases(run["windows"], metrics, [r["at"] for r in night_log])
    return {
        "night": day + 1,
        "state": run["state"],
        "input": totals.get("input"),
        # duplicates not sent again (answered duplicate before for the same content) count as duplicates, not sent
        "sent": totals.get("imported", 0) + totals.get("duplicates", 0) + totals.get("failed", 0)
        - int((report.get("changes") or {}).get("unconfirmed") or 0),
        "imported": totals.get("imported"),
        "duplicates": totals.get("duplicates"),
        "unchanged": totals.get("unchanged"),
        "requests": after["records_requests"] - before["records_requests"],
        "answered_429": after["status_counts"].get("429", 0) - before["status_counts"].get("429", 0),
        "wall_s": round(run["seconds"], 1),
        "chunk_s": chunk_s,
        "changes": report.get("changes"),
        "reconciled": report.get("reconciliation", {}).get("ok"),
        "updated": totals.get("updated", 0),
        "removed": totals.get("removed", 0),
        # n requests span n - 1 intervals
        "send_rate_per_min": round((len(night_log) - 1) / span * 60, 1) if span else None,
        "send_span_s": round(span, 1),
        "import_phase_s": phases.get("import_phase_s"),
        "import_rate_per_min": round(len(night_log) / phases["import_phase_s"] * 60, 1)
        if phases.get("import_phase_s") else None,
        "phases": phases,
    }


def import_phases(windows: list[dict[str, Any]], metrics: list[dict[str, Any]], arrivals: list[float]) -> dict[str, Any]:
    """Where a night's import phase goes, from the task windows (start, end), the import tasks' own timings
    (``measured()``: the body, after the task process started and parsed the DAG) and the sandbox's arrivals."""
    imports = sorted((w for w in windows if w["task_id"] == "import_batches"), key=lambda w: w["start"])
    if not imports:
        return {}
    body_s = {m["map_index"]: m["seconds"] for m in metrics if m["task"] == "import_batches"}
    first, last = imports[0]["start"], max(w["end"] for w in imports)
    chunk_end = max((w["end"] for w in windows if w["task_id"] == "chunk"), default=first)
    return {
        "import_phase_s": round(last - first, 1),
        "chunk_end_to_first_import_s": round(first - chunk_end, 1),
        "import_tasks": [
            {"map_index": w["map_index"], "start_offset_s": round(w["start"] - first, 1),
             "window_s": round(w["end"] - w["start"], 1), "body_s": body_s.get(w["map_index"]),
             "start_up_s": round(w["end"] - w["start"] - body_s[w["map_index"]], 1) if w["map_index"] in body_s else None}
            for w in imports
        ],
        "first_request_after_s": round(min(arrivals) - first, 1) if arrivals else None,
        "last_request_to_end_s": round(last - max(arrivals), 1) if arrivals else None,
    }


def _nights(runner: DagTestNights | StackNights, workdir: Path, warm_up: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    # one small run first: one-time start-up (imports, DB, first DAG parse, a cold stack) is not a night's
    night(runner, warm_up, -1, args, list_id="bench-warm-up")
    nights = []
    for day, export in enumerate(("night1.csv", "night2.csv", "night2.csv")[: args.nights]):
        nights.append(night(runner, workdir / export, day, args))
        print(f"bench_nightly: night {day + 1} {json.dumps(nights[-1])}", flush=True)
    return nights


def threads(args: argparse.Namespace) -> int:
    """Sender threads per import task: the connection's default under ``--mode local`` (what a user gets)."""
    if args.concurrency:
        return args.concurrency
    return DAGTEST_CONCURRENCY if args.mode == "dagtest" else DEFAULT_MAX_CONCURRENCY


def setting(args: argparse.Namespace, label: str) -> str:
    """How the nights ran, for the table's heading line: mode, threads, the machine and its load."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{threads(args)} threads per import task; {label}; {os.cpu_count()} cores shared with other work, load "
            f"average {load} (1/5/15 min) at the end")


def render(rows: int, nights: list[dict[str, Any]], args: argparse.Namespace, command: str, extra: str,
           label: str) -> str:
    first = nights[0]
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"{rows:,} rows (2% bad); night 2: {extra}; night 3: night 2's export again; sandbox latency "
        f"{args.latency_ms:g} ms, limit {args.rpm} requests/min; {setting(args, label)}.",
        "",
        "| night | records sent | requests | 429s | wall time | chunk task (fold + compare) | imported | duplicates | unchanged | reconciled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in nights:
        lines.append(
            f"| {n['night']} | {n['sent']:,} | {n['requests']:,} | {n['answered_429']} | {n['wall_s']} s | {n['chunk_s']} s | "
            f"{n['imported']:,} | {n['duplicates']:,} | {n['unchanged']:,} | {n['reconciled']} |"
        )
    for n in nights[1:]:
        lines.append(f"| {n['night']} vs 1 | | {n['requests'] / max(first['requests'], 1):.2%} | | "
                     f"{n['wall_s'] / first['wall_s']:.1%} | | | | | |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("dagtest", "local"), default="dagtest",
                        help="dagtest: dag.test() in this process; local: runs triggered on a LocalExecutor stack")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=None,
                        help=f"sender threads per import task (default: {DAGTEST_CONCURRENCY} under dagtest, the "
                        f"connection's default, {DEFAULT_MAX_CONCURRENCY}, under local)")
    parser.add_argument("--new", type=float, default=0.01)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--withdrawn", type=float, default=0.0, help="share of valid contacts revoked on night 2")
    parser.add_argument("--sync-mode", choices=("append", "upsert", "mirror"), default="append")
    parser.add_argument("--nights", type=int, default=3, choices=(2, 3))
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m tools.bench_nightly " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="cxone-nightly-") as tmp:
        workdir = Path(tmp)
        export = generate_crm_export(workdir / "night1.csv", args.rows, bad_share=0.02, seed=args.rows)
        n_new, n_changed, n_withdrawn = next_night_export(export.path, workdir / "night2.csv", export.valid_contact_ids,
                                                          new=args.new, changed=args.changed, seed=1,
                                                          withdrawn=args.withdrawn)
        warm_up = generate_crm_export(workdir / "warm-up.csv", 200, bad_share=0.0, seed=1)
        if args.mode == "local":
            with local_stack(workdir / "airflow", rpm=args.rpm, latency_ms=args.latency_ms,
                             concurrency=args.concurrency) as stack:
                runner: DagTestNights | StackNights = StackNights(stack)
                nights = _nights(runner, workdir, warm_up.path, args)
        else:
            with Sandbox(args.latency_ms, args.rpm) as sandbox:
                runner = DagTestNights(sandbox, workdir / "storage", args)
                nights = _nights(runner, workdir, warm_up.path, args)
    if args.sync_mode != "append":
        return _report_sync(nights, args, command, n_new, n_changed, n_withdrawn, runner.label)
    table = render(args.rows, nights, args, command, f"{n_new:,} new, {n_changed:,} changed", runner.label)
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    ok = all(n["state"].endswith("success") and n["reconciled"] for n in nights)
    never_unchanged = len(nights) < 3 or (nights[2]["duplicates"] == n_changed and nights[2]["requests"] == 0)
    return 0 if ok and nights[1]["sent"] == n_new + n_changed and never_unchanged else 1


def _report_sync(nights: list[dict[str, Any]], args: argparse.Namespace, command: str, n_new: int, n_changed: int,
                 n_withdrawn: int, label: str) -> int:
    """Night 2 under sync: requests against new/100 + updates + removals, and the sending rate against the budget
    while sending and over the import phase."""
    second = nights[1]
    expected = expected_requests(n_new, n_changed, n_withdrawn)
    sending = second["send_rate_per_min"] or 0.0

    def of_budget(per_min: float | None) -> str:
        return f"{per_min / args.rpm:.1%}" if per_min else "-"

    def seconds(value: float | None) -> str:
        return f"{value} s" if value else "-"

    def rate(per_min: float | None, over_s: float | None = None) -> str:
        return "-" if not per_min else f"{per_min}/min" + (f" over {over_s} s" if over_s else "")

    table = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"{args.rows:,} rows (2% bad); night 2 ({args.sync_mode}): {n_new:,} new, {n_changed:,} changed, "
        f"{n_withdrawn:,} withdrawn; budget {args.rpm} requests/min (sandbox limit the same), latency "
        f"{args.latency_ms:g} ms; {setting(args, label)}.",
        "",
        "| night | requests | expected (new/100 + updates + removals) | updated | removed | 429s | sending rate (first to last request) | of budget | import phase (task windows) | rate over the import phase | of budget | wall time | reconciled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {n['night']} | {n['requests']:,} | {expected if n is second else ''} | {n['updated']:,} | {n['removed']:,} | "
          f"{n['answered_429']} | {rate(n['send_rate_per_min'], n['send_span_s'])} | "
          f"{of_budget(n['send_rate_per_min'])} | {seconds(n['import_phase_s'])} | {rate(n['import_rate_per_min'])} | "
          f"{of_budget(n['import_rate_per_min'])} | {n['wall_s']} s | {n['reconciled']} |" for n in nights),
    ]) + "\n"
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    ok = all(n["state"].endswith("success") and n["reconciled"] for n in nights)
    return 0 if ok and second["requests"] == expected and sending >= 0.9 * args.rpm else 1


if __name__ == "__main__":
    sys.exit(main())
