"""The run's contact list while it sends: the list's key as ``chunk`` resolved it (``list_key.json``) and the lease
that lets one run at a time send to a list, renewed by a thread while a task sends, handed over between the run's
tasks and released by the report task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cxone_runs.layout import RunLayout
from include.cxone_import.handoffs import RunParams
from include.cxone_dag.settings import list_handover, list_wait
from include.cxone_import.state import ListKey
from include.cxone_import.storage import read_json, write_json
from include.cxone_import.task_config import cxone_hook, dag_id_of, run_layout

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

LIST_LEASE_TTL_S = 1800  # a run that died without its report frees its contact list after this long
LIST_LEASE_RENEW_S = 60


def run_list_key(layout: RunLayout) -> ListKey | None:
    """The list this run imports into, as ``chunk`` resolved it (None before, or when it could not be named)."""
    path = layout.list_key
    return ListKey.from_dict(read_json(path)) if path.exists() else None


def sending_list_key(layout: RunLayout) -> ListKey:
    key = run_list_key(layout)
    if key is None:
        raise RuntimeError(f"{layout.list_key} is missing: the chunk task resolves the list before any import")
    return key


def lease_owner(context: Context) -> str:
    return f"{dag_id_of(context)}/{context['run_id']}"


@contextmanager
def contact_list_lease(hook: Any, key: ListKey, context: Context, *, first: bool = False) -> Iterator[Any]:
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

    owner = lease_owner(context)
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


def hold_contact_list(hook: Any, key: ListKey, context: Context, seconds: float) -> None:
    """Keep the run's lease on the list for ``seconds`` more while nothing renews it (a task deferred on upload jobs
    holds no thread): another run of the list must not start while this one's jobs may still apply."""
    if hook.acquire_list_lease(key.lease_name, lease_owner(context), max(LIST_LEASE_TTL_S, seconds)) != lease_owner(context):
        log.warning("lost the lease on %s before waiting on its upload jobs", key.describe())


def release_contact_list(params: RunParams, context: Context) -> None:
    """Give the run's contact list back (the report task does, whatever the run's outcome)."""
    try:
        key = run_list_key(run_layout(context))
        if key is None:
            log.info("the run never resolved its contact list: no lease to release")
            return
        if cxone_hook().release_list_lease(key.lease_name, lease_owner(context)):
            log.info("released %s", key.describe())
    except Exception:  # noqa: BLE001 - never fail the report over it; the lease lapses after LIST_LEASE_TTL_S
        log.warning("could not release contact list lease", exc_info=True)
