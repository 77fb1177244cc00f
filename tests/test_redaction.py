"""CXone's error texts are scrubbed (phone-like, e-mail-like, name fields) before they reach a log, an audit entry or
a CRM event; no repr shows a secret; credentials in a URI are masked wherever the URI is shown."""

from __future__ import annotations

import json
import logging

import pytest
from upath import UPath

from cxone_provider.call_lists import AccessKeyAuth, CallListClient
from cxone_provider.client import ClientCredentialsAuth, CXoneClient
from cxone_provider.crm_webhook import WebhookSender, WebhookTarget
from cxone_provider.errors import CXoneValidationError, status_error
from cxone_provider.ratelimit import RateLimiter, budget_store
from cxone_provider.redaction import mask_uri, scrub_text
from cxone_provider.retry import RetryPolicy
from include.cxone_import.engine import GroupImporter
from cxone_runs.pages import RunLinks, render_run_report
from include.cxone_import.sources import SourceFormatError
from cxone_runs.layout import RunLayout, list_files
from include.cxone_import.storage import iter_jsonl, read_parquet
from tests.test_engine import LIST, record, write_group
from tests.test_redirects import TOKEN, LocalServer
from tests.test_report_ui_app import make_report

SECRET = "s3cr3t-value-for-repr"
PERSONAL = ["+1 (415) 555-0123", "415.555.0123", "ada.lovelace@example.com", "Ada Byron", "Lovelace"]
HOSTILE_MESSAGE = ('number +1 (415) 555-0123 (also 415.555.0123) of {"firstName": "Ada Byron", "lastName": "Lovelace"} '
                   "<ada.lovelace@example.com> is not valid")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("call +1 (415) 555-0123 now", "call ***23 now", id="formatted-phone"),
        pytest.param("+447700900123 is a duplicate", "***23 is a duplicate", id="e164-phone"),
        pytest.param("owner ada@example.com", "owner ***", id="e-mail"),
        pytest.param('{"firstName": "Ada", "contactId": "c-1"}', '{"firstName": ***, "contactId": "c-1"}', id="name-field"),
        pytest.param("full_name=Ada Lovelace, code 7", "full_name=***, code 7", id="name-assignment"),
        pytest.param("request 8f3a-22 on 2026-11-30: 12 records", "request 8f3a-22 on 2026-11-30: 12 records",
                     id="ids-dates-counts-stay"),
    ],
)
def test_scrub_text(text, shown):
    assert scrub_text(text) == shown


def test_a_status_error_names_no_person():
    body = {"errors": [{"index": 0, "contactId": "c-1", "field": "phoneNumbers", "message": HOSTILE_MESSAGE}]}

    error = status_error(400, operation="record import", body=body)

    assert isinstance(error, CXoneValidationError)
    assert not [p for p in PERSONAL if p in str(error) or p in json.dumps(error.body) or p in json.dumps(error.errors)]
    assert error.errors[0]["contactId"] == "c-1", "ids stay, so the engine still knows which record was refused"


@pytest.mark.parametrize("status", [400, 503], ids=["refused-record", "server-error"])
def test_cxone_error_texts_reach_no_log_audit_or_event(tmp_path, caplog, status):
    """The engine against a server whose error texts quote a person: outcomes, audit parts, the batch listener's
    entries (the CRM's batch events) and the logs carry the error scrubbed."""
    layout = RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")
    write_group(layout, [record(i) for i in range(3)], batch_size=3)
    answer = ({"errors": [{"index": 1, "contactId": "c1", "field": "phoneNumbers", "message": HOSTILE_MESSAGE}]}
              if status == 400 else {"errorDescription": HOSTILE_MESSAGE})
    events: list[dict] = []
    with LocalServer() as server:
        server.json("/oauth2/token", TOKEN)
        server.routes[f"/api/v2/contactlists/{LIST}/records"] = (status, {"Content-Type": "application/json"},
                                                                 json.dumps(answer).encode())
        client = CXoneClient(server.url, "client-1", "secret-1",
                             retry_policy=RetryPolicy(max_attempts=2, backoff_base_s=0, jitter=False))
        with caplog.at_level(logging.DEBUG):
            GroupImporter(client, LIST, layout, concurrency=1).run(0, on_batch=lambda m, audit: events.append(audit))
            client.close()

    outcomes = read_parquet(layout.outcome_file(0))
    written = [json.dumps(e) for part in list_files(layout.root / "audit", "*.jsonl") for e in iter_jsonl(part)]
    shown = "\n".join([caplog.text, json.dumps(events), *written, *outcomes["detail"].astype(str)])
    assert "not valid" in shown, "the server's reason is kept"
    assert not [p for p in PERSONAL if p in shown]


def test_no_repr_shows_a_secret():
    store_url = f"redis://admin:{SECRET}@127.0.0.1:6399/0"
    objects = [
        WebhookTarget(url=f"https://crm.example.com/hook?token={SECRET}", secret=SECRET),
        WebhookSender(WebhookTarget(url="https://crm.example.com/hook", secret=SECRET)),
        CXoneClient("https://api.example.com", "client-1", SECRET),
        ClientCredentialsAuth("https://api.example.com/oauth2/token", "client-1", SECRET),
        CallListClient("https://auth.example.com", "key-1", SECRET, client_id="app", client_secret=SECRET),
        AccessKeyAuth("https://auth.example.com", "key-1", SECRET, client_id="app", client_secret=SECRET),
        RateLimiter(600, store=budget_store(store_url)),
        budget_store(store_url),
    ]
    for obj in objects:
        assert SECRET not in repr(obj), type(obj).__name__
    assert "signed=True" in repr(objects[0])


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        pytest.param("https://alice:pw@crm.example.com/x.csv?sig=abc", "https://***@crm.example.com/x.csv?sig=***",
                     id="userinfo-and-query"),
        pytest.param("s3://aws_prod_admin@bucket/key.csv", "s3://***@bucket/key.csv", id="conn-id"),
        pytest.param("s3://bucket/key.csv", "s3://bucket/key.csv", id="plain-bucket"),
        pytest.param("/data/contacts.csv", "/data/contacts.csv", id="path"),
    ],
)
def test_mask_uri(uri, shown):
    assert mask_uri(uri) == shown


def test_a_uri_with_credentials_is_masked_in_errors_and_report_pages():
    uri = f"https://alice:{SECRET}@crm.example.com/x.csv?sig={SECRET}"
    error = SourceFormatError(uri, None, "source_exists", "the source file does not exist")
    report = {**make_report("r"), "source_uri": uri}  # a report written before sources were masked
    page = render_run_report(report, dag_id="d", run_id="r", run_state="success",
                             links=RunLinks(report_json="report.json", rejects_csv="rejects.csv", dead_letter=None))
    for shown in (str(error), error.source, page):
        assert SECRET not in shown and "alice" not in shown
