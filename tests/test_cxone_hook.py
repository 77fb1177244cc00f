"""CXoneHook against the local sandbox: client built from an Airflow connection, test_connection, provider info."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import airflow
from cxone_provider import get_provider_info
from cxone_provider.connection_form import DEFAULT_MAX_CONCURRENCY
from cxone_provider.hooks.cxone import CXoneHook
from cxone_provider.retry import RetryPolicy
from include.cxone_sandbox import CXoneSandbox, SandboxConfig
from tests.ports import free_port

CONN_ID = "cxone_test"
CONN_ENV = "AIRFLOW_CONN_CXONE_TEST"
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret-hook-41d2"
LIST_ID = "list-hook"
UNREACHABLE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
AIRFLOW_DIR = Path(airflow.__file__).parent
PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
RECORD = {
    "contactId": "crm-1",
    "phoneNumbers": [{"type": "mobile", "number": "+14155550100"}],
    "consentTimestamp": "2024-11-01T09:15:00.000Z",
    "optInStatus": "confirmed",
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[CXoneSandbox]:
    with CXoneSandbox(SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)) as server:
        yield server


@pytest.fixture
def set_connection(monkeypatch) -> Callable[..., None]:
    """Define connection `cxone_test` through its AIRFLOW_CONN_ environment variable, in JSON form."""

    def define(**fields: Any) -> None:
        connection = {"conn_type": "cxone", "login": CLIENT_ID, "password": CLIENT_SECRET, **fields}
        monkeypatch.setenv(CONN_ENV, json.dumps(connection))

    return define


@pytest.fixture
def sandbox_hook(sandbox, set_connection) -> Iterator[CXoneHook]:
    sandbox.reset()
    set_connection(extra={"host": sandbox.url, "requests_per_minute": 600, "max_concurrency": 4, "timeout": 7})
    hook = CXoneHook(CONN_ID, retry_policy=RetryPolicy(backoff_base_s=0.0))
    yield hook
    if "client" in hook.__dict__:
        hook.client.close()


def test_hook_builds_client_from_connection(sandbox, sandbox_hook) -> None:
    client = sandbox_hook.get_client()

    assert client.base_url == sandbox.url
    assert client.timeout == 7.0
    assert client.rate_limiter is sandbox_hook.rate_limiter
    assert sandbox_hook.rate_limiter.budget_per_minute == 600
    assert (sandbox_hook.requests_per_minute, sandbox_hook.max_concurrency) == (600.0, 4)
    assert client.retry_policy == RetryPolicy(backoff_base_s=0.0)
    client.close()


def test_hook_import_batch_creates_records(sandbox, sandbox_hook) -> None:
    result = sandbox_hook.import_batch(LIST_ID, [RECORD])

    assert result.created == 1
    assert sandbox.records(LIST_ID) == [RECORD]
    assert sandbox_hook.rate_limiter.stats.acquired == 1


def test_default_budget_store_is_a_file_under_airflow_home(set_connection, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("CXONE_RATE_BUDGET_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    set_connection(extra={"host": UNREACHABLE_URL})

    hook = CXoneHook(CONN_ID)

    assert hook.rate_budget_url == f"sqlite:///{tmp_path}/cxone-rate-budget.sqlite"
    assert (tmp_path / "cxone-rate-budget.sqlite").exists() is False  # opened only when a limiter is built
    assert hook.get_client().rate_limiter.store.url == hook.rate_budget_url
    assert (tmp_path / "cxone-rate-budget.sqlite").exists()


@pytest.mark.parametrize(
    ("extra_url", "env_url", "expected"),
    [
        pytest.param("memory://from-extra", "memory://from-env", "memory://from-extra", id="extra-wins"),
        pytest.param(None, "memory://from-env", "memory://from-env", id="env-when-no-extra"),
    ],
)
def test_budget_store_url_from_extra_then_env(set_connection, monkeypatch, extra_url, env_url, expected) -> None:
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", env_url)
    set_connection(extra={"host": UNREACHABLE_URL, **({"rate_budget_url": extra_url} if extra_url else {})})

    assert CXoneHook(CONN_ID).rate_limiter.store.url == expected


def test_every_hook_of_a_tenant_shares_one_budget(set_connection, monkeypatch) -> None:
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", "memory://tenant-share")
    set_connection(extra={"host": UNREACHABLE_URL, "requests_per_minute": 6000})
    first, second = CXoneHook(CONN_ID).rate_limiter, CXoneHook(CONN_ID).rate_limiter
    set_connection(login="another-client", extra={"host": UNREACHABLE_URL, "requests_per_minute": 6000})
    other_tenant = CXoneHook(CONN_ID).rate_limiter

    first.penalize(30.0)

    assert (first.store, first.key) == (second.store, second.key)
    assert second.acquire() >= 29.0
    assert other_tenant.key != first.key and other_tenant.acquire() < 1.0
    assert CLIENT_SECRET not in first.key


def test_one_run_at_a_time_holds_a_contact_list(set_connection, monkeypatch) -> None:
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", "memory://list-lease")
    set_connection(extra={"host": UNREACHABLE_URL})
    hook = CXoneHook(CONN_ID)

    assert hook.acquire_list_lease("list-a", "run-1", ttl_s=600) == "run-1"
    assert hook.acquire_list_lease("list-a", "run-2", ttl_s=600) == "run-1"
    assert hook.acquire_list_lease("list-b", "run-2", ttl_s=600) == "run-2"  # another list runs at the same time
    assert hook.release_list_lease("list-a", "run-1")
    assert hook.acquire_list_lease("list-a", "run-2", ttl_s=600) == "run-2"


def test_issued_tokens_are_registered_with_the_secret_masker(sandbox_hook) -> None:
    from airflow.sdk.log import redact

    token = sandbox_hook.get_client().fetch_token()

    assert token not in str(redact(f"Authorization: Bearer {token}"))


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        pytest.param({}, "https://api.cloud.nice-incontact.com", id="default-region-us"),
        pytest.param({"extra": {"region": "eu"}}, "https://api-eu.cloud.nice-incontact.com", id="region-eu"),
        pytest.param(
            {"extra": {"extra__cxone__region": "eu"}}, "https://api-eu.cloud.nice-incontact.com", id="legacy-prefixed"
        ),
        pytest.param({"extra": {"host": "http://127.0.0.1:8765"}}, "http://127.0.0.1:8765", id="host-extra"),
        pytest.param(
            {"host": "127.0.0.1", "port": 8765, "schema": "http"}, "http://127.0.0.1:8765", id="connection-host-port"
        ),
        pytest.param({"host": "api-au.example.com"}, "https://api-au.example.com", id="connection-host-https"),
        pytest.param(
            {"host": "ignored.example.com", "extra": {"host": "https://proxy.example.com", "region": "eu"}},
            "https://proxy.example.com",
            id="host-extra-wins",
        ),
    ],
)
def test_base_url_from_connection(set_connection, fields, base_url) -> None:
    set_connection(**fields)

    assert CXoneHook(CONN_ID).base_url == base_url


def test_defaults_when_extras_are_absent(set_connection) -> None:
    set_connection()
    hook = CXoneHook(CONN_ID)

    assert (hook.requests_per_minute, hook.max_concurrency, hook.timeout, hook.verify_ssl) == (1000.0, DEFAULT_MAX_CONCURRENCY, 30.0, True)
    assert hook.scope == "contactlists:write contactlists:read"


@pytest.mark.parametrize(
    ("extra", "attribute", "expected"),
    [
        pytest.param({"verify_ssl": "false"}, "verify_ssl", False, id="verify-ssl-string"),
        pytest.param({"verify_ssl": False}, "verify_ssl", False, id="verify-ssl-bool"),
        pytest.param({"requests_per_minute": "250"}, "requests_per_minute", 250.0, id="rpm-string"),
        pytest.param({"max_concurrency": "2"}, "max_concurrency", 2, id="concurrency-string"),
    ],
)
def test_extras_are_coerced(set_connection, extra, attribute, expected) -> None:
    set_connection(extra=extra)

    assert getattr(CXoneHook(CONN_ID), attribute) == expected


@pytest.mark.parametrize(
    ("extra", "attribute"),
    [
        pytest.param({"verify_ssl": "maybe"}, "verify_ssl", id="verify-ssl"),
        pytest.param({"requests_per_minute": "fast"}, "requests_per_minute", id="rpm-text"),
        pytest.param({"requests_per_minute": 0}, "requests_per_minute", id="rpm-zero"),
        pytest.param({"max_concurrency": -1}, "max_concurrency", id="concurrency-negative"),
    ],
)
def test_invalid_extras_are_refused(set_connection, extra, attribute) -> None:
    set_connection(extra=extra)

    with pytest.raises(ValueError, match=attribute):
        getattr(CXoneHook(CONN_ID), attribute)


def test_extras_are_copied_not_mutated(set_connection) -> None:
    set_connection(extra={"region": "us"})
    hook = CXoneHook(CONN_ID)

    hook.extras["region"] = "eu"

    assert hook.connection.extra_dejson == {"region": "us"}


def test_test_connection_ok(sandbox, sandbox_hook) -> None:
    ok, message = sandbox_hook.test_connection()

    assert ok is True
    assert sandbox.url in message
    assert sandbox.stats()["token_requests"] == 1


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"password": "wrong-secret-value"}, "401 Unauthorized", id="wrong-secret"),
        pytest.param({"login": None}, "client id", id="missing-login"),
        pytest.param({"extra": {"host": f"http://127.0.0.1:{free_port()}"}}, "Connection refused", id="unreachable"),
    ],
)
def test_test_connection_failure_returns_the_reason(sandbox, set_connection, fields, expected) -> None:
    set_connection(**{"extra": {"host": sandbox.url}, **fields})

    ok, message = CXoneHook(CONN_ID).test_connection()

    assert ok is False
    assert expected in message
    assert "wrong-secret-value" not in message and CLIENT_SECRET not in message


def test_wrong_secret_message_carries_server_error(sandbox, set_connection) -> None:
    set_connection(password="wrong-secret-value", extra={"host": sandbox.url})

    ok, message = CXoneHook(CONN_ID).test_connection()

    assert not ok
    assert "invalid_client" in message and "request id" in message


# ---- provider metadata ------------------------------------------------------------------------


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((AIRFLOW_DIR / name).read_text())


def test_provider_info_matches_airflow_runtime_schema() -> None:
    info = get_provider_info()

    jsonschema.validate(info, load_schema("provider_info.schema.json"))
    assert info["package-name"] == "cxone-airflow-provider"
    assert info["connection-types"][0]["hook-class-name"] == "cxone_provider.hooks.cxone.CXoneHook"
    assert info["connection-types"][0]["connection-type"] == CXoneHook.conn_type


def test_connection_form_matches_provider_yaml_schema() -> None:
    """conn-fields and ui-field-behaviour are what Airflow 3.2+ renders; check them against the strict schema."""
    connection_types_schema = load_schema("provider.yaml.schema.json")["properties"]["connection-types"]

    jsonschema.validate(get_provider_info()["connection-types"], connection_types_schema)


def test_legacy_ui_field_behaviour_matches_provider_info() -> None:
    behaviour = CXoneHook.get_ui_field_behaviour()

    jsonschema.validate(behaviour, load_schema("customized_form_field_behaviours.schema.json"))
    declared = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    assert behaviour["hidden_fields"] == declared["hidden-fields"]
    assert behaviour["relabeling"] == {"login": "Client ID", "password": "Client Secret"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec pattern class used inside Airflow
def test_plugin_scan_skips_the_provider_package() -> None:
    """plugins/.airflowignore keeps Airflow from exec-ing cxone_provider/*.py (and the report app's package) as
    top-level plugin modules; the one plugin module it loads is the report UI plugin."""
    from airflow._shared.module_loading import find_path_from_directory

    scanned = [Path(path) for path in find_path_from_directory(str(PLUGINS_DIR), ".airflowignore", "glob")]

    assert [path.name for path in scanned if path.suffix == ".py"] == ["cxone_report_plugin.py"]


def test_installed_provider_is_discovered_by_airflow() -> None:
    try:
        importlib.metadata.distribution("cxone-airflow-provider")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("cxone-airflow-provider is not installed: uv pip install --python .venv/bin/python -e plugins")
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    runtime_hook = ProvidersManagerTaskRuntime().hooks["cxone"]
    manager = ProvidersManager()

    assert "cxone-airflow-provider" in manager.providers
    assert runtime_hook is not None
    assert runtime_hook.hook_class_name == "cxone_provider.hooks.cxone.CXoneHook"
    assert runtime_hook.connection_id_attribute_name == "cxone_conn_id"
    assert {"extra__cxone__region", "extra__cxone__requests_per_minute", "extra__cxone__verify_ssl"} <= set(
        manager.connection_form_widgets
    )
    assert manager.field_behaviours["cxone"]["relabeling"]["password"] == "Client Secret"
