"""Sources only from allowed places: a URI naming a connection (``conn_id@``), an http(s) URL or any place outside
the Variable ``cxone_source_allowed_prefixes`` is refused before anything is read, with the reason in the report and
the CRM's failure event; by default local files and the source base's scheme and bucket are read as before."""

from __future__ import annotations

import json
import os

import pytest

from include.cxone_import.source_policy import (
    SOURCE_ALLOWED,
    SourceNotAllowedError,
    check_source,
    default_allowed_prefixes,
    parse_allowed_prefixes,
)
from tests.test_redirects import LocalServer

SOURCE_BASE = "s3://crm-exports/incoming"
LISTED = ["s3://crm-exports/nightly/", "https://crm.example.com/exports/"]

ALLOWED_BY_DEFAULT = {
    "absolute-path": "/data/exports/contacts.csv",
    "file-uri": "file:///data/exports/contacts.csv",
    "source-bucket": "s3://crm-exports/2026/contacts_2026-11-30.csv",
    "source-bucket-other-prefix": "s3://crm-exports/archive/contacts.csv",
}
REFUSED_BY_DEFAULT = {
    "connection-user-part": ("s3://aws_prod_admin@hr-exports/all_customers.csv", "connection or user"),
    "user-part-in-source-bucket": ("s3://aws_prod_admin@crm-exports/contacts.csv", "connection or user"),
    "https-url": ("https://intranet.example/contacts.csv", "http(s)"),
    "metadata-endpoint": ("http://169.254.169.254/latest/meta-data/iam", "http(s)"),
    "other-bucket": ("s3://hr-exports/all_customers.csv", "outside"),
    "other-scheme": ("gs://crm-exports/contacts.csv", "outside"),
    "memory-fs": ("memory://contacts.csv", "outside"),
    "chained-url": ("simplecache::s3://crm-exports/contacts.csv", "outside"),
    "dot-segments": ("s3://crm-exports/incoming/../../hr-exports/x.csv", ". or .."),
    "encoded-dot-segments": ("s3://crm-exports/incoming/%2e%2e/x.csv", ". or .."),
    "file-uri-with-host": ("file://etc/passwd", "names no host"),
}


@pytest.mark.parametrize("uri", ALLOWED_BY_DEFAULT.values(), ids=ALLOWED_BY_DEFAULT.keys())
def test_default_reads_local_files_and_the_source_bucket(uri):
    check_source(uri, default_allowed_prefixes(SOURCE_BASE))


@pytest.mark.parametrize(("uri", "why"), REFUSED_BY_DEFAULT.values(), ids=REFUSED_BY_DEFAULT.keys())
def test_default_refuses_other_places(uri, why):
    with pytest.raises(SourceNotAllowedError) as caught:
        check_source(uri, default_allowed_prefixes(SOURCE_BASE))
    assert caught.value.rule == SOURCE_ALLOWED
    assert why in str(caught.value)
    assert "aws_prod_admin" not in str(caught.value), "the user part is masked"


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        pytest.param("s3://aws_crm@crm-exports/2026/contacts.csv", True, id="the-base's-own-connection"),
        pytest.param("s3://crm-exports/2026/contacts.csv", True, id="the-storage-connection"),
        pytest.param("s3://aws_prod_admin@crm-exports/2026/contacts.csv", False, id="another-connection"),
    ],
)
def test_a_source_base_naming_its_connection_allows_that_connection(uri, allowed):
    """A storage base with a connection is written ``s3://conn_id@bucket/...``: its dated files are read as before."""
    prefixes = default_allowed_prefixes("s3://aws_crm@crm-exports/incoming")
    if allowed:
        check_source(uri, prefixes)
    else:
        with pytest.raises(SourceNotAllowedError):
            check_source(uri, prefixes)


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        pytest.param("s3://crm-exports/nightly/contacts.csv", True, id="listed-prefix"),
        pytest.param("https://crm.example.com/exports/contacts.csv", True, id="listed-https"),
        pytest.param("s3://crm-exports/nightly-other/contacts.csv", False, id="whole-segments-only"),
        pytest.param("https://crm.example.com/private/contacts.csv", False, id="https-outside-listed"),
        pytest.param("/data/exports/contacts.csv", False, id="local-not-listed"),
        pytest.param("s3://admin@crm-exports/nightly/contacts.csv", False, id="user-part-not-listed"),
    ],
)
def test_the_variable_lists_the_places(uri, allowed):
    if allowed:
        check_source(uri, LISTED)
    else:
        with pytest.raises(SourceNotAllowedError):
            check_source(uri, LISTED)


def test_a_symlink_out_of_an_allowed_folder_is_refused(tmp_path):
    allowed = tmp_path / "incoming"
    allowed.mkdir()
    (tmp_path / "secret.csv").write_text("x")
    os.symlink(tmp_path / "secret.csv", allowed / "contacts.csv")

    with pytest.raises(SourceNotAllowedError):
        check_source(str(allowed / "contacts.csv"), [f"file://{allowed}/"])
    check_source(str(allowed / "other.csv"), [f"file://{allowed}/"])


def test_credentials_never_appear_in_the_refusal():
    with pytest.raises(SourceNotAllowedError) as caught:
        check_source("https://alice:hunter2@intranet.example/x.csv?sig=abc123", LISTED)
    assert "hunter2" not in str(caught.value) and "abc123" not in str(caught.value) and "alice" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('["s3://a/", "file:///data/"]', ["s3://a/", "file:///data/"], id="json-list"),
        pytest.param(["s3://a/"], ["s3://a/"], id="decoded-list"),
        pytest.param("s3://a/,file:///data/", None, id="comma-separated-is-refused"),
        pytest.param('"s3://a/"', None, id="json-string"),
        pytest.param("[1]", None, id="not-strings"),
    ],
)
def test_the_variable_is_a_json_list(value, expected):
    if expected is None:
        with pytest.raises(ValueError, match="JSON list"):
            parse_allowed_prefixes(value)
    else:
        assert parse_allowed_prefixes(value) == expected


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["connection-user-part", "http-url"])
def test_a_refused_source_fails_the_run_before_any_read(run_import, cxone_sandbox, webhook_sink, case):
    with LocalServer() as server:
        uri = {
            "connection-user-part": "s3://aws_prod_admin@hr-exports/all_customers.csv",
            "http-url": f"{server.url}/contacts.csv",
        }[case]

        run = run_import({"source_uri": uri})

        assert server.requests == [], "nothing was read"
    assert run.state == "failed"
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in run.dag_run.get_task_instances()}
    assert tries["extract"] == ("failed", 1), "a refused source is not retried"
    failure = run.report["failure"]
    assert (failure["task"], failure["rule"]) == ("extract", SOURCE_ALLOWED)
    assert "aws_prod_admin" not in json.dumps(run.report)
    assert cxone_sandbox.stats()["records_requests"] == 0
    (event,) = [e["body"] for e in webhook_sink.events() if e["body"].get("event") == "cxone_contact_import_run_failed"]
    assert event["failure"]["rule"] == SOURCE_ALLOWED
    assert event["failure"]["message"] == failure["message"]
