"""``CrmWebhookHook``: the CRM webhook of an ``http`` connection, as a :class:`~cxone_provider.crm_webhook.WebhookTarget`."""

from __future__ import annotations

import copy
import logging
from typing import Any

from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from cxone_provider.connections import connection_url, parse_bool
from cxone_provider.crm_webhook import DEFAULT_GIVE_UP_AFTER, WEBHOOK_RETRY_POLICY, WebhookSender, WebhookTarget
from cxone_provider.retry import RetryPolicy

log = logging.getLogger(__name__)


class CrmWebhookHook(BaseHook):
    """
    Deliver events to the CRM webhook an Airflow ``http`` connection points at.

    Connection: ``host`` (a URL, or a host with ``schema`` and ``port``, see
    :func:`~cxone_provider.connections.connection_url`), ``password`` (signs each body, optional). Extras (all
    optional): ``endpoint``, ``timeout`` (seconds, default 5), ``verify_ssl`` (default true) and the retry
    policy's ``max_attempts``, ``backoff_base_s``, ``backoff_max_s``, ``retry_after_cap_s``.

    :param http_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "crm_webhook"
    conn_type = "http"
    hook_name = "CRM webhook"

    def __init__(self, http_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id

    def get_target(self) -> WebhookTarget | None:
        """The target, or None when the connection is not defined (no webhook configured).

        Any other failure (the secrets backend, a malformed extra) raises: it is not the same as "not set".
        """
        try:
            conn = self.get_connection(self.http_conn_id)
        except AirflowNotFoundException:
            log.warning("no %s connection: webhook events are not sent", self.http_conn_id)
            return None
        extra = copy.deepcopy(conn.extra_dejson)
        name = f"connection {self.http_conn_id}"
        return WebhookTarget(
            url=connection_url(conn.host, conn.schema, conn.port, extra.get("endpoint")),
            secret=conn.password or None,
            timeout_s=float(extra.get("timeout", 5)),
            verify=parse_bool(extra.get("verify_ssl", True), name=f"{name}: verify_ssl"),
            give_up_after=int(extra.get("give_up_after", DEFAULT_GIVE_UP_AFTER)),
            retry_policy=RetryPolicy.from_extras(extra.get, WEBHOOK_RETRY_POLICY),
        )

    def get_conn(self) -> WebhookSender | None:
        """A sender for the target (the caller closes it), or None when no webhook is configured."""
        target = self.get_target()
        return WebhookSender(target) if target is not None else None
