"""The DAG's import step as one deferrable operator, mapped over the import groups (see ``import_operator`` for
what it does on each API profile). This module is imported when the DAG file is parsed, so it imports nothing
heavy: the task's code is imported when the task runs."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import ModuleType
from typing import Any

from airflow.sdk import BaseOperator

log = logging.getLogger(__name__)


def _task_modules() -> tuple[ModuleType, ModuleType]:
    """The task bodies (``airflow_tasks``) and the import step (``import_operator``), imported at run time."""
    from include.cxone_import import airflow_tasks, import_operator

    return airflow_tasks, import_operator


class ImportGroupOperator(BaseOperator):
    """
    Import one group of the run (mapped over ``chunk``'s groups) with the connection's API profile.

    :param group: the group as ``chunk`` planned it (index, path, counts).
    """

    ui_color = "#e8f4ff"

    def __init__(self, *, group: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group

    def execute(self, context: Any) -> Any:
        steps, ops = _task_modules()
        context["group_label"] = steps.group_label(self.group)  # map_index_template
        params = context["params"]
        with steps.measured(context, "import_batches"):
            hook = ops._hook()
            steps.check_sending_setup(hook, self.executor)
            if hook.api_profile != ops.CALL_LISTS:
                return steps.import_group(self.group, params, context)
            wait = ops.submit_group(hook, self.group, params, context)
            if wait is None:
                wait = ops.finish_group(hook, self.group, params, context, None)
        return self._wait_or_return(wait, ops)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumed by the trigger's event: read the list back and write the group's outcomes (or upload a recovery
        round and wait again)."""
        steps, ops = _task_modules()
        context["group_label"] = steps.group_label(self.group)
        with steps.measured(context, "import_batches"):
            log.info("group %s: upload jobs %s (%s)", self.group["group_index"], (event or {}).get("jobs"),
                     (event or {}).get("status"))
            done = event or {"status": "done", "jobs": {}}
            result = ops.finish_group(ops._hook(), self.group, context["params"], context, done)
        return self._wait_or_return(result, ops)

    def _wait_or_return(self, result: Any, ops: ModuleType) -> Any:
        """Return the group's summary, or defer on the triggerer until the upload jobs ``result`` names settle."""
        if not isinstance(result, ops.JobWait):
            return result
        log.info("group %s: waiting on the triggerer for jobs %s of list %s", self.group["group_index"],
                 result.job_ids, result.list_id)
        from cxone_provider.triggers.call_lists import CallListJobsTrigger

        self.defer(
            trigger=CallListJobsTrigger(**result.trigger_kwargs()),
            method_name="execute_complete",
            timeout=timedelta(seconds=result.timeout_s + ops.TRIGGER_TIMEOUT_MARGIN_S),
        )
