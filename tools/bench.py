"""``make bench``: the whole import DAG against the sandbox at a set latency and rate limit, and in the same
invocation a sequential one-batch-at-a-time baseline (the specification's loop) on the same data and sandbox.

    python -m tools.bench --rows 1000000 --latency-ms 100 --rpm 6000 [--record]

Prints end-to-end time and records/s, import-phase records/s and its ratio to the limit (rpm x 100 / 60),
validation rows/s, peak RSS during each task, Airflow's own overhead and the number of 429s. ``--rows`` takes a
comma-separated list (e.g. ``200000,2000000``) to compare memory across list sizes. ``--record`` appends the
table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from tools.localrun import ROOT, connection_env, patched_env, run_dag, run_report
from tools.sample_data import generate_crm_export

PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Samples this process's resident set size every 20 ms (tasks of dag.test run in this process)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with open("/proc/self/statm") as handle:
                rss = int(handle.read().split()[1]) * PAGE
            self.samples.append((time.time(), rss))
            self._halt.wait(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak_between(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) / 2**20 if inside else float("nan")


@dataclass
class Sandbox:
    """The sandbox as its own process (its CPU must not share the DAG process's interpreter)."""

    latency_ms: float
    rpm: int
    process: subprocess.Popen | None = None
    urls: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Sandbox:
        ready = Path(tempfile.mkdtemp()) / "ready.json"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "include.cxone_sandbox", "--port", "0", "--webhook-port", "0",
             "--ready-file", str(ready), "--latency-ms", str(self.latency_ms), "--requests-per-minute", str(self.rpm)],
            cwd=ROOT, stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.05)
        self.urls = json.loads(ready.read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def stats(self) -> dict[str, Any]:
        return requests.get(self.urls["cxone_url"] + "/_sandbox/stats", timeout=10).json()


def task_windows(run_id: str) -> list[dict[str, Any]]:
    """Start and end of every task instance of the run, from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run_id).all()
        return [
            {"task_id": ti.task_id, "map_index": ti.map_index, "start": ti.start_date.timestamp(),
             "end": ti.end_date.timestamp(), "state": str(ti.state)}
            for ti in tis if ti.start_date and ti.end_date
        ]


def sequential_baseline(cxone_url: str, groups: list[Path], seconds: float) -> dict[str, Any]:
    """The specification's loop: one token, then one batch at a time, waiting for each answer."""
    import pyarrow.parquet as pq

    session = requests.Session()
    token = session.post(
        cxone_url + "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret",
              "scope": "contactlists:write contactlists:read"},
        timeout=30,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent = requests_made = rate_limited = 0
    started = time.monotonic()
    for group in groups:
        table = pq.read_table(group, columns=["batch_index", "record_json"])
        batch_index = table["batch_index"].to_pylist()
        records = table["record_json"].to_pylist()
        start = 0
        while start < len(records) and time.monotonic() - started < seconds:
            end = start
            while end < len(records) and batch_index[end] == batch_index[start]:
                end += 1
            body = '{"records":[' + ",".join(records[start:end]) + "]}"
            response = session.post(cxone_url + "/api/v2/contactlists/baseline/records", data=body, headers=headers, timeout=60)
            requests_made += 1
            if response.status_code == 429:
                rate_limited += 1
                time.sleep(float(response.headers.get("Retry-After", 1)))
                continue
            sent += end - start
            start = end
        if time.monotonic() - started >= seconds:
            break
    elapsed = time.monotonic() - started
    return {"records": sent, "seconds": round(elapsed, 1), "records_per_s": round(sent / elapsed, 1),
            "requests": requests_made, "rate_limited": rate_limited}


def bench_one(rows: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    limit_records_per_s = args.rpm * 100 / 60
    source = workdir / f"contacts_{rows}.csv"
    t = time.monotonic()
    export = generate_crm_export(source, rows, bad_share=args.bad_share, seed=rows)
    print(f"bench: generated {rows} rows in {time.monotonic() - t:.1f}s", flush=True)
    storage = workdir / f"storage_{rows}"
    with Sandbox(args.latency_ms, args.rpm) as sandbox:
        env = {
            **connection_env(sandbox.urls["cxone_url"], sandbox.urls["webhook_url"], requests_per_minute=args.rpm,
                             max_concurrency=args.concurrency),
            "CXONE_IMPORT_PARALLELISM": "1",
            "CXONE_IMPORT_STORAGE_BASE": f"file://{storage}",
        }
        sampler = RssSampler()
        sampler.start()
        with patched_env(env):
            started = time.time()
            dag_run = run_dag({"source_uri": f"file://{source}", "contact_list_id": "bench"})
            finished = time.time()
        sampler.stop()
        report = run_report(storage, dag_run.run_id) or {}
        stats = sandbox.stats()
        windows = task_windows(dag_run.run_id)
        groups = sorted(storage.glob("runs/*/*/groups/group-*.parquet"))
        print(f"bench: DAG run {dag_run.state} in {finished - started:.1f}s; running the baseline", flush=True)
        baseline = sequential_baseline(sandbox.urls["cxone_url"], groups, args.baseline_seconds)

    def span(task_id: str) -> tuple[float, float]:
        mine = [w for w in windows if w["task_id"] == task_id]
        return (min(w["start"] for w in mine), max(w["end"] for w in mine)) if mine else (0.0, 0.0)

    phases = {name: span(name) for name in ("extract", "validate", "chunk", "import_batches", "notify_webhook", "report")}
    seconds = {name: round(b - a, 1) for name, (a, b) in phases.items()}
    totals = report.get("totals", {})
    imported = totals.get("imported", 0) + totals.get("duplicates", 0)
    import_rate = imported / seconds["import_batches"] if seconds["import_batches"] else 0.0
    e2e = finished - started
    return {
        "rows": rows,
        "state": str(dag_run.state),
        "e2e_s": round(e2e, 1),
        "e2e_records_per_s": round(rows / e2e),
        "import_s": seconds["import_batches"],
        "import_records_per_s": round(import_rate),
        "import_ratio_to_limit": round(import_rate / limit_records_per_s, 3),
        "requests": stats.get("records_requests"),
        "answered_429": stats.get("status_counts", {}).get("429", 0),
        "share_429": round(stats.get("status_counts", {}).get("429", 0) / max(stats.get("records_requests", 1), 1), 4),
        "validate_s": seconds["validate"],
        "validation_rows_per_s": round(rows / seconds["validate"]) if seconds["validate"] else None,
        "schema_rows_per_s": round(rows / report["timings_seconds"]["schema"]) if report.get("timings_seconds", {}).get("schema") else None,
        "task_seconds": seconds,
        "peak_rss_mb": {name: round(sampler.peak_between(a, b)) for name, (a, b) in phases.items() if b},
        "airflow_overhead_s": round(e2e - seconds["extract"] - seconds["validate"] - seconds["import_batches"], 1),
        "reconciled": report.get("reconciliation", {}).get("ok"),
        "baseline": baseline,
        "baseline_ratio_to_limit": round(baseline["records_per_s"] / limit_records_per_s, 3),
        "expected_valid": len(export.valid_contact_ids),
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    limit = args.rpm * 100 / 60
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; sandbox latency "
        f"{args.latency_ms:g} ms, limit {args.rpm} requests/min = {limit:.0f} records/s; import concurrency "
        f"{args.concurrency} threads; each list size in a fresh process; tasks run in that process (dag.test), one import "
        "task at a time with the whole budget.",
        "",
        "| rows | end-to-end | records/s | import phase | import records/s | vs limit | 429s | validate task rows/s | "
        "schema rows/s | Airflow overhead | baseline records/s | baseline vs limit | reconciled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['e2e_s']} s | {r['e2e_records_per_s']:,} | {r['import_s']} s | "
            f"{r['import_records_per_s']:,} | {r['import_ratio_to_limit']:.1%} | {r['answered_429']} of {r['requests']} | "
            f"{r['validation_rows_per_s']:,} | {r['schema_rows_per_s']:,} | {r['airflow_overhead_s']} s | {r['baseline']['records_per_s']:,} | "
            f"{r['baseline_ratio_to_limit']:.1%} | {r['reconciled']} |"
        )
    lines += ["", "| rows | " + " | ".join(f"{t} s / peak RSS" for t in results[0]["task_seconds"]) + " |",
              "|---|" + "---|" * len(results[0]["task_seconds"])]
    for r in results:
        cells = [f"{r['task_seconds'][t]} s / {r['peak_rss_mb'].get(t, '-')} MiB" for t in r["task_seconds"]]
        lines.append(f"| {r['rows']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000", help="comma-separated list sizes")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=16, help="sender threads per import task")
    parser.add_argument("--baseline-seconds", type=float, default=60.0)
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one size, write JSON here
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory(prefix="cxone-bench-") as tmp:
            args.one.write_text(json.dumps(bench_one(int(args.rows), args, Path(tmp))))
        return 0
    command = "make bench ARGS=\"" + " ".join(argv if argv is not None else sys.argv[1:]) + "\""
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        # each size in a fresh process, so one size's memory never shows up in the next one's peak RSS
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        one = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--record"]
        subprocess.run([sys.executable, "-m", "tools.bench", *one, "--rows", str(rows), "--one", str(out)],
                       cwd=ROOT, check=True)
        result = json.loads(out.read_text())
        out.unlink()
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    table = render(results, args, command)
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    return 0 if all(r["state"].endswith("success") and r["reconciled"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
