"""A whole DAG run with an s3:// storage base and an s3:// source, against a local S3 (moto's server).

Only configuration changes: the ``cxone_storage_base`` / ``cxone_storage_conn_id`` Variables and an AWS
connection whose ``endpoint_url`` points at moto on 127.0.0.1. AWS credentials and the default endpoint are
set to dummies, so anything that missed the connection fails instead of reaching AWS.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from tools.sample_data import generate_crm_export
from cxone_runs.layout import safe_segment
from tests.conftest import CONTACT_LIST_ID
from tests.ports import free_port

pytestmark = pytest.mark.timeout(180)

BUCKET = "cxone-imports"
PREFIX = "cxone"
CONN_ID = "aws_moto"
REGION = "us-east-1"
ROWS = 400
BATCH_SIZE = 50
SERVER_START_TIMEOUT_S = 30
DEAD_ENDPOINT = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request that skips the connection fails here
RUN_FILES = ("report.json", "rejects.csv", "audit.jsonl", "batch_manifest.parquet", "dead_letter.jsonl")
RUN_FOLDERS = ("checkpoints", "groups", "extract", "valid", "outcomes")


def _wait_for_port(port: int, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto server exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto server did not listen on 127.0.0.1:{port} within {timeout_s}s")


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server in a subprocess on 127.0.0.1: its endpoint URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, server, SERVER_START_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_storage(moto_endpoint, monkeypatch):
    """Point the DAG's storage at ``s3://BUCKET/PREFIX`` through the ``aws_moto`` connection; a boto3 client."""
    import boto3

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD_ENDPOINT)
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_endpoint, "region_name": REGION},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW_VAR_CXONE_STORAGE_BASE", f"s3://{BUCKET}/{PREFIX}")
    monkeypatch.setenv("AIRFLOW_VAR_CXONE_STORAGE_CONN_ID", CONN_ID)
    monkeypatch.setenv("CXONE_IMPORT_RETRY_DELAY_S", "0.2")  # a storage failure shows up fast

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    yield client
    # the server outlives this test (module scope): leave it an empty bucket list
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)
    # the filesystem Airflow attached for the connection points at this server; drop it with the server's data
    from airflow.sdk.io.store import _STORE_CACHE

    _STORE_CACHE.pop(f"s3-{CONN_ID}", None)


def _keys(client, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.update(item["Key"][len(prefix) :] for item in page.get("Contents", []))
    return keys


def _read(client, key: str) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def _run_prefix(run_id: str) -> str:
    return f"{PREFIX}/runs/cxone_contact_import/{safe_segment(run_id)}/"


def test_run_with_s3_storage_and_source(run_import, s3_storage, storage_base, tmp_path, cxone_sandbox):
    export = generate_crm_export(tmp_path / "export" / "contacts.csv", ROWS, bad_share=0.15, seed=5)
    s3_storage.upload_file(str(export.path), BUCKET, f"{PREFIX}/incoming/contacts.csv")

    run = run_import({"source_uri": f"s3://{BUCKET}/{PREFIX}/incoming/contacts.csv", "batch_size": BATCH_SIZE})

    assert run.state == "success"
    stored_ids = [r["contactId"] for r in cxone_sandbox.records(CONTACT_LIST_ID)]
    assert len(stored_ids) == len(set(stored_ids)), "a record was created twice"
    assert set(stored_ids) == set(export.valid_contact_ids)

    prefix = _run_prefix(run.dag_run.run_id)
    keys = _keys(s3_storage, prefix)
    assert set(RUN_FILES) <= keys
    for folder in RUN_FOLDERS:
        assert any(k.startswith(folder + "/") for k in keys), f"nothing under {folder}/ in {sorted(keys)}"
    batches = -(-len(export.valid_contact_ids) // BATCH_SIZE)
    assert sum(k.startswith("checkpoints/") for k in keys) == batches
    assert not any(k.startswith("inflight/") for k in keys), "an inflight marker was left behind"

    report = json.loads(_read(s3_storage, prefix + "report.json"))
    totals = report["totals"]
    assert report["status"] == "success"
    assert report["reconciliation"]["ok"] is True
    assert totals["input"] == ROWS
    assert totals["imported"] == len(export.valid_contact_ids)
    assert totals["rejected"] == len(export.expected_rejects)
    where = urlsplit(report["files"]["report"])  # s3://aws_moto@bucket/...: ObjectStoragePath keeps the conn id
    assert (where.scheme, where.hostname, where.path) == ("s3", BUCKET, f"/{prefix}report.json")

    rejects = list(csv.DictReader(io.StringIO(_read(s3_storage, prefix + "rejects.csv"))))
    assert {int(row["row_number"]) for row in rejects} == set(export.expected_rejects)
    audit = [json.loads(line) for line in _read(s3_storage, prefix + "audit.jsonl").splitlines() if line.strip()]
    assert sum(1 for e in audit if e["kind"] == "batch") == batches

    assert list(storage_base.iterdir()) == [], "the run wrote to the local default storage"


def test_scheduled_run_reads_its_day_from_the_s3_source_base(
    run_import, s3_storage, storage_base, tmp_path, cxone_sandbox
):
    from datetime import datetime, timezone

    day = datetime(2026, 3, 4, tzinfo=timezone.utc)
    export = generate_crm_export(tmp_path / "contacts_2026-03-04.csv", 120, bad_share=0.0, seed=3,
                                 now=datetime(2026, 3, 5, tzinfo=timezone.utc))
    s3_storage.upload_file(str(export.path), BUCKET, f"{PREFIX}/incoming/contacts_2026-03-04.csv")

    run = run_import({}, logical_date=day)

    assert run.state == "success"
    assert {r["contactId"] for r in cxone_sandbox.records(CONTACT_LIST_ID)} == set(export.valid_contact_ids)
    report = json.loads(_read(s3_storage, _run_prefix(run.dag_run.run_id) + "report.json"))
    assert report["totals"]["imported"] == len(export.valid_contact_ids)
    assert list(storage_base.iterdir()) == [], "the run wrote to the local default storage"


def test_failed_run_reports_from_s3(run_import, s3_storage, storage_base, tmp_path, webhook_sink):
    """The failure notifier (a DAG callback, outside any task) finds the report in the bucket too."""
    export = generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.15, seed=5)
    s3_storage.upload_file(str(export.path), BUCKET, f"{PREFIX}/incoming/contacts.csv")

    run = run_import({"source_uri": f"s3://{BUCKET}/{PREFIX}/incoming/contacts.csv", "max_reject_share": 0.05})

    assert run.state == "failed"
    prefix = _run_prefix(run.dag_run.run_id)
    report = json.loads(_read(s3_storage, prefix + "report.json"))
    assert report["status"] == "failed"
    assert any("max_reject_share" in p for p in report["problems"])
    failure = [e["body"] for e in webhook_sink.events() if e["body"].get("event") == "cxone_contact_import_run_failed"]
    assert len(failure) == 1
    assert failure[0]["problems"] == report["problems"]
    assert urlsplit(failure[0]["report"]).hostname == BUCKET
    assert list(storage_base.iterdir()) == [], "the run wrote to the local default storage"
