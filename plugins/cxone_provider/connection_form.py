"""
The CXone connection form, declared as data (no Airflow or UI imports).

Airflow 3.2+ renders connection forms in React from the provider info's ``conn-fields`` (JSON
schema per extra field) and ``ui-field-behaviour``; ``get_provider_info()`` publishes these two
dicts, and ``CXoneHook``'s legacy ``get_connection_form_widgets``/``get_ui_field_behaviour`` derive
from them for older Airflow versions.
"""

from __future__ import annotations

from typing import Any

from cxone_provider.client import DEFAULT_SCOPE

DEFAULT_REGION = "us"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_REQUESTS_PER_MINUTE = 1000
DEFAULT_MAX_CONCURRENCY = 8

CONN_FIELDS: dict[str, dict[str, Any]] = {
    "region": {
        "label": "Region",
        "description": "CXone API region (us or eu); ignored when Host is set.",
        "schema": {"type": ["string", "null"], "enum": ["us", "eu"], "default": DEFAULT_REGION},
    },
    "host": {
        "label": "Host",
        "description": "Explicit API base URL for another region, a proxy or the local sandbox; overrides Region.",
        "schema": {"type": ["string", "null"]},
    },
    "scope": {
        "label": "OAuth2 scope",
        "schema": {"type": ["string", "null"], "default": DEFAULT_SCOPE},
    },
    "requests_per_minute": {
        "label": "Requests per minute",
        "description": "Request budget shared by all senders of one task.",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_REQUESTS_PER_MINUTE},
    },
    "max_concurrency": {
        "label": "Max concurrent requests",
        "description": "Sender threads one task may use.",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_MAX_CONCURRENCY},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Per-attempt connect and read timeout.",
        "schema": {"type": ["number", "null"], "minimum": 0, "default": DEFAULT_TIMEOUT_S},
    },
    "verify_ssl": {
        "label": "Verify TLS certificates",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # the base URL is the "host" extra above; the standard host/port/schema fields are still read
    # when a connection defined as a URI or in JSON sets them.
    "hidden-fields": ["host", "port", "schema"],
    "relabeling": {"login": "Client ID", "password": "Client Secret"},
    "placeholders": {
        "login": "OAuth2 client id",
        "password": "OAuth2 client secret",
        "host": "https://api.cloud.nice-incontact.com or http://127.0.0.1:8765",
        "extra": '{"region": "us", "requests_per_minute": 1000}',
    },
}
