"""What the import DAG's tasks read from Airflow: Variables, params, the running DAG and run, the storage base, the
connection's API profile and the one place that builds the :class:`~cxone_provider.hooks.cxone.CXoneHook`. The
plain modules (pipeline, engine, report, webhook) know nothing of Airflow; this one resolves their inputs.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cxone_provider.crm_webhook import WebhookTarget
from cxone_provider.errors import CXoneConfigurationError

from cxone_runs.layout import RunLayout
from cxone_runs.location import STORAGE_CONN_VARIABLE, storage_base
from cxone_runs.location import task_variable as _variable
from include.cxone_import.handoffs import RunInfo, RunParams
from include.cxone_dag.settings import CXONE_CONN_ID, DAG_ID, WEBHOOK_CONN_ID
from include.cxone_import.source_policy import (
    ALLOWED_PREFIXES_VARIABLE,
    SourceNotAllowedError,
    check_source,
    default_allowed_prefixes,
    parse_allowed_prefixes,
)
from include.cxone_import.state import ContactListState, ListKey

if TYPE_CHECKING:
    from airflow.sdk import Context
    from cxone_provider.hooks.cxone import CXoneHook

log = logging.getLogger(__name__)

CONTACT_LIST_VARIABLE = "cxone_contact_list_id"
SOURCE_BASE_VARIABLE = "cxone_source_base"
SOURCE_TEMPLATE_VARIABLE = "cxone_source_template"
PARALLEL_GROUPS_VARIABLE = "cxone_import_parallel_groups"
DEFAULT_PARALLEL_GROUPS = 4  # the cxone_api pool's slots in airflow_settings.yaml
DEFAULT_SOURCE_TEMPLATE = "contacts_{ds}.csv"
CALL_LISTS = "call_lists"  # the connection's api_profile for NICE's calling-list API (default: records)


def dag_id_of(context: Context) -> str:
    """The id of the DAG the task runs in: folders, the list's state, the lease owner and events are the running
    DAG's, so a second DAG built from this file never shares them. The constant only for callers without a DAG
    (tools, tests that pass a bare ``run_id``)."""
    for holder in (context.get("ti"), context.get("task_instance"), context.get("dag_run"), context.get("dag")):
        dag_id = getattr(holder, "dag_id", None)
        if dag_id:
            return str(dag_id)
    return DAG_ID


def event_key(context: Context, run_id: str | None = None) -> str:
    """What a run's CRM events are keyed by (``eventId``, ``Idempotency-Key``): the run id for this project's DAG,
    as receivers have always seen it; ``{dag_id}/{run_id}`` for another DAG, whose scheduled runs carry the same
    run ids."""
    dag_id, run_id = dag_id_of(context), str(run_id or context["run_id"])
    return run_id if dag_id == DAG_ID else f"{dag_id}/{run_id}"


def layout_for(dag_id: str, run_id: str) -> RunLayout:
    return RunLayout.for_run(storage_base(), dag_id, run_id)


def run_layout(context: Context) -> RunLayout:
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


def _logical_date(context: Context) -> datetime:
    """The run's logical date; a run without one (triggered by hand) is dated when it was due to run."""
    logical = context.get("logical_date")
    if logical is None:
        dag_run = context.get("dag_run")
        logical = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
    return logical


def _run_day(context: Context) -> str:
    return _logical_date(context).strftime("%Y-%m-%d")


def logical_seconds(context: Context) -> int:
    """The run's logical date as Unix seconds: what the list's state records with each acknowledged version."""
    return int(_logical_date(context).timestamp())


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


def resolve_source(params: RunParams, context: Context) -> Any:
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


def contact_list_id(params: RunParams) -> str:
    value = params.get("contact_list_id") or _variable(CONTACT_LIST_VARIABLE, None)
    if not value:
        raise ValueError(
            f"no contact list: pass the contact_list_id param or set the Airflow Variable {CONTACT_LIST_VARIABLE!r}"
        )
    return str(value)


def run_info(params: RunParams, context: Context) -> RunInfo:
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


def sync_mode(params: RunParams) -> str:
    """The run's ``sync_mode``: the param, else the Variable ``cxone_sync_mode``, else ``upsert``; a redrive sends its
    dead letters as they are (``append``)."""
    from include.cxone_import.sync import DEFAULT_SYNC_MODE, SYNC_MODE_VARIABLE, SYNC_MODES

    if params.get("redrive_run_id"):
        return "append"
    mode = params.get("sync_mode") or _variable(SYNC_MODE_VARIABLE, None) or DEFAULT_SYNC_MODE
    if mode not in SYNC_MODES:
        raise ValueError(f"sync_mode must be one of {SYNC_MODES}, got {mode!r} (param or Variable {SYNC_MODE_VARIABLE})")
    return str(mode)


def change_mode(params: RunParams) -> str:
    """How a run uses the list's state: a redrive and ``full_resync`` send everything, a dry run only reads it."""
    if params.get("redrive_run_id"):
        return "redrive"
    if params.get("full_resync"):
        return "full_resync"
    return "dry_run" if params.get("dry_run") else "compare"


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


def list_state(key: ListKey, context: Context) -> ContactListState:
    """The change-detection state of a contact list of a tenant (``state.ContactListState``), under the running
    DAG's id."""
    return ContactListState(storage_base(), dag_id_of(context), key)


def cxone_hook() -> CXoneHook:
    """The CXone connection's hook: the one place a task builds it."""
    from cxone_provider.hooks.cxone import CXoneHook

    return CXoneHook(cxone_conn_id=CXONE_CONN_ID)


def api_profile() -> str:
    """The connection's API profile; ``records`` when there is no CXone connection (a dry run may have none)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return cxone_hook().api_profile
    except AirflowNotFoundException:
        return "records"


def record_limit() -> int | None:
    """The call_lists profile takes at most 512 characters a record (a longer one is rejected); the records API has no
    such limit."""
    from include.cxone_import.rules import CALL_LIST_MAX_RECORD_CHARS

    return CALL_LIST_MAX_RECORD_CHARS if api_profile() == CALL_LISTS else None


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


def rate_budget() -> float | None:
    """The connection's requests per minute (the report's rate chart draws it); None without a connection."""
    try:
        return cxone_hook().requests_per_minute
    except Exception:  # noqa: BLE001 - a dry run may have no CXone connection; the chart then has no budget line
        return None


def webhook_target() -> WebhookTarget | None:
    """The CRM webhook, or None when its connection is not defined; any other lookup failure raises."""
    from cxone_provider.hooks.crm_webhook import CrmWebhookHook

    return CrmWebhookHook(WEBHOOK_CONN_ID).get_target()
