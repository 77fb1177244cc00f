"""Task bodies of the import DAG: each resolves its inputs (``task_config``) and calls the plain modules (pipeline,
state, sync, report, webhook), which know nothing of Airflow. XCom carries only what these return: paths, counts,
per-batch metrics. The import step itself is the API profile's (``profiles.records``, ``profiles.call_lists``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cxone_provider.crm_webhook import WebhookSender

from cxone_runs.layout import RunLayout, group_index_of
from include.cxone_import import pipeline, sync
from include.cxone_import.handoffs import (
    AuditEntry,
    ExtractedRun,
    GroupSummary,
    ImportGroup,
    RunInfo,
    RunParams,
    ValidateResult,
)
from include.cxone_import.list_lease import contact_list_lease
from include.cxone_import.profiles.call_lists import prepare_call_list
from include.cxone_import.report import (
    RunFailedError,
    build_failed_report,
    build_report,
    format_report,
    group_summaries,
    outcome_counts,
    removal_accounting,
    sync_counts,
    totals,
)
from include.cxone_import.run_bookkeeping import LIVE_DELIVERIES, emit_contact_list_asset, recorded_failures
from include.cxone_import.sources import SourceFormatError
from include.cxone_import.state import (
    DECISION_ANSWER_LOST,
    DECISION_LISTED,
    DECISION_RESENT,
    LEFT_OUT,
    ListKey,
    decide_changes,
    list_key,
    read_decided_rows,
)
from include.cxone_import.storage import iter_jsonl, read_json, read_parquet, write_json, write_jsonl
from include.cxone_import.task_config import (
    CALL_LISTS,
    api_profile,
    change_mode,
    contact_list_id,
    cxone_hook,
    dag_id_of,
    event_key,
    list_state,
    logical_seconds,
    missing_connection,
    parallel_groups,
    rate_budget,
    record_limit,
    resolve_source,
    run_info,
    run_layout,
    sync_mode,
    webhook_target,
)
from include.cxone_import.webhook import (
    batch_event_id,
    batch_events,
    delivered_event_ids,
    delivery_audit,
    delivery_summary,
    is_sync_request,
    summary_event,
    sync_group_event,
    sync_group_event_id,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

NOTIFY_DELIVERIES = "webhook-notify-try-"  # audit parts of the events notify_webhook delivered, one per try


def extract(params: RunParams, context: Context) -> ExtractedRun:
    run = run_info(params, context)
    source = resolve_source(params, context)
    if not source.exists():
        raise SourceFormatError(str(source), None, "source_exists", "the source file does not exist")
    layout = run_layout(context)
    fmt = "jsonl" if params.get("redrive_run_id") else None
    result = pipeline.extract(source, layout, fmt=fmt)
    log.info("extracted %d rows from %s into %s", result["input_rows"], result["source_uri"], layout.root)
    return {**result, "run": run, "run_root": str(layout.root)}


def validate(extracted: ExtractedRun, params: RunParams, context: Context) -> ValidateResult:
    layout = run_layout(context)
    result = pipeline.validate(
        layout, parts=extracted["parts"], max_consent_age_days=int(params["max_consent_age_days"]),
        default_phone_region=params.get("default_phone_region"), max_record_chars=record_limit(),
    )
    log.info(
        "validated %d rows: %d valid, %d rejected (%s); normalised %s",
        result["input_rows"], result["valid_rows"], result["rejected_rows"], result["rejects_by_rule"], result["normalised"],
    )
    return result


def resolve_list_key(params: RunParams, layout: RunLayout, context: Context, *,
                     create: bool) -> tuple[ListKey | None, bool]:
    """The key of the run's list (its tenant and resolved id: one state and one lease per list, whether the run
    names it by id or by name) and whether this run created it; remembered in the run's ``list_key.json``, so
    every task and a re-run use the same. ``create``: a calling list that does not exist is created now (only when
    records will be sent). (None, False) when the list cannot be named yet: a calling list still to be created, or
    no CXone connection on a dry run."""
    path = layout.list_key
    if path.exists():
        saved = read_json(path)
        return ListKey.from_dict(saved), bool(saved.get("created"))
    from airflow.sdk.exceptions import AirflowNotFoundException

    hook = cxone_hook()
    try:
        profile = hook.api_profile
    except AirflowNotFoundException:
        if not params.get("dry_run"):
            raise missing_connection(hook.cxone_conn_id) from None
        log.warning("no %s connection: a dry run cannot name the list's tenant, nothing is compared", hook.cxone_conn_id)
        return None, False
    if profile == CALL_LISTS:
        call_list, tenant_id = prepare_call_list(params, layout, create=create)
        if call_list is None:
            return None, False
        key, created = list_key(call_list.list_id, tenant_id=tenant_id), call_list.created
    else:
        key, created = list_key(contact_list_id(params), base_url=hook.base_url, client_id=hook.connection.login or ""), False
    if created:
        list_state(key, context).start_fresh("the run created the list")
    write_json(path, {**key.to_dict(), "created": created})
    log.info("contact list: %s%s", key.describe(), " (created by this run)" if created else "")
    return key, created


def chunk(validated: ValidateResult, params: RunParams, context: Context) -> list[ImportGroup]:
    """Leave out what the list already holds, plan the mapped import: [] on a dry run (import is then skipped)."""
    from airflow.configuration import conf

    layout = run_layout(context)
    mode = change_mode(params)
    held = pipeline.reject_gate_tripped(validated, params.get("max_reject_share"))
    sending = not params.get("dry_run") and not held and validated["valid_rows"] > 0
    key, created = resolve_list_key(params, layout, context, create=sending)
    if key is None or created:
        # nothing to compare with: a list this run creates (or would create) starts with an empty state
        changes = decide_changes(layout, list_state(key, context) if key is not None else None, parts=validated["parts"],
                                 run_id=context["run_id"], mode="new_list" if created or _call_lists() else "not_compared")
    elif mode == "dry_run":
        changes = decide_changes(layout, list_state(key, context), parts=validated["parts"], run_id=context["run_id"], mode=mode)
    else:
        # fold and compare while this run holds the list: a run of the same list still sending would otherwise
        # have its acknowledgements land after the comparison, and this run would send those contacts again
        with contact_list_lease(cxone_hook(), key, context, first=True):
            changes = decide_changes(layout, list_state(key, context), parts=validated["parts"], run_id=context["run_id"], mode=mode)
            if _call_lists() and not changes.get("reused") and (changes["unchanged"] or changes["unconfirmed"]):
                _resend_gone(layout, key, validated)
    plan = _plan_sync(layout, key if not created else None, validated, params, context)
    left_out = changes["unchanged"] + changes["unconfirmed"] + (plan["updates"] + sum(plan["stale"].values()) if plan else 0)
    groups = pipeline.chunk(
        layout,
        parts=validated["parts"],
        valid_rows=validated["valid_rows"],
        batch_scope=key.batch_scope if key is not None else f"unresolved:{contact_list_id(params)}",
        batch_size=int(params["batch_size"]),
        parallelism=min(conf.getint("core", "parallelism", fallback=32), parallel_groups()),
        max_map_length=conf.getint("core", "max_map_length", fallback=1024),
        left_out_rows=read_decided_rows(layout, *LEFT_OUT) if left_out or plan else None,
        listed_rows=read_decided_rows(layout, DECISION_LISTED, DECISION_RESENT)
        if changes["listed"] or changes.get("resent") else None,
        answer_lost_rows=read_decided_rows(layout, DECISION_ANSWER_LOST) if changes.get("answer_lost") else None,
    )
    groups = _with_sync_ops(layout, groups, plan, key, validated)
    if plan is not None:
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="sync", value=plan)
        log.info("sync (%s): this run needs %s", plan["mode"], sync.estimate(
            plan, sum(int(g.get("batches", 0)) for g in groups), rate_budget()))
    if params.get("dry_run"):
        log.info("dry run: %d groups planned, %d records unchanged, nothing will be sent", len(groups), changes["unchanged"])
        return []
    if held:
        log.warning(
            "%d of %d rows rejected, over max_reject_share %s: nothing will be sent; the report fails the run",
            validated["rejected_rows"], validated["input_rows"], params.get("max_reject_share"),
        )
        return []
    if groups:
        if key is None:  # resolve_list_key names (or creates) the list whenever records will be sent
            raise RuntimeError(f"records to send but no list resolved for {contact_list_id(params)!r}")
        list_state(key, context).register_run(context["run_id"], [g["group_index"] for g in groups],
                                     logical_date=logical_seconds(context))
        # the run's tenure starts here (or goes on from the comparison) and is kept until its imports take it
        with contact_list_lease(cxone_hook(), key, context, first=mode != "compare" or created):
            pass
    return [{**g, "groups_total": len(groups)} for g in groups]


def _plan_sync(layout: RunLayout, key: ListKey | None, validated: ValidateResult, params: RunParams,
               context: Context) -> sync.SyncPlan | None:
    """The run's updates and removals (``sync.plan_sync``), for both API profiles; None in ``append`` mode. A list
    this run created has nothing to update or remove."""
    mode = sync_mode(params)
    if mode == "append" or key is None:
        return None
    state = list_state(key, context)
    valid_rows = int(validated["valid_rows"])
    return sync.plan_sync(
        layout, state, mode=mode, parts=int(validated["parts"]), extract_parts=int(validated["parts"]),
        logical_date=logical_seconds(context), scope=key.batch_scope,
        creates=lambda: valid_rows - len(read_decided_rows(layout, *LEFT_OUT)),
    )


def _with_sync_ops(layout: RunLayout, groups: list[ImportGroup], plan: sync.SyncPlan | None, key: ListKey | None,
                   validated: ValidateResult) -> list[ImportGroup]:
    """Spread the plan's updates and removals over the import groups (groups of no creates when there are none)."""
    if plan is None or key is None or not (plan["updates"] or sum(plan["removals"].values())):
        return groups
    ops = plan["updates"] + sum(plan["removals"].values())
    wanted = max(len(groups), min(parallel_groups(), -(-ops // pipeline.MAX_BATCHES_PER_GROUP)))
    groups = list(groups)
    for group_index in range(len(groups), wanted):
        pipeline.write_empty_group(layout, group_index)
        groups.append({"group_index": group_index, "path": str(layout.group_file(group_index)), "records": 0, "batches": 0})
    counts = sync.write_group_ops(layout, int(validated["parts"]), key.batch_scope, len(groups))
    return [{**g, **c} for g, c in zip(groups, counts, strict=True)]


def _resend_gone(layout: RunLayout, key: ListKey, validated: ValidateResult) -> None:
    """A calling list's records expire: what the state holds as on the list but the list no longer does is sent
    again (read once, while the run holds the list)."""
    from include.cxone_import.call_list_sync import resend_gone

    hook = cxone_hook()
    with hook.get_call_list_client(rate_limiter=hook.rate_limiter) as client:
        resend_gone(layout, int(validated["parts"]), set(client.iter_external_ids(key.list_id)))


def _call_lists() -> bool:
    return api_profile() == CALL_LISTS


def notify(validated: ValidateResult | None, params: RunParams, context: Context) -> dict[str, Any]:
    """The run summary, and the batch events no import task delivered (all of them on the call_lists profile, or
    when the CRM was down while importing); failures are recorded, never raised. When the run failed before
    validation there is nothing to tell but the failure, which the DAG's failure event carries."""
    layout = run_layout(context)
    if validated is None:
        log.info("no validated input (an earlier task failed): no batch or summary events")
        return {"events": 0, "delivered": 0, "failed": 0, "skipped": "the run failed before validation"}
    run, key = run_info(params, context), event_key(context)
    summaries = group_summaries(layout)
    metrics = [m for s in summaries for m in s["batch_metrics"] if not is_sync_request(m)]  # sync: one event a group
    live = _deliveries(layout, LIVE_DELIVERIES)
    earlier = _deliveries(layout, NOTIFY_DELIVERIES)  # an earlier try of this task
    delivered = delivered_event_ids(live + earlier)
    pending = [m for m in metrics if batch_event_id(key, m["batch_id"]) not in delivered]
    events = batch_events(pending, _audit_by_batch(layout) if pending else {}, key,
                          {"kind": "redelivery" if live else "run"})
    numbers = totals(validated, outcome_counts(layout), summaries)  # counts, not every row's outcome
    plan = sync.read_plan(layout)
    if plan is not None:  # what the run's removals came to (the CRM is told of held ones too)
        counts = sync_counts(layout)
        removals = counts["removals"]
        numbers.update({name: int(removals.get(name, 0)) for name in (sync.REMOVED_OUTCOME, sync.NOT_ON_LIST,
                                                                       sync.REMOVAL_HELD)},
                       removal_failed=int(removals.get("failed", 0)),
                       removals_by_reason=removal_accounting(plan, counts["removals_by_reason"],
                                                             sent=True)["outcomes"])
        events += _sync_group_events(layout, key, delivered)
    events.append(summary_event(key, numbers, run))
    events = [e for e in events if e["eventId"] not in delivered]  # a retry of this task sends no event twice
    target = webhook_target()
    if target is None:
        return {"events": len(events), "delivered": 0, "failed": len(events), "errors": ["no crm_webhook connection"]}
    sender = WebhookSender(target)
    try:
        entries = delivery_audit(sender.send_all(events))
    finally:
        sender.close()
    try_number = int(getattr(context.get("ti"), "try_number", 1) or 1)
    write_jsonl(layout.audit_part(f"{NOTIFY_DELIVERIES}{try_number:02d}"), entries)
    summary = {**delivery_summary(live + earlier + entries),
               "delivered_while_importing": len(delivered_event_ids(live))}
    log.info("webhook: %d of %d events delivered (%d while importing, %d sent now)", summary["delivered"],
             summary["events"], summary["delivered_while_importing"], len(events))
    return summary


def _deliveries(layout: RunLayout, prefix: str) -> list[dict[str, Any]]:
    return [e for part in layout.audit_parts(prefix) for e in iter_jsonl(part)]


def _sync_group_events(layout: RunLayout, key: str, delivered: set[str]) -> list[dict[str, Any]]:
    """The sync event of each group no import task delivered (its outcomes as the run left them)."""
    files = layout.sync_outcome_files()
    events = []
    for path in files:
        group_index, outcomes = group_index_of(path), read_parquet(path)
        if len(outcomes) and sync_group_event_id(key, group_index) not in delivered:
            events.append(sync_group_event(key, group_index, outcomes, {"groups": len(files)}))
    return events


def _audit_by_batch(layout: RunLayout) -> dict[str, AuditEntry]:
    """The batches' audit entries (each batch event's ``auditTrailer``)."""
    return {
        entry["batchId"]: entry
        for part in layout.audit_parts("import-group-")
        for entry in iter_jsonl(part)
    }


def _run_or_partial(params: RunParams, context: Context) -> RunInfo:
    """The run's description even when its contact list cannot be resolved (the reason the run failed)."""
    try:
        return run_info(params, context)
    except ValueError:
        return {"dag_id": dag_id_of(context), "run_id": context["run_id"], "contact_list_id": None, "logical_date": str(context.get("logical_date"))}


def report(
    extracted: ExtractedRun | None,
    validated: ValidateResult | None,
    groups: list[GroupSummary],
    webhook: dict[str, Any] | None,
    params: RunParams,
    context: Context,
) -> dict[str, Any]:
    layout = run_layout(context)
    failures = recorded_failures(layout)
    if extracted is None or validated is None:
        result = build_failed_report(layout, run=_run_or_partial(params, context), failures=failures)
        log.info("\n%s", format_report(result))
        raise RunFailedError("; ".join(result["problems"]))
    result = build_report(
        layout,
        run=run_info(params, context),
        failures=failures,
        extracted=extracted,
        validated=validated,
        groups=groups,
        webhook=webhook,
        max_reject_share=params.get("max_reject_share"),
        budget_per_minute=rate_budget(),
    )
    text = format_report(result)
    log.info("\n%s", text)
    if result["problems"]:
        raise RunFailedError("; ".join(result["problems"]))
    if not params.get("dry_run"):
        emit_contact_list_asset(context, contact_list_id(params), result["totals"])
    return {k: result[k] for k in ("status", "totals", "files", "reconciliation", "reject_share")}
