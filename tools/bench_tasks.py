"""``make bench-tasks``: the DAG's non-import tasks of issue 11, each alone in a fresh process, per list size.

    python -m tools.bench_tasks --rows 200000,1000000,2000000

For each size the export is generated once (``tools.sample_data``, seed 42, 2% bad, fixed as-of), then each task's
body runs in its own fresh process (as any executor runs a task), in DAG order over one local storage folder:
``extract`` (``pipeline.extract``), ``validate`` (``pipeline.validate``), ``chunk`` (``state.decide_changes`` on an
empty list state, then ``pipeline.chunk``, as ``tasks.chunk`` calls them), ``notify`` (what
``notify_webhook`` reads for the run summary, nothing sent) and ``report`` (``report.build_report``). The chunk
plans groups for ``PARALLEL_GROUPS`` import tasks, the DAG's default. Between chunk and notify, an unmeasured
process writes what the import tasks would (``GroupImporter.run``'s files): every record ``imported`` but one batch
in 500 ``failed``, with fake batch metrics and audit entries; nothing goes over HTTP. One table per size: wall and
process CPU seconds, peak RSS of the task's process, the RSS right after its imports (pandas, pyarrow, pandera, the
project's modules: what any task process pays before its work), and rows/s; then peak RSS at the smallest size
against the largest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from upath import UPath

AS_OF = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
TASKS = ("extract", "validate", "chunk", "notify", "report")
LIST_ID = "bench-list"
BATCH_SIZE = 100
PARALLEL_GROUPS = 4  # the DAG's default: min(core.parallelism, task_config.parallel_groups()), the cxone_api pool
FAILED_EVERY = 500


def _layout(workdir: Path) -> Any:
    from cxone_runs.layout import RunLayout

    return RunLayout.for_run(UPath(f"file://{workdir}"), "bench", "tasks")


def _peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _load(workdir: Path, name: str) -> Any:
    return json.loads((workdir / f"{name}.json").read_text())


def _save(workdir: Path, name: str, value: Any) -> None:
    (workdir / f"{name}.json").write_text(json.dumps(value, default=str))


def generate(rows: int, bad_share: float, workdir: Path) -> None:
    from tools.sample_data import generate_crm_export

    generate_crm_export(workdir / "contacts.csv", rows, bad_share=bad_share, seed=42, now=AS_OF)


def run_extract(workdir: Path) -> dict[str, Any]:
    from include.cxone_import import pipeline

    return pipeline.extract(UPath(workdir / "contacts.csv"), _layout(workdir))


def run_validate(workdir: Path) -> dict[str, Any]:
    from include.cxone_import import pipeline

    extracted = _load(workdir, "extract")
    return pipeline.validate(_layout(workdir), parts=extracted["parts"], max_consent_age_days=1825, as_of=AS_OF)


def run_chunk(workdir: Path) -> list[dict[str, Any]]:
    from include.cxone_import import pipeline
    from include.cxone_import.state import LEFT_OUT, ContactListState, decide_changes, list_key, read_decided_rows

    layout, validated = _layout(workdir), _load(workdir, "validate")
    key = list_key(LIST_ID, base_url="https://bench.invalid", client_id="bench")
    state = ContactListState(UPath(f"file://{workdir}"), "bench", key)
    changes = decide_changes(layout, state, parts=validated["parts"], run_id="tasks", mode="compare")
    return pipeline.chunk(
        layout, parts=validated["parts"], valid_rows=validated["valid_rows"], batch_scope=key.batch_scope,
        batch_size=BATCH_SIZE, parallelism=PARALLEL_GROUPS, max_map_length=1024,
        left_out_rows=read_decided_rows(layout, *LEFT_OUT) if changes["unchanged"] + changes["unconfirmed"] else None,
    )


def run_report(workdir: Path) -> dict[str, Any]:
    from include.cxone_import.report import build_report

    layout = _layout(workdir)
    result = build_report(
        layout, run={"run_id": "tasks", "contact_list_id": LIST_ID}, extracted=_load(workdir, "extract"),
        validated=_load(workdir, "validate"), groups=_load(workdir, "chunk"), webhook=None,
        budget_per_minute=6000.0, failures=[],
    )
    return {k: result[k] for k in ("status", "totals", "reconciliation", "audit_entries", "dead_letters")}


def run_notify(workdir: Path) -> dict[str, Any]:
    """``notify_webhook``'s reading: the run summary's totals from every group's summary and the outcome counts (the
    import tasks sent the batch events; nothing is sent here)."""
    from include.cxone_import.report import group_summaries, outcome_counts, totals

    layout = _layout(workdir)
    return totals(_load(workdir, "validate"), outcome_counts(layout), group_summaries(layout))


RUNNERS = {"extract": run_extract, "validate": run_validate, "chunk": run_chunk, "notify": run_notify,
           "report": run_report}


def write_outcomes(workdir: Path) -> None:
    """What the import tasks leave for the report (``GroupImporter.run``: outcome file, group summary with batch
    metrics, audit part): every record ``imported`` but those of one batch in ``FAILED_EVERY`` (``failed``, so that
    the dead-letter file is written too)."""
    from include.cxone_import.storage import read_parquet, write_json, write_jsonl, write_parquet

    layout = _layout(workdir)
    clock = AS_OF
    for group in _load(workdir, "chunk"):
        index = int(group["group_index"])
        rows = read_parquet(layout.group_file(index), columns=["row_number", "batch_index", "batch_id", "contact_id"])
        outcomes = _outcomes(rows)
        write_parquet(layout.outcome_file(index), outcomes)
        metrics = _batch_metrics(rows, clock)
        clock = datetime.fromisoformat(metrics[-1].finished_at)
        write_jsonl(layout.audit_part(f"import-group-{index:05d}"), (_audit_entry(m) for m in metrics))
        write_json(layout.outcome_file(index).with_suffix(".json"), _summary(index, outcomes, metrics))


def _failed_batch(batch_index: Any) -> Any:
    return batch_index % FAILED_EVERY == FAILED_EVERY - 1


def _outcomes(rows: Any) -> Any:
    import numpy as np
    import pandas as pd

    from include.cxone_import.engine import FAILED, IMPORTED

    failed = _failed_batch(rows["batch_index"]).to_numpy()
    return pd.DataFrame({
        "row_number": rows["row_number"].astype("int64"), "contact_id": rows["contact_id"],
        "outcome": np.where(failed, FAILED, IMPORTED), "batch_id": rows["batch_id"],
        "detail": np.where(failed, "HTTP 400: rejected by the bench", ""),
    })


def _batch_metrics(rows: Any, clock: datetime) -> list[Any]:
    """One batch after the other, 100 ms each, latencies of 100-149 ms."""
    from include.cxone_import.engine import BatchMetrics

    metrics = []
    for (batch_index, batch_id), records in rows.groupby(["batch_index", "batch_id"], sort=True).size().items():
        started, clock = clock, clock + timedelta(milliseconds=100)
        failed = int(records) if _failed_batch(batch_index) else 0
        metrics.append(BatchMetrics(
            batch_id=batch_id, batch_index=int(batch_index), records=int(records), imported=int(records) - failed,
            failed=failed, status="failed" if failed else "success", latency_ms=100.0 + int(batch_index) % 50,
            attempts=1, requests=1, request_ids=[f"req-{batch_index}"], started_at=started.isoformat(),
            finished_at=clock.isoformat(),
        ))
    return metrics


def _summary(index: int, outcomes: Any, metrics: list[Any]) -> dict[str, Any]:
    counts = outcomes["outcome"].value_counts()
    return {
        "group_index": index, "records": len(outcomes), "batches": len(metrics),
        **{name: int(counts.get(name, 0)) for name in ("imported", "duplicate", "failed")},
        "transient_failed_batches": 0, "resumed_batches": 0, "requests": len(metrics), "rate_limited": 0,
        "seconds": round(len(metrics) * 0.1, 3), "batch_metrics": [asdict(m) for m in metrics],
    }


def _audit_entry(metrics: Any) -> dict[str, Any]:
    """A batch's audit entry, of the engine's shape and size."""
    return {
        "auditId": str(uuid.uuid4()), "timestamp": metrics.finished_at, "kind": "batch", "batchId": metrics.batch_id,
        "batchIndex": metrics.batch_index, "recordCount": metrics.records, "status": metrics.status,
        "latencyMs": metrics.latency_ms,
        "details": {"imported": metrics.imported, "failed": metrics.failed, "attempts": metrics.attempts,
                    "requestIds": metrics.request_ids},
    }


def measure(task: str, workdir: Path) -> dict[str, Any]:
    """One task's body in this process; what it costs beyond the imports is the task's own."""
    import pandas  # noqa: F401  - what any task process loads before its work
    import pandera  # noqa: F401
    import pyarrow  # noqa: F401

    from include.cxone_import import pipeline, report  # noqa: F401

    imports = _peak_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    result = RUNNERS[task](workdir)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _save(workdir, task, result)
    rows = _load(workdir, "extract")["input_rows"]
    return {"task": task, "rows": rows, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mib": _peak_mib(),
            "imports_rss_mib": imports, "rows_per_s": round(rows / wall)}


def print_table(rows: int, results: list[dict[str, Any]]) -> None:
    print(f"\n{rows:,} rows")
    print(f"{'task':<10}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}{'imports MiB':>13}{'rows/s':>12}")
    for r in results:
        print(f"{r['task']:<10}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['peak_rss_mib']:>14}"
              f"{r['imports_rss_mib']:>13}{r['rows_per_s']:>12,}")
    sys.stdout.flush()


def print_growth(by_size: dict[int, list[dict[str, Any]]]) -> None:
    small, large = min(by_size), max(by_size)
    if small == large:
        return
    peaks = {size: {r["task"]: r["peak_rss_mib"] for r in results} for size, results in by_size.items()}
    growth = ", ".join(
        f"{task} {before} -> {after} MiB ({after / before - 1:+.0%})"
        for task, before, after in ((t, peaks[small][t], peaks[large][t]) for t in peaks[small])
    )
    print(f"\npeak RSS {small:,} -> {large:,} rows: {growth}")


def _child(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "tools.bench_tasks", *args], check=True, stdout=subprocess.PIPE,
                          text=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="200000,1000000,2000000", help="comma-separated list sizes")
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks to print (all run)")
    parser.add_argument("--keep", type=Path, help="work in this folder (one size) and leave the files there")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # internal: write the export here
    parser.add_argument("--outcomes", type=Path, help=argparse.SUPPRESS)  # internal: fake the import's files
    parser.add_argument("--one", nargs=2, metavar=("TASK", "DIR"), help=argparse.SUPPRESS)  # internal: one task
    args = parser.parse_args(argv)
    if args.generate:
        generate(int(args.rows), args.bad_share, args.generate)
        return 0
    if args.outcomes:
        write_outcomes(args.outcomes)
        return 0
    if args.one:
        print(json.dumps(measure(args.one[0], Path(args.one[1]))), flush=True)
        return 0
    shown = args.tasks.split(",")
    by_size: dict[int, list[dict[str, Any]]] = {}
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="cxone-bench-tasks-") as scratch:
            workdir = str(args.keep or scratch)
            _child("--generate", workdir, "--rows", str(rows), "--bad-share", str(args.bad_share))
            results = []
            for task in TASKS:
                if task == "notify":
                    _child("--outcomes", workdir)
                results.append(json.loads(_child("--one", task, workdir).splitlines()[-1]))
            by_size[rows] = [r for r in results if r["task"] in shown]
            print_table(rows, by_size[rows])
    print_growth(by_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
