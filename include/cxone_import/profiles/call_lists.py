"""The ``call_lists`` API profile's import step (NICE's calling-list API): the task sends the group's removals,
uploads its CSV files (job ids checkpointed) and returns a :class:`~cxone_provider.triggers.call_lists.JobWait`,
on which the provider's ``ImportGroupOperator`` *defers*: the triggerer waits for the jobs and the task leaves its
worker slot (and its ``cxone_api`` pool slot). When every job is complete or cancelled, or the wait timed out, the
task resumes in :func:`finish_group`, which reads the list back and writes the outcomes. A retried or cleared task
finds the checkpointed jobs and waits for them again; it never uploads a file twice. Also what ``chunk`` needs of
the profile: the calling list found or created (:func:`prepare_call_list`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from cxone_provider.errors import CXoneConfigurationError
from cxone_provider.triggers.call_lists import TRIGGER_TIMEOUT_MARGIN_S, JobsSettled, JobWait

from cxone_runs.layout import RunLayout
from include.cxone_import import sync
from include.cxone_import.call_list_sync import CallListSyncer, dnc_audit_entries, dnc_counts
from include.cxone_import.engine import TransientImportError
from include.cxone_import.handoffs import GroupSummary, ImportGroup, RunParams
from include.cxone_import.list_lease import contact_list_lease, hold_contact_list, sending_list_key
from include.cxone_import.run_bookkeeping import record_answers, record_sync_answers, xcom_summary
from include.cxone_import.storage import read_json, write_json
from include.cxone_import.task_config import contact_list_id, cxone_hook, run_layout
from include.cxone_import.uploads import CallListColumns, GroupUploader, UploadOptions

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


def prepare_call_list(params: RunParams, layout: RunLayout, *, create: bool) -> tuple[CallListColumns | None, str]:
    """Find the run's calling list by id or name, or, when ``create`` and the param ``create_list_if_missing`` say
    so, create it (with the external id column, a destination mapping per phone column and a custom-field mapping
    per other column); remember it and its CSV columns in ``call_list.json`` (a retried chunk reuses it). Returns
    the list (None: missing, to be created once records are sent) and the tenant id its token names."""
    path = layout.call_list
    hook = cxone_hook()
    name = contact_list_id(params)
    external_id_column = hook.call_list_options["external_id_column"]
    with layout.valid_part(0).open("rb") as handle:
        columns = pq.read_schema(handle).names
    with hook.get_call_list_client() as client:
        tenant_id = client.tenant_id
        if path.exists():
            return CallListColumns.from_dict(read_json(path)), tenant_id
        found = client.find_list(name)
        if found is not None:
            call_list = CallListColumns.for_columns(str(found["listId"]), str(found.get("listName") or name),
                                                   external_id_column, columns)
            log.info("calling list %s found: id %s", name, call_list.list_id)
        elif params.get("create_list_if_missing") and not create:
            return None, tenant_id  # created by the run that sends (never on a dry run or a held run)
        elif params.get("create_list_if_missing"):
            planned = CallListColumns.for_columns("", name, external_id_column, columns, created=True)
            list_id = client.create_list(
                name,
                external_id_column=external_id_column,
                destination_mappings=planned.destination_mappings(),
                custom_field_mappings=planned.custom_field_mappings(),
            )
            call_list = CallListColumns.for_columns(list_id, name, external_id_column, columns, created=True)
        elif not create:
            return None, tenant_id  # a dry run or a held run: the report says nothing was sent
        else:
            raise CXoneConfigurationError(
                f"connection {hook.cxone_conn_id}: no calling list with id or name {name!r} on tenant {tenant_id}: "
                "create it, name another list, or trigger with create_list_if_missing=true",
                conn_id=hook.cxone_conn_id, cause="ListNotFound",
            )
    write_json(path, call_list.to_dict())
    return call_list, tenant_id


def _uploader(hook: Any, client: Any, layout: RunLayout, params: RunParams) -> tuple[GroupUploader, dict[str, Any]]:
    options = hook.call_list_options
    call_list = CallListColumns.from_dict(read_json(layout.call_list))
    upload_options = UploadOptions(
        expiration_days=int(params.get("list_expiration_days") or options["list_expiration_days"]),
        skill_id=options["skill_id"],
        default_time_zone=options["default_time_zone"],
        start_skill=options["start_skill"],
        send_email=options["send_email"],
    )
    uploader = GroupUploader(client, call_list, layout, records_per_file=options["upload_records_per_file"],
                             options=upload_options)
    return uploader, options


def _submit(hook: Any, uploader: GroupUploader, group_index: int, key: Any, context: Context,
            options: dict[str, Any], *, submitted_at: float | None = None) -> JobWait | None:
    """Upload the group's files never sent (the caller holds the list); what to wait for, or None."""
    state = uploader.submit(group_index)
    if state.reconciled and not state.not_sent():
        return None
    if not state.jobs() and not state.uncertain():
        return None
    # while deferred nothing renews the lease: hold the list for the whole wait (the report task releases it)
    hold_contact_list(hook, key, context, options["job_timeout_s"] + TRIGGER_TIMEOUT_MARGIN_S)
    return JobWait(
        cxone_conn_id=hook.cxone_conn_id,
        list_id=uploader.list_id,
        job_ids=[j for j in state.jobs() if j not in state.settled_jobs()],
        wait_for_list=state.uncertain(),
        submitted_at=submitted_at or state.submitted_at or time.time(),
        timeout_s=options["job_timeout_s"],
        poll_first_s=options["job_poll_first_s"],
        poll_max_s=options["job_poll_max_s"],
    )


def _syncer(hook: Any, client: Any, layout: RunLayout) -> CallListSyncer:
    call_list = CallListColumns.from_dict(read_json(layout.call_list))
    return CallListSyncer(client, call_list.list_id, call_list.list_name, layout,
                          dnc_group_id=hook.call_list_options.get("dnc_group_id"))


def _mirror_allowed(layout: RunLayout, params: RunParams) -> bool:
    plan = sync.read_plan(layout)
    return bool(sync.mirror_removals_allowed(layout, plan, float(params.get("max_removal_share", 0.05))))


def start_group(hook: Any, group: ImportGroup, params: RunParams, context: Context) -> GroupSummary | JobWait:
    """The import step: remove and upload (:func:`submit_group`), then what to wait for, or, when nothing is to be
    waited for, the group's summary at once."""
    wait = submit_group(hook, group, params, context)
    return wait if wait is not None else finish_group(hook, group, params, context, None)


def submit_group(hook: Any, group: ImportGroup, params: RunParams, context: Context) -> JobWait | None:
    """Send the group's removals (sync: removals, the old versions of changed records, DNC entries), then upload
    the group's files (those never sent) while the run holds the list; what the task waits for, or None when there
    is nothing to wait for."""
    layout = run_layout(context)
    key = sending_list_key(layout)
    group_index = int(group["group_index"])
    with contact_list_lease(hook, key, context) as lease, \
            hook.get_call_list_client(rate_limiter=lease.fenced(hook.rate_limiter)) as client:
        # removals first: a changed record's new version is uploaded only once its old one is seen gone
        _syncer(hook, client, layout).remove(group_index, mirror_allowed=_mirror_allowed(layout, params))
        uploader, options = _uploader(hook, client, layout, params)
        return _submit(hook, uploader, group_index, key, context, options)


def finish_group(hook: Any, group: ImportGroup, params: RunParams, context: Context,
                 settled: JobsSettled | None) -> GroupSummary | JobWait:
    """Reconcile the group from the list (after its jobs settled or timed out), update the list's state, and raise
    when a file is still to be sent (the task's retry sends it). When the read-back plans a recovery round (rows
    of a cancelled job or a lost reply that the list does not hold), upload its files and return what to wait for
    instead. ``settled``: the trigger's event (None: nothing was waited for)."""
    layout = run_layout(context)
    group_index = int(group["group_index"])
    key = sending_list_key(layout)
    with contact_list_lease(hook, key, context) as lease, \
            hook.get_call_list_client(rate_limiter=lease.fenced(hook.rate_limiter)) as client:
        uploader, options = _uploader(hook, client, layout, params)
        state = uploader.load_state(group_index)
        if state.reconciled and not state.not_sent() and settled is None:
            summary = read_json(layout.group_summary(group_index))
        else:
            summary = uploader.reconcile(group_index, dict(settled.jobs) if settled else {},
                                         timeout_s=options["job_timeout_s"])
            if summary is None:  # a recovery round: its files go now, the task waits for their jobs again
                wait = _submit(hook, uploader, group_index, key, context, options, submitted_at=time.time())
                if wait is not None:
                    return wait
                # none of the round's files reached a job: nothing of it can be recovered, settle the group now
                summary = uploader.reconcile(group_index, {}, timeout_s=options["job_timeout_s"], recover=False)
            state = uploader.load_state(group_index)
        sync_summary = _account_sync(_syncer(hook, client, layout), layout, key, group_index, params, context)
    record_answers(layout, key, group_index, context)
    if sync_summary is not None:
        summary = {**summary, "sync": sync_summary}
    if state.not_sent():
        raise TransientImportError(
            f"group {group_index}: {len(state.not_sent())} files could not be uploaded; the task retry sends only "
            "those, the others keep their jobs"
        )
    return xcom_summary(summary)


def _account_sync(syncer: CallListSyncer, layout: RunLayout, key: Any, group_index: int, params: RunParams,
                  context: Context) -> dict[str, Any] | None:
    """The group's updates, removals and DNC entries into the run's accounting (the records profile's functions:
    outcome file, audit, counts, the list's state); None when the group has none."""
    if syncer.ops(group_index) is None:
        return None
    allowed = _mirror_allowed(layout, params)
    summary, results = syncer.results(group_index, mirror_allowed=allowed)
    dnc = syncer.dnc_results(group_index)
    group_id = str(syncer.dnc_group_id or "")
    counts = sync.record_group(layout, group_index, summary, results, mirror_allowed=allowed,
                               audit=dnc_audit_entries(group_id, dnc), extra={"dnc": dnc_counts(dnc)} if dnc else None)
    record_sync_answers(layout, key, group_index, context, results)
    return counts
