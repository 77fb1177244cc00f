"""The DAG's operators: the import step as one deferrable operator, mapped over the import groups (see
``import_operator`` for what it does on each API profile), and the human approval of a mirror run's bulk removals
(see ``sync_gate``). This module is imported when the DAG file is parsed, so it imports nothing heavy: the task's
code is imported when the task runs."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import ModuleType
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
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


class RemovalApprovalOperator(HITLOperator):
    """
    Stop a ``mirror`` run before its removals when they exceed ``max_removal_share`` of the list's records: a human
    approves or rejects in Airflow (the task's Required Actions, or the REST API's ``hitlDetails``). Reject, or no
    answer within ``approval_timeout_hours``, holds the mirror removals (``removal_held``). Anything else (no
    mirror removal, a share within the bound, a dry run) is decided at once, without asking.
    """

    APPROVE, REJECT = "Approve", "Reject"
    ui_color = "#fff3d6"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(subject="Approve bulk removals from the CXone contact list",
                         options=[self.APPROVE, self.REJECT], defaults=[self.REJECT], multiple=False, **kwargs)

    def execute(self, context: Any) -> Any:
        from include.cxone_import import sync_gate

        steps, _ = _task_modules()
        layout = steps.run_layout(context)
        params = context["params"]
        share = float(params.get("max_removal_share", 0.05))
        plan = sync_gate.read_plan(layout)
        if params.get("dry_run"):
            log.info("dry run: nothing is removed, nobody is asked")
            return None
        decided = sync_gate.decide_without_asking(layout, plan, share)
        if decided is not None:
            log.info("mirror removals %s: %s", decided.mirror_removals, decided.why)
            return decided.to_dict()
        hours = float(params.get("approval_timeout_hours") or 24)
        self.body = sync_gate.approval_body(plan, share, hours)
        self.response_timeout = timedelta(hours=hours)
        log.warning("mirror would remove %d records (%.1f%% of the list's state, above %.1f%%): waiting up to %g h "
                    "for an approval", sync_gate.mirror_removals(plan), plan["mirror_share"] * 100, share * 100, hours)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """The answer (or the timeout's default, Reject) decides the mirror removals; the decision is written for
        the import tasks."""
        from include.cxone_import import sync_gate

        answer = super().execute_complete(context=context, event=event)
        approved = list(answer["chosen_options"]) == [self.APPROVE]
        user = answer.get("responded_by_user") or {}
        by = user.get("name") or user.get("id")
        if approved:
            why = f"approved by {by}"
        else:
            why = f"rejected by {by}" if by else "no answer within approval_timeout_hours"
        steps, _ = _task_modules()
        outcome = sync_gate.APPROVED if approved else sync_gate.HELD
        decision = sync_gate.record_decision(steps.run_layout(context), outcome, why, by)
        log.info("mirror removals %s: %s", decision.mirror_removals, decision.why)
        return decision.to_dict()
