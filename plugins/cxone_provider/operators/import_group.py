"""``ImportGroupOperator``: imports one group of records into CXone, deferring on the triggerer while calling-list
upload jobs settle (:class:`~cxone_provider.triggers.call_lists.CallListJobsTrigger`, beside it in this provider).

The operator knows the deferral, not the import: a subclass supplies the import step (``start_group``, and
``resume_group`` after the trigger's event). Either returns the group's result, which ends the task, or a
:class:`~cxone_provider.triggers.call_lists.JobWait`, on which the task defers."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from cxone_provider.errors import CXoneJobWaitError
from cxone_provider.triggers.call_lists import DONE, ERROR, CallListJobsTrigger, JobsSettled, JobWait

if TYPE_CHECKING:
    from cxone_provider.hooks.cxone import CXoneHook


class ImportGroupOperator(BaseOperator):
    """
    Import one group of a run with the connection's API profile; defer while its upload jobs settle.

    :param group: the group as the run planned it (index, path, counts).
    :param cxone_conn_id: the CXone connection.
    """

    ui_color = "#e8f4ff"

    def __init__(self, *, group: Mapping[str, Any], cxone_conn_id: str = "cxone_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self.cxone_conn_id = cxone_conn_id

    @cached_property
    def hook(self) -> CXoneHook:
        return self.get_hook()

    def get_hook(self) -> CXoneHook:
        """The hook of ``cxone_conn_id`` (built when the task first uses it, never when the DAG is parsed)."""
        from cxone_provider.hooks.cxone import CXoneHook

        return CXoneHook(cxone_conn_id=self.cxone_conn_id)

    def step_scope(self, context: Any) -> AbstractContextManager[Any]:
        """What each part of the import step runs in (a subclass records metrics and failures there)."""
        return nullcontext()

    def start_group(self, context: Any) -> Any:
        """Import the group: its result, or the :class:`JobWait` to defer on."""
        raise NotImplementedError

    def resume_group(self, context: Any, settled: JobsSettled | None) -> Any:
        """Finish the group once its jobs settled (or the wait timed out): its result, or another :class:`JobWait`."""
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        with self.step_scope(context):
            result = self.start_group(context)
        return self._defer_or_return(result)

    def execute_complete(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        """Resumed by the trigger's event: an ``error`` event raises :class:`CXoneJobWaitError` (the task's retry
        waits again); ``done`` and ``timeout`` go on to ``resume_group``."""
        with self.step_scope(context):
            settled = JobsSettled.from_event(event) if event is not None else JobsSettled(DONE)
            self.log.info("group %s: upload jobs %s (%s)", self.group["group_index"], settled.jobs, settled.status)
            if settled.status == ERROR:
                raise CXoneJobWaitError(f"waiting for the upload jobs failed: {settled.message}")
            result = self.resume_group(context, settled)
        return self._defer_or_return(result)

    def _defer_or_return(self, result: Any) -> Any:
        """Return the group's result, or defer on the triggerer until the upload jobs ``result`` names settle."""
        if not isinstance(result, JobWait):
            return result
        self.log.info("group %s: waiting on the triggerer for jobs %s of list %s", self.group["group_index"],
                      result.job_ids, result.list_id)
        self.defer(
            trigger=CallListJobsTrigger(
                cxone_conn_id=result.cxone_conn_id,
                list_id=result.list_id,
                job_ids=result.job_ids,
                wait_for_list=result.wait_for_list,
                submitted_at=result.submitted_at,
                timeout_s=result.timeout_s,
                poll_first_s=result.poll_first_s,
                poll_max_s=result.poll_max_s,
            ),
            method_name="execute_complete",
            timeout=result.deferral_timeout,
        )
