"""The DAG's operators: the import step as the provider's deferrable ``ImportGroupOperator`` with this project's
profile steps (``include.cxone_import.profiles``), mapped over the import groups, and the human approval
of a mirror run's bulk removals (see ``sync_gate``). This module is imported when the DAG file is parsed, so it
imports nothing heavy: the task's code is imported when the task runs."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator
from cxone_provider.operators.import_group import ImportGroupOperator
from cxone_provider.triggers.call_lists import JobsSettled

from include.cxone_dag.settings import CXONE_CONN_ID

if TYPE_CHECKING:
    from cxone_provider.hooks.cxone import CXoneHook

    from include.cxone_import.handoffs import ImportGroup

log = logging.getLogger(__name__)


def group_label(group: ImportGroup) -> str:
    """How a mapped import task is named in the UI."""
    return f"group {group['group_index']}: {group.get('batches', '?')} batches, {group['records']} records"


class ContactImportOperator(ImportGroupOperator):
    """
    Import one group of the run (mapped over ``chunk``'s groups) with the connection's API profile: ``records``
    sends the group's batches and ends; ``call_lists`` uploads the group's files, defers until their jobs settle,
    then reads the list back.

    :param group: the group as ``chunk`` planned it (index, path, counts).
    """

    def __init__(self, *, group: ImportGroup, **kwargs: Any) -> None:
        super().__init__(group=group, cxone_conn_id=CXONE_CONN_ID, **kwargs)

    def get_hook(self) -> CXoneHook:
        from include.cxone_import.task_config import cxone_hook

        return cxone_hook()

    def step_scope(self, context: Any) -> AbstractContextManager[Any]:
        """Metrics and failure records of ``import_batches``; the task's name in the UI (``map_index_template``)."""
        from include.cxone_import.run_bookkeeping import measured

        context["group_label"] = group_label(self.group)
        return measured(context, "import_batches")

    def start_group(self, context: Any) -> Any:
        from include.cxone_import.task_config import CALL_LISTS, check_sending_setup

        check_sending_setup(self.hook, self.executor)
        if self.hook.api_profile != CALL_LISTS:
            from include.cxone_import.profiles import records

            return records.import_group(self.hook, self.group, context["params"], context)
        from include.cxone_import.profiles import call_lists

        return call_lists.start_group(self.hook, self.group, context["params"], context)

    def resume_group(self, context: Any, settled: JobsSettled | None) -> Any:
        from include.cxone_import.profiles import call_lists

        return call_lists.finish_group(self.hook, self.group, context["params"], context, settled)


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

        from include.cxone_import.task_config import run_layout

        layout = run_layout(context)
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
        from include.cxone_import.task_config import run_layout

        outcome = sync_gate.APPROVED if approved else sync_gate.HELD
        decision = sync_gate.record_decision(run_layout(context), outcome, why, by)
        log.info("mirror removals %s: %s", decision.mirror_removals, decision.why)
        return decision.to_dict()
