"""What a run's tasks record besides their data: wall time and peak RSS (``metrics/``), why a task failed
(``failures/``, and the failed run's CRM event), what CXone said into the list's state, the CRM events sent while
importing, gc freezing while a group sends, the group summary as XCom carries it, and the run's Asset event.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cxone_provider.crm_webhook import WebhookSender
from cxone_provider.errors import CXoneConfigurationError, ListLeaseLostError

from cxone_runs.layout import RunLayout
from include.cxone_import import sync
from include.cxone_import.handoffs import FailureRecord, GroupSummary, ImportGroup
from include.cxone_dag.settings import CONTACT_LIST_ASSET_ALIAS
from include.cxone_import.sources import SourceFormatError
from include.cxone_import.state import SYNC_DELTA_OFFSET, Acknowledgements, ListKey, acknowledged_from_outcomes
from include.cxone_import.storage import read_json, write_json, write_jsonl
from include.cxone_import.task_config import (
    cxone_hook,
    dag_id_of,
    event_key,
    layout_for,
    list_state,
    logical_seconds,
    run_layout,
    webhook_target,
)
from include.cxone_import.webhook import LiveBatchEvents, delivery_audit, run_failed_event

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

XCOM_BATCH_FIELDS = ("batch_id", "batch_index", "records", "imported", "duplicates", "failed", "status", "latency_ms", "attempts")
LIVE_DELIVERIES = "webhook-group-"  # audit parts of the batch events import tasks delivered


@contextmanager
def measured(context: Context, name: str) -> Iterator[None]:
    """Record the task's wall time and its process's peak RSS under ``metrics/`` (read by ``make bench``) and,
    when the task fails, why (``failures/``, read by the report and the failure event).

    An error of the data (:class:`SourceFormatError`: the file itself is wrong), of the configuration
    (:class:`CXoneConfigurationError`: a refused credential, a missing connection, an unknown list) and a lost list
    (:class:`ListLeaseLostError`: another run may hold it now) fail the task at once: a retry cannot fix them.
    Storage and network errors keep the task's retries.
    Peak RSS is per process: meaningful per task when tasks run in their own processes (any executor);
    under ``dag.test()`` every task shares one process and sees the peak so far.
    """
    from airflow.sdk.exceptions import AirflowFailException

    started = time.monotonic()
    ti = context.get("ti")
    map_index = getattr(ti, "map_index", -1)
    key = name if map_index is None or map_index < 0 else f"{name}-{map_index:05d}"
    try:
        yield
    except (SourceFormatError, CXoneConfigurationError, ListLeaseLostError) as exc:
        _record_failure(context, key, name, exc)
        raise AirflowFailException(str(exc)) from exc
    except Exception as exc:
        _record_failure(context, key, name, exc)
        raise
    finally:
        try:
            write_json(
                run_layout(context).metrics_file(key),
                {
                    "task": name,
                    "map_index": map_index,
                    "seconds": round(time.monotonic() - started, 3),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "pid": os.getpid(),
                },
            )
        except Exception:  # noqa: BLE001 - metrics must never fail a task
            log.warning("could not write task metrics for %s", key)


def _record_failure(context: Context, key: str, task: str, exc: BaseException) -> None:
    """``failures/{task}.json``: the task, the rule and column when the error names them, and the message (our
    errors name rows and rules, never record content)."""
    record: FailureRecord = {
        "task": task,
        "try_number": getattr(context.get("ti"), "try_number", None),
        "error": type(exc).__name__,
        "rule": getattr(exc, "rule", None),
        "column": getattr(exc, "column", None),
        "source": getattr(exc, "source", None),
        "message": str(exc)[:2000],
        "at": datetime.now(timezone.utc).isoformat(),
    }
    try:
        write_json(run_layout(context).failure_file(key), record)
    except Exception:  # noqa: BLE001 - recording must not hide the task's own error
        log.warning("could not record the failure of %s", key)


def recorded_failures(layout: RunLayout) -> list[FailureRecord]:
    """The failures tasks of the run recorded, first task first."""
    order = {"extract": 0, "validate": 1, "chunk": 2, "import_batches": 3}
    found = [read_json(p) for p in layout.failure_files()]
    return sorted(found, key=lambda f: (order.get(f.get("task"), 9), f.get("at") or ""))


def failure_event(context: Context) -> dict[str, Any]:
    """The event of a failed run (the DAG's ``on_failure_callback``), with the problems its report lists."""
    run_id = str(context.get("run_id") or getattr(context.get("dag_run"), "run_id", ""))
    ti = context.get("ti") or context.get("task_instance")
    layout = layout_for(dag_id_of(context), run_id)
    problems: list[str] = []
    failure: dict[str, Any] = {}
    try:
        if layout.report.exists():
            written = read_json(layout.report)
            problems = list(written.get("problems", []))
            failure = written.get("failure") or {}
        else:
            failure = next(iter(recorded_failures(layout)), {})
    except Exception:  # noqa: BLE001 - the notification must go out even when storage is unreadable
        log.warning("could not read the report of %s; notifying without its problems", run_id, exc_info=True)
    event = run_failed_event(
        {"dag_id": dag_id_of(context), "run_id": run_id},
        reason=str(context.get("reason") or "failed"),
        failed_task=failure.get("task") or getattr(ti, "task_id", None),
        problems=problems,
        report=str(layout.report),
        run_key=event_key(context, run_id),
    )
    event["failure"] = {k: failure.get(k) for k in ("task", "rule", "column", "message")} if failure else None
    return event


def record_answers(layout: RunLayout, key: ListKey, group_index: int, context: Context) -> None:
    """Write what CXone said about the group's records into the list's state (one delta file)."""
    answers = acknowledged_from_outcomes(layout, group_index)
    if len(answers):
        list_state(key, context).write_delta(context["run_id"], group_index, answers, logical_date=logical_seconds(context))


def record_sync_answers(layout: RunLayout, key: ListKey, group_index: int, context: Context,
                        results: list[sync.OpResult]) -> None:
    """Write what CXone said about the group's updates and removals into the list's state (its own delta file)."""
    contact_ids, records, outcomes = sync.answers_of(results)
    answers = Acknowledgements.of(contact_ids, records, outcomes)
    if len(answers):
        list_state(key, context).write_delta(context["run_id"], group_index + SYNC_DELTA_OFFSET, answers,
                                             logical_date=logical_seconds(context))


def xcom_summary(summary: GroupSummary) -> GroupSummary:
    """The group summary as XCom carries it: the per-batch metrics kept compact (the full ones, with request ids and
    timestamps, are in storage)."""
    return {**summary, "batch_metrics": [{k: m[k] for k in XCOM_BATCH_FIELDS} for m in summary["batch_metrics"]]}


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Leave the objects that exist now out of Python's full collections while a group sends. A full collection
    walks every object of the process (Airflow, pandas, pyarrow: 0.5-0.7 s under ``airflow dags test``) and holds the
    GIL meanwhile, so every sender stalls; at 100 requests/s it came three or four times a group and cost 5-10% of
    the rate. Objects created while sending are still collected."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def live_batch_events(group: ImportGroup, context: Context) -> LiveBatchEvents | None:
    """The CRM events of this group's batches, sent as the batches are acknowledged; None without a webhook (or when
    it cannot be read now: ``notify_webhook`` then sends every batch event after the import)."""
    try:
        target = webhook_target()
    except Exception:  # noqa: BLE001 - the import never depends on the CRM; notify_webhook tries again
        log.warning("could not read the webhook connection: batch events are left to notify_webhook", exc_info=True)
        return None
    if target is None:
        return None
    scope = {"groupIndex": int(group["group_index"]), "groups": group.get("groups_total"), "batches": group.get("batches")}
    return LiveBatchEvents(WebhookSender(target), event_key(context), scope)


def record_live_deliveries(layout: RunLayout, group: ImportGroup, context: Context, deliveries: list[Any]) -> None:
    """Keep what became of the events this try sent (one audit part per group and try: a retry never overwrites
    what an earlier try delivered, and ``notify_webhook`` sends again only what no try delivered)."""
    try_number = int(getattr(context.get("ti"), "try_number", 1) or 1)
    entries = delivery_audit(deliveries)
    write_jsonl(layout.audit_part(f"{LIVE_DELIVERIES}{int(group['group_index']):05d}-try-{try_number:02d}"), entries)
    log.info("group %s: %d of %d batch events delivered to the CRM while importing", group["group_index"],
             sum(1 for d in deliveries if d.ok), len(deliveries))


def emit_contact_list_asset(context: Context, list_id: str, totals: dict[str, Any]) -> None:
    """The run's Asset event for the contact list it imported into (``cxone://<host>/contactlists/<id>``), with the
    run's counts. One per run, from the report task: import tasks finishing together would race to create the
    alias's asset row on a first import (a unique-key violation on PostgreSQL fails the task)."""
    from airflow.sdk import Asset, AssetAlias

    events = context.get("outlet_events")
    if events is None:
        return
    host = urlsplit(cxone_hook().base_url).netloc or "cxone"
    asset = Asset(name=f"cxone_contact_list__{list_id}", uri=f"cxone://{host}/contactlists/{list_id}", group="cxone")
    events[AssetAlias(CONTACT_LIST_ASSET_ALIAS)].add(
        asset,
        extra={"run_id": context.get("run_id"), **{k: totals.get(k, 0) for k in ("imported", "duplicates", "failed")}},
    )
