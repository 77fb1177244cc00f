"""Run folders never collide: run ids (and DAG ids, contact list ids) become folder names injectively, Airflow's own
run ids keep the folders they always had, and every task writes under the DAG id of the DAG it runs in, so a second
import DAG built from the same file shares no folder, state or CRM event key with the first."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from cxone_runs.layout import RunLayout, dag_ids_with_runs, group_index_of, safe_segment
from cxone_runs.report import read_report
from cxone_runs.segments import MAX_SEGMENT_CHARS, name_of, path_segment
from tests.conftest import CONTACT_LIST_ID

GENERATED = {
    "manual__2026-11-27T06:31:23+00:00": "manual__2026-11-27T06_31_23_00_00",
    "scheduled__2026-11-30T02:00:00+00:00": "scheduled__2026-11-30T02_00_00_00_00",
    "backfill__2026-11-01T02:00:00+00:00": "backfill__2026-11-01T02_00_00_00_00",
    "asset_triggered__2026-11-27T06:31:23.123456+00:00": "asset_triggered__2026-11-27T06_31_23.123456_00_00",
    "manual__2026-11-27T06:31:23.123456+00:00_AbCd1234": "manual__2026-11-27T06_31_23.123456_00_00_AbCd1234",
}
# run ids Airflow's default allowed_run_id_pattern (^[A-Za-z0-9_.~:+-]+$) lets anyone who may trigger the DAG choose;
# safe_segment used to give all of them the first one's folder
CRAFTED = [
    "manual__2026-11-27T06:31:23+00:00",
    "manual__2026-11-27T06_31_23_00_00",
    "manual__2026-11-27T06~31~23+00:00",
    "manual__2026-11-27T06+31+23:00:00",
    "manual__2026-11-27T06:31:23+00:00_",
    "_manual__2026-11-27T06:31:23+00:00",
]


@pytest.mark.parametrize(("run_id", "folder"), GENERATED.items(), ids=list(GENERATED))
def test_airflow_generated_run_ids_keep_their_folder(run_id, folder):
    assert safe_segment(run_id) == folder


def test_crafted_run_ids_get_folders_of_their_own():
    folders = [safe_segment(run_id) for run_id in CRAFTED]
    assert len(set(folders)) == len(CRAFTED), dict(zip(CRAFTED, folders, strict=True))


@pytest.mark.parametrize("name", [".", "..", "a/../b", "/etc", "~", "a~3Ab", "ünï code", "x" * 300])
def test_a_name_stays_one_segment_inside_its_parent(name):
    folder = safe_segment(name)
    assert "/" not in folder and folder not in (".", "..") and not folder.startswith(".")
    assert len(folder) <= MAX_SEGMENT_CHARS
    assert name_of(folder) in (name, None)


def test_the_encoding_is_injective_on_random_names():
    rng = random.Random(23)
    alphabet = "a_:+~.-= /ü9T"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(20_000)}
    names |= set(GENERATED) | set(CRAFTED)
    folders = {path_segment(name) for name in names}
    assert len(folders) == len(names)
    for name in names - set(GENERATED):
        assert name_of(path_segment(name)) == name


# every file of a run folder as RunLayout names it: runs already on storage, and the tools and people reading them,
# rely on these names
RUN_FILES = [  # (name, arguments of the method or None for a property, path under the run folder)
    ("extract_part", (3,), "extract/part-00003.parquet"),
    ("valid_part", (3,), "valid/part-00003.parquet"),
    ("group_file", (3,), "groups/group-00003.parquet"),
    ("list_key", None, "list_key.json"),
    ("list_lease", None, "list_lease.json"),
    ("call_list", None, "call_list.json"),
    ("changes_decision", None, "changes.parquet"),
    ("changes_summary", None, "changes.json"),
    ("checkpoints_dir", None, "checkpoints"),
    ("inflight_dir", None, "inflight"),
    ("upload_state", (3,), "uploads/group-00003/state.json"),
    ("upload_before", (3,), "uploads/group-00003/before.parquet"),
    ("upload_round", (3, 2), "uploads/group-00003/round-02.parquet"),
    ("upload_updates", (3,), "uploads/group-00003/updates.parquet"),
    ("upload_update_outcomes", (3,), "uploads/group-00003/update-outcomes.parquet"),
    ("upload_sync_state", (3,), "uploads/group-00003/sync.json"),
    ("upload_sync_before", (3, "ab12"), "uploads/group-00003/sync-before-ab12.parquet"),
    ("outcomes_dir", None, "outcomes"),
    ("outcome_file", (3,), "outcomes/group-00003.parquet"),
    ("group_summary", (3,), "outcomes/group-00003.json"),
    ("sync_plan", None, "sync/plan.json"),
    ("sync_removals", None, "sync/removals.parquet"),
    ("removal_decision", None, "sync/removal_decision.json"),
    ("sync_ops", (3,), "sync/ops-00003.parquet"),
    ("sync_outcomes", (3,), "sync/outcomes-00003.parquet"),
    ("sync_summary", (3,), "sync/outcomes-00003.json"),
    ("metrics_file", ("import_batches-3",), "metrics/import_batches-3.json"),
    ("failure_file", ("validate",), "failures/validate.json"),
    ("audit_part", ("import-group-00003",), "audit/import-group-00003.jsonl"),
    ("rejects_csv", None, "rejects.csv"),
    ("rejects_parquet", None, "rejects.parquet"),
    ("batch_manifest", None, "batch_manifest.parquet"),
    ("batch_results", None, "batch_results.jsonl"),
    ("audit_log", None, "audit.jsonl"),
    ("dead_letter", None, "dead_letter.jsonl"),
    ("report", None, "report.json"),
]


@pytest.mark.parametrize(("name", "arguments", "relative"), RUN_FILES, ids=[name for name, _, _ in RUN_FILES])
def test_a_run_folder_keeps_its_file_names(tmp_path, name, arguments, relative):
    layout = RunLayout.for_run(tmp_path, "cxone_contact_import", "manual__2026-11-27T06:31:23+00:00")
    assert layout.root == tmp_path / "runs" / "cxone_contact_import" / "manual__2026-11-27T06_31_23_00_00"
    named = getattr(layout, name)
    assert (named if arguments is None else named(*arguments)) == layout.root / relative


def test_the_listings_find_the_files_the_layout_names(tmp_path):
    layout = RunLayout.for_run(tmp_path, "cxone_contact_import", "run-1")
    named = [layout.extract_part(0), layout.group_file(0), layout.outcome_file(0), layout.group_summary(0), layout.sync_ops(1),
             layout.sync_outcomes(1), layout.sync_summary(1), layout.failure_file("extract"),
             layout.audit_part("webhook-group-00001-try-01"), layout.audit_part("import-group-00001")]
    for path in named:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    assert layout.extract_parts() == [layout.extract_part(0)] and layout.group_files() == [layout.group_file(0)]
    assert layout.outcome_files() == [layout.outcome_file(0)] and layout.group_summaries() == [layout.group_summary(0)]
    assert layout.sync_ops_files() == [layout.sync_ops(1)] and layout.sync_outcome_files() == [layout.sync_outcomes(1)]
    assert layout.sync_summaries() == [layout.sync_summary(1)]
    assert layout.failure_files() == [layout.failure_file("extract")]
    assert layout.audit_parts("import-group-") == [layout.audit_part("import-group-00001")]
    assert len(layout.audit_parts()) == 2
    assert [group_index_of(p) for p in (layout.group_file(7), layout.sync_summary(12))] == [7, 12]
    assert RunLayout.runs_of(tmp_path, "cxone_contact_import") == [layout]
    assert dag_ids_with_runs(tmp_path) == {"cxone_contact_import"}


def test_only_the_layout_builds_paths_in_a_run_folder():
    """No product module joins names onto a run folder's root: every path of it is a RunLayout method or property."""
    root = Path(__file__).parents[1]
    joins = re.compile(r"layout(?:\([^)]*\))?\.root\s*/")
    found = [f"{path.relative_to(root)}:{n}" for folder in ("dags", "include", "plugins", "tools")
             for path in sorted((root / folder).rglob("*.py")) if path.name != "layout.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if joins.search(line)]
    assert found == []


OTHER_DAG_ID = "cxone_contact_import_eu"


@pytest.mark.timeout(300)
def test_a_second_import_dag_writes_under_its_own_dag_id(storage_base, cxone_sandbox, webhook_sink, tmp_path,
                                                          monkeypatch):
    """The same DAG file under another DAG id: its run's files, the list's state and its CRM events are its own."""
    from airflow.dag_processing.dagbag import DagBag

    from tools.localrun import connection_env, ensure_pool
    from tools.sample_data import generate_crm_export

    for key, value in connection_env(cxone_sandbox.url, webhook_sink.url, max_concurrency=4).items():
        monkeypatch.setenv(key, value)
    dag_file = tmp_path / "dags" / "cxone_contact_import_eu.py"
    dag_file.parent.mkdir()
    source = (Path(__file__).parents[1] / "dags" / "cxone_contact_import.py").read_text()
    assert "dag_id=settings.DAG_ID," in source
    dag_file.write_text(source.replace("dag_id=settings.DAG_ID,", f'dag_id="{OTHER_DAG_ID}",'))
    export = generate_crm_export(tmp_path / "contacts.csv", 120, bad_share=0.0, seed=5)
    from airflow import settings as airflow_settings

    monkeypatch.setattr(airflow_settings, "DAGS_FOLDER", str(dag_file.parent))  # dag.test() syncs its bundle first
    ensure_pool()
    dag = DagBag(dag_folder=str(dag_file)).get_dag(OTHER_DAG_ID)

    try:
        dag_run = dag.test(run_conf={"source_uri": f"file://{export.path}", "contact_list_id": CONTACT_LIST_ID})
    finally:
        from airflow.api.common.delete_dag import delete_dag

        delete_dag(OTHER_DAG_ID)  # the shared test DB keeps only the project's DAG

    assert str(getattr(dag_run.state, "value", dag_run.state)) == "success"
    assert [p.name for p in (storage_base / "runs").iterdir()] == [OTHER_DAG_ID]
    assert [p.name for p in (storage_base / "state").iterdir()] == [OTHER_DAG_ID]
    report = read_report(RunLayout.for_run(storage_base, OTHER_DAG_ID, dag_run.run_id))  # the UI's /dags/<id>/report
    assert report is not None and report["run"]["dag_id"] == OTHER_DAG_ID
    assert dag_ids_with_runs(storage_base) == {OTHER_DAG_ID}
    events = [e["body"] for e in webhook_sink.events()]
    assert events and all(e["eventId"].startswith(f"{OTHER_DAG_ID}/{dag_run.run_id}:") for e in events)
    summary = next(e for e in events if e["event"] == "cxone_contact_import_run_complete")
    assert summary["run"]["dag_id"] == OTHER_DAG_ID
    assert json.dumps(summary).count(OTHER_DAG_ID) >= 2
