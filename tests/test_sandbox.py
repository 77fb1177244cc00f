"""Tests of the local CXone sandbox and webhook sink, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from include.cxone_sandbox import CXoneSandbox, SandboxConfig, SandboxConfigError, WebhookSink

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTACT_LIST_ID = "list-001"
RECORDS_PATH = f"/api/v2/contactlists/{CONTACT_LIST_ID}/records"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-value"
TOKEN_FORM = {
    "grant_type": "client_credentials",
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "scope": "contactlists:write contactlists:read",
}


def make_record(number: int, *, contact_id: str | None = None, phone: str | None = None) -> dict[str, Any]:
    """A valid API record; `number` makes contactId and phone unique unless overridden."""
    return {
        "contactId": contact_id or f"crm-{number:05d}",
        "phoneNumbers": [{"type": "mobile", "number": phone or f"+1415555{number:04d}"}],
        "customFields": {"first_name": "Eleanor", "last_name": "Vance"},
        "consentTimestamp": "2024-11-01T09:15:00.000Z",
        "optInStatus": "confirmed",
    }


@pytest.fixture
def sandbox():
    with CXoneSandbox(SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)) as server:
        yield server


@pytest.fixture
def sink():
    with WebhookSink() as server:
        yield server


@pytest.fixture
def http():
    """A keep-alive session that ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def get_token(http: requests.Session, sandbox: CXoneSandbox) -> str:
    response = http.post(f"{sandbox.url}/oauth2/token", data=TOKEN_FORM, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def post_records(
    http: requests.Session, sandbox: CXoneSandbox, token: str | None, records: Any, path: str = RECORDS_PATH
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.post(f"{sandbox.url}{path}", json={"records": records}, headers=headers, timeout=5)


@pytest.fixture
def token(http, sandbox) -> str:
    return get_token(http, sandbox)


# ---- token grant --------------------------------------------------------------------------------


def test_token_grant_returns_bearer_token_with_configured_lifetime(http, sandbox):
    sandbox.configure(token_lifetime_s=120)

    response = http.post(f"{sandbox.url}/oauth2/token", data=TOKEN_FORM, timeout=5)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    assert body["access_token"]
    assert body["scope"] == TOKEN_FORM["scope"]
    assert sandbox.stats()["token_requests"] == 1


def test_token_grant_accepts_http_basic_client_credentials(http, sandbox):
    response = http.post(
        f"{sandbox.url}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=5,
    )

    assert response.status_code == 200
    assert post_records(http, sandbox, response.json()["access_token"], [make_record(1)]).status_code == 200


@pytest.mark.parametrize(
    ("form", "basic_auth", "expected_status", "expected_error"),
    [
        pytest.param({**TOKEN_FORM, "grant_type": "password"}, None, 400, "unsupported_grant_type", id="wrong-grant"),
        pytest.param({k: v for k, v in TOKEN_FORM.items() if k != "client_secret"}, None, 400, "invalid_request",
                     id="missing-secret"),
        pytest.param({k: v for k, v in TOKEN_FORM.items() if k != "client_id"}, None, 400, "invalid_request",
                     id="missing-client-id"),
        pytest.param({k: v for k, v in TOKEN_FORM.items() if k != "grant_type"}, None, 400, "invalid_request",
                     id="missing-grant-type"),
        pytest.param({**TOKEN_FORM, "client_secret": "wrong"}, None, 401, "invalid_client", id="wrong-secret"),
        pytest.param({**TOKEN_FORM, "client_id": "someone-else"}, None, 401, "invalid_client", id="wrong-client"),
        pytest.param({"grant_type": "client_credentials"}, (CLIENT_ID, "wrong"), 401, "invalid_client",
                     id="wrong-basic-auth"),
    ],
)
def test_token_grant_errors(http, sandbox, form, basic_auth, expected_status, expected_error):
    response = http.post(f"{sandbox.url}/oauth2/token", data=form, auth=basic_auth, timeout=5)

    assert response.status_code == expected_status
    assert response.json() == {"error": expected_error}
    assert sandbox.stats()["token_status_counts"] == {str(expected_status): 1}


# ---- authorization on the records endpoint ------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["missing", "unknown", "revoked", "revoked-over-http", "expired"],
)
def test_records_reject_invalid_token_with_401(http, sandbox, how):
    sandbox.configure(token_lifetime_s=1)
    token: str | None = get_token(http, sandbox)
    if how == "missing":
        token = None
    elif how == "unknown":
        token = "not-a-token"
    elif how == "revoked":
        sandbox.revoke_tokens()
    elif how == "revoked-over-http":
        assert http.post(f"{sandbox.url}/_sandbox/revoke-tokens", timeout=5).json() == {"revoked": 1}
    elif how == "expired":
        time.sleep(1.1)

    response = post_records(http, sandbox, token, [make_record(1)])

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert sandbox.records(CONTACT_LIST_ID) == []


def test_new_token_works_after_revocation(http, sandbox, token):
    sandbox.revoke_tokens()
    assert post_records(http, sandbox, token, [make_record(1)]).status_code == 401

    response = post_records(http, sandbox, get_token(http, sandbox), [make_record(1)])

    assert response.status_code == 200
    assert len(sandbox.records(CONTACT_LIST_ID)) == 1


# ---- batch size and validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "expected_status", "expected_created"),
    [pytest.param(100, 200, 100, id="100-accepted"), pytest.param(101, 400, 0, id="101-rejected")],
)
def test_batch_limit_is_100_records(http, sandbox, token, batch_size, expected_status, expected_created):
    response = post_records(http, sandbox, token, [make_record(i) for i in range(batch_size)])

    assert response.status_code == expected_status
    assert len(sandbox.records(CONTACT_LIST_ID)) == expected_created
    assert sandbox.stats()["max_batch_seen"] == batch_size
    if expected_status == 400:
        assert [error["code"] for error in response.json()["errors"]] == ["BATCH_TOO_LARGE"]


@pytest.mark.parametrize(
    "raw_body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"items": []}', id="no-records-key"),
        pytest.param(b'{"records": {"a": 1}}', id="records-not-a-list"),
        pytest.param(b"[]", id="top-level-list"),
    ],
)
def test_invalid_payload_is_rejected(http, sandbox, token, raw_body):
    response = http.post(
        f"{sandbox.url}{RECORDS_PATH}",
        data=raw_body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=5,
    )

    assert response.status_code == 400
    assert [error["code"] for error in response.json()["errors"]] == ["INVALID_PAYLOAD"]


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize(
    ("bad_record", "expected_field", "expected_code"),
    [
        pytest.param({**make_record(9), "phoneNumbers": [{"type": "mobile", "number": "4155550100"}]},
                     "phoneNumbers[0].number", "INVALID_E164", id="phone-not-e164"),
        pytest.param({**make_record(9), "phoneNumbers": [{"type": "mobile", "number": "+14155550109"},
                                                         {"type": "work", "number": "+0123"}]},
                     "phoneNumbers[1].number", "INVALID_E164", id="second-phone-not-e164"),
        pytest.param(_without(make_record(9), "contactId"), "contactId", "MISSING_FIELD", id="missing-contact-id"),
        pytest.param({**make_record(9), "contactId": ""}, "contactId", "MISSING_FIELD", id="empty-contact-id"),
        pytest.param({**make_record(9), "phoneNumbers": []}, "phoneNumbers", "MISSING_FIELD", id="no-phones"),
        pytest.param({**make_record(9), "consentTimestamp": "yesterday"}, "consentTimestamp", "INVALID_TIMESTAMP",
                     id="bad-timestamp"),
        pytest.param(_without(make_record(9), "consentTimestamp"), "consentTimestamp", "MISSING_FIELD",
                     id="missing-timestamp"),
        pytest.param({**make_record(9), "optInStatus": "maybe"}, "optInStatus", "INVALID_OPT_IN", id="bad-opt-in"),
        pytest.param({**make_record(9), "customFields": {"age": 42}}, "customFields.age", "INVALID_CUSTOM_FIELD",
                     id="custom-field-not-string"),
    ],
)
def test_field_errors_reject_whole_batch(http, sandbox, token, bad_record, expected_field, expected_code):
    response = post_records(http, sandbox, token, [make_record(1), bad_record])

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["index"], e["field"], e["code"]) for e in errors] == [(1, expected_field, expected_code)]
    assert errors[0]["contactId"] == bad_record.get("contactId")
    assert "0109" not in json.dumps(errors)  # messages never echo phone numbers
    assert sandbox.records(CONTACT_LIST_ID) == []


# ---- duplicates ---------------------------------------------------------------------------------

DUPLICATE_CASES = [
    pytest.param([], [make_record(1), make_record(2, contact_id="crm-00001")], 1, "DUPLICATE_CONTACT_ID",
                 id="id-within-batch"),
    pytest.param([], [make_record(1), make_record(2, phone="+14155550001")], 1, "DUPLICATE_PHONE",
                 id="phone-within-batch"),
    pytest.param([make_record(1)], [make_record(5), make_record(2, contact_id="crm-00001")], 1,
                 "DUPLICATE_CONTACT_ID", id="id-against-stored"),
    pytest.param([make_record(1)], [make_record(2, phone="+14155550001"), make_record(5)], 0, "DUPLICATE_PHONE",
                 id="phone-against-stored"),
]


@pytest.mark.parametrize(("seeded", "batch", "duplicate_index", "expected_code"), DUPLICATE_CASES)
def test_duplicates_in_warnings_mode_create_the_rest(http, sandbox, token, seeded, batch, duplicate_index,
                                                     expected_code):
    sandbox.seed_records(CONTACT_LIST_ID, seeded)

    response = post_records(http, sandbox, token, batch)

    assert response.status_code == 200
    body = response.json()
    assert body["recordsCreated"] == 1
    assert body["errors"] == []
    assert [(w["index"], w["contactId"], w["code"]) for w in body["warnings"]] == [
        (duplicate_index, batch[duplicate_index]["contactId"], expected_code)
    ]
    assert "+1415555" not in body["warnings"][0]["message"]
    created = [record for i, record in enumerate(batch) if i != duplicate_index]
    assert sandbox.records(CONTACT_LIST_ID) == seeded + created
    assert sandbox.stats()["records_created"] == 1


@pytest.mark.parametrize(("seeded", "batch", "duplicate_index", "expected_code"), DUPLICATE_CASES)
def test_duplicates_in_conflict_mode_create_nothing(http, sandbox, token, seeded, batch, duplicate_index,
                                                    expected_code):
    sandbox.configure(duplicate_mode="conflict")
    sandbox.seed_records(CONTACT_LIST_ID, seeded)

    response = post_records(http, sandbox, token, batch)

    assert response.status_code == 409
    assert [(w["index"], w["contactId"], w["code"]) for w in response.json()["warnings"]] == [
        (duplicate_index, batch[duplicate_index]["contactId"], expected_code)
    ]
    assert sandbox.records(CONTACT_LIST_ID) == seeded
    assert sandbox.stats()["records_created"] == 0


def test_conflict_without_names_gives_empty_warnings(http, sandbox, token):
    sandbox.configure(duplicate_mode="conflict", conflict_names_duplicates=False)
    sandbox.seed_records(CONTACT_LIST_ID, [make_record(1)])

    response = post_records(http, sandbox, token, [make_record(2), make_record(1)])

    assert response.status_code == 409
    assert response.json() == {"warnings": []}
    assert sandbox.records(CONTACT_LIST_ID) == [make_record(1)]


def test_conflict_mode_accepts_batch_without_duplicates(http, sandbox, token):
    sandbox.configure(duplicate_mode="conflict")

    response = post_records(http, sandbox, token, [make_record(1), make_record(2)])

    assert response.status_code == 200
    assert response.json()["recordsCreated"] == 2


def test_duplicates_are_scoped_to_the_contact_list(http, sandbox, token):
    sandbox.seed_records("other-list", [make_record(1)])

    response = post_records(http, sandbox, token, [make_record(1)])

    assert response.json()["warnings"] == []
    assert sandbox.records(CONTACT_LIST_ID) == [make_record(1)]


# ---- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expect_header"),
    [pytest.param(True, True, id="with-retry-after"), pytest.param(False, False, id="without-retry-after")],
)
def test_rate_limit_answers_429(http, sandbox, token, retry_after, expect_header):
    sandbox.configure(requests_per_minute=2, retry_after=retry_after)

    statuses = [post_records(http, sandbox, token, [make_record(i)]).status_code for i in range(2)]
    limited = post_records(http, sandbox, token, [make_record(3)])

    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.json() == {"error": "rate_limited"}
    if expect_header:
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
    else:
        assert "Retry-After" not in limited.headers
    assert len(sandbox.records(CONTACT_LIST_ID)) == 2
    assert sandbox.stats()["status_counts"] == {"200": 2, "429": 1}


def test_request_log_lists_every_records_request_in_arrival_order(http, sandbox, token):
    """GET /_sandbox/requests: arrival time, list, status and counts of each request, 429s and drops included."""
    sandbox.configure(requests_per_minute=2)
    before = time.time()
    post_records(http, sandbox, token, [make_record(1), make_record(2)])
    post_records(http, sandbox, token, [make_record(1), make_record(3)])  # one duplicate
    post_records(http, sandbox, token, [make_record(4)])  # over the limit
    sandbox.configure(requests_per_minute=None, drop_after_commit_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post_records(http, sandbox, token, [make_record(5)])

    log = http.get(f"{sandbox.url}/_sandbox/requests", timeout=5).json()["requests"]

    statuses = [(e["status"], e["records"], e["created"]) for e in log]
    assert statuses == [(200, 2, 2), (200, 2, 1), (429, 1, 0), (None, 1, 1)]
    assert {e["contact_list_id"] for e in log} == {CONTACT_LIST_ID}
    arrivals = [e["at"] for e in log]
    assert arrivals == sorted(arrivals) and before <= arrivals[0] <= time.time()
    sandbox.reset()
    assert sandbox.request_log() == []


def test_error_rate_5xx_answers_503_before_processing(http, sandbox, token):
    sandbox.configure(error_rate_5xx=1.0)

    response = post_records(http, sandbox, token, [make_record(1)])

    assert response.status_code == 503
    assert sandbox.records(CONTACT_LIST_ID) == []


def test_drop_rate_closes_connection_without_creating(http, sandbox, token):
    sandbox.configure(drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        post_records(http, sandbox, token, [make_record(1)])

    assert sandbox.records(CONTACT_LIST_ID) == []
    assert sandbox.stats()["dropped"] == 1


def test_drop_after_commit_creates_records_but_client_sees_connection_error(http, sandbox, token):
    sandbox.configure(drop_after_commit_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        post_records(http, sandbox, token, [make_record(1), make_record(2)])

    assert sandbox.records(CONTACT_LIST_ID) == [make_record(1), make_record(2)]
    stats = sandbox.stats()
    assert (stats["records_created"], stats["dropped"], stats["dropped_after_commit"]) == (2, 1, 1)


def test_seeded_fault_shares_are_reproducible(http, sandbox, token):
    def run() -> list[int]:
        sandbox.reset(keep_config=True, error_rate_5xx=0.5, seed=7)
        fresh_token = get_token(http, sandbox)
        return [post_records(http, sandbox, fresh_token, [make_record(i)]).status_code for i in range(20)]

    first = run()

    assert run() == first
    assert set(first) == {200, 503}


def test_latency_is_added_and_concurrency_is_measured(sandbox, token):
    sandbox.configure(latency_ms=200)
    results: list[tuple[int, Any]] = []

    def send(number: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            response = post_records(session, sandbox, token, [make_record(number)])
            results.append((response.status_code, response.elapsed))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [status for status, _ in results] == [200] * 4
    assert all(elapsed.total_seconds() >= 0.2 for _, elapsed in results)  # the latency was added to each
    assert sandbox.stats()["concurrent_max"] >= 2  # served in parallel, not one after the other


def test_session_reuses_one_connection(http, sandbox, token):
    for i in range(5):
        assert post_records(http, sandbox, token, [make_record(i)]).status_code == 200

    assert sandbox.stats()["connections_accepted"] == 1


# ---- read-back, control endpoints, headers ------------------------------------------------------


def test_records_read_back_in_creation_order_exactly_as_posted(http, sandbox, token):
    first = [make_record(2), {**make_record(1), "extra": {"kept": True}}]
    second = [make_record(3)]
    post_records(http, sandbox, token, first)
    post_records(http, sandbox, token, second)

    over_http = http.get(f"{sandbox.url}/_sandbox/records/{CONTACT_LIST_ID}", timeout=5).json()

    assert over_http == {"records": first + second}
    assert sandbox.records(CONTACT_LIST_ID) == first + second
    assert http.get(f"{sandbox.url}/_sandbox/records/unknown", timeout=5).json() == {"records": []}


def test_control_endpoints_configure_seed_and_reset(http, sandbox, token):
    assert http.get(f"{sandbox.url}/_sandbox/health", timeout=5).json() == {"status": "ok"}
    config = http.post(f"{sandbox.url}/_sandbox/config", json={"duplicate_mode": "conflict"}, timeout=5)
    assert config.status_code == 200 and config.json()["duplicate_mode"] == "conflict"
    assert "client_secret" not in config.json()
    bad = http.post(f"{sandbox.url}/_sandbox/config", json={"no_such_knob": 1}, timeout=5)
    assert bad.status_code == 400
    seeded = http.post(f"{sandbox.url}/_sandbox/seed/{CONTACT_LIST_ID}", json={"records": [make_record(1)]},
                       timeout=5)
    assert seeded.json() == {"seeded": 1}

    assert post_records(http, sandbox, token, [make_record(1)]).status_code == 409
    stats = http.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()
    assert (stats["records_requests"], stats["records_created"], stats["status_counts"]) == (1, 0, {"409": 1})

    assert http.post(f"{sandbox.url}/_sandbox/reset", timeout=5).status_code == 200
    assert sandbox.records(CONTACT_LIST_ID) == []
    assert sandbox.config.duplicate_mode == "warnings"
    assert sandbox.stats()["records_requests"] == 0
    assert post_records(http, sandbox, token, [make_record(1)]).status_code == 401  # tokens cleared too


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"no_such_knob": 1}, id="unknown-name"),
        pytest.param({"duplicate_mode": "ignore"}, id="bad-duplicate-mode"),
        pytest.param({"drop_rate": 1.5}, id="share-above-one"),
        pytest.param({"requests_per_minute": 0}, id="zero-rate-limit"),
    ],
)
def test_configure_rejects_bad_knobs(sandbox, knobs):
    with pytest.raises(SandboxConfigError):
        sandbox.configure(**knobs)

    assert sandbox.config.duplicate_mode == "warnings"


@pytest.mark.parametrize(
    ("method", "path", "expected_status"),
    [
        pytest.param("POST", "/oauth2/token", 200, id="token"),
        pytest.param("POST", RECORDS_PATH, 401, id="records-unauthorized"),
        pytest.param("GET", "/_sandbox/stats", 200, id="stats"),
        pytest.param("GET", "/nowhere", 404, id="unknown-path"),
    ],
)
def test_every_response_has_request_id_and_json(http, sandbox, method, path, expected_status):
    response = http.request(method, f"{sandbox.url}{path}", data=TOKEN_FORM if method == "POST" else None,
                            timeout=5)

    assert response.status_code == expected_status
    assert len(response.headers["X-Request-Id"]) == 32
    assert response.headers["Content-Type"] == "application/json"
    response.json()


def test_stop_and_restart_keep_port_and_store(http, sandbox, token):
    post_records(http, sandbox, token, [make_record(1)])
    port = sandbox.port

    sandbox.stop()
    with pytest.raises(requests.ConnectionError):
        http.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=5)
    sandbox.start()

    assert sandbox.port == port
    assert http.get(f"{sandbox.url}/_sandbox/records/{CONTACT_LIST_ID}", timeout=5).json()["records"] == [
        make_record(1)
    ]


# ---- webhook sink -------------------------------------------------------------------------------

WEBHOOK_EVENT = {"event": "cxone_contact_import_batch_complete", "metrics": {"successCount": 3}}


def test_sink_stores_json_and_text_events(http, sink):
    ok = http.post(f"{sink.url}/crm/hooks/import", json=WEBHOOK_EVENT, timeout=5)
    http.post(f"{sink.url}/plain", data=b"hello", headers={"Content-Type": "text/plain"}, timeout=5)

    assert ok.status_code == 200 and ok.json() == {"ok": True}
    events = sink.events()
    assert [(e["path"], e["body"], e["status"]) for e in events] == [
        ("/crm/hooks/import", WEBHOOK_EVENT, 200),
        ("/plain", "hello", 200),
    ]
    assert events[0]["headers"]["Content-Type"] == "application/json"
    assert events[0]["received_at"]
    assert http.get(f"{sink.url}/_sink/events", timeout=5).json() == {"events": events}


@pytest.mark.parametrize(
    ("fail_status", "fail_count", "expected_statuses"),
    [
        pytest.param(500, 2, [500, 500, 200, 200], id="fails-twice"),
        pytest.param(503, None, [503, 503, 503, 503], id="always-fails"),
        pytest.param(None, None, [200, 200, 200, 200], id="never-fails"),
    ],
)
def test_sink_fail_status_and_count(http, sink, fail_status, fail_count, expected_statuses):
    sink.configure(fail_status=fail_status, fail_count=fail_count)

    statuses = [http.post(f"{sink.url}/hook", json=WEBHOOK_EVENT, timeout=5).status_code for _ in range(4)]

    assert statuses == expected_statuses
    assert [event["status"] for event in sink.events()] == expected_statuses


def test_sink_control_endpoints(http, sink):
    assert http.post(f"{sink.url}/_sink/config", json={"fail_status": 502, "fail_count": 1}, timeout=5).ok
    assert http.post(f"{sink.url}/hook", json=WEBHOOK_EVENT, timeout=5).status_code == 502
    assert http.post(f"{sink.url}/hook", json=WEBHOOK_EVENT, timeout=5).status_code == 200

    assert http.post(f"{sink.url}/_sink/reset", timeout=5).json() == {"ok": True}

    assert sink.events() == []
    assert http.post(f"{sink.url}/_sink/config", json={"fail_rate": 1}, timeout=5).status_code == 400


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_starts_writes_ready_file_serves_and_stops_on_sigterm(tmp_path, http):
    ready_file = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "include.cxone_sandbox", "--port", "0", "--webhook-port", "0",
         "--ready-file", str(ready_file), "--duplicate-mode", "conflict", "--client-id", CLIENT_ID,
         "--client-secret", CLIENT_SECRET],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready_file.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "sandbox CLI did not become ready"
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        assert ready["pid"] == process.pid
        assert ready["cxone_url"].startswith("http://127.0.0.1:")
        assert ready["webhook_url"].startswith("http://127.0.0.1:")
        assert json.loads(process.stdout.readline()) == ready

        token_response = http.post(f"{ready['cxone_url']}/oauth2/token", data=TOKEN_FORM, timeout=5)
        config = http.get(f"{ready['cxone_url']}/_sandbox/config", timeout=5).json()
        hook = http.post(f"{ready['webhook_url']}/hook", json=WEBHOOK_EVENT, timeout=5)
        assert token_response.status_code == 200
        assert config["duplicate_mode"] == "conflict"
        assert hook.status_code == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert not ready_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
