"""deploy/helm/values.yaml against the official chart's values.schema.json at the pinned chart version
(deploy/helm/chart-schema/), and against the rules the chart checks in templates (check-values.yaml) or that this
project needs, which a schema cannot say."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "deploy" / "helm"
CHART_VERSION = "1.19.0"
CHART_APP_VERSION = "3.1.7"  # chart/Chart.yaml appVersion of 1.19.0: the schema's default Airflow tag


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((HELM / "chart-schema" / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def schema_errors(schema: dict, values: dict) -> list[str]:
    errors = jsonschema.Draft7Validator(schema).iter_errors(values)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors)


def env_names(values: dict) -> set[str]:
    return {e["name"] for e in values.get("env", [])} | {s["envName"] for s in values.get("secret", [])}


def test_the_pinned_chart_version_is_the_one_everything_names(schema):
    assert f"Helm chart {CHART_VERSION}" in (HELM / "chart-schema" / "README.md").read_text()
    assert f"--version {CHART_VERSION}" in (HELM / "values.yaml").read_text()
    assert schema["properties"]["defaultAirflowTag"]["default"] == CHART_APP_VERSION


def test_values_validate_against_the_chart_schema(schema, values):
    assert schema_errors(schema, values) == []


def test_every_top_level_key_is_one_the_chart_knows(schema, values):
    """The chart's schema lets unknown top-level keys through (a typo there is silently ignored); this does not."""
    assert set(values) <= set(schema["properties"])


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (lambda v: v["workers"]["celery"].update(replicas="two"), "workers.celery.replicas"),
        (lambda v: v["images"]["airflow"].update(tags="latest"), "images.airflow"),
        (lambda v: v["secret"].append({"envName": "X"}), "secret.4"),
    ],
    ids=["wrong-type", "unknown-key", "missing-required"],
)
def test_the_schema_refuses_what_the_chart_would_not_take(schema, values, change, reported):
    broken = copy.deepcopy(values)
    change(broken)
    assert any(error.startswith(reported) for error in schema_errors(schema, broken))


def test_celery_workers_are_sized_with_the_current_key(values):
    assert values["executor"] == "CeleryExecutor"
    assert values["workers"]["celery"]["replicas"] >= 1
    assert "replicas" not in values["workers"], "workers.replicas is deprecated for workers.celery.replicas"


def test_the_custom_image_runs_the_pinned_airflow(values):
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)[1]
    assert values["airflowVersion"] == pinned
    assert values["images"]["airflow"]["repository"] and values["images"]["airflow"]["tag"]
    assert f"FROM apache/airflow:{pinned}-" in (HELM / "Dockerfile").read_text()


def test_airflow_3_secrets_and_components(values):
    assert values["apiSecretKeySecretName"] and values["jwtSecretName"] and values["fernetKeySecretName"]
    assert values["triggerer"]["enabled"] and values["dagProcessor"]["enabled"]
    assert values["dagProcessor"]["dagBundleConfigList"], "DAGs come from a bundle"
    assert not values["dags"]["gitSync"]["enabled"], "git-sync is planned for removal in favour of DAG bundles"


def test_the_chart_redis_password_reaches_broker_and_budget(values):
    """check-values.yaml: with redis.passwordSecretName the broker URL must come from a secret too; the budget URL
    must carry the same password, so it lives in the same secret."""
    redis_secret = values["redis"]["passwordSecretName"]
    assert "password" not in values["redis"]
    assert values["data"]["brokerUrlSecretName"] == redis_secret
    budget = [s for s in values["secret"] if s["envName"] == "CXONE_RATE_BUDGET_URL"]
    assert budget and budget[0]["secretName"] == redis_secret


def test_the_metadata_db_names_its_driver(values):
    """The chart builds `postgresql://` from data.metadataConnection; SQLAlchemy 2.1 takes that for psycopg 3, which
    requirements.txt does not install. A secret carries the postgresql+psycopg2:// URL instead."""
    assert values["data"]["metadataSecretName"] and "metadataConnection" not in values["data"]
    assert "postgresql+psycopg2://" in (HELM / "values.yaml").read_text()
    assert "psycopg2-binary==" in (ROOT / "requirements.txt").read_text()


def test_every_component_gets_what_the_import_needs(values):
    """`env` and `secret` reach every Airflow container of the chart (scheduler, workers, triggerer, api-server,
    dag-processor): the connections, the storage base and the shared budget."""
    assert {
        "AIRFLOW_CONN_CXONE_DEFAULT", "AIRFLOW_CONN_CRM_WEBHOOK", "CXONE_IMPORT_STORAGE_BASE", "CXONE_RATE_BUDGET_URL"
    } <= env_names(values)
    storage = next(e["value"] for e in values["env"] if e["name"] == "CXONE_IMPORT_STORAGE_BASE")
    assert not storage.startswith("file:"), "pods do not share a local folder"
