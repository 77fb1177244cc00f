"""
The CXone connection form, declared as data (no Airflow or UI imports).

Airflow 3.2+ renders connection forms in React from the provider info's ``conn-fields`` (JSON
schema per extra field) and ``ui-field-behaviour``; ``get_provider_info()`` publishes these two
dicts, and ``CXoneHook``'s legacy ``get_connection_form_widgets``/``get_ui_field_behaviour`` derive
from them for older Airflow versions.
"""

from __future__ import annotations

from typing import Any

from cxone_provider.call_lists import DEFAULT_API_VERSION, DEFAULT_AUTH_BASE_URL
from cxone_provider.client import DEFAULT_SCOPE

DEFAULT_REGION = "us"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_REQUESTS_PER_MINUTE = 1000
DEFAULT_MAX_CONCURRENCY = 32
"""Requests one import task keeps in flight at most. The tenant's budget sets the rate (senders sleep until their
slot), so this only has to cover budget x response time: 6000/min at 100 ms needs 10, at 300 ms 30. With 8, one
task could not fill 6000/min at 100 ms (at most 80 requests/s)."""
API_PROFILES = ("records", "call_lists")
DEFAULT_UPLOAD_RECORDS_PER_FILE = 1000  # far below the documented 500,000: a failed file costs little
MAX_LIST_EXPIRATION_DAYS = 30
"""NICE keeps at most 30 days of calling-list inventory (or 1,000,000 records, whichever is less), and 30 days is
its default record expiration for a business unit and a skill: a longer ``expirationDate`` buys nothing."""
DEFAULT_LIST_EXPIRATION_DAYS = MAX_LIST_EXPIRATION_DAYS

CONN_FIELDS: dict[str, dict[str, Any]] = {
    "api_profile": {
        "label": "API profile",
        "description": "records: the contact-list records API (login/password = OAuth2 client). call_lists: NICE's "
        "documented calling-list API (login/password = access key id/secret, plus the OIDC client below).",
        "schema": {"type": ["string", "null"], "enum": list(API_PROFILES), "default": API_PROFILES[0]},
    },
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
        "description": "Most requests one import task keeps in flight (sender threads). The budget sets the rate; "
        "this must cover budget x response time (6000/min at 300 ms needs 30).",
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
    # the call_lists profile
    "client_id": {
        "label": "OIDC client id (call_lists)",
        "description": "The application's client id, sent as HTTP Basic with each token request.",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret": {
        "label": "OIDC client secret (call_lists)",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "auth_base_url": {
        "label": "Auth base URL (call_lists)",
        "description": "Where OpenID and API discovery live.",
        "schema": {"type": ["string", "null"], "default": DEFAULT_AUTH_BASE_URL},
    },
    "api_base_url": {
        "label": "API base URL (call_lists)",
        "description": "The tenant's api_endpoint; set it to skip API discovery.",
        "schema": {"type": ["string", "null"]},
    },
    "api_version": {
        "label": "API version (call_lists)",
        "schema": {"type": ["string", "null"], "default": DEFAULT_API_VERSION},
    },
    "allowed_hosts": {
        "label": "Allowed hosts (call_lists)",
        "description": "Base URLs besides NICE's domains that discovery may name (a proxy), comma-separated. Any "
        "other host discovery names is refused before a credential is sent.",
        "schema": {"type": ["string", "null"]},
    },
    "skill_id": {
        "label": "Skill id (call_lists)",
        "description": "The outbound skill each upload names.",
        "schema": {"type": ["string", "null"]},
    },
    "default_time_zone": {
        "label": "Default time zone (call_lists)",
        "description": "For records without a time zone column.",
        "schema": {"type": ["string", "null"]},
    },
    "external_id_column": {
        "label": "External id column (call_lists)",
        "description": "The CSV column (and the list's externalIdColumn) that carries the contactId.",
        "schema": {"type": ["string", "null"], "default": "contactId"},
    },
    "upload_records_per_file": {
        "label": "Records per upload file (call_lists)",
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 500000,
                   "default": DEFAULT_UPLOAD_RECORDS_PER_FILE},
    },
    "list_expiration_days": {
        "label": "Record expiration in days (call_lists)",
        "description": "Each upload's expirationDate: its records leave the list this many days after the upload "
        "(NICE keeps at most 30 days of inventory). The DAG param of the same name overrides it per run.",
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_LIST_EXPIRATION_DAYS,
                   "default": DEFAULT_LIST_EXPIRATION_DAYS},
    },
    "dnc_group_id": {
        "label": "DNC group id (call_lists)",
        "description": "Optional. With sync_mode upsert or mirror, every phone of a contact who withdrew consent is "
        "added to this do-not-call group (the group must exist).",
        "schema": {"type": ["string", "null"]},
    },
    "start_skill": {
        "label": "Start the skill after each upload (call_lists)",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
    "send_email": {
        "label": "E-mail when an upload completes (call_lists)",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # the base URL is the "host" extra above; the standard host/port/schema fields are still read
    # when a connection defined as a URI or in JSON sets them.
    "hidden-fields": ["host", "port", "schema"],
    "relabeling": {"login": "Client ID", "password": "Client Secret"},
    "placeholders": {
        "login": "OAuth2 client id (records) or access key id (call_lists)",
        "password": "OAuth2 client secret (records) or access key secret (call_lists)",
        "host": "https://api.cloud.nice-incontact.com or http://127.0.0.1:8765",
        "extra": '{"region": "us", "requests_per_minute": 1000}',
    },
}
