"""DAG integrity: it parses, it is wired as documented, and its params refuse bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "cxone_contact_import"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.get_dag(DAG_ID)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dag_ids


def test_pipeline_shape(dag):
    assert dag.tags and {"cxone", "outbound"} <= set(dag.tags)
    assert dag.max_active_runs > 1  # runs for different contact lists go on side by side (a lease per list)
    order = {t.task_id: {d.task_id for d in t.downstream_list} for t in dag.tasks}
    assert order["extract"] == {"validate", "report"}
    assert "chunk" in order["validate"]
    assert order["chunk"] >= {"import_batches", "approve_removals", "report"}
    assert order["approve_removals"] == {"import_batches"}  # a mirror run's bulk removals wait for a human here
    assert order["import_batches"] == {"notify_webhook"}
    assert order["notify_webhook"] == {"report"}


def test_retries_pool_and_trigger_rules(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    for task_id in ("extract", "validate", "chunk"):
        assert tasks[task_id].retries >= 1
    assert tasks["import_batches"].retries >= 2
    assert tasks["import_batches"].pool == "cxone_api"
    assert tasks["import_batches"].max_active_tis_per_dagrun is None  # no static split of the budget
    assert tasks["notify_webhook"].trigger_rule == "all_done"
    assert tasks["report"].trigger_rule == "all_done"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        pytest.param("batch_size", 0, id="batch-size-0"),
        pytest.param("batch_size", 101, id="batch-size-101"),
        pytest.param("max_consent_age_days", 0, id="consent-age-0"),
        pytest.param("source_uri", "not a uri", id="source-not-uri"),
        pytest.param("max_reject_share", 1.5, id="reject-share-over-1"),
        pytest.param("contact_list_id", "bad id!", id="list-id-chars"),
    ],
)
def test_params_refuse_bad_values(dag, param, value):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError):
        params[param] = value


def test_good_params_pass(dag):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    params["batch_size"] = 100
    params["source_uri"] = "s3://crm-exports/contacts_2026-11-27.csv"
    params["contact_list_id"] = "65a1b2c3d4e5f60012345678"
    params.validate()


def test_params_are_documented(dag):
    for name, param in dag.params.items():
        assert param.schema.get("title"), name
        assert param.description, name
        assert "type" in param.schema, name


def test_settings_declare_what_the_dag_uses():
    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())["airflow"]
    assert {c["conn_id"] for c in settings["connections"]} >= {"cxone_default", "crm_webhook"}
    assert "cxone_api" in {p["pool_name"] for p in settings["pools"]}
    assert "cxone_contact_list_id" in {v["variable_name"] for v in settings["variables"]}
