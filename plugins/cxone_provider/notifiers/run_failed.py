"""Tell the CRM when a run fails: an Airflow notifier posting one event to the CRM webhook connection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier

from cxone_provider.hooks.crm_webhook import CrmWebhookHook

log = logging.getLogger(__name__)


class CrmRunFailedNotifier(BaseNotifier):
    """
    DAG ``on_failure_callback``: one signed, keyed event describing the failed run.

    :param build_event: turns the callback's context into the event (``eventId`` and ``event`` required); the
        DAG's own module knows where its report lives, the notifier only delivers.
    :param http_conn_id: the CRM webhook connection; nothing is sent when it is not defined.
    """

    template_fields = ()

    def __init__(
        self, build_event: Callable[[Any], dict[str, Any]], http_conn_id: str = CrmWebhookHook.default_conn_name
    ) -> None:
        super().__init__()
        self.build_event = build_event
        self.http_conn_id = http_conn_id

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing is templated; skipping this also spares dag.test's serialized DAG (it has no Jinja env)."""

    def notify(self, context: Any) -> None:
        sender = CrmWebhookHook(self.http_conn_id).get_conn()
        if sender is None:
            return
        event = self.build_event(context)
        try:
            delivery = sender.send(event)
        finally:
            sender.close()
        log.info("run failure notification %s: delivered=%s attempts=%d", event["eventId"], delivery.ok, delivery.attempts)
