"""The call_lists profile through whole DAG runs (dag.test, which runs the deferral's trigger inline) against the
calling-list sandbox: uploads, jobs, reading the list back, faults, re-runs, the bad-input corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from include.cxone_import.uploads import MAX_RECOVERY_ROUNDS
from tools.sample_data import generate_crm_export
from include.cxone_sandbox.call_lists_api import CallListSandboxConfig
from tests.conftest import CONTACT_LIST_ID

pytestmark = pytest.mark.timeout(300)

ROWS = 300
PER_FILE = {"upload_records_per_file": 60}
CREATE = {"create_list_if_missing": True}
CORPUS = Path(__file__).parent / "data" / "bad_inputs"


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.1, seed=21)


@pytest.fixture(autouse=True)
def quick_task_retries(monkeypatch):
    monkeypatch.setenv("CXONE_IMPORT_RETRY_DELAY_S", "1")


def on_list(sandbox) -> set[str]:
    ids = [r["externalId"] for r in sandbox.records(CONTACT_LIST_ID)]
    assert len(ids) == len(set(ids)), "a record is on the list twice"
    return set(ids)


def outcomes(run) -> dict[str, int]:
    t = run.report["totals"]
    return {k: t[k] for k in ("imported", "duplicates", "failed", "rejected", "unchanged")}


def test_end_to_end_creates_list_uploads_files_and_reconciles(run_import, export, call_list_sandbox, webhook_sink,
                                                              capfd, caplog):
    run = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE)

    out, err = capfd.readouterr()
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from include.cxone_sandbox.call_lists_api import CallListSandboxConfig

    with create_session() as session:
        xcom = " ".join(json.dumps(x.value) for x in session.query(XComModel).filter(XComModel.run_id == run.dag_run.run_id))
    seen = out + err + caplog.text + xcom
    config = CallListSandboxConfig()
    secrets = [config.access_key_secret, config.client_secret, *call_list_sandbox.issued_tokens()]
    assert len(seen) > 1_000 and not [s for s in secrets if s in seen], "a secret or token in the logs or XCom"

    assert run.state == "success", run.report and run.report["problems"]
    valid = set(export.valid_contact_ids)
    assert on_list(call_list_sandbox) == valid
    assert outcomes(run) == {"imported": len(valid), "duplicates": 0, "failed": 0,
                             "rejected": len(export.expected_rejects), "unchanged": 0}
    assert run.report["reconciliation"]["ok"]
    jobs = call_list_sandbox.jobs()
    assert len(jobs) == run.report["totals"]["batches"] == -(-len(valid) // PER_FILE["upload_records_per_file"])
    assert all(j["isComplete"] for j in jobs)
    assert len({j["fileName"] for j in jobs}) == len(jobs), "a file was uploaded twice"
    (summary,) = [json.loads(p.read_text()) for p in (run.root / "outcomes").glob("group-*.json")]
    assert set(summary["jobs"].values()) == {"complete"}
    events = [e["body"]["event"] for e in webhook_sink.events() if e.get("status", 200) == 200]
    assert events.count("cxone_contact_import_run_complete") == 1


def test_rerun_creates_nothing(run_import, export, call_list_sandbox):
    first = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE)
    uploads = call_list_sandbox.stats()["uploads"]
    again = run_import({"source_uri": f"file://{export.path}"}, profile="call_lists", extra=PER_FILE)
    removals = call_list_sandbox.stats().get("removal_requests", 0)
    # under the default upsert: a record the list holds exactly so is no update (no removal, no upload)
    resync = run_import({"source_uri": f"file://{export.path}", "full_resync": True},
                        profile="call_lists", extra=PER_FILE)

    valid = len(export.valid_contact_ids)
    assert first.state == again.state == resync.state == "success"
    assert call_list_sandbox.stats()["uploads"] == uploads, "a re-run uploaded a file"
    assert len(call_list_sandbox.lists()) == 1
    assert on_list(call_list_sandbox) == set(export.valid_contact_ids)
    assert outcomes(again)["unchanged"] == valid and outcomes(again)["imported"] == 0
    # a full resync sends everything: the list already holds every record, so each is a duplicate, none uploaded
    assert outcomes(resync)["duplicates"] == valid and outcomes(resync)["imported"] == 0
    assert call_list_sandbox.stats().get("removal_requests", 0) == removals, "a full resync removed records"
    assert resync.report["reconciliation"]["ok"]


def test_cleared_run_polls_its_jobs_and_uploads_nothing_again(run_import, export, call_list_sandbox):
    from datetime import datetime, timezone

    day = datetime(2026, 11, 30, tzinfo=timezone.utc)
    first = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE,
                       logical_date=day)
    uploads = call_list_sandbox.stats()["uploads"]
    # the same run again (like a clear): its uploads are checkpointed, so it only reads its outcomes back
    cleared = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE,
                         logical_date=day)

    assert first.dag_run.run_id == cleared.dag_run.run_id
    assert cleared.state == "success"
    assert call_list_sandbox.stats()["uploads"] == uploads
    assert outcomes(cleared)["imported"] == len(export.valid_contact_ids)


def test_missing_list_without_create_fails_before_anything_is_sent(run_import, export, call_list_sandbox):
    run = run_import({"source_uri": f"file://{export.path}"}, profile="call_lists")

    assert run.state == "failed"
    assert call_list_sandbox.lists() == [] and call_list_sandbox.stats()["uploads"] == 0
    failures = [f for f in run.report["task_failures"] if f["task"] == "chunk"]
    assert len(failures) == 1, "a list that does not exist is a configuration error: one try, no retries"
    assert failures[0]["rule"] == "cxone_configuration" and "create_list_if_missing" in failures[0]["message"]


def test_existing_list_found_by_id_and_records_on_it_are_duplicates(run_import, export, call_list_sandbox):
    list_id = str(_create_list(call_list_sandbox))
    call_list_sandbox.seed_records(list_id, [{"contactId": c, "mobile_phone": "+14155550199"}
                                             for c in sorted(export.valid_contact_ids)[:10]])
    run = run_import({"source_uri": f"file://{export.path}", "contact_list_id": list_id}, profile="call_lists",
                     extra=PER_FILE)

    assert run.state == "success"
    assert outcomes(run)["duplicates"] == 10
    assert outcomes(run)["imported"] == len(export.valid_contact_ids) - 10
    uploaded = sum(1 for _ in call_list_sandbox.jobs())
    assert uploaded == -(-(len(export.valid_contact_ids) - 10) // PER_FILE["upload_records_per_file"])


def _create_list(sandbox) -> int:
    """A list made beforehand by someone else, mapping the export's phone columns."""
    from cxone_provider.call_lists import CallListClient
    from include.cxone_sandbox.call_lists_api import CallListSandboxConfig

    config = CallListSandboxConfig()
    phones = [{"fieldName": c, "fieldValue": c} for c in ("mobile_phone", "work_phone", "home_phone")]
    with CallListClient(sandbox.url, config.access_key_id, config.access_key_secret, client_id=config.client_id,
                        client_secret=config.client_secret) as client:
        return int(client.create_list("existing", external_id_column="contactId", destination_mappings=phones,
                                      custom_field_mappings=[]))


FAULTS = [
    pytest.param({"rate_limited_requests": 4, "read_errors_5xx": 4}, "success", id="429-without-retry-after-and-5xx"),
    pytest.param({"upload_errors_5xx_after_accept": 1}, "success", id="upload-5xx-after-accept"),
    pytest.param({"cancel_jobs": 1}, "success", id="cancelled-job-recovered"),
    # every upload of the run cancelled (5 files, then the same rows in 5 files in each round): all fail
    pytest.param({"cancel_jobs": 5 * (1 + MAX_RECOVERY_ROUNDS)}, "failed", id="cancelled-every-round"),
    pytest.param({"stall_jobs": 1}, "failed", id="job-never-completes"),
]


@pytest.mark.parametrize(("knobs", "state"), FAULTS)
def test_faults_lose_nothing_and_upload_nothing_twice(run_import, export, call_list_sandbox, knobs, state):
    call_list_sandbox.configure(**knobs)
    run = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists",
                     extra={**PER_FILE, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "job_timeout_s": 4})

    assert run.state == state
    assert run.report["reconciliation"]["ok"], run.report["reconciliation"]["detail"]
    jobs = call_list_sandbox.jobs()
    assert len({j["fileName"] for j in jobs}) == len(jobs), "a file was uploaded twice"
    assert call_list_sandbox.stats()["rows_uploaded_while_on_list"] == 0, "a row the list held was uploaded again"
    valid = set(export.valid_contact_ids)
    totals = outcomes(run)
    assert totals["imported"] + totals["failed"] == len(valid)
    assert on_list(call_list_sandbox) <= valid
    assert totals["imported"] == len(on_list(call_list_sandbox))
    dead = run.jsonl("dead_letter.jsonl")
    assert len(dead) == totals["failed"]
    if state == "success":
        assert totals["failed"] == 0
    else:
        per_file = PER_FILE["upload_records_per_file"]
        expected = len(valid) if "cancel_jobs" in knobs else per_file
        assert totals["failed"] == expected, "exactly the records of the bad jobs fail"
        job = [j for j in jobs if not j["isComplete"]][-1]
        reason = "was cancelled" if "cancel_jobs" in knobs else "did not complete within 4s"
        if "stall_jobs" in knobs:
            assert {d["_lastError"] for d in dead} == {f"job {job['jobId']} {reason}; it may still import the file"}
        else:
            assert {d["_lastError"].split(" ", 2)[2] for d in dead} == {reason}
            assert len(jobs) == 5 * (1 + MAX_RECOVERY_ROUNDS) and on_list(call_list_sandbox) == set()


def test_rows_invalid_for_the_list_fail_as_not_present_after_their_job(run_import, tmp_path, call_list_sandbox):
    # a number E.164 accepts that the list refuses (GUESS in the sandbox: 7 to 15 digits) is counted invalid there
    source = tmp_path / "short.csv"
    source.write_text(
        "contact_id,mobile_phone,consent_timestamp,opt_in_status\n"
        "cl-ok-1,+14155550101,2026-06-01T00:00:00Z,confirmed\n"
        "cl-short-1,+12345,2026-06-01T00:00:00Z,confirmed\n"
    )
    run = run_import({"source_uri": f"file://{source}", **CREATE}, profile="call_lists")

    assert run.state == "failed"
    assert outcomes(run)["imported"] == 1 and outcomes(run)["failed"] == 1
    (dead,) = run.jsonl("dead_letter.jsonl")
    job_id = call_list_sandbox.jobs()[0]["jobId"]
    assert dead["contactId"] == "cl-short-1" and dead["_lastError"] == f"not present after job {job_id} completed"
    assert call_list_sandbox.lists()[0]["invalidRecords"] == 1


def test_record_over_512_characters_is_rejected_before_anything_is_sent(run_import, tmp_path, call_list_sandbox):
    # as a CSV line: contactId, mobile_phone, notes, consent (24, UTC with milliseconds), optInStatus
    fixed = len("cl-long-1") + len("+14155550101") + 24 + len("confirmed") + 4
    source = tmp_path / "long.csv"
    source.write_text(
        "contact_id,mobile_phone,consent_timestamp,opt_in_status,notes\n"
        f"cl-long-1,+14155550101,2026-06-01T02:00:00+02:00,confirmed,{'a' * (512 - fixed)}\n"
        f"cl-long-2,+14155550102,2026-06-01T00:00:00Z,confirmed,{'b' * (513 - fixed)}\n"
    )
    run = run_import({"source_uri": f"file://{source}", "max_reject_share": 1.0, **CREATE}, profile="call_lists")

    assert run.state == "success"
    assert on_list(call_list_sandbox) == {"cl-long-1"}, "the 512-character record was accepted by the list"
    assert run.report["rejects_by_rule"] == {"record_too_long": 1}
    rejects = (run.root / "rejects.csv").read_text()
    assert "cl-long-2" in rejects and "record_too_long" in rejects and "b" * 20 not in rejects


EXPECTATIONS = json.loads((CORPUS / "expectations.json").read_text())
READABLE = sorted(name for name, facts in EXPECTATIONS.items() if not facts.get("file_error"))


@pytest.mark.parametrize("name", READABLE, ids=READABLE)
def test_bad_input_corpus(name, run_import, call_list_sandbox, capfd, caplog):
    """Each readable corpus file on the call_lists profile: the same rejects as the records profile (plus
    record_too_long for records too long for a calling list), the valid rest on the list, every row accounted for,
    no input phone number in the task logs or the run's text files (dead letters excepted)."""
    from tests.test_corpus_runs import _input_phones, _run_text

    facts = EXPECTATIONS[name]
    run = run_import({"source_uri": f"file://{CORPUS / name}", "max_reject_share": 1.0, **CREATE}, profile="call_lists")

    out, err = capfd.readouterr()
    text = out + err + caplog.text + _run_text(run.root)
    assert not [p for p in _input_phones(CORPUS / name) if len(p.strip("+")) >= 8 and p in text]

    assert run.report is not None and run.report["reconciliation"]["ok"], run.report
    rejects: dict[int, set[str]] = {}
    with (run.root / "rejects.csv").open(newline="") as handle:
        for entry in csv.DictReader(handle):
            rejects.setdefault(int(entry["row_number"]), set()).add(entry["rule"])
    expected = {int(row): set(rules) for row, rules in facts["rejects"].items()}
    too_long = {row for row, rules in rejects.items() if "record_too_long" in rules}
    assert {row: rules - {"record_too_long"} for row, rules in rejects.items() if rules != {"record_too_long"}} == expected
    valid = set(facts["valid_contact_ids"])
    assert len(on_list(call_list_sandbox)) == len(valid) - len(too_long - set(expected))
    assert on_list(call_list_sandbox) <= valid
    assert run.report["totals"]["failed"] == 0


def test_redrive_sends_exactly_the_dead_letters(run_import, export, call_list_sandbox):
    call_list_sandbox.configure(stall_jobs=1)  # a job that never completes: not recovered, its rows fail
    failed = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists",
                        extra={**PER_FILE, "job_timeout_s": 3})
    assert failed.state == "failed" and failed.report["totals"]["failed"] == PER_FILE["upload_records_per_file"]

    redrive = run_import({"redrive_run_id": failed.dag_run.run_id}, profile="call_lists", extra=PER_FILE)

    assert redrive.state == "success", redrive.report["problems"]
    assert redrive.report["totals"]["imported"] == PER_FILE["upload_records_per_file"]
    assert on_list(call_list_sandbox) == set(export.valid_contact_ids)
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        labels = [ti.rendered_map_index for ti in session.query(TaskInstance).filter(
            TaskInstance.run_id == redrive.dag_run.run_id, TaskInstance.task_id == "import_batches")]
    assert labels and all(label.startswith("group 0:") for label in labels), labels


def test_an_upload_still_refused_after_its_retries_is_sent_by_the_task_retry(run_import, export, call_list_sandbox):
    # the first file gets 429 on both of its attempts: its records fail in that try, the task fails, and its retry
    # uploads only that file, waits for it and reconciles the group again
    call_list_sandbox.configure(rate_limited_uploads=2)
    run = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists",
                     extra={**PER_FILE, "max_attempts": 2, "backoff_base_s": 0.05})

    assert run.state == "success", run.report["problems"]
    assert outcomes(run)["imported"] == len(export.valid_contact_ids) and outcomes(run)["failed"] == 0
    jobs = call_list_sandbox.jobs()
    assert len({j["fileName"] for j in jobs}) == len(jobs) == run.report["totals"]["batches"]
    assert any(f["task"] == "import_batches" for f in run.report["task_failures"])


FAULT_MIX = {"error_rate_5xx": 0.10, "cancel_job_rate": 0.15, "upload_5xx_after_accept_rate": 0.15,
             "token_lifetime_s": 4, "seed": 19}


def test_a_3000_record_run_under_the_fault_mix_puts_exactly_the_valid_records_on_the_list(run_import, tmp_path,
                                                                                        call_list_sandbox):
    """10% of API calls answered 503, 15% of upload jobs cancelled, 15% of uploads processed but answered 503,
    tokens living 4 s (seeded): every valid record ends on the list, no row is uploaded while the list holds it,
    and the report counts exactly what the list holds."""
    big = generate_crm_export(tmp_path / "contacts.csv", 3000, bad_share=0.03, seed=19)
    list_id = _create_list(call_list_sandbox)
    call_list_sandbox.configure(**FAULT_MIX)
    run = run_import({"source_uri": f"file://{big.path}", "contact_list_id": str(list_id)}, profile="call_lists",
                     extra={"upload_records_per_file": 100, "backoff_base_s": 0.05, "backoff_max_s": 0.2})

    held = {r["externalId"] for r in call_list_sandbox.records(list_id)}
    assert held == set(big.valid_contact_ids)
    assert run.state == "success", run.report["problems"]
    assert outcomes(run) == {"imported": len(held), "duplicates": 0, "failed": 0, "rejected": 3000 - len(held),
                             "unchanged": 0}
    stats = call_list_sandbox.stats()
    assert stats["rows_uploaded_while_on_list"] == 0, "a row the list held was uploaded again"
    assert stats["status_counts"].get("503", 0) > 10 and any(j["isCancelled"] for j in call_list_sandbox.jobs())
    assert stats["rows_uploaded"] > len(held), "the fault mix cost no re-upload: it did not bite"


def test_a_list_named_by_name_or_by_id_has_one_state(run_import, export, call_list_sandbox):
    """The list's state and lease are keyed by the tenant its token names and the list's resolved id: a run that
    names the list by its id compares with what the run that named it by name (and created it) acknowledged."""
    by_name = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE)
    list_id = str(call_list_sandbox.list_id(CONTACT_LIST_ID))
    uploads = call_list_sandbox.stats()["uploads"]

    by_id = run_import({"source_uri": f"file://{export.path}", "contact_list_id": list_id}, profile="call_lists",
                       extra=PER_FILE)

    assert by_name.report["changes"]["mode"] == "new_list"
    assert by_name.report["changes"]["state"] == by_id.report["changes"]["state"]
    assert by_id.report["changes"]["state"]["list_id"] == list_id
    assert by_id.report["changes"]["state"]["tenant"] == "tenant " + CallListSandboxConfig().tenant_id
    assert outcomes(by_id)["unchanged"] == len(export.valid_contact_ids)
    assert call_list_sandbox.stats()["uploads"] == uploads


def test_a_list_the_run_created_starts_with_an_empty_state(run_import, export, call_list_sandbox):
    """The list was deleted in CXone and the next run creates it again (a new list that happens to get the old
    id): nothing the old list acknowledged counts, every record is uploaded to the new one."""
    from include.cxone_sandbox.call_lists_api import CallListSandbox

    first = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists", extra=PER_FILE)
    with CallListSandbox(CallListSandboxConfig(job_delay_s=0.2)) as emptied:  # the same tenant, the list gone
        again = run_import({"source_uri": f"file://{export.path}", **CREATE}, profile="call_lists",
                           extra={**PER_FILE, "auth_base_url": emptied.url})
        on_new_list = {r["externalId"] for r in emptied.records(CONTACT_LIST_ID)}

    assert again.state == "success"
    assert again.report["changes"]["state"] == first.report["changes"]["state"], "the same tenant and list id"
    assert again.report["changes"]["mode"] == "new_list" and again.report["totals"]["unchanged"] == 0
    assert outcomes(again)["imported"] == len(export.valid_contact_ids) == len(on_new_list)
    assert any("created by this run" in n for n in again.report["notices"])
