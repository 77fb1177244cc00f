"""Second and third nightly runs (issues 12 and 20): only new and changed contacts are sent, and what CXone answered
``duplicate`` is never called unchanged.

    python -m tools.bench_nightly --rows 200000 --latency-ms 100 --rpm 6000 [--new 0.01 --changed 0.01]
    python -m tools.bench_nightly --rows 200000 --rpm 1000 --new 0 --changed 0.01 --withdrawn 0.005 --sync-mode upsert

With ``--sync-mode upsert`` (issue 22) the changed records are updated (one PUT each) and ``--withdrawn`` of the
valid contacts, revoked in night 2's export, removed (one DELETE each); the table then shows updates, removals,
the requests expected (new/100 + updates + removals) and the sending rate against the budget.

One process, one sandbox (its own process), one storage: night 1 imports a generated export (2% bad rows) into an
empty list; night 2 reads the same export with ``--new`` of contacts added and ``--changed`` of the valid ones
edited (a custom field: the records API answers them duplicate and keeps its version); night 3 reads night 2's
export again (an export that did not change). Each run is a scheduled-style run of its own day (``dag.test()``,
tasks in this process) after a 200-row warm-up run on another list. Prints one table: records sent, requests the
sandbox answered, wall time, the chunk task (which folds the list's state and compares) and the outcomes, and
nights 2 and 3 as a share of night 1.
"""

from __future__ import annotations

import argparse
import json
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

from tools.bench import Sandbox
from tools.localrun import ROOT, connection_env, patched_env, run_dag, run_report
from tools.sample_data import generate_crm_export

NIGHT_1 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
LIST_ID = "bench-nightly"


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


def night(
    sandbox: Sandbox, storage: Path, source: Path, day: int, args: argparse.Namespace, list_id: str = LIST_ID
) -> dict[str, Any]:
    env = {
        **connection_env(sandbox.urls["cxone_url"], sandbox.urls["webhook_url"], requests_per_minute=args.rpm,
                         max_concurrency=args.concurrency),
        "CXONE_IMPORT_STORAGE_BASE": f"file://{storage}",
    }
    before = sandbox.stats()
    with patched_env(env):
        started = time.monotonic()
        dag_run = run_dag({"source_uri": f"file://{source}", "contact_list_id": list_id, "sync_mode": args.sync_mode},
                          logical_date=NIGHT_1 + timedelta(days=day))
        seconds = time.monotonic() - started
    after = sandbox.stats()
    log = [r for r in requests.get(sandbox.urls["cxone_url"] + "/_sandbox/requests", timeout=60).json()["requests"]
           if r["contact_list_id"] == list_id and r["status"] != 429]
    night_log = log[len(log) - (after["records_requests"] - before["records_requests"]):] if log else []
    span = (night_log[-1]["at"] - night_log[0]["at"]) if len(night_log) > 1 else 0.0
    report = run_report(storage, dag_run.run_id) or {}
    totals = report.get("totals", {})
    metrics = {p.stem: json.loads(p.read_text()) for p in storage.glob(f"runs/*/{_segment(dag_run.run_id)}/metrics/*.json")}
    return {
        "night": day + 1,
        "state": str(getattr(dag_run.state, "value", dag_run.state)),
        "input": totals.get("input"),
        # duplicates not sent again (answered duplicate before for the same content) count as duplicates, not sent
        "sent": totals.get("imported", 0) + totals.get("duplicates", 0) + totals.get("failed", 0)
        - int((report.get("changes") or {}).get("unconfirmed") or 0),
        "imported": totals.get("imported"),
        "duplicates": totals.get("duplicates"),
        "unchanged": totals.get("unchanged"),
        "requests": after["records_requests"] - before["records_requests"],
        "answered_429": after["status_counts"].get("429", 0) - before["status_counts"].get("429", 0),
        "wall_s": round(seconds, 1),
        "chunk_s": metrics.get("chunk", {}).get("seconds"),
        "changes": report.get("changes"),
        "reconciled": report.get("reconciliation", {}).get("ok"),
        "updated": totals.get("updated", 0),
        "removed": totals.get("removed", 0),
        "send_rate_per_min": round(len(night_log) / span * 60, 1) if span else None,
    }


def _segment(run_id: str) -> str:
    from cxone_runs.layout import safe_segment

    return safe_segment(run_id)


def render(rows: int, nights: list[dict[str, Any]], args: argparse.Namespace, command: str, extra: str) -> str:
    first = nights[0]
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"{rows:,} rows (2% bad); night 2: {extra}; night 3: night 2's export again; sandbox latency "
        f"{args.latency_ms:g} ms, limit {args.rpm} "
        f"requests/min; {args.concurrency} threads; dag.test() (tasks in one process).",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--new", type=float, default=0.01)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--withdrawn", type=float, default=0.0, help="share of valid contacts revoked on night 2")
    parser.add_argument("--sync-mode", choices=("append", "upsert", "mirror"), default="append")
    parser.add_argument("--nights", type=int, default=3, choices=(2, 3))
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = "python -m tools.bench_nightly " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="cxone-nightly-") as tmp:
        workdir = Path(tmp)
        export = generate_crm_export(workdir / "night1.csv", args.rows, bad_share=0.02, seed=args.rows)
        n_new, n_changed, n_withdrawn = next_night_export(export.path, workdir / "night2.csv", export.valid_contact_ids,
                                                          new=args.new, changed=args.changed, seed=1,
                                                          withdrawn=args.withdrawn)
        storage = workdir / "storage"
        warm_up = generate_crm_export(workdir / "warm-up.csv", 200, bad_share=0.0, seed=1)
        with Sandbox(args.latency_ms, args.rpm) as sandbox:
            # one small run first: the process's one-time start-up (imports, DB, first DAG parse) is not a night's
            night(sandbox, storage, warm_up.path, -1, args, list_id="bench-warm-up")
            nights = [night(sandbox, storage, workdir / "night1.csv", 0, args)]
            print(f"bench_nightly: night 1 {nights[0]}", flush=True)
            nights.append(night(sandbox, storage, workdir / "night2.csv", 1, args))
            print(f"bench_nightly: night 2 {nights[1]}", flush=True)
            if args.nights == 3:
                nights.append(night(sandbox, storage, workdir / "night2.csv", 2, args))
                print(f"bench_nightly: night 3 {nights[2]}", flush=True)
    if args.sync_mode != "append":
        return _report_sync(nights, args, command, n_new, n_changed, n_withdrawn)
    table = render(args.rows, nights, args, command, f"{n_new:,} new, {n_changed:,} changed")
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    ok = all(n["state"].endswith("success") and n["reconciled"] for n in nights)
    never_unchanged = nights[2]["duplicates"] == n_changed and nights[2]["requests"] == 0
    return 0 if ok and nights[1]["sent"] == n_new + n_changed and never_unchanged else 1


def _report_sync(nights: list[dict[str, Any]], args: argparse.Namespace, command: str, n_new: int, n_changed: int,
                 n_withdrawn: int) -> int:
    """Night 2 under sync: requests against new/100 + updates + removals, and the sending rate against the budget."""
    second = nights[1]
    expected = -(-n_new // 100) + n_changed + n_withdrawn
    rate = second["send_rate_per_min"] or 0.0
    table = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"{args.rows:,} rows (2% bad); night 2 ({args.sync_mode}): {n_new:,} new, {n_changed:,} changed, "
        f"{n_withdrawn:,} withdrawn; budget {args.rpm} requests/min (sandbox limit the same), latency "
        f"{args.latency_ms:g} ms, {args.concurrency} threads; dag.test().",
        "",
        "| night | requests | expected (new/100 + updates + removals) | updated | removed | 429s | sending rate | of budget | wall time | reconciled |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {n['night']} | {n['requests']:,} | {expected if n is second else ''} | {n['updated']:,} | {n['removed']:,} | "
          f"{n['answered_429']} | {n['send_rate_per_min']}/min | "
          f"{(n['send_rate_per_min'] or 0) / args.rpm:.1%} | {n['wall_s']} s | {n['reconciled']} |" for n in nights),
    ]) + "\n"
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    ok = all(n["state"].endswith("success") and n["reconciled"] for n in nights)
    return 0 if ok and second["requests"] == expected and rate >= 0.9 * args.rpm else 1


if __name__ == "__main__":
    sys.exit(main())
