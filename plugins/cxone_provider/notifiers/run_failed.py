"""Tell the CRM when a run fails: an Airflow notifier posting to the ``crm_webhook`` connection."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseNotifier

from include.cxone_import.storage import read_json
from include.cxone_import.webhook import FAILURE_EVENT, WebhookSender

log = logging.getLogger(__name__)


class CrmRunFailedNotifier(BaseNotifier):
    """DAG ``on_failure_callback``: one signed, keyed event with the reason and the report's problems."""

    template_fields = ()

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing is templated; skipping this also spares dag.test's serialized DAG (it has no Jinja env)."""

    def notify(self, context: Any) -> None:
        from include.cxone_import import airflow_tasks as steps

        run_id = str(context.get("run_id") or getattr(context.get("dag_run"), "run_id", ""))
        ti = context.get("ti") or context.get("task_instance")
        layout = steps.layout_for(run_id)
        problems: list[str] = []
        try:
            if layout.report.exists():
                problems = list(read_json(layout.report).get("problems", []))
        except Exception:  # noqa: BLE001 - the notification must go out even if storage is unreadable
            log.warning("could not read the report of %s", run_id)
        event = {
            "eventId": f"{run_id}:failed",
            "event": FAILURE_EVENT,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "run": {"dag_id": steps.DAG_ID, "run_id": run_id},
            "reason": str(context.get("reason") or "failed"),
            "failedTask": getattr(ti, "task_id", None),
            "problems": problems,
            "report": str(layout.report),
            "auditTrailer": {"auditId": str(uuid.uuid4()), "status": "run_failed"},
        }
        target = steps.webhook_target()
        if target is None:
            return
        delivery = WebhookSender(target).send(event)
        log.info("run failure notification for %s: delivered=%s attempts=%d", run_id, delivery.ok, delivery.attempts)
