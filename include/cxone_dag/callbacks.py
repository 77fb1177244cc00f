"""The DAG's callbacks, referenced when the DAG file is parsed: each imports the task code only when it runs."""

from __future__ import annotations

from typing import Any


def failure_event(context: Any) -> dict[str, Any]:
    """The event of a failed run, for the DAG's ``on_failure_callback`` (``run_bookkeeping.failure_event`` builds it
    from the run's report or recorded failures)."""
    from include.cxone_import import run_bookkeeping

    return run_bookkeeping.failure_event(context)
