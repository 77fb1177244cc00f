"""Import tasks of one run at the same time, in separate processes, as an executor runs them (issue: in-flight
marker race). ``dag.test()`` runs mapped tasks one after another and hides this; here every group of one run is
imported by its own process, staggered so that each opens its checkpoint store while the others are mid-flight,
on local storage and on S3 (moto). Every task must succeed on its first try, with nothing lost or sent twice."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from include.cxone_import import pipeline
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_parquet
from tests.test_s3_storage import BUCKET, REGION, moto_endpoint  # noqa: F401 - the module-scoped moto fixture

pytestmark = pytest.mark.timeout(240)

LIST = "list-concurrent"
ROWS = 2_000
BATCH_SIZE = 20
GROUPS = 4
STAGGER_S = 0.3  # each task opens its store while the earlier ones have markers and checkpoints in flight
LATENCY_MS = 60
DAG, RUN = "cxone_contact_import", "manual__concurrent"


def _storage(base: str, endpoint: str | None) -> Any:
    """The storage root as a path object, the way the task resolves it."""
    from upath import UPath

    if endpoint is None:
        return UPath(base)
    return UPath(base, key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint, "region_name": REGION})


def _import_group_in_process(base: str, endpoint: str | None, sandbox_url: str, group_index: int) -> dict[str, Any]:
    """What one mapped import task does, in its own process (spawned: nothing shared with the parent)."""
    from cxone_provider.client import CXoneClient
    from cxone_provider.retry import RetryPolicy

    from include.cxone_import.engine import GroupImporter

    time.sleep(group_index * STAGGER_S)
    layout = RunLayout.for_run(_storage(base, endpoint), DAG, RUN)
    with CXoneClient(sandbox_url, "sandbox-client", "sandbox-secret", retry_policy=RetryPolicy(backoff_base_s=0)) as client:
        summary = GroupImporter(client, LIST, layout, concurrency=2).run(group_index)
    return {k: summary[k] for k in ("group_index", "records", "imported", "duplicate", "failed", "transient_failed_batches")}


def _files(folder: Any) -> list[Any]:
    """The files in a folder; on S3 a folder whose last object was removed does not exist any more."""
    return list(folder.iterdir()) if folder.exists() else []


def _write_export(path) -> int:
    lines = ["contact_id,consent_timestamp,opt_in_status,mobile_phone"]
    lines += [f"C{i:05d},2026-06-01T00:00:00Z,confirmed,+1415555{i:04d}" for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n")
    return ROWS


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """(base URI, S3 endpoint or None) for one run's storage."""
    if request.param == "local":
        yield f"file://{tmp_path}/storage", None
        return
    import boto3

    endpoint = request.getfixturevalue("moto_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/concurrent", endpoint
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])


def test_import_tasks_of_one_run_run_at_once(storage, tmp_path, cxone_sandbox, monkeypatch):
    base, endpoint = storage
    monkeypatch.setattr(pipeline, "MIN_BATCHES_PER_GROUP", 1, raising=False)  # four groups of a small list
    cxone_sandbox.configure(latency_ms=LATENCY_MS)
    source = tmp_path / "contacts.csv"
    rows = _write_export(source)
    layout = RunLayout.for_run(_storage(base, endpoint), DAG, RUN)
    extracted = pipeline.extract(_storage(f"file://{source}", None), layout)
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825)
    groups = pipeline.chunk(layout, parts=validated["parts"], valid_rows=validated["valid_rows"], batch_scope=LIST,
                            batch_size=BATCH_SIZE, parallelism=GROUPS, max_map_length=1024)
    assert len(groups) == GROUPS

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=GROUPS, mp_context=spawn) as pool:
        futures = [pool.submit(_import_group_in_process, base, endpoint, cxone_sandbox.url, g["group_index"])
                   for g in groups]
        summaries = [f.result(timeout=180) for f in futures]  # a task that raised fails the test here

    assert sum(s["imported"] for s in summaries) == rows
    assert all(s["failed"] == s["duplicate"] == s["transient_failed_batches"] == 0 for s in summaries)
    stored = [r["contactId"] for r in cxone_sandbox.records(LIST)]
    assert len(stored) == len(set(stored)) == rows, "every record on the server exactly once"
    assert cxone_sandbox.stats()["records_requests"] == rows // BATCH_SIZE, "no batch sent twice"
    outcomes = [read_parquet(layout.outcome_file(g["group_index"])) for g in groups]
    assert sorted(r for o in outcomes for r in o["row_number"]) == list(range(1, rows + 1))
    assert not _files(layout.root / "inflight"), "every marker tidied by its own task"
    checkpoints = _files(layout.root / "checkpoints")
    assert len(checkpoints) == rows // BATCH_SIZE
    assert all(json.loads(p.read_text())["metrics"]["status"] == "success" for p in checkpoints[:5])
