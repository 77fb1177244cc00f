"""Airflow provider for NICE CXone contact-list imports: typed errors, HTTP client, retry policy, rate limiter,
``CXoneHook``, the CRM webhook (``CrmWebhookHook``), the run-failed notifier, and the deferrable
``ImportGroupOperator`` beside the ``CallListJobsTrigger`` it defers on. Imports nothing from ``include/``."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

PACKAGE_NAME = "cxone-airflow-provider"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ``apache_airflow_provider`` entry point (provider_info schema)."""
    from cxone_provider.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR

    return {
        "package-name": PACKAGE_NAME,
        "name": "NICE CXone",
        "description": "Import outbound contact lists into NICE CXone through its contact-list records API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "NICE CXone",
                "external-doc-url": "https://developer.niceincontact.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "NICE CXone",
                "python-modules": ["cxone_provider.hooks.cxone"],
            }
        ],
        "notifications": ["cxone_provider.notifiers.run_failed.CrmRunFailedNotifier"],
        "connection-types": [
            {
                "hook-class-name": "cxone_provider.hooks.cxone.CXoneHook",
                "hook-name": "NICE CXone",
                "connection-type": "cxone",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
