"""``make demo-sync``: two nights of one list in ``sync_mode`` mirror against the local CXone sandbox. Night 1
imports a CRM export; night 2's export changes some contacts (phone and tier), withdraws consent of others
(``optInStatus`` revoked), lets some consent expire and drops some contacts. Prints what each night did and what
the sandbox holds. Stops what it started.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from include.cxone_import.report import format_report
from include.cxone_sandbox import CXoneSandbox, SandboxConfig, WebhookSink
from tools.localrun import DEMO_WEBHOOK_SECRET, ROOT, connection_env, patched_env, run_dag, run_report
from tools.sample_data import generate_crm_export


def night_two(source: Path, target: Path, valid_ids: set[str], *, change: int, withdraw: int, expire: int,
              absent: int) -> dict[str, int]:
    """Write night 2's export from night 1's: the first valid contacts changed, withdrawn, expired, dropped."""
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    phones = [f for f in fields if f.endswith("_phone")]
    picked: list[dict[str, str]] = []
    seen: set[str] = set()
    for row in rows:
        if row["contact_id"] in valid_ids and row["contact_id"] not in seen:
            seen.add(row["contact_id"])
            picked.append(row)
    cut = [change, change + withdraw, change + withdraw + expire, change + withdraw + expire + absent]
    for n, row in enumerate(picked[: cut[0]]):
        row["tier"] = "changed-" + row["tier"]
        row[next(c for c in phones if row[c])] = f"+6149158{n:04d}"  # Australian fiction range
    for row in picked[cut[0] : cut[1]]:
        row["opt_in_status"] = "revoked"
    for row in picked[cut[1] : cut[2]]:
        row["consent_timestamp"] = "2001-01-01T00:00:00Z"
    dropped = {r["contact_id"] for r in picked[cut[2] : cut[3]]}
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(r for r in rows if r["contact_id"] not in dropped)
    return {"changed": change, "withdrawn": withdraw, "expired": expire, "dropped": absent}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--contact-list-id", default="demo-sync-list")
    parser.add_argument("--mode", choices=("upsert", "mirror"), default="mirror")
    args = parser.parse_args(argv)

    storage = Path(os.environ.get("CXONE_IMPORT_STORAGE_BASE", f"file://{ROOT / 'data'}").removeprefix("file://"))
    folder = Path(tempfile.mkdtemp(prefix="demo-sync-", dir=storage if storage.exists() else None))
    export = generate_crm_export(folder / "night1.csv", args.rows, bad_share=0.05, seed=args.seed)
    edits = night_two(export.path, folder / "night2.csv", set(export.valid_contact_ids),
                      change=args.rows // 50, withdraw=args.rows // 100, expire=args.rows // 200, absent=args.rows // 100)
    night1 = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with CXoneSandbox(SandboxConfig(latency_ms=10)) as sandbox, WebhookSink(secret=DEMO_WEBHOOK_SECRET) as sink:
        print(f"demo-sync: CXone sandbox on {sandbox.url}; night 2 edits {edits}")
        with patched_env(connection_env(sandbox.url, sink.url)):
            for night, name in ((0, "night1.csv"), (1, "night2.csv")):
                conf = {"source_uri": f"file://{folder / name}", "contact_list_id": args.contact_list_id,
                        "sync_mode": args.mode, "max_reject_share": 0.5}
                dag_run = run_dag(conf, logical_date=night1 + timedelta(days=night))
                report = run_report(storage, dag_run.run_id)
                print(f"\n=== night {night + 1} ({name}): {dag_run.state} ===")
                if report is None:
                    print("no report; see the task logs above")
                    return 1
                print(format_report(report))
                stats = sandbox.stats()
                print(f"  sandbox holds     {len(sandbox.records(args.contact_list_id))} records; so far "
                      f"{stats['records_created']} created, {stats['records_updated']} updated, "
                      f"{stats['records_removed']} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
