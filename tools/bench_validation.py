"""``make bench-validation``: the validation targets of issue 11 on their own, in a fresh process per list size.

    python -m tools.bench_validation --rows 1000000 --bad-share 0.02

Generates the export (``tools.sample_data``, seeded) and runs the extract step in one process, then, in a fresh
process (as any executor runs a task), the validate task's body
(``pipeline.validate``: read each extracted part, normalise, pre-pass, pandera on the flagged rows, rejections,
write the valid parts, rejects files and audit entries) and prints one JSON line: rows/s for the schema step (no
I/O) and for the whole validate task, each by process CPU time (what one core spends, whatever else the machine
runs) and by wall time, and the peak RSS of that process. The schema step is what the task times itself
(``schema_seconds``: normalise, pre-pass, model on the flagged rows, rejections).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from upath import UPath

AS_OF = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def prepare(rows: int, bad_share: float, workdir: Path) -> None:
    """Generate the export and run the extract step into ``workdir`` (the validate step's input)."""
    from include.cxone_import import pipeline
    from cxone_runs.layout import RunLayout
    from tools.sample_data import generate_crm_export

    source = workdir / "contacts.csv"
    generate_crm_export(source, rows, bad_share=bad_share, seed=42, now=AS_OF)
    extracted = pipeline.extract(UPath(source), RunLayout.for_run(UPath(f"file://{workdir}"), "bench", "validation"))
    (workdir / "extracted.json").write_text(json.dumps(extracted))


def measure(workdir: Path) -> dict[str, object]:
    """The validate task's body on the extracted parts, in this process (its peak RSS is the task's own)."""
    from include.cxone_import import pipeline
    from cxone_runs.layout import RunLayout

    extracted = json.loads((workdir / "extracted.json").read_text())
    rows = extracted["input_rows"]
    layout = RunLayout.for_run(UPath(f"file://{workdir}"), "bench", "validation")
    wall, cpu = time.perf_counter(), time.process_time()
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825, as_of=AS_OF)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "rows": rows,
        "rejected_rows": validated["rejected_rows"],
        "schema_rows_per_cpu_s": round(rows / validated["schema_cpu_seconds"]),
        "schema_rows_per_wall_s": round(rows / validated["schema_seconds"]),
        "validate_task_rows_per_cpu_s": round(rows / cpu),
        "validate_task_rows_per_wall_s": round(rows / wall),
        "schema_cpu_s": validated["schema_cpu_seconds"],
        "validate_task_cpu_s": round(cpu, 3),
        "validate_task_wall_s": round(wall, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated list sizes")
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: generate and extract here
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: validate what is here
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(int(args.rows), args.bad_share, args.prepare)
        return 0
    if args.one:
        print(json.dumps(measure(args.one)), flush=True)
        return 0
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="cxone-bench-validation-") as workdir:
            module = [sys.executable, "-m", "tools.bench_validation"]
            subprocess.run([*module, "--prepare", workdir, "--rows", str(rows), "--bad-share", str(args.bad_share)],
                           check=True)
            subprocess.run([*module, "--one", workdir], check=True)  # in a fresh process: its own peak RSS
    return 0


if __name__ == "__main__":
    sys.exit(main())
