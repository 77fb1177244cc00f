"""CRM webhook delivery (provider): signed and keyed events, retries through the RetryPolicy, Retry-After honoured;
the hook reads its connection one way (URL, verify_ssl) and fails on a lookup error instead of going quiet."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import pytest

from cxone_provider.connections import connection_url, parse_bool
from cxone_provider.crm_webhook import WebhookSender, WebhookTarget
from cxone_provider.hooks.crm_webhook import CrmWebhookHook
from cxone_provider.retry import RetryPolicy
from include.cxone_sandbox.webhook_sink import SIGNATURE_TOLERANCE_S, WebhookSink, verify_signature
from tests.ports import free_port

SECRET = "webhook-signing-secret"
CONN_ID = "crm_webhook_test"
CONN_ENV = "AIRFLOW_CONN_CRM_WEBHOOK_TEST"
EVENT = {"eventId": "run-1:summary", "event": "cxone_contact_import_run_complete", "metrics": {"successCount": 3}}
NO_JITTER = RetryPolicy(max_attempts=4, backoff_base_s=1.0, backoff_max_s=8.0, retry_after_cap_s=10.0, jitter=False)


class RecordedSleeps(list):
    """A sleep that only records how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sender_for(url: str, policy: RetryPolicy = NO_JITTER, **target: Any) -> tuple[WebhookSender, RecordedSleeps]:
    sleeps = RecordedSleeps()
    return WebhookSender(WebhookTarget(url=url, retry_policy=policy, **target), sleep=sleeps), sleeps


def test_event_is_signed_with_its_timestamp_and_keyed(webhook_sink):
    sender, _ = sender_for(f"{webhook_sink.url}/crm/events", secret=SECRET)

    before = int(time.time())
    delivery = sender.send(EVENT)

    assert (delivery.ok, delivery.status_code, delivery.attempts) == (True, 200, 1)
    (received,) = webhook_sink.events()
    body = json.dumps(EVENT, separators=(",", ":")).encode()
    assert received["path"] == "/crm/events" and received["body"] == EVENT
    assert received["headers"]["Idempotency-Key"] == EVENT["eventId"]
    stamp = received["headers"]["X-Signature-Timestamp"]
    assert before <= int(stamp) <= time.time()
    signed = stamp.encode() + b"." + body  # the timestamp is inside the signature: a replay cannot move it
    assert received["headers"]["X-Signature"] == "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        pytest.param(None, "valid", id="as-sent"),
        pytest.param("replayed-later", "stale", id="replayed-after-the-window"),
        pytest.param("new-timestamp", "invalid", id="timestamp-moved"),
        pytest.param("body", "invalid", id="body-changed"),
        pytest.param("unsigned", "unsigned", id="no-signature"),
    ],
)
def test_a_receiver_refuses_replayed_or_changed_events(change, verdict):
    """What the README's receiver check (the sink's ``verify_signature``) says of an event and altered copies."""
    with WebhookSink() as capture:
        sender_for(capture.url, secret=SECRET)[0].send(EVENT)
        (received,) = capture.events()
    body = json.dumps(received["body"], separators=(",", ":")).encode()
    headers = dict(received["headers"])
    now = int(headers["X-Signature-Timestamp"])
    if change == "replayed-later":
        now += SIGNATURE_TOLERANCE_S + 1
    elif change == "new-timestamp":
        headers["X-Signature-Timestamp"] = str(now + 600)
        now += 600
    elif change == "body":
        body = body.replace(b"3", b"4")
    elif change == "unsigned":
        headers.pop("X-Signature")

    assert verify_signature(body, headers, SECRET, now=now) == verdict


def test_a_sink_with_the_secret_refuses_a_wrong_signature():
    with WebhookSink(secret=SECRET) as sink:
        good, _ = sender_for(sink.url, secret=SECRET)
        forged, _ = sender_for(sink.url, policy=RetryPolicy(max_attempts=1), secret="not-the-secret")

        assert good.send(EVENT).ok
        refused = forged.send(EVENT)

        assert (refused.ok, refused.status_code) == (False, 401)
        assert [e["signature"] for e in sink.events()] == ["valid", "invalid"]


@pytest.mark.parametrize(
    ("target", "warning"),
    [
        pytest.param({"secret": None}, "unsigned", id="no-secret"),
        pytest.param({"secret": SECRET, "verify": False}, "TLS certificate verification is OFF", id="tls-off"),
    ],
)
def test_unsigned_events_and_disabled_tls_are_warned_about(caplog, target, warning):
    with caplog.at_level(logging.WARNING, logger="cxone_provider"):
        WebhookSender(WebhookTarget(url="https://user:pw@crm.example.com/hook", **target))
    assert warning in caplog.text
    assert "pw@" not in caplog.text


def test_a_cxone_client_without_tls_checks_is_warned_about(caplog):
    from cxone_provider.client import CXoneClient

    with caplog.at_level(logging.WARNING, logger="cxone_provider"):
        CXoneClient("https://api.example.com", "client-1", "secret-1", verify=False)
    assert "TLS certificate verification is OFF" in caplog.text


@pytest.mark.parametrize(
    ("fail_status", "retry_after", "expected_sleeps"),
    [
        pytest.param(503, None, [1.0, 2.0], id="5xx-backs-off-exponentially"),
        pytest.param(429, 7, [7.0, 7.0], id="429-honours-retry-after"),
        pytest.param(429, 600, [10.0, 10.0], id="retry-after-capped"),
        pytest.param(503, 3, [3.0, 3.0], id="503-honours-retry-after"),
    ],
)
def test_retryable_failures_are_retried_then_delivered(webhook_sink, fail_status, retry_after, expected_sleeps):
    webhook_sink.configure(fail_status=fail_status, fail_count=2, retry_after=retry_after)
    sender, sleeps = sender_for(webhook_sink.url)

    delivery = sender.send(EVENT)

    assert (delivery.ok, delivery.attempts) == (True, 3)
    assert sleeps == expected_sleeps
    assert [event["status"] for event in webhook_sink.events()] == [fail_status, fail_status, 200]


def test_client_error_is_not_retried(webhook_sink):
    webhook_sink.configure(fail_status=400)
    sender, sleeps = sender_for(webhook_sink.url)

    delivery = sender.send(EVENT)

    assert (delivery.ok, delivery.status_code, delivery.attempts, delivery.error) == (False, 400, 1, "HTTP 400")
    assert sleeps == []


def test_unreachable_webhook_gives_up_after_max_attempts():
    sender, sleeps = sender_for(f"http://127.0.0.1:{free_port()}")

    delivery = sender.send(EVENT)

    assert (delivery.ok, delivery.status_code, delivery.attempts) == (False, None, NO_JITTER.max_attempts)
    assert delivery.error == "ConnectionError"
    assert len(sleeps) == NO_JITTER.max_attempts - 1


def test_a_down_webhook_is_given_up_after_so_many_events_in_a_row(webhook_sink):
    webhook_sink.configure(fail_status=503)  # every POST fails
    sender, _ = sender_for(webhook_sink.url, policy=RetryPolicy(max_attempts=2, backoff_base_s=0, jitter=False),
                           give_up_after=3)
    events = [{**EVENT, "eventId": f"run-1:batch:{n}"} for n in range(10)]

    deliveries = [sender.send(event) for event in events]

    assert [d.attempts for d in deliveries] == [2, 2, 2] + [0] * 7
    assert not any(d.ok for d in deliveries) and sender.gave_up
    assert all(d.error.startswith("not attempted: 3 events in a row") for d in deliveries[3:])
    assert len(webhook_sink.events()) == 6, "nothing is sent after giving up"


def test_a_delivered_event_resets_the_count(webhook_sink):
    webhook_sink.configure(fail_status=503, fail_count=4)  # two events fail (2 attempts each), then the CRM is back
    sender, _ = sender_for(webhook_sink.url, policy=RetryPolicy(max_attempts=2, backoff_base_s=0, jitter=False),
                           give_up_after=3)

    deliveries = [sender.send({**EVENT, "eventId": f"run-1:batch:{n}"}) for n in range(6)]

    assert [d.ok for d in deliveries] == [False, False, True, True, True, True] and not sender.gave_up


@pytest.mark.parametrize(
    ("host", "schema", "port", "endpoint", "url"),
    [
        pytest.param("http://127.0.0.1:8766", None, None, "/crm/events", "http://127.0.0.1:8766/crm/events", id="url-host"),
        pytest.param("crm.example.com", None, None, "crm/events", "https://crm.example.com/crm/events", id="https-default"),
        pytest.param("crm.example.com", "http", 8080, None, "http://crm.example.com:8080", id="schema-and-port"),
        pytest.param("https://crm.example.com/", None, 8443, "/x", "https://crm.example.com:8443/x", id="url-host-and-port"),
        pytest.param("https://crm.example.com/api/", None, None, "/hooks", "https://crm.example.com/api/hooks", id="one-slash"),
    ],
)
def test_connection_url(host, schema, port, endpoint, url):
    assert connection_url(host, schema, port, endpoint) == url


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param(value, True, id=f"true-{value!r}") for value in (True, "true", "True", "1", 1, "yes", "Y", "on", " ON ")]
    + [pytest.param(value, False, id=f"false-{value!r}") for value in (False, "false", "FALSE", "0", 0, "no", "n", "off", "Off")],
)
def test_parse_bool_every_spelling(value, expected):
    assert parse_bool(value, name="verify_ssl") is expected


@pytest.mark.parametrize("value", [pytest.param(v, id=repr(v)) for v in ("maybe", "", "2", None)])
def test_parse_bool_refuses_anything_else(value):
    with pytest.raises(ValueError, match="verify_ssl must be true or false"):
        parse_bool(value, name="verify_ssl")


def define_connection(monkeypatch, **fields: Any) -> None:
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", **fields}))


@pytest.mark.parametrize(
    ("verify_ssl", "verify"),
    [pytest.param("off", False, id="off"), pytest.param("on", True, id="on"), pytest.param(False, False, id="bool")],
)
def test_hook_builds_target_from_connection(monkeypatch, verify_ssl, verify):
    define_connection(
        monkeypatch,
        host="crm.example.com",
        port=8443,
        password=SECRET,
        extra={"endpoint": "/crm/events", "timeout": 3, "verify_ssl": verify_ssl, "max_attempts": 2, "retry_after_cap_s": 5},
    )

    target = CrmWebhookHook(CONN_ID).get_target()

    assert (target.url, target.secret, target.timeout_s, target.verify) == (
        "https://crm.example.com:8443/crm/events", SECRET, 3.0, verify
    )
    assert (target.retry_policy.max_attempts, target.retry_policy.retry_after_cap_s) == (2, 5.0)


def test_hook_refuses_an_unreadable_verify_ssl(monkeypatch):
    define_connection(monkeypatch, host="crm.example.com", extra={"verify_ssl": "maybe"})

    with pytest.raises(ValueError, match=f"connection {CONN_ID}: verify_ssl"):
        CrmWebhookHook(CONN_ID).get_target()


def test_undefined_connection_means_no_webhook(monkeypatch):
    monkeypatch.delenv(CONN_ENV, raising=False)

    assert CrmWebhookHook(CONN_ID).get_target() is None


def test_failing_connection_lookup_fails_instead_of_going_quiet(monkeypatch):
    def broken_backend(conn_id: str) -> Any:
        raise RuntimeError("secrets backend unreachable")

    monkeypatch.setattr(CrmWebhookHook, "get_connection", staticmethod(broken_backend))

    with pytest.raises(RuntimeError, match="secrets backend unreachable"):
        CrmWebhookHook(CONN_ID).get_target()


def test_unset_variable_falls_back_but_a_failing_one_fails(monkeypatch):
    from airflow.sdk import Variable

    from include.cxone_import import task_config

    monkeypatch.setenv("CXONE_IMPORT_STORAGE_BASE", "file:///tmp/cxone-default-base")
    monkeypatch.delenv("AIRFLOW_VAR_CXONE_STORAGE_BASE", raising=False)
    assert str(task_config.storage_base()).endswith("/tmp/cxone-default-base")

    def broken_backend(key: str, default: Any = None, **kwargs: Any) -> Any:
        raise RuntimeError("secrets backend unreachable")

    monkeypatch.setattr(Variable, "get", staticmethod(broken_backend))
    with pytest.raises(RuntimeError, match="secrets backend unreachable"):
        task_config.storage_base()


# -- the events of a run's updates and removals (include/cxone_import/webhook.py) --------------------------------


def sync_outcomes(rows: list[tuple[str, str, str, str]]):
    import pandas as pd

    return pd.DataFrame(rows, columns=["action", "contact_id", "reason", "outcome"])


SYNC_ROWS = [("update", "C-100", "", "updated"), ("update", "C-101", "", "imported"),
             ("remove", "C-200", "consent_withdrawn", "removed"), ("remove", "C-201", "consent_withdrawn", "not_on_list"),
             ("remove", "C-202", "consent_expired", "removed"), ("remove", "C-203", "mirror_absent", "removal_held")]


def test_a_groups_updates_and_removals_are_one_event_with_counts_per_outcome_and_reason():
    from include.cxone_import.webhook import SYNC_GROUP_EVENT, sync_group_event

    event = sync_group_event("run-1", 3, sync_outcomes(SYNC_ROWS), {"groups": 4})
    assert (event["eventId"], event["event"]) == ("run-1:sync:group:00003", SYNC_GROUP_EVENT)
    metrics = event["metrics"]
    assert metrics["scope"] == {"kind": "group", "groupIndex": 3, "groups": 4}
    assert metrics["updates"] == {"updated": 1, "imported": 1}
    assert metrics["removals"] == {"removed": 2, "not_on_list": 1, "removal_held": 1}
    assert metrics["removalsByReason"] == {"consent_withdrawn": {"removed": 1, "not_on_list": 1},
                                           "consent_expired": {"removed": 1}, "mirror_absent": {"removal_held": 1}}
    assert metrics["samples"]["consent_withdrawn"] == ["C**** (5 chars)"] * 2
    assert not any(c in json.dumps(event) for _, c, _, _ in SYNC_ROWS), "a contactId in the clear"


def test_a_groups_sync_event_is_the_same_event_whichever_try_sends_it(webhook_sink):
    """Its id (the Idempotency-Key) and audit id name the run and group only: a retry's delivery is a redelivery."""
    from include.cxone_import.webhook import sync_group_event

    first = sync_group_event("run-1", 0, sync_outcomes(SYNC_ROWS), {})
    again = sync_group_event("run-1", 0, sync_outcomes(SYNC_ROWS[::-1]), {})
    assert (first["eventId"], first["auditTrailer"]) == (again["eventId"], again["auditTrailer"])
    assert first["metrics"]["removalsByReason"] == again["metrics"]["removalsByReason"]
    sender, _ = sender_for(webhook_sink.url)
    sender.send(first), sender.send(again)
    keys = [e["headers"]["Idempotency-Key"] for e in webhook_sink.events()]
    assert keys == ["run-1:sync:group:00000"] * 2


def test_sync_requests_are_left_out_of_the_batch_events():
    from include.cxone_import.webhook import is_sync_request

    assert [is_sync_request(m) for m in ({"batch_id": "b"}, {"kind": "update"}, {"kind": "remove"},
                                         {"kind": "recreate"})] == [False, True, True, True]


def test_the_run_summary_carries_what_the_sync_did():
    from include.cxone_import.webhook import summary_event

    numbers = {"input": 100, "imported": 50, "duplicates": 0, "unchanged": 20, "updated": 10, "stale": 2, "failed": 0,
               "rejected": 18, "success_rate_percent": 80.0, "average_batch_latency_ms": 1.0,
               "p95_batch_latency_ms": 2.0, "removed": 12, "not_on_list": 3, "removal_held": 4, "removal_failed": 0,
               "removals_by_reason": {"consent_withdrawn": {"removed": 12, "not_on_list": 3}}}
    metrics = summary_event("run-1", numbers, {"run_id": "run-1"})["metrics"]
    assert {k: metrics[k] for k in ("updatedCount", "staleCount", "removedCount", "notOnListCount", "removalHeldCount",
                                    "removalFailedCount")} == {"updatedCount": 10, "staleCount": 2, "removedCount": 12,
                                                               "notOnListCount": 3, "removalHeldCount": 4,
                                                               "removalFailedCount": 0}
    assert metrics["removalsByReason"] == numbers["removals_by_reason"]
    assert metrics["successCount"] == 50 + 20 + 10
