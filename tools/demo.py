"""``make demo``: generate a CRM export with bad rows, start the local CXone sandbox and webhook sink, run the
import DAG once with ``dag.test()`` and print its report. Stops what it started.

``make demo ARGS="--profile call_lists"`` does the same against the calling-list sandbox (NICE's documented
calling-list API): the list is created, the records uploaded as CSV files and read back after their jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from tools.localrun import (
    DEMO_WEBHOOK_SECRET,
    ROOT,
    call_list_connection_env,
    connection_env,
    patched_env,
    run_dag,
    run_report,
)
from include.cxone_import.report import format_report
from tools.sample_data import generate_crm_export
from include.cxone_sandbox import CXoneSandbox, SandboxConfig, WebhookSink
from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--contact-list-id", default="demo-list")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--profile", choices=("records", "call_lists"), default="records",
                        help="which CXone API the sandbox speaks (the connection's api_profile)")
    args = parser.parse_args(argv)

    storage = Path(os.environ.get("CXONE_IMPORT_STORAGE_BASE", f"file://{ROOT / 'data'}").removeprefix("file://"))
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    source = storage / "incoming" / f"contacts_{day}.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    export = generate_crm_export(source, args.rows, bad_share=args.bad_share, seed=args.seed)
    print(f"demo: generated {export.rows} rows ({len(export.expected_rejects)} with defects) in {source}")

    call_lists = args.profile == "call_lists"
    sandbox = (CallListSandbox(CallListSandboxConfig(latency_ms=args.latency_ms, job_delay_s=1.0)) if call_lists
               else CXoneSandbox(SandboxConfig(latency_ms=args.latency_ms)))
    with sandbox, WebhookSink(secret=DEMO_WEBHOOK_SECRET) as sink:  # the sink checks each event's signature
        print(f"demo: CXone sandbox ({args.profile}) on {sandbox.url}, webhook sink on {sink.url}")
        env = {
            **(call_list_connection_env(sandbox.url, sink.url) if call_lists else connection_env(sandbox.url, sink.url)),
            "AIRFLOW_VAR_CXONE_CONTACT_LIST_ID": args.contact_list_id,
        }
        with patched_env(env):
            conf = {"source_uri": f"file://{source}", "contact_list_id": args.contact_list_id}
            dag_run = run_dag({**conf, "create_list_if_missing": True} if call_lists else conf)
        report = run_report(storage, dag_run.run_id)
        stored = len(sandbox.records(args.contact_list_id))
        events = [e for e in sink.events() if e.get("status", 200) == 200]
    print()
    if report is None:
        print(f"demo: run {dag_run.run_id} ended {dag_run.state} without a report; see the task logs above")
        return 1
    print(format_report(report))
    print(f"  sandbox holds     {stored} records in list {args.contact_list_id}; webhook sink got {len(events)} events")
    print(f"\ndemo: DAG run {dag_run.run_id} finished {dag_run.state}")
    return 0 if str(dag_run.state) in ("success", "DagRunState.SUCCESS") else 1


if __name__ == "__main__":
    sys.exit(main())
