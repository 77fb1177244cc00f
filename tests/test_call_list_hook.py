"""CXoneHook on the call_lists profile: the connection's extras, test_connection against the calling-list sandbox,
and nothing secret in its messages."""

from __future__ import annotations

import json

import pytest

from cxone_provider.hooks.cxone import CXoneHook
from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig
from tools.localrun import call_list_connection_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sandbox():
    with CallListSandbox(CallListSandboxConfig()) as running:
        yield running


def use_connection(monkeypatch, sandbox_url: str, **extra) -> CXoneHook:
    env = call_list_connection_env(sandbox_url, "http://127.0.0.1:9", extra=extra)
    monkeypatch.setenv("AIRFLOW_CONN_CXONE_DEFAULT", env["AIRFLOW_CONN_CXONE_DEFAULT"])
    return CXoneHook()


def test_profile_and_options_come_from_the_extras(monkeypatch, sandbox):
    hook = use_connection(monkeypatch, sandbox.url, upload_records_per_file=900_000, skill_id="4600123")

    assert hook.api_profile == "call_lists"
    assert hook.base_url == sandbox.url
    options = hook.call_list_options
    assert options["upload_records_per_file"] == 500_000, "never more than the documented file limit"
    assert options["skill_id"] == "4600123" and options["external_id_column"] == "contactId"
    assert "secret" not in json.dumps(options)


def test_unknown_profile_is_refused(monkeypatch, sandbox):
    hook = use_connection(monkeypatch, sandbox.url, api_profile="soap")

    with pytest.raises(ValueError, match="api_profile must be one of records, call_lists"):
        hook.api_profile


def test_test_connection_runs_discovery_token_and_a_list_read(monkeypatch, sandbox):
    ok, message = use_connection(monkeypatch, sandbox.url).test_connection()

    assert ok, message
    assert CallListSandboxConfig().tenant_id in message and "0 calling lists" in message
    assert sandbox.stats()["token_requests"] == 1


@pytest.mark.parametrize("knob", ["client_secret", "access_key_secret"], ids=["oidc-client", "access-key"])
def test_test_connection_names_the_refusal_without_secrets(monkeypatch, sandbox, knob):
    sandbox.configure(**{knob: "rotated-elsewhere"})

    ok, message = use_connection(monkeypatch, sandbox.url).test_connection()

    assert not ok and "token request" in message
    config = CallListSandboxConfig()
    assert config.client_secret not in message and config.access_key_secret not in message


def test_missing_oidc_client_is_named(monkeypatch, sandbox):
    hook = use_connection(monkeypatch, sandbox.url, client_id="")

    ok, message = hook.test_connection()

    assert not ok and "client_id and client_secret" in message
