"""The ``records`` API profile's import step: one mapped task sends its group's batches (``engine.GroupImporter``)
and then the group's updates and removals (``sync.SyncSender``) under the tenant's shared rate budget, while the run
holds the contact list, and writes what CXone answered into the list's state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cxone_provider.errors import CXoneConfigurationError, ListLeaseLostError

from cxone_runs.layout import RunLayout
from include.cxone_import import pipeline, sync
from include.cxone_import.engine import GroupImporter, TransientImportError
from include.cxone_import.handoffs import GroupSummary, ImportGroup, RunParams
from include.cxone_import.list_lease import contact_list_lease, sending_list_key
from include.cxone_import.run_bookkeeping import (
    gc_frozen,
    live_batch_events,
    record_answers,
    record_live_deliveries,
    record_sync_answers,
    xcom_summary,
)
from include.cxone_import.state import ListKey
from include.cxone_import.storage import read_parquet
from include.cxone_import.task_config import run_layout

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


def import_group(hook: Any, group: ImportGroup, params: RunParams, context: Context) -> GroupSummary:
    """The import step: send one group under the tenant's shared rate budget while this run holds the contact list;
    raise (after writing outcomes) on transient failures, and without retries on a lost list or a configuration
    error (the records not sent end ``not_sent``)."""
    layout = run_layout(context)
    log.info(
        "group %d: %d threads under the tenant's budget of %.0f requests/min (%s)",
        group["group_index"], hook.max_concurrency, hook.requests_per_minute, hook.rate_limiter,
    )
    live = live_batch_events(group, context)
    key = sending_list_key(layout)
    sync_results: list[sync.OpResult] | None = None
    try:
        with contact_list_lease(hook, key, context) as lease, \
                hook.get_client(rate_limiter=lease.fenced(hook.rate_limiter)) as client, gc_frozen():
            importer = GroupImporter(client, key.list_id, layout, concurrency=hook.max_concurrency, fence=lease.check)
            summary = importer.run(int(group["group_index"]), on_batch=live.batch_acknowledged if live else None)
            if importer.stopped_by is None and layout.sync_ops(int(group["group_index"])).exists():
                sync_summary, sync_results = send_sync_ops(client, importer, key, group, params, layout,
                                                           concurrency=hook.max_concurrency)
                summary = {**summary, "sync": sync_summary}
                if live is not None and sync_results and not sync_summary["transient"]:  # final: its one event
                    live.sync_finished(int(group["group_index"]),
                                       read_parquet(layout.sync_outcomes(int(group["group_index"]))))
    finally:
        if live is not None:
            record_live_deliveries(layout, group, context, live.close())
    # the list's state learns what CXone said, before a transient failure is raised
    record_answers(layout, key, int(group["group_index"]), context)
    if sync_results:
        record_sync_answers(layout, key, int(group["group_index"]), context, sync_results)
    stopped = importer.stopped_by
    if isinstance(stopped, ListLeaseLostError):
        raise stopped
    if stopped is not None:
        raise CXoneConfigurationError.from_error(hook.cxone_conn_id, stopped, list_id=key.list_id)
    if summary.get("sync", {}).get("transient"):
        raise TransientImportError(
            f"group {group['group_index']}: {summary['sync']['transient']} updates or removals could not be sent; the "
            "task retry sends only those, the rest is checkpointed"
        )
    if summary["transient_failed_batches"]:
        raise TransientImportError(
            f"group {group['group_index']}: {summary['transient_failed_batches']} batches could not be sent "
            f"({summary['failed']} records); the task retry resends only those, the rest is checkpointed"
        )
    return xcom_summary(summary)


def send_sync_ops(client: Any, importer: GroupImporter, key: ListKey, group: ImportGroup, params: RunParams,
                  layout: RunLayout, *, concurrency: int) -> tuple[dict[str, Any], list[sync.OpResult]]:
    """Send the group's updates and removals; create the records of updates the list no longer held (batched POST);
    write the group's sync outcomes and audit entries. Returns the counts and the final results."""
    group_index = int(group["group_index"])
    plan = sync.read_plan(layout)
    allowed = sync.mirror_removals_allowed(layout, plan, float(params.get("max_removal_share", 0.05)))
    sender = sync.SyncSender(client, key.list_id, layout, concurrency=concurrency)
    summary, results = sender.run(group_index, mirror_allowed=bool(allowed))
    if summary.gone:
        size = int(params.get("batch_size") or pipeline.MAX_BATCH_SIZE)
        batches = []
        for n, start in enumerate(range(0, len(summary.gone), size)):
            gone = summary.gone[start : start + size]
            records = [r.record_json for r in gone]
            batches.append((n, pipeline.batch_id(key.batch_scope + ":recreate", records),
                            [(r.row_number, r.contact_id, r.record_json, True, False) for r in gone]))
        by_row = {r.row_number: r for r in summary.gone}
        for batch in importer.import_rows(batches):
            summary.metrics.append({**batch.metrics.as_dict(), "kind": "recreate"})
            summary.requests += batch.metrics.requests
            summary.transient += int(batch.metrics.transient)
            for outcome in batch.outcomes:
                result = by_row[outcome.row_number]
                result.outcome, result.detail = outcome.outcome, f"recreated after 404: {outcome.detail}".rstrip(": ")
        summary.counts = {}
        for result in results:
            summary.counts[result.outcome] = summary.counts.get(result.outcome, 0) + 1
    return sync.record_group(layout, group_index, summary, results, mirror_allowed=allowed), results
