"""The calling-list sandbox refuses what NICE's published schema refuses (docs/api-call-lists.md, "Schema checks"):
each request below is sent over HTTP as a client that dropped a field or sent a wrong type would send it."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from cxone_provider.call_lists import CallListClient, expiration_timestamp
from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig

pytestmark = pytest.mark.timeout(60)

CSV = b"contactId,mobile_phone\r\nc-1,+14155550101\r\nc-2,+14155550102\r\n"
PHONES = [{"fieldName": "mobile_phone", "fieldValue": "mobile_phone"}]
UPLOAD_REQUIRED = ("listFile", "forceOverwrite", "expirationDate", "startSkill", "sendEmail")


@pytest.fixture(scope="module")
def sandbox():
    with CallListSandbox(CallListSandboxConfig(job_delay_s=0.05)) as running:
        yield running


@pytest.fixture(scope="module")
def client(sandbox):
    config = CallListSandboxConfig()
    with CallListClient(sandbox.url, config.access_key_id, config.access_key_secret, client_id=config.client_id,
                        client_secret=config.client_secret) as made:
        yield made


@pytest.fixture(scope="module")
def list_id(client):
    return client.create_list("contract", external_id_column="contactId", destination_mappings=PHONES,
                              custom_field_mappings=[])


def call(client: CallListClient, method: str, path: str, **kwargs) -> requests.Response:
    """One raw request with a valid token: what a client that builds its own body sends."""
    headers = {"Authorization": f"Bearer {client.auth.get_token()}"}
    return requests.request(method, f"{client.base_url}/{path}", headers=headers, timeout=10, **kwargs)


def upload_body(**changes) -> dict:
    body = {"listFile": base64.b64encode(CSV).decode(), "fileName": "c.csv", "forceOverwrite": False,
            "expirationDate": expiration_timestamp(datetime.now(timezone.utc) + timedelta(days=1)),
            "startSkill": False, "sendEmail": False}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("field", UPLOAD_REQUIRED)
def test_an_upload_without_a_required_field_is_refused_naming_it(client, list_id, sandbox, field):
    uploads = sandbox.stats()["uploads"]
    answer = call(client, "POST", f"lists/call-lists/{list_id}/upload", json=upload_body(**{field: None}))
    assert answer.status_code == 400
    assert answer.json() == {"error": "MissingField", "errorDescription": f"{field} is required"}
    assert sandbox.stats()["uploads"] == uploads, "a refused upload started a job"


@pytest.mark.parametrize(("changes", "named"), [
    pytest.param({"forceOverwrite": "false"}, "forceOverwrite must be a boolean", id="forceOverwrite-string"),
    pytest.param({"startSkill": 0}, "startSkill must be a boolean", id="startSkill-number"),
    pytest.param({"sendEmail": "no"}, "sendEmail must be a boolean", id="sendEmail-string"),
    pytest.param({"skillId": "abc"}, "skillId must be an integer", id="skillId-not-a-number"),
    pytest.param({"expirationDate": "tomorrow"}, "expirationDate must be an ISO 8601 date or date-time",
                 id="expirationDate-not-a-date"),
    pytest.param({"expirationDate": "2020-01-01T00:00:00.000Z"}, "expirationDate must be in the future",
                 id="expirationDate-past"),
])
def test_an_upload_with_a_wrong_type_is_refused_naming_the_field(client, list_id, changes, named):
    answer = call(client, "POST", f"lists/call-lists/{list_id}/upload", json=upload_body(**changes))
    assert answer.status_code == 400 and answer.json()["errorDescription"] == named


def test_the_client_upload_carries_every_required_field(client, list_id, sandbox):
    job = client.upload(list_id, CSV, file_name="ok.csv",
                        expiration_date=datetime.now(timezone.utc) + timedelta(days=30), skill_id="4242")
    assert job and any(str(j["jobId"]) == job for j in sandbox.jobs())


def test_records_leave_the_list_when_their_upload_expires(client, sandbox):
    list_id = client.create_list("expiring", external_id_column="contactId", destination_mappings=PHONES,
                                 custom_field_mappings=[])
    client.upload(list_id, CSV, file_name="soon.csv", expiration_date=datetime.now(timezone.utc) + timedelta(seconds=1.5))
    time.sleep(0.3)
    assert set(client.iter_external_ids(list_id)) == {"c-1", "c-2"}
    time.sleep(1.5)
    assert set(client.iter_external_ids(list_id)) == set()


@pytest.mark.parametrize(("query", "named"), [
    pytest.param({"includeRecords": "yes"}, "includeRecords must be true or false", id="includeRecords"),
    pytest.param({"finalized": "1"}, "finalized must be true or false", id="finalized"),
    pytest.param({"skip": "-1"}, "skip must be an integer >= 0", id="skip-negative"),
    pytest.param({"top": "0"}, "top must be an integer >= 1", id="top-zero"),
    pytest.param({"top": "ten"}, "top must be an integer >= 1", id="top-text"),
    pytest.param({"updatedSince": "yesterday"}, "updatedSince must be an ISO 8601 date-time", id="updatedSince"),
])
def test_a_malformed_list_read_is_refused_not_read_as_the_default(client, list_id, query, named):
    answer = call(client, "GET", f"lists/call-lists/{list_id}", params=query)
    assert answer.status_code == 400 and answer.json()["errorDescription"] == named


@pytest.mark.parametrize(("query", "body", "named"), [
    pytest.param({"externalIdColumn": "contactId"}, {"destinationMappings": PHONES}, "listName is required",
                 id="listName"),
    pytest.param({"listName": "x1"}, {"destinationMappings": PHONES}, "externalIdColumn is required",
                 id="externalIdColumn"),
    pytest.param({"listName": "x2", "externalIdColumn": "contactId"}, {}, "at least one destination mapping is required",
                 id="destinationMappings"),
    pytest.param({"listName": "x3", "externalIdColumn": "contactId"}, {"destinationMappings": [{"fieldName": "m"}]},
                 "destinationMappings must be a list of {fieldName, fieldValue}", id="fieldValue"),
])
def test_a_list_create_without_a_required_field_is_refused(client, query, body, named):
    answer = call(client, "POST", "lists/call-lists", params=query, json=body)
    assert answer.status_code == 400 and answer.json()["errorDescription"] == named


def test_a_job_read_names_a_numeric_job(client):
    assert call(client, "GET", "lists/call-lists/jobs/not-a-number").status_code == 404


@pytest.mark.parametrize("knob", ["discovered_token_endpoint", "discovered_api_endpoint"])
def test_discovery_naming_a_foreign_host_is_refused_before_anything_is_sent(knob):
    """OIDC or API discovery naming a host that is neither NICE's nor the connection's: the client stops with the
    host named, and the foreign server receives nothing (no access key, no record)."""
    from cxone_provider.errors import CXoneUntrustedHostError

    with CallListSandbox() as foreign, CallListSandbox() as tenant:
        path = "/auth/token" if knob == "discovered_token_endpoint" else ""
        tenant.configure(**{knob: foreign.url + path})
        config = CallListSandboxConfig()
        with CallListClient(tenant.url, config.access_key_id, config.access_key_secret, client_id=config.client_id,
                            client_secret=config.client_secret) as client:
            with pytest.raises(CXoneUntrustedHostError, match=f"named {foreign.url}"):
                client.calling_lists()
        assert foreign.stats()["token_requests"] == 0 and foreign.stats()["requests"] == 0
        # the same host named by the connection (a proxy in front of CXone) is trusted
        with CallListClient(tenant.url, config.access_key_id, config.access_key_secret, client_id=config.client_id,
                            client_secret=config.client_secret, allowed_hosts=[foreign.url]) as client:
            client.fetch_token()
        assert foreign.stats()["token_requests"] == (1 if path else 0)


@pytest.mark.parametrize(("url", "trusted"), [
    ("https://cxone.niceincontact.com/auth/token", True),
    ("https://api-na1.niceincontact.com", True),
    ("https://api-eu1.nicecxone.com", True),
    ("http://api-na1.niceincontact.com", False),  # a NICE host, but not over TLS
    ("https://niceincontact.com.evil.example", False),
    ("https://evilniceincontact.com", False),
    ("https://127.0.0.1:8443", False),
])
def test_nice_domains_over_https_are_trusted(url, trusted):
    from cxone_provider.call_lists import trusted_endpoint
    from cxone_provider.errors import CXoneUntrustedHostError

    if trusted:
        assert trusted_endpoint(url, what="discovery", configured=[]) == url
    else:
        with pytest.raises(CXoneUntrustedHostError):
            trusted_endpoint(url, what="discovery", configured=["https://cxone.niceincontact.com"])


def test_remove_prospects_removes_the_named_records_and_names_the_missing(client, sandbox):
    list_id = client.create_list("removals", external_id_column="contactId", destination_mappings=PHONES,
                                 custom_field_mappings=[])
    client.upload(list_id, CSV, file_name="r.csv", expiration_date=datetime.now(timezone.utc) + timedelta(days=1))
    time.sleep(0.3)
    removal = client.remove_prospects("removals", ["c-1", "nobody"])
    assert removal.removed == {"c-1": "Success"} and removal.failed == {"nobody": "NotFound"}
    assert set(client.iter_external_ids(list_id)) == {"c-2"}


@pytest.mark.parametrize(("body", "named"), [
    pytest.param({}, "prospectsToRemove is required", id="missing"),
    pytest.param({"prospectsToRemove": []}, "prospectsToRemove must be a non-empty list", id="empty"),
    pytest.param({"prospectsToRemove": [{}]}, "prospectsToRemove[].externalId is required", id="no-externalId"),
    pytest.param({"prospectsToRemove": [{"externalId": True}]}, "prospectsToRemove[].externalId must be a number or a string",
                 id="boolean-externalId"),
])
def test_a_removal_without_its_required_fields_is_refused(client, list_id, body, named):
    answer = call(client, "DELETE", "lists/call-lists/contract/removeProspects", json=body)
    assert answer.status_code == 400 and answer.json()["errorDescription"] == named


def test_dnc_records_go_into_the_group_and_a_bad_number_is_named(client, sandbox):
    group_id = sandbox.create_dnc_group("revoked consent")
    results = client.add_dnc_records(str(group_id), ["+14155550101", "+1234"])
    assert [r["success"] for r in results] == [True, False]
    assert set(sandbox.dnc_records(group_id)) == {"14155550101"}


@pytest.mark.parametrize(("body", "named"), [
    pytest.param({}, "dncGroupRecords is required", id="missing"),
    pytest.param({"dncGroupRecords": [{"expiredDate": "2030-01-01"}]}, "dncGroupRecords[].phoneNumber is required",
                 id="no-phoneNumber"),
    pytest.param({"dncGroupRecords": [{"phoneNumber": "14155550101", "expiredDate": "soon"}]},
                 "dncGroupRecords[].expiredDate must be ISO 8601", id="bad-expiredDate"),
])
def test_a_dnc_request_without_its_required_fields_is_refused(client, sandbox, body, named):
    group_id = sandbox.create_dnc_group("checks")
    answer = call(client, "POST", f"dnc-groups/{group_id}/records", json=body)
    assert answer.status_code == 400 and answer.json()["errorDescription"] == named
