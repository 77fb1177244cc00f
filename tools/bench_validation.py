"""``make bench-validation``: the validation targets of issue 11 on their own, in a fresh process per list size.

    python -m tools.bench_validation --rows 1000000 --bad-share 0.02

Generates the export (``tools.sample_data``, seeded) and runs the extract step in one process, then, in a fresh
process (as any executor runs a task), the validate task's body
(``pipeline.validate``: read each extracted part, normalise, pre-pass, pandera on the flagged rows, rejections,
write the valid parts, rejects files and audit entries) and prints one JSON line: rows/s for the schema step (no
I/O) and for the whole validate task, each by process CPU time (what one core spends, whatever else the machine
runs) and by wall time, and the peak RSS of that process. ``--whole`` validates with the model on every row
instead (``validate_chunk_whole``, the path before the pre-pass) for a comparison in the same invocation.
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
    from include.cxone_import.storage import RunLayout
    from tools.sample_data import generate_crm_export

    source = workdir / "contacts.csv"
    generate_crm_export(source, rows, bad_share=bad_share, seed=42, now=AS_OF)
    extracted = pipeline.extract(UPath(source), RunLayout.for_run(UPath(f"file://{workdir}"), "bench", "validation"))
    (workdir / "extracted.json").write_text(json.dumps(extracted))


def measure(whole: bool, workdir: Path) -> dict[str, object]:
    """The validate task's body on the extracted parts, in this process (its peak RSS is the task's own)."""
    from include.cxone_import import pipeline, schema
    from include.cxone_import.storage import RunLayout

    if whole and not hasattr(schema, "validate_chunk_whole"):  # code from before the pre-pass: always whole
        schema.validate_chunk_whole = schema.validate_chunk
    extracted = json.loads((workdir / "extracted.json").read_text())
    rows = extracted["input_rows"]
    layout = RunLayout.for_run(UPath(f"file://{workdir}"), "bench", "validation")
    validate_chunk = schema.validate_chunk_whole if whole else getattr(pipeline, "validate_chunk", None)
    spent = {"cpu": 0.0, "wall": 0.0}

    def timed_validate_chunk(*args: object) -> object:  # the schema step, whatever version of the code is measured
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return validate_chunk(*args)
        finally:
            spent["cpu"] += time.process_time() - cpu
            spent["wall"] += time.perf_counter() - wall

    pipeline.validate_chunk = timed_validate_chunk  # code from before ChunkValidator
    if whole and hasattr(schema, "ChunkValidator"):  # the validator, made to validate every chunk whole
        schema.ChunkValidator.chunk = lambda self, frame: timed_validate_chunk(frame, self.schema, self.seen)
        schema.ChunkValidator.finish = lambda self: schema._no_rejects()
    wall, cpu = time.perf_counter(), time.process_time()
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825, as_of=AS_OF)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not whole and "schema_cpu_seconds" in validated and not spent["cpu"]:
        # the task times its own schema step (per chunk, and the model's reasons written at the end)
        spent = {"cpu": validated["schema_cpu_seconds"], "wall": validated["schema_seconds"]}
    return {
        "rows": rows,
        "path": "whole" if whole else "pre-pass",
        "rejected_rows": validated["rejected_rows"],
        "schema_rows_per_cpu_s": round(rows / spent["cpu"]),
        "schema_rows_per_wall_s": round(rows / spent["wall"]),
        "validate_task_rows_per_cpu_s": round(rows / cpu),
        "validate_task_rows_per_wall_s": round(rows / wall),
        "schema_cpu_s": round(spent["cpu"], 3),
        "validate_task_cpu_s": round(cpu, 3),
        "validate_task_wall_s": round(wall, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated list sizes")
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--whole", action="store_true", help="also run the model on every row, for comparison")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: generate and extract here
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: validate what is here
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(int(args.rows), args.bad_share, args.prepare)
        return 0
    if args.one:
        print(json.dumps(measure(args.whole, args.one)), flush=True)
        return 0
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="cxone-bench-validation-") as workdir:
            module = [sys.executable, "-m", "tools.bench_validation"]
            subprocess.run([*module, "--prepare", workdir, "--rows", str(rows), "--bad-share", str(args.bad_share)],
                           check=True)
            for whole in ((False, True) if args.whole else (False,)):  # each in a fresh process: its own peak RSS
                subprocess.run([*module, "--one", workdir] + (["--whole"] if whole else []), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
