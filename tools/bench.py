"""``make bench``: the whole import DAG against the sandbox at a set latency and rate limit, run two ways, and in
the same invocation a sequential one-batch-at-a-time baseline (the specification's loop) on the same data and
sandbox.

    python -m tools.bench --mode dagtest --rows 20000 --latency-ms 50 --rpm 1000
    python -m tools.bench --mode local --rows 200000 --latency-ms 100 --rpm 6000
    python -m tools.bench --mode local --runs 2 --rows 30000 --latency-ms 50 --rpm 1000   # two lists at once

``--mode dagtest``: ``dag.test()`` in this process (what ``airflow dags test`` and ``make demo`` do; tasks one after
another in one process). ``--mode local``: a real stack (api-server, scheduler with LocalExecutor, dag-processor,
``tests/stack.py``) in a temporary AIRFLOW_HOME, every task in its own process, the stack's default parallelism
and pool, runs triggered through the REST API; ``--runs N`` triggers N runs for N different contact lists at once
on one tenant. ``--mode both`` (default) does dagtest then local. The connection's defaults apply (8 sender threads
per import task, the shared budget in ``$AIRFLOW_HOME/cxone-rate-budget.sqlite``); the sandbox's own limit is the
budget, counted in a sliding 60 s window, so a request above the budget in any window would be answered 429.

Prints end-to-end time, import-phase records/s and its ratio to the limit (rpm x 100 / 60), validation rows/s,
each task's peak RSS as its own process saw it (``ru_maxrss``, written by the task itself), Airflow's overhead and
the number of 429s. ``--rows`` takes a comma-separated list. ``--record`` appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from cxone_provider.connection_form import DEFAULT_MAX_CONCURRENCY
from tools.localrun import ROOT, connection_env, patched_env, run_dag, run_report
from tools.sample_data import generate_crm_export

TASKS = ("extract", "validate", "chunk", "import_batches", "notify_webhook", "report")
DAG_ID = "cxone_contact_import"
RUN_TIMEOUT_S = 3600


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
    """Start and end of every task instance of a dag.test run, from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run_id).all()
        return [
            {"task_id": ti.task_id, "map_index": ti.map_index, "start": ti.start_date.timestamp(),
             "end": ti.end_date.timestamp(), "state": str(ti.state), "hostname": ti.hostname}
            for ti in tis if ti.start_date and ti.end_date
        ]


def task_metrics(storage: Path, run_id: str) -> list[dict[str, Any]]:
    """What each task wrote about itself (``measured()``): wall time, peak RSS of its own process, pid."""
    from cxone_runs.layout import safe_segment

    folder = storage / "runs" / DAG_ID / safe_segment(run_id) / "metrics"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


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


def generate(rows: int, args: argparse.Namespace, workdir: Path, name: str) -> tuple[Path, Any]:
    source = workdir / f"{name}.csv"
    t = time.monotonic()
    export = generate_crm_export(source, rows, bad_share=args.bad_share, seed=rows + sum(name.encode()) % 1000)
    print(f"bench: generated {rows} rows for {name} in {time.monotonic() - t:.1f}s", flush=True)
    return source, export


def max_in_any_window(times: list[float], window_s: float = 60.0) -> int:
    """Largest number of arrivals inside any window [t, t + window_s)."""
    best, first = 0, 0
    ordered = sorted(times)
    for last, at in enumerate(ordered):
        while ordered[first] <= at - window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def server_view(request_log: list[dict[str, Any]], lists: list[str]) -> dict[str, Any]:
    """What the sandbox saw of the runs' lists: requests in the busiest 60 s window, and the send rate from the
    first request to the last (the import as the server sees it, without task start-up)."""
    mine = [entry for entry in request_log if entry["contact_list_id"] in lists]
    if not mine:
        return {"max_requests_in_60s": 0, "send_span_s": 0.0, "send_records_per_s": 0}
    mine.sort(key=lambda entry: entry["at"])
    arrivals = [entry["at"] for entry in mine]
    span = arrivals[-1] - arrivals[0]
    created = sum(entry.get("created") or 0 for entry in mine[1:])  # n requests span n - 1 intervals
    return {
        "max_requests_in_60s": max_in_any_window(arrivals),
        "send_span_s": round(span, 1),
        "send_records_per_s": round(created / span) if span else 0,
    }


def figures(
    rows: int, runs: list[dict[str, Any]], stats: dict[str, Any], args: argparse.Namespace, e2e: float
) -> dict[str, Any]:
    """The benchmark's numbers from the runs' task windows, reports and task metrics and the sandbox's counters.

    ``runs``: one entry per DAG run with ``windows`` (task instances), ``report`` and ``metrics``.
    """
    limit_records_per_s = args.rpm * 100 / 60
    windows = [w for run in runs for w in run["windows"]]
    first_import = min((w["start"] for w in windows if w["task_id"] == "import_batches"), default=0.0)
    body_s = {(run_n, m["map_index"]): m["seconds"] for run_n, run in enumerate(runs) for m in run["metrics"]
              if m["task"] == "import_batches"}
    import_tasks = sorted(
        ({"start_offset_s": round(w["start"] - first_import, 1), "seconds": round(w["end"] - w["start"], 1),
          "body_s": body_s.get((run_n, w["map_index"])), "state": w["state"], "hostname": w.get("hostname")}
         for run_n, run in enumerate(runs) for w in run["windows"] if w["task_id"] == "import_batches"),
        key=lambda t: t["start_offset_s"],
    )

    def span(task_id: str) -> tuple[float, float]:
        mine = [w for w in windows if w["task_id"] == task_id]
        return (min(w["start"] for w in mine), max(w["end"] for w in mine)) if mine else (0.0, 0.0)

    seconds = {name: round(b - a, 1) for name, (a, b) in ((t, span(t)) for t in TASKS)}
    imported = sum(
        run["report"].get("totals", {}).get("imported", 0) + run["report"].get("totals", {}).get("duplicates", 0)
        for run in runs
    )
    import_rate = imported / seconds["import_batches"] if seconds["import_batches"] else 0.0
    peak: dict[str, float] = {}
    pids: dict[str, set[int]] = {}
    for metric in (m for run in runs for m in run["metrics"]):
        peak[metric["task"]] = max(peak.get(metric["task"], 0.0), metric["peak_rss_mb"])
        pids.setdefault(metric["task"], set()).add(metric["pid"])
    answered_429 = stats.get("status_counts", {}).get("429", 0)
    requests_made = stats.get("records_requests") or 0
    validate_s = seconds["validate"]
    return {
        "rows": rows,
        "runs": len(runs),
        "states": [run["state"] for run in runs],
        "e2e_s": round(e2e, 1),
        "e2e_records_per_s": round(rows * len(runs) / e2e),
        "import_groups": sum(1 for w in windows if w["task_id"] == "import_batches" and w["state"].endswith("success")),
        "import_s": seconds["import_batches"],
        "import_records": imported,
        "import_records_per_s": round(import_rate),
        "import_ratio_to_limit": round(import_rate / limit_records_per_s, 3),
        "requests": requests_made,
        "answered_429": answered_429,
        "share_429": round(answered_429 / max(requests_made, 1), 4),
        "validation_rows_per_s": round(rows * len(runs) / validate_s) if validate_s and len(runs) == 1 else None,
        "task_seconds": seconds,
        "peak_rss_mb": {task: round(peak[task]) for task in TASKS if task in peak},
        "task_processes": {task: len(pids[task]) for task in TASKS if task in pids},
        "airflow_overhead_s": round(e2e - seconds["extract"] - seconds["validate"] - seconds["import_batches"], 1),
        "reconciled": all(run["report"].get("reconciliation", {}).get("ok") for run in runs),
        "import_tasks": import_tasks,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def bench_dagtest(rows: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The whole DAG under dag.test() in this process, then the baseline on the same sandbox."""
    source, export = generate(rows, args, workdir, f"contacts_{rows}")
    storage = workdir / f"storage_{rows}"
    with Sandbox(args.latency_ms, args.rpm) as sandbox:
        env = {
            **connection_env(sandbox.urls["cxone_url"], sandbox.urls["webhook_url"], requests_per_minute=args.rpm,
                             max_concurrency=args.concurrency),
            "CXONE_IMPORT_STORAGE_BASE": f"file://{storage}",
        }
        with patched_env(env):
            started = time.time()
            dag_run = run_dag({"source_uri": f"file://{source}", "contact_list_id": "bench"})
            finished = time.time()
        stats = sandbox.stats()
        log = requests.get(sandbox.urls["cxone_url"] + "/_sandbox/requests", timeout=60).json()["requests"]
        run = {"state": str(dag_run.state), "windows": task_windows(dag_run.run_id),
               "report": run_report(storage, dag_run.run_id) or {}, "metrics": task_metrics(storage, dag_run.run_id)}
        print(f"bench: dag.test run {dag_run.state} in {finished - started:.1f}s; running the baseline", flush=True)
        groups = sorted(storage.glob("runs/*/*/groups/group-*.parquet"))
        baseline = sequential_baseline(sandbox.urls["cxone_url"], groups, args.baseline_seconds)
    result = figures(rows, [run], stats, args, finished - started)
    result.update(server_view(log, ["bench"]))
    return {"mode": "dag.test", **result, "baseline": baseline, "expected_valid": len(export.valid_contact_ids)}


@contextmanager
def local_stack(home: Path, *, rpm: int, latency_ms: float, concurrency: int | None = None) -> Iterator[Any]:
    """A real LocalExecutor stack (``tests/stack.py``: api-server, scheduler, dag-processor, sandbox, webhook sink as
    plain processes on free 127.0.0.1 ports) in ``home``, its CXone connection at ``rpm`` (``concurrency`` sender
    threads, default the connection's) and its sandbox at that limit and ``latency_ms``; stopped on exit."""
    sys.path.insert(0, str(ROOT))
    from tests.stack import AirflowStack

    class BenchStack(AirflowStack):
        """The test stack with the CXone connection at the bench's budget (follows the sandbox port it got)."""

        @property
        def env(self) -> dict[str, str]:
            return {**super().env, **connection_env(self.sandbox_url, self.webhook_url, requests_per_minute=rpm,
                                                    max_concurrency=concurrency)}

    with BenchStack(home) as stack:
        print(f"bench: LocalExecutor stack up in {stack.start_seconds}s ({stack.home})", flush=True)
        requests.post(f"{stack.sandbox_url}/_sandbox/config", timeout=30,
                      json={"latency_ms": latency_ms, "requests_per_minute": rpm}).raise_for_status()
        yield stack


def finished_run(stack: Any, run_id: str) -> dict[str, Any]:
    """Wait for a run triggered on ``stack``; its final state, task windows (REST task instances) and report."""
    final = stack.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S, poll_s=1.0)
    if final["state"] != "success":
        print(stack.describe_run(DAG_ID, run_id), flush=True)
        for log_file in sorted(stack.home.glob("logs/**/task_id=import_batches/**/attempt=*.log"))[-1:]:
            print(f"bench: tail of {log_file}:\n" + "\n".join(log_file.read_text().splitlines()[-25:]), flush=True)
    windows = [
        {"task_id": ti["task_id"], "map_index": ti["map_index"], "state": str(ti["state"]),
         "start": datetime.fromisoformat(ti["start_date"]).timestamp(),
         "end": datetime.fromisoformat(ti["end_date"]).timestamp(), "hostname": ti.get("hostname")}
        for ti in stack.task_instances(DAG_ID, run_id) if ti.get("start_date") and ti.get("end_date")
    ]
    return {"state": final["state"], "windows": windows, "report": stack.run_report(run_id) or {},
            "metrics": task_metrics(stack.storage_base, run_id), "end": final["end_date"]}


def bench_local(rows: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``args.runs`` runs for as many contact lists, triggered at once on a real LocalExecutor stack."""
    lists = [f"bench-{n + 1}" for n in range(args.runs)]
    sources = {name: generate(rows, args, workdir, name)[0] for name in lists}
    with local_stack(workdir / "airflow", rpm=args.rpm, latency_ms=args.latency_ms,
                     concurrency=args.concurrency) as stack:
        started = time.time()
        triggered = {name: stack.trigger(DAG_ID, conf={"source_uri": f"file://{sources[name]}", "contact_list_id": name})
                     for name in lists}
        runs = [finished_run(stack, dag_run["dag_run_id"]) for dag_run in triggered.values()]
        finished = max(datetime.fromisoformat(run["end"]).timestamp() for run in runs)
        stats = stack.sandbox_stats()
        log = requests.get(f"{stack.sandbox_url}/_sandbox/requests", timeout=60).json()["requests"]
        print(f"bench: {len(runs)} LocalExecutor run(s) {[r['state'] for r in runs]}; running the baseline", flush=True)
        groups = sorted(stack.storage_base.glob("runs/*/*/groups/group-*.parquet"))
        baseline = sequential_baseline(stack.sandbox_url, groups, args.baseline_seconds)
    result = figures(rows, runs, stats, args, finished - started)
    result.update(server_view(log, lists))
    return {"mode": "LocalExecutor", **result, "baseline": baseline}


def bench_one(rows: int, mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result = bench_dagtest(rows, args, workdir) if mode == "dagtest" else bench_local(rows, args, workdir)
    limit = args.rpm * 100 / 60
    result["baseline_ratio_to_limit"] = round(result["baseline"]["records_per_s"] / limit, 3)
    result["vs_baseline"] = round(result["import_records_per_s"] / max(result["baseline"]["records_per_s"], 1e-9), 1)
    return result


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    limit = args.rpm * 100 / 60
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; sandbox latency "
        f"{args.latency_ms:g} ms, limit {args.rpm} requests/min = {limit:.0f} records/s (the physical limit); "
        f"{args.concurrency} sender threads per import task; one shared budget per tenant.",
        "",
        "| mode | runs x rows | import groups | end-to-end | import phase | import records/s | vs limit | "
        "server: send span / records/s / vs limit | busiest 60 s (budget) | 429s | baseline records/s | "
        "baseline vs limit | import vs baseline | Airflow overhead | reconciled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['runs']} x {r['rows']:,} | {r['import_groups']} | {r['e2e_s']} s | {r['import_s']} s | "
            f"{r['import_records_per_s']:,} | {r['import_ratio_to_limit']:.1%} | {r['send_span_s']} s / "
            f"{r['send_records_per_s']:,} / {r['send_records_per_s'] / limit:.1%} | {r['max_requests_in_60s']} "
            f"({args.rpm}) | {r['answered_429']} of {r['requests']} | "
            f"{r['baseline']['records_per_s']:,} | {r['baseline_ratio_to_limit']:.1%} | {r['vs_baseline']}x | "
            f"{r['airflow_overhead_s']} s | {r['reconciled']} |"
        )
    lines += ["", "| mode | runs x rows | " + " | ".join(f"{t} s / peak RSS (processes)" for t in TASKS) + " |",
              "|---|---|" + "---|" * len(TASKS)]
    for r in results:
        cells = [f"{r['task_seconds'].get(t, '-')} s / {r['peak_rss_mb'].get(t, '-')} MiB ({r['task_processes'].get(t, '-')})"
                 for t in TASKS]
        lines.append(f"| {r['mode']} | {r['runs']} x {r['rows']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="200000", help="comma-separated list sizes")
    parser.add_argument("--mode", choices=("dagtest", "local", "both"), default="both")
    parser.add_argument("--runs", type=int, default=1, help="local mode: runs for as many contact lists at once")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY,
                        help="sender threads per import task (default: the connection's default)")
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, stack logs) for a post-mortem")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one size and mode, write JSON here
    args = parser.parse_args(argv)
    if args.one:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="cxone-bench-"))
            print(f"bench: keeping {workdir}", flush=True)
            args.one.write_text(json.dumps(bench_one(int(args.rows), args.mode, args, workdir)))
            return 0
        with tempfile.TemporaryDirectory(prefix="cxone-bench-") as tmp:
            args.one.write_text(json.dumps(bench_one(int(args.rows), args.mode, args, Path(tmp))))
        return 0
    given = argv if argv is not None else sys.argv[1:]
    command = "make bench ARGS=\"" + " ".join(given) + "\""
    modes = ("dagtest", "local") if args.mode == "both" else (args.mode,)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        for mode in modes:
            # each size and mode in a fresh process, so one's memory never shows up in the next one's peak RSS
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            one = [a for a in given if a != "--record"]
            subprocess.run([sys.executable, "-m", "tools.bench", *one, "--rows", str(rows), "--mode", mode,
                            "--one", str(out)], cwd=ROOT, check=True)
            result = json.loads(out.read_text())
            out.unlink()
            print(json.dumps(result, indent=2), flush=True)
            results.append(result)
    table = render(results, args, command)
    print("\n" + table)
    if args.record:
        with (ROOT / "BENCHMARKS.md").open("a") as handle:
            handle.write("\n" + table)
    ok = all(state == "success" or state.endswith(".success") for r in results for state in r["states"])
    return 0 if ok and all(r["reconciled"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
