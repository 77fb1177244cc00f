"""Task bodies of the import DAG: the one module in include/ that reads Airflow context, Variables and
connections. Each function resolves its inputs and then calls the plain modules (pipeline, engine, report,
webhook), which know nothing of Airflow. XCom carries only what these return: paths, counts, per-batch metrics.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from cxone_provider.crm_webhook import WebhookSender, WebhookTarget
from cxone_provider.errors import CXoneConfigurationError, ListLeaseLostError

from cxone_runs.layout import RunLayout, group_index_of
from cxone_runs.location import STORAGE_CONN_VARIABLE, storage_base
from cxone_runs.location import task_variable as _variable
from include.cxone_import import pipeline, sync
from include.cxone_import.engine import GroupImporter, TransientImportError
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
from include.cxone_dag.settings import (  # noqa: F401 - the DAG's names, re-exported for the task bodies
    CONTACT_LIST_ASSET_ALIAS,
    CXONE_CONN_ID,
    DAG_ID,
    WEBHOOK_CONN_ID,
    list_handover,
    list_wait,
    retry_delay,
)
from include.cxone_import.source_policy import (
    ALLOWED_PREFIXES_VARIABLE,
    SourceNotAllowedError,
    check_source,
    default_allowed_prefixes,
    parse_allowed_prefixes,
)
from include.cxone_import.sources import SourceFormatError
from include.cxone_import.state import (
    DECISION_ANSWER_LOST,
    DECISION_LISTED,
    DECISION_RESENT,
    LEFT_OUT,
    SYNC_DELTA_OFFSET,
    Acknowledgements,
    ContactListState,
    ListKey,
    acknowledged_from_outcomes,
    decide_changes,
    list_key,
    read_decided_rows,
)
from include.cxone_import.storage import (
    iter_jsonl,
    read_json,
    read_parquet,
    write_json,
    write_jsonl,
)
from include.cxone_import.webhook import (
    LiveBatchEvents,
    batch_event_id,
    batch_events,
    delivered_event_ids,
    delivery_audit,
    delivery_summary,
    is_sync_request,
    run_failed_event,
    summary_event,
    sync_group_event,
    sync_group_event_id,
)

log = logging.getLogger(__name__)

CONTACT_LIST_VARIABLE = "cxone_contact_list_id"
SOURCE_BASE_VARIABLE = "cxone_source_base"
SOURCE_TEMPLATE_VARIABLE = "cxone_source_template"
PARALLEL_GROUPS_VARIABLE = "cxone_import_parallel_groups"
DEFAULT_PARALLEL_GROUPS = 4  # the cxone_api pool's slots in airflow_settings.yaml
DEFAULT_SOURCE_TEMPLATE = "contacts_{ds}.csv"
XCOM_BATCH_FIELDS = ("batch_id", "batch_index", "records", "imported", "duplicates", "failed", "status", "latency_ms", "attempts")


LIVE_DELIVERIES = "webhook-group-"  # audit parts of the batch events import tasks delivered
LIST_LEASE_TTL_S = 1800  # a run that died without its report frees its contact list after this long
LIST_LEASE_RENEW_S = 60


def dag_id_of(context: dict[str, Any]) -> str:
    """The id of the DAG the task runs in: folders, the list's state, the lease owner and events are the running
    DAG's, so a second DAG built from this file never shares them. The constant only for callers without a DAG
    (tools, tests that pass a bare ``run_id``)."""
    for holder in (context.get("ti"), context.get("task_instance"), context.get("dag_run"), context.get("dag")):
        dag_id = getattr(holder, "dag_id", None)
        if dag_id:
            return str(dag_id)
    return DAG_ID


def event_key(context: dict[str, Any], run_id: str | None = None) -> str:
    """What a run's CRM events are keyed by (``eventId``, ``Idempotency-Key``): the run id for this project's DAG,
    as receivers have always seen it; ``{dag_id}/{run_id}`` for another DAG, whose scheduled runs carry the same
    run ids."""
    dag_id, run_id = dag_id_of(context), str(run_id or context["run_id"])
    return run_id if dag_id == DAG_ID else f"{dag_id}/{run_id}"


def layout_for(dag_id: str, run_id: str) -> RunLayout:
    return RunLayout.for_run(storage_base(), dag_id, run_id)


def run_layout(context: dict[str, Any]) -> RunLayout:
    """The files of the running DAG run."""
    return layout_for(dag_id_of(context), str(context["run_id"]))


def _as_path(uri: str) -> Any:
    """A source URI as a path; an object-store URI without its own ``conn_id@`` uses the storage connection."""
    from airflow.sdk import ObjectStoragePath

    parts = urlsplit(uri)
    if not parts.scheme:
        uri = "file://" + os.path.abspath(uri)
    elif parts.scheme not in ("file", "local") and "@" not in parts.netloc:
        conn_id = _variable(STORAGE_CONN_VARIABLE, None)
        if conn_id:
            return ObjectStoragePath(uri, conn_id=conn_id)
    return ObjectStoragePath(uri)


def _logical_date(context: dict[str, Any]) -> datetime:
    """The run's logical date; a run without one (triggered by hand) is dated when it was due to run."""
    logical = context.get("logical_date")
    if logical is None:
        dag_run = context.get("dag_run")
        logical = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
    return logical


def _run_day(context: dict[str, Any]) -> str:
    return _logical_date(context).strftime("%Y-%m-%d")


def source_base() -> str:
    """Where the dated exports are (Variable ``cxone_source_base``, default ``{storage base}/incoming``)."""
    return _variable(SOURCE_BASE_VARIABLE, None) or str(storage_base() / "incoming")


def allowed_source_prefixes() -> list[str]:
    """Where exports may come from: the Variable ``cxone_source_allowed_prefixes`` (a JSON list), else local files
    and the source base's scheme and bucket. A Variable that cannot be read as such refuses every source."""
    value = _variable(ALLOWED_PREFIXES_VARIABLE, None)
    if value in (None, ""):
        return default_allowed_prefixes(source_base())
    try:
        return parse_allowed_prefixes(value)
    except ValueError as exc:
        raise SourceNotAllowedError("(any source)", str(exc)) from None


def resolve_source(params: dict[str, Any], context: dict[str, Any]) -> Any:
    """The source to read: a redrive's dead letters, the ``source_uri`` param, or the run day's dated file; a
    source outside the allowed prefixes is refused here, before anything is read."""
    if params.get("redrive_run_id"):
        return layout_for(dag_id_of(context), params["redrive_run_id"]).dead_letter
    uri = params.get("source_uri")
    if not uri:
        template = _variable(SOURCE_TEMPLATE_VARIABLE, None) or DEFAULT_SOURCE_TEMPLATE
        uri = source_base().rstrip("/") + "/" + template.format(ds=_run_day(context))
    check_source(uri, allowed_source_prefixes())
    return _as_path(uri)


def contact_list_id(params: dict[str, Any]) -> str:
    value = params.get("contact_list_id") or _variable(CONTACT_LIST_VARIABLE, None)
    if not value:
        raise ValueError(
            f"no contact list: pass the contact_list_id param or set the Airflow Variable {CONTACT_LIST_VARIABLE!r}"
        )
    return str(value)


def run_info(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    return {
        "dag_id": dag_id_of(context),
        "run_id": context["run_id"],
        "contact_list_id": contact_list_id(params),
        "dry_run": bool(params.get("dry_run")),
        "redrive_run_id": params.get("redrive_run_id"),
        "full_resync": bool(params.get("full_resync")),
        "logical_date": str(context.get("logical_date")),
        "sync_mode": sync_mode(params),
    }


def sync_mode(params: dict[str, Any]) -> str:
    """The run's ``sync_mode``: the param, else the Variable ``cxone_sync_mode``, else ``upsert``; a redrive sends its
    dead letters as they are (``append``)."""
    from include.cxone_import.sync import DEFAULT_SYNC_MODE, SYNC_MODE_VARIABLE, SYNC_MODES

    if params.get("redrive_run_id"):
        return "append"
    mode = params.get("sync_mode") or _variable(SYNC_MODE_VARIABLE, None) or DEFAULT_SYNC_MODE
    if mode not in SYNC_MODES:
        raise ValueError(f"sync_mode must be one of {SYNC_MODES}, got {mode!r} (param or Variable {SYNC_MODE_VARIABLE})")
    return str(mode)


@contextmanager
def measured(context: dict[str, Any], name: str) -> Iterator[None]:
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


def _record_failure(context: dict[str, Any], key: str, task: str, exc: BaseException) -> None:
    """``failures/{task}.json``: the task, the rule and column when the error names them, and the message (our
    errors name rows and rules, never record content)."""
    try:
        write_json(
            run_layout(context).failure_file(key),
            {
                "task": task,
                "try_number": getattr(context.get("ti"), "try_number", None),
                "error": type(exc).__name__,
                "rule": getattr(exc, "rule", None),
                "column": getattr(exc, "column", None),
                "source": getattr(exc, "source", None),
                "message": str(exc)[:2000],
                "at": datetime.now(timezone.utc).isoformat(),
            },
        )
    except Exception:  # noqa: BLE001 - recording must not hide the task's own error
        log.warning("could not record the failure of %s", key)


def recorded_failures(layout: RunLayout) -> list[dict[str, Any]]:
    """The failures tasks of the run recorded, first task first."""
    order = {"extract": 0, "validate": 1, "chunk": 2, "import_batches": 3}
    found = [read_json(p) for p in layout.failure_files()]
    return sorted(found, key=lambda f: (order.get(f.get("task"), 9), f.get("at") or ""))


# -- tasks -----------------------------------------------------------------------------------------------------


def extract(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    run = run_info(params, context)
    source = resolve_source(params, context)
    if not source.exists():
        raise SourceFormatError(str(source), None, "source_exists", "the source file does not exist")
    layout = run_layout(context)
    fmt = "jsonl" if params.get("redrive_run_id") else None
    result = pipeline.extract(source, layout, fmt=fmt)
    log.info("extracted %d rows from %s into %s", result["input_rows"], result["source_uri"], layout.root)
    return {**result, "run": run, "run_root": str(layout.root)}


def validate(extracted: dict[str, Any], params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
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


def parallel_groups() -> int:
    """How many import tasks of a run the group plan counts on sending side by side: the ``cxone_api`` pool's slots
    (Variable ``cxone_import_parallel_groups``, default 4 like the pool). More groups than that would only add task
    start-ups, paid one after another under ``airflow dags test``."""
    value = _variable(PARALLEL_GROUPS_VARIABLE, None)
    try:
        groups = int(value) if value not in (None, "") else DEFAULT_PARALLEL_GROUPS
    except (TypeError, ValueError):
        groups = 0
    if groups < 1:
        raise ValueError(f"Variable {PARALLEL_GROUPS_VARIABLE} must be a whole number >= 1, got {value!r}")
    return groups


def record_limit() -> int | None:
    """The call_lists profile takes at most 512 characters a record (a longer one is rejected); the records API has no
    such limit."""
    from include.cxone_import.import_operator import CALL_LISTS, api_profile
    from include.cxone_import.rules import CALL_LIST_MAX_RECORD_CHARS

    return CALL_LIST_MAX_RECORD_CHARS if api_profile() == CALL_LISTS else None


def list_state(key: ListKey, context: dict[str, Any]) -> ContactListState:
    """The change-detection state of a contact list of a tenant (``state.ContactListState``), under the running
    DAG's id."""
    return ContactListState(storage_base(), dag_id_of(context), key)


def run_list_key(layout: RunLayout) -> ListKey | None:
    """The list this run imports into, as ``chunk`` resolved it (None before, or when it could not be named)."""
    path = layout.list_key
    return ListKey.from_dict(read_json(path)) if path.exists() else None


def resolve_list_key(params: dict[str, Any], layout: RunLayout, context: dict[str, Any], *,
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
    from cxone_provider.hooks.cxone import CXoneHook
    from include.cxone_import.import_operator import CALL_LISTS, prepare_call_list

    hook = CXoneHook(cxone_conn_id=CXONE_CONN_ID)
    try:
        profile = hook.api_profile
    except AirflowNotFoundException:
        if not params.get("dry_run"):
            raise missing_connection(CXONE_CONN_ID) from None
        log.warning("no %s connection: a dry run cannot name the list's tenant, nothing is compared", CXONE_CONN_ID)
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


def change_mode(params: dict[str, Any]) -> str:
    """How a run uses the list's state: a redrive and ``full_resync`` send everything, a dry run only reads it."""
    if params.get("redrive_run_id"):
        return "redrive"
    if params.get("full_resync"):
        return "full_resync"
    return "dry_run" if params.get("dry_run") else "compare"


def chunk(validated: dict[str, Any], params: dict[str, Any], context: dict[str, Any]) -> list[dict[str, Any]]:
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


def _plan_sync(layout: RunLayout, key: ListKey | None, validated: dict[str, Any], params: dict[str, Any],
               context: dict[str, Any]) -> sync.SyncPlan | None:
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


def _with_sync_ops(layout: RunLayout, groups: list[dict[str, Any]], plan: sync.SyncPlan | None, key: ListKey | None,
                   validated: dict[str, Any]) -> list[dict[str, Any]]:
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


def _resend_gone(layout: RunLayout, key: ListKey, validated: dict[str, Any]) -> None:
    """A calling list's records expire: what the state holds as on the list but the list no longer does is sent
    again (read once, while the run holds the list)."""
    from include.cxone_import.call_list_sync import resend_gone

    hook = cxone_hook()
    with hook.get_call_list_client(rate_limiter=hook.rate_limiter) as client:
        resend_gone(layout, int(validated["parts"]), set(client.iter_external_ids(key.list_id)))


def _call_lists() -> bool:
    from include.cxone_import.import_operator import CALL_LISTS, api_profile

    return api_profile() == CALL_LISTS


def logical_seconds(context: dict[str, Any]) -> int:
    """The run's logical date as Unix seconds: what the list's state records with each acknowledged version."""
    return int(_logical_date(context).timestamp())


def cxone_hook() -> Any:
    from cxone_provider.hooks.cxone import CXoneHook

    return CXoneHook(cxone_conn_id=CXONE_CONN_ID)


def missing_connection(conn_id: str) -> CXoneConfigurationError:
    return CXoneConfigurationError(
        f"connection {conn_id} does not exist: create it (Admin > Connections, a secrets backend, or the environment "
        f"variable AIRFLOW_CONN_{conn_id.upper()}) with the CXone client id as login and its secret as password",
        conn_id=conn_id, cause="AirflowNotFoundException",
    )


def check_sending_setup(hook: Any, executor: str | None) -> None:
    """What an import task checks before it sends anything: the connection exists, and the budget store is shared
    when tasks may run on several hosts (``CXoneHook.check_budget_store``); each a :class:`CXoneConfigurationError`
    that fails the task without retries."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        hook.connection
    except AirflowNotFoundException:
        raise missing_connection(hook.cxone_conn_id) from None
    hook.check_budget_store(executor or default_executor())


def default_executor() -> str:
    """The first executor of ``[core] executor`` (Airflow's default for a task that names none)."""
    from airflow.configuration import conf

    return (conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor").split(",")[0].strip()


def import_group(group: dict[str, Any], params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Send one group under the tenant's shared rate budget while this run holds the contact list; raise (after
    writing outcomes) on transient failures, and without retries on a lost list or a configuration error (the
    records not sent end ``not_sent``)."""
    hook = cxone_hook()
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
            _record_live_deliveries(layout, group, context, live.close())
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
    # XCom keeps the per-batch metrics compact; the full ones (request ids, timestamps) are in storage.
    return {**summary, "batch_metrics": [{k: m[k] for k in XCOM_BATCH_FIELDS} for m in summary["batch_metrics"]]}


def send_sync_ops(client: Any, importer: GroupImporter, key: ListKey, group: dict[str, Any], params: dict[str, Any],
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


def record_sync_answers(layout: RunLayout, key: ListKey, group_index: int, context: dict[str, Any],
                        results: list[sync.OpResult]) -> None:
    """Write what CXone said about the group's updates and removals into the list's state (its own delta file)."""
    contact_ids, records, outcomes = sync.answers_of(results)
    answers = Acknowledgements.of(contact_ids, records, outcomes)
    if len(answers):
        list_state(key, context).write_delta(context["run_id"], group_index + SYNC_DELTA_OFFSET, answers,
                                             logical_date=logical_seconds(context))


def sending_list_key(layout: RunLayout) -> ListKey:
    key = run_list_key(layout)
    if key is None:
        raise RuntimeError(f"{layout.list_key} is missing: the chunk task resolves the list before any import")
    return key


def record_answers(layout: RunLayout, key: ListKey, group_index: int, context: dict[str, Any]) -> None:
    """Write what CXone said about the group's records into the list's state (one delta file)."""
    answers = acknowledged_from_outcomes(layout, group_index)
    if len(answers):
        list_state(key, context).write_delta(context["run_id"], group_index, answers, logical_date=logical_seconds(context))


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


def live_batch_events(group: dict[str, Any], context: dict[str, Any]) -> LiveBatchEvents | None:
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


def _record_live_deliveries(layout: RunLayout, group: dict[str, Any], context: dict[str, Any], deliveries: list[Any]) -> None:
    """Keep what became of the events this try sent (one audit part per group and try: a retry never overwrites
    what an earlier try delivered, and ``notify_webhook`` sends again only what no try delivered)."""
    try_number = int(getattr(context.get("ti"), "try_number", 1) or 1)
    entries = delivery_audit(deliveries)
    write_jsonl(layout.audit_part(f"{LIVE_DELIVERIES}{int(group['group_index']):05d}-try-{try_number:02d}"), entries)
    log.info("group %s: %d of %d batch events delivered to the CRM while importing", group["group_index"],
             sum(1 for d in deliveries if d.ok), len(deliveries))


def _lease_owner(context: dict[str, Any]) -> str:
    return f"{dag_id_of(context)}/{context['run_id']}"


@contextmanager
def contact_list_lease(hook: Any, key: ListKey, context: dict[str, Any], *, first: bool = False) -> Iterator[Any]:
    """
    Hold the contact list for this run while the task sends (one run per list at a time; runs for other lists go
    on). The lease is the list's key (its tenant and resolved id), lives in the tenant's budget store, is shared by
    the run's import tasks, renewed while they run and released by the report task; when another run holds the
    list the task is rescheduled (its slot freed).

    Yields the :class:`~cxone_provider.leases.ListLease`: senders call its ``check`` (or send through
    ``fenced(limiter)``) before each request. Its fencing token is kept in the run's ``list_lease.json``: a task
    that finds a later token than the run's last one plus its own re-take (another run held the list in between)
    fails with :class:`ListLeaseLostError`; ``first`` (chunk) starts the run's tenure. On the way out the lease is
    kept for :func:`list_handover` (the run's next task, queued for a pool slot, renews it).
    """
    from airflow.sdk.exceptions import AirflowRescheduleException

    owner = _lease_owner(context)
    lease = hook.list_lease(key.lease_name, owner, LIST_LEASE_TTL_S, label=key.describe())
    holder = lease.take().holder
    if holder != owner:
        log.info("%s is being imported by %s: waiting %s", key.describe(), holder, list_wait())
        raise AirflowRescheduleException(datetime.now(timezone.utc) + list_wait())
    _continue_tenure(run_layout(context), lease, first=first)
    stop_renewing = lease.keep_renewed(LIST_LEASE_RENEW_S)
    try:
        yield lease
    finally:
        stop_renewing()
        if lease.lost is None:
            try:
                lease.renew(list_handover().total_seconds())
            except Exception:  # noqa: BLE001 - the next task takes it again, and learns from the token if it lapsed
                log.warning("could not keep the lease on %s for the run's next task", key.describe(), exc_info=True)


def _continue_tenure(layout: RunLayout, lease: Any, *, first: bool) -> None:
    """Check the lease's token against the run's last one (``list_lease.json``) and remember it."""
    path = layout.list_lease
    last = None if first or not path.exists() else int(read_json(path).get("token", 0))
    if last is not None and lease.token not in (last, last + 1):
        lease.lose(f"another run held the list since this run's chunk compared it (fencing token {last}, now "
                   f"{lease.token})")
        raise lease.lost
    if last is not None and lease.token == last + 1:
        log.warning("the lease on %s had lapsed since the run's last task; nobody else took it (token %d)",
                    lease.label, lease.token)
    if last != lease.token:
        write_json(path, {"token": lease.token, "owner": lease.owner})


def hold_contact_list(hook: Any, key: ListKey, context: dict[str, Any], seconds: float) -> None:
    """Keep the run's lease on the list for ``seconds`` more while nothing renews it (a task deferred on upload jobs
    holds no thread): another run of the list must not start while this one's jobs may still apply."""
    if hook.acquire_list_lease(key.lease_name, _lease_owner(context), max(LIST_LEASE_TTL_S, seconds)) != _lease_owner(context):
        log.warning("lost the lease on %s before waiting on its upload jobs", key.describe())


def release_contact_list(params: dict[str, Any], context: dict[str, Any]) -> None:
    """Give the run's contact list back (the report task does, whatever the run's outcome)."""
    from cxone_provider.hooks.cxone import CXoneHook

    try:
        key = run_list_key(run_layout(context))
        if key is None:
            log.info("the run never resolved its contact list: no lease to release")
            return
        if CXoneHook(cxone_conn_id=CXONE_CONN_ID).release_list_lease(key.lease_name, _lease_owner(context)):
            log.info("released %s", key.describe())
    except Exception:  # noqa: BLE001 - never fail the report over it; the lease lapses after LIST_LEASE_TTL_S
        log.warning("could not release contact list lease", exc_info=True)


def group_label(group: dict[str, Any]) -> str:
    """How a mapped import task is named in the UI."""
    return f"group {group['group_index']}: {group.get('batches', '?')} batches, {group['records']} records"


def _emit_contact_list_asset(context: dict[str, Any], list_id: str, totals: dict[str, Any]) -> None:
    """The run's Asset event for the contact list it imported into (``cxone://<host>/contactlists/<id>``), with the
    run's counts. One per run, from the report task: import tasks finishing together would race to create the
    alias's asset row on a first import (a unique-key violation on PostgreSQL fails the task)."""
    from airflow.sdk import Asset, AssetAlias
    from cxone_provider.hooks.cxone import CXoneHook

    events = context.get("outlet_events")
    if events is None:
        return
    host = urlsplit(CXoneHook(cxone_conn_id=CXONE_CONN_ID).base_url).netloc or "cxone"
    asset = Asset(name=f"cxone_contact_list__{list_id}", uri=f"cxone://{host}/contactlists/{list_id}", group="cxone")
    events[AssetAlias(CONTACT_LIST_ASSET_ALIAS)].add(
        asset,
        extra={"run_id": context.get("run_id"), **{k: totals.get(k, 0) for k in ("imported", "duplicates", "failed")}},
    )


def webhook_target() -> WebhookTarget | None:
    """The CRM webhook, or None when its connection is not defined; any other lookup failure raises."""
    from cxone_provider.hooks.crm_webhook import CrmWebhookHook

    return CrmWebhookHook(WEBHOOK_CONN_ID).get_target()


def failure_event(context: dict[str, Any]) -> dict[str, Any]:
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


def notify(validated: dict[str, Any], params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
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


NOTIFY_DELIVERIES = "webhook-notify-try-"  # audit parts of the events notify_webhook delivered, one per try


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


def _audit_by_batch(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """The batches' audit entries (each batch event's ``auditTrailer``)."""
    return {
        entry["batchId"]: entry
        for part in layout.audit_parts("import-group-")
        for entry in iter_jsonl(part)
    }


def _run_or_partial(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The run's description even when its contact list cannot be resolved (the reason the run failed)."""
    try:
        return run_info(params, context)
    except ValueError:
        return {"dag_id": dag_id_of(context), "run_id": context["run_id"], "contact_list_id": None, "logical_date": str(context.get("logical_date"))}


def rate_budget() -> float | None:
    """The connection's requests per minute (the report's rate chart draws it); None without a connection."""
    from cxone_provider.hooks.cxone import CXoneHook

    try:
        return CXoneHook(cxone_conn_id=CXONE_CONN_ID).requests_per_minute
    except Exception:  # noqa: BLE001 - a dry run may have no CXone connection; the chart then has no budget line
        return None


def report(
    extracted: dict[str, Any],
    validated: dict[str, Any],
    groups: list[dict[str, Any]],
    webhook: dict[str, Any] | None,
    params: dict[str, Any],
    context: dict[str, Any],
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
        _emit_contact_list_asset(context, contact_list_id(params), result["totals"])
    return {k: result[k] for k in ("status", "totals", "files", "reconciliation", "reject_share")}
