"""CXoneClient against the local CXone sandbox on 127.0.0.1: auth, limits, typed errors, retries, logs."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

import cxone_provider.client as client_module
from cxone_provider.client import ClientCredentialsAuth, CXoneClient, base_url_for
from cxone_provider.errors import (
    CXoneAuthError,
    CXoneConflictError,
    CXoneConnectionError,
    CXoneError,
    CXoneRateLimitError,
    CXoneServerError,
    CXoneStatusError,
    CXoneValidationError,
    status_error,
)
from cxone_provider.models import RecordIssue
from cxone_provider.ratelimit import RateLimiter
from cxone_provider.retry import RetryPolicy, is_retryable
from include.cxone_sandbox import CXoneSandbox, SandboxConfig
from tests.ports import free_port

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret-7f3a9c"
LIST_ID = "list-outbound-q4"
NO_BACKOFF = RetryPolicy(backoff_base_s=0.0, jitter=False)


def make_record(n: int, **overrides: Any) -> dict[str, Any]:
    record = {
        "contactId": f"crm-{n:05d}",
        "phoneNumbers": [{"type": "mobile", "number": f"+1415555{n:04d}"}],
        "customFields": {"first_name": "Eleanor", "last_name": "Vance"},
        "consentTimestamp": "2024-11-01T09:15:00.000Z",
        "optInStatus": "confirmed",
    }
    record.update(overrides)
    return record


def make_batch(start: int, count: int) -> list[dict[str, Any]]:
    return [make_record(n) for n in range(start, start + count)]


class FakeClock:
    """Simulated time for a RateLimiter used by one sender: sleep() advances it and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class SendCountingAdapter(HTTPAdapter):
    """Transport adapter that calls `after_send(n)` once the n-th data request has ended, answered or not."""

    def __init__(self, after_send: Callable[[int], None]) -> None:
        super().__init__(max_retries=0)
        self.after_send = after_send
        self.sends = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, **kwargs)
        finally:
            self.sends += 1
            self.after_send(self.sends)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[CXoneSandbox]:
    with CXoneSandbox(SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, seed=7)) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_sandbox(sandbox: CXoneSandbox) -> CXoneSandbox:
    sandbox.reset()
    return sandbox


@pytest.fixture
def make_client(sandbox: CXoneSandbox) -> Iterator[Callable[..., CXoneClient]]:
    clients: list[CXoneClient] = []

    def factory(**kwargs: Any) -> CXoneClient:
        kwargs.setdefault("retry_policy", NO_BACKOFF)
        kwargs.setdefault("timeout", 5.0)
        client = CXoneClient(
            kwargs.pop("base_url", sandbox.url),
            kwargs.pop("client_id", CLIENT_ID),
            kwargs.pop("client_secret", CLIENT_SECRET),
            **kwargs,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def fail_first(sandbox: CXoneSandbox, attempts: int, **knobs: Any) -> requests.Session:
    """Set fault `knobs` on the sandbox and undo them once `attempts` data requests have been made."""
    defaults = SandboxConfig()
    sandbox.configure(**knobs)

    def after_send(sends: int) -> None:
        if sends == attempts:
            sandbox.configure(**{name: getattr(defaults, name) for name in knobs})

    session = requests.Session()
    session.mount("http://", SendCountingAdapter(after_send))
    return session


# ---- auth -------------------------------------------------------------------------------------


def test_token_is_cached_across_imports(sandbox, make_client) -> None:
    client = make_client()

    first = client.import_batch(LIST_ID, make_batch(0, 2))
    second = client.import_batch(LIST_ID, make_batch(2, 3))

    assert (first.created, second.created) == (2, 3)
    assert sandbox.stats()["token_requests"] == 1
    assert len(sandbox.records(LIST_ID)) == 5


@pytest.mark.parametrize(
    ("token_lifetime_s", "token_requests"),
    [
        pytest.param(3600, 1, id="long-lived-token-reused"),
        pytest.param(60, 3, id="inside-60s-refresh-margin-refreshed-every-call"),
    ],
)
def test_token_refreshed_when_within_refresh_margin(sandbox, make_client, token_lifetime_s, token_requests) -> None:
    sandbox.configure(token_lifetime_s=token_lifetime_s)
    client = make_client()

    for start in (0, 10, 20):
        client.import_batch(LIST_ID, make_batch(start, 1))

    assert sandbox.stats()["token_requests"] == token_requests


def test_token_refreshed_60s_before_expiry_with_injected_clock(sandbox) -> None:
    clock = FakeClock()
    auth = ClientCredentialsAuth(f"{sandbox.url}/oauth2/token", CLIENT_ID, CLIENT_SECRET, clock=clock.clock)

    first = auth.get_token()
    clock.now = 3600 - 61  # still more than 60 s left
    assert auth.get_token() == first
    clock.now = 3600 - 59  # inside the margin
    refreshed = auth.get_token()

    assert refreshed != first
    assert sandbox.stats()["token_requests"] == 2
    auth.close()


def test_revoked_token_gets_one_refresh_and_one_retry(sandbox, make_client) -> None:
    client = make_client()
    client.import_batch(LIST_ID, make_batch(0, 1))
    sandbox.revoke_tokens()

    result = client.import_batch(LIST_ID, make_batch(1, 1))

    assert result.created == 1
    assert result.attempts == 2
    stats = sandbox.stats()
    assert stats["token_requests"] == 2
    assert stats["status_counts"] == {"200": 2, "401": 1}


def test_401_after_refresh_is_an_auth_error(sandbox, make_client) -> None:
    # every token is revoked as soon as it is issued, so the retry's fresh token fails too
    client = make_client(on_token=lambda token: sandbox.revoke_tokens())

    with pytest.raises(CXoneAuthError) as excinfo:
        client.import_batch(LIST_ID, make_batch(0, 1))

    assert excinfo.value.status_code == 401
    assert excinfo.value.attempts == 2
    assert sandbox.stats()["status_counts"] == {"401": 2}
    assert sandbox.records(LIST_ID) == []


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [
        pytest.param(CLIENT_ID, "not-the-secret", id="wrong-secret"),
        pytest.param("someone-else", CLIENT_SECRET, id="wrong-client-id"),
    ],
)
def test_wrong_credentials_raise_auth_error(sandbox, make_client, client_id, client_secret) -> None:
    client = make_client(client_id=client_id, client_secret=client_secret)

    with pytest.raises(CXoneAuthError) as excinfo:
        client.import_batch(LIST_ID, make_batch(0, 1))

    error = excinfo.value
    assert (error.status_code, error.attempts, error.outcome_uncertain) == (401, 1, False)
    assert error.body == {"error": "invalid_client"}
    assert "401" in str(error) and "invalid_client" in str(error) and error.request_id in str(error)
    assert client_secret not in str(error) and client_secret not in repr(error.body)
    assert sandbox.stats()["records_requests"] == 0


# ---- batch limits, validation, duplicates -----------------------------------------------------


def test_more_than_100_records_refused_before_sending(sandbox, make_client) -> None:
    client = make_client()

    with pytest.raises(ValueError, match="at most 100"):
        client.import_batch(LIST_ID, make_batch(0, 101))

    stats = sandbox.stats()
    assert (stats["token_requests"], stats["records_requests"]) == (0, 0)


def test_exactly_100_records_accepted(sandbox, make_client) -> None:
    result = make_client().import_batch(LIST_ID, make_batch(0, 100))

    assert result.created == 100
    assert len(sandbox.records(LIST_ID)) == 100


def test_server_rejects_oversize_batch_as_validation_error(sandbox, make_client, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "MAX_RECORDS_PER_BATCH", 1000)  # let an oversize batch through

    with pytest.raises(CXoneValidationError) as excinfo:
        make_client().import_batch(LIST_ID, make_batch(0, 101))

    assert excinfo.value.status_code == 400
    assert [error["code"] for error in excinfo.value.errors] == ["BATCH_TOO_LARGE"]
    assert sandbox.records(LIST_ID) == []


@pytest.mark.parametrize(
    ("bad_record", "field", "code"),
    [
        pytest.param(
            make_record(1, phoneNumbers=[{"type": "mobile", "number": "4155550101"}]),
            "phoneNumbers[0].number",
            "INVALID_E164",
            id="phone-not-e164",
        ),
        pytest.param(
            make_record(1, consentTimestamp="yesterday"), "consentTimestamp", "INVALID_TIMESTAMP", id="consent"
        ),
        pytest.param(make_record(1, optInStatus="maybe"), "optInStatus", "INVALID_OPT_IN", id="opt-in"),
    ],
)
def test_field_errors_raise_validation_error(sandbox, make_client, bad_record, field, code) -> None:
    with pytest.raises(CXoneValidationError) as excinfo:
        make_client().import_batch(LIST_ID, [make_record(0), bad_record])

    error = excinfo.value
    assert [(item["index"], item["field"], item["code"]) for item in error.errors] == [(1, field, code)]
    assert (error.attempts, error.outcome_uncertain) == (1, False)
    assert "400" in str(error) and field in str(error)
    assert sandbox.records(LIST_ID) == []  # nothing in the batch was created


@pytest.mark.parametrize(
    ("names_duplicates", "duplicates"),
    [
        pytest.param(
            True,
            (RecordIssue(0, "crm-00000", "DUPLICATE_CONTACT_ID", "contactId already exists in the contact list"),),
            id="409-names-duplicates",
        ),
        pytest.param(False, (), id="409-without-names"),
    ],
)
def test_conflict_raises_with_parsed_duplicates(sandbox, make_client, names_duplicates, duplicates) -> None:
    sandbox.configure(duplicate_mode="conflict", conflict_names_duplicates=names_duplicates)
    sandbox.seed_records(LIST_ID, [make_record(0)])

    with pytest.raises(CXoneConflictError) as excinfo:
        make_client().import_batch(LIST_ID, make_batch(0, 3))

    assert excinfo.value.status_code == 409
    assert excinfo.value.duplicates == duplicates
    assert excinfo.value.attempts == 1
    assert [record["contactId"] for record in sandbox.records(LIST_ID)] == ["crm-00000"]  # atomic: none created


def test_warnings_in_200_become_duplicates(sandbox, make_client) -> None:
    sandbox.seed_records(LIST_ID, [make_record(0)])
    batch = [make_record(0), make_record(1), make_record(2, phoneNumbers=[{"type": "home", "number": "+14155550001"}])]

    result = make_client().import_batch(LIST_ID, batch)

    assert result.created == 1
    assert [(d.index, d.contact_id, d.code) for d in result.duplicates] == [
        (0, "crm-00000", "DUPLICATE_CONTACT_ID"),
        (2, "crm-00002", "DUPLICATE_PHONE"),
    ]
    assert result.status_code == 200 and result.response_id and result.request_id
    assert (result.attempts, result.outcome_uncertain, result.rate_limited) == (1, False, 0)
    assert [record["contactId"] for record in sandbox.records(LIST_ID)] == ["crm-00000", "crm-00001"]


@pytest.mark.parametrize(
    ("code", "transient"),
    [pytest.param("STORAGE_REJECTED", False, id="refused"), pytest.param("TEMPORARY_FAILURE", True, id="for-now")],
)
def test_errors_in_200_name_the_records_not_created(sandbox, make_client, code, transient) -> None:
    sandbox.configure(record_error_rate=1.0, record_error_code=code)

    result = make_client().import_batch(LIST_ID, make_batch(0, 3))

    assert result.created == 0 and result.records == 3 and not result.duplicates
    assert [(e.index, e.contact_id, e.code, e.transient) for e in result.errors] == [
        (n, f"crm-{n:05d}", code, transient) for n in range(3)
    ]
    assert sandbox.records(LIST_ID) == []
    assert sandbox.stats()["records_refused"] == 3


def test_a_short_count_is_passed_on_as_answered(sandbox, make_client) -> None:
    """The client reports what CXone said; deciding that it does not add up is the engine's (test_engine.py)."""
    sandbox.configure(miscount_rate=1.0)

    result = make_client().import_batch(LIST_ID, make_batch(0, 3))

    assert (result.created, result.records, result.duplicates, result.errors) == (2, 3, (), ())
    assert len(sandbox.records(LIST_ID)) == 3


# ---- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [pytest.param(1, id="no-retry"), pytest.param(4, id="four-attempts")])
def test_5xx_exhausts_retries(sandbox, make_client, max_attempts) -> None:
    sandbox.configure(error_rate_5xx=1.0)
    client = make_client(retry_policy=RetryPolicy(max_attempts=max_attempts, backoff_base_s=0.0))

    with pytest.raises(CXoneServerError) as excinfo:
        client.import_batch(LIST_ID, make_batch(0, 2))

    error = excinfo.value
    assert (error.status_code, error.attempts, error.outcome_uncertain) == (503, max_attempts, True)
    assert sandbox.stats()["status_counts"] == {"503": max_attempts}
    assert "503" in str(error) and error.request_id in str(error)


@pytest.mark.parametrize(
    "failures_before_success", [pytest.param(1, id="one-503"), pytest.param(3, id="three-503s")]
)
def test_5xx_then_success(sandbox, make_client, failures_before_success) -> None:
    session = fail_first(sandbox, failures_before_success, error_rate_5xx=1.0)

    result = make_client(session=session).import_batch(LIST_ID, make_batch(0, 4))

    assert result.created == 4
    assert result.attempts == failures_before_success + 1
    assert result.outcome_uncertain is True  # a 503 attempt may have been processed
    assert result.total_latency_ms >= result.latency_ms
    assert len(sandbox.records(LIST_ID)) == 4


def test_dropped_connections_exhaust_retries(sandbox, make_client) -> None:
    sandbox.configure(drop_rate=1.0)
    client = make_client(retry_policy=RetryPolicy(max_attempts=3, backoff_base_s=0.0))

    with pytest.raises(CXoneConnectionError) as excinfo:
        client.import_batch(LIST_ID, make_batch(0, 2))

    assert (excinfo.value.attempts, excinfo.value.outcome_uncertain) == (3, True)
    assert sandbox.stats()["dropped"] == 3
    assert sandbox.records(LIST_ID) == []


def test_unreachable_server_is_a_connection_error_with_certain_outcome(make_client) -> None:
    client = make_client(
        base_url=f"http://127.0.0.1:{free_port()}", retry_policy=RetryPolicy(max_attempts=2, backoff_base_s=0.0)
    )

    with pytest.raises(CXoneConnectionError) as excinfo:
        client.import_batch(LIST_ID, make_batch(0, 1))

    assert excinfo.value.attempts == 2
    assert excinfo.value.outcome_uncertain is False  # the token request never connected: nothing was sent


def test_429_without_retry_after_backs_off_and_penalizes_every_sender(sandbox, make_client) -> None:
    sandbox.configure(requests_per_minute=1, retry_after=False)
    fake = FakeClock()
    limiter = RateLimiter(60_000, clock=fake.clock, sleep=fake.sleep)
    policy = RetryPolicy(max_attempts=3, backoff_base_s=1.0, jitter=False)
    client = make_client(retry_policy=policy, rate_limiter=limiter)
    client.import_batch(LIST_ID, make_batch(0, 1))  # uses the server's whole minute

    with pytest.raises(CXoneRateLimitError) as excinfo:
        client.import_batch(LIST_ID, make_batch(1, 1))

    error = excinfo.value
    assert (error.status_code, error.retry_after, error.attempts, error.outcome_uncertain) == (429, None, 3, False)
    assert limiter.stats.penalties == 2
    assert [wait for wait in fake.sleeps if wait >= 0.5] == pytest.approx([1.0, 2.0])  # exponential, no jitter
    assert sandbox.stats()["status_counts"] == {"200": 1, "429": 3}


def test_429_then_success_counts_rate_limited(sandbox, make_client) -> None:
    session = fail_first(sandbox, 2, requests_per_minute=1, retry_after=False)
    fake = FakeClock()
    limiter = RateLimiter(60_000, clock=fake.clock, sleep=fake.sleep)
    client = make_client(session=session, rate_limiter=limiter)
    # the first data request fills the server's window, so the 2nd one is refused, the 3rd passes
    client.import_batch("other-list", make_batch(0, 1))

    result = client.import_batch(LIST_ID, make_batch(1, 1))

    assert (result.created, result.attempts, result.rate_limited, result.outcome_uncertain) == (1, 2, 1, False)
    assert limiter.stats.penalties == 1
    assert limiter.stats.acquired == 3


@pytest.mark.parametrize(
    ("retry_after_cap_s", "expected_low", "expected_high"),
    [
        pytest.param(120.0, 55.0, 60.0, id="retry-after-honoured"),
        pytest.param(5.0, 5.0, 5.0, id="retry-after-capped"),
    ],
)
def test_429_retry_after_honoured_and_capped(
    sandbox, make_client, retry_after_cap_s, expected_low, expected_high
) -> None:
    sandbox.configure(requests_per_minute=1, retry_after=True)
    fake = FakeClock()
    limiter = RateLimiter(60_000, clock=fake.clock, sleep=fake.sleep)
    policy = RetryPolicy(max_attempts=2, backoff_base_s=0.0, retry_after_cap_s=retry_after_cap_s)
    client = make_client(retry_policy=policy, rate_limiter=limiter)
    client.import_batch(LIST_ID, make_batch(0, 1))

    with pytest.raises(CXoneRateLimitError) as excinfo:
        client.import_batch(LIST_ID, make_batch(1, 1))

    assert 55.0 <= excinfo.value.retry_after <= 60.0
    assert limiter.stats.penalties == 1
    (penalty_wait,) = [wait for wait in fake.sleeps if wait >= 1.0]
    assert expected_low <= penalty_wait <= expected_high


@pytest.mark.parametrize(
    "duplicate_mode", [pytest.param("warnings", id="duplicates-as-200-warnings"), pytest.param("conflict", id="409")]
)
def test_drop_after_commit_then_retry_reports_duplicates_and_uncertainty(sandbox, make_client, duplicate_mode) -> None:
    sandbox.configure(duplicate_mode=duplicate_mode)
    session = fail_first(sandbox, 1, drop_after_commit_rate=1.0)
    client = make_client(session=session)
    batch = make_batch(0, 5)

    if duplicate_mode == "warnings":
        result = client.import_batch(LIST_ID, batch)
        assert (result.created, result.attempts, result.outcome_uncertain) == (0, 2, True)
        assert [d.contact_id for d in result.duplicates] == [record["contactId"] for record in batch]
    else:
        with pytest.raises(CXoneConflictError) as excinfo:
            client.import_batch(LIST_ID, batch)
        assert (excinfo.value.attempts, excinfo.value.outcome_uncertain) == (2, True)
        assert len(excinfo.value.duplicates) == 5

    assert sandbox.stats()["dropped_after_commit"] == 1
    assert [record["contactId"] for record in sandbox.records(LIST_ID)] == [r["contactId"] for r in batch]


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        pytest.param(CXoneRateLimitError("x", status_code=429), True, id="429"),
        pytest.param(CXoneServerError("x", status_code=503), True, id="503"),
        pytest.param(CXoneConnectionError("x"), True, id="dropped"),
        pytest.param(CXoneValidationError("x", status_code=400), False, id="400"),
        pytest.param(CXoneConflictError("x", status_code=409), False, id="409"),
        pytest.param(CXoneAuthError("x", status_code=403), False, id="403"),
        pytest.param(CXoneAuthError("x", status_code=401), False, id="401-handled-apart"),
    ],
)
def test_is_retryable(error, retryable) -> None:
    assert is_retryable(error) is retryable


@pytest.mark.parametrize(
    ("attempt", "error", "delay"),
    [
        pytest.param(1, CXoneServerError("x", status_code=503), 0.5, id="first-backoff"),
        pytest.param(4, CXoneServerError("x", status_code=503), 4.0, id="exponential"),
        pytest.param(10, CXoneConnectionError("x"), 30.0, id="capped-at-backoff-max"),
        pytest.param(1, CXoneRateLimitError("x", status_code=429, retry_after=7.0), 7.0, id="retry-after"),
        pytest.param(1, CXoneRateLimitError("x", status_code=429, retry_after=600.0), 60.0, id="retry-after-capped"),
        pytest.param(2, CXoneRateLimitError("x", status_code=429), 1.0, id="429-without-retry-after"),
    ],
)
def test_delay_for_without_jitter(attempt, error, delay) -> None:
    assert RetryPolicy(jitter=False).delay_for(attempt, error) == delay


def test_delay_for_full_jitter_stays_within_ceiling() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=8.0)
    delays = [policy.delay_for(5, CXoneServerError("x", status_code=503)) for _ in range(200)]
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("status_code", "body", "token_endpoint", "error_type", "reason"),
    [
        pytest.param(401, {"error": "invalid_client"}, True, CXoneAuthError, "invalid_client", id="token-401"),
        pytest.param(400, {"error": "invalid_request"}, True, CXoneAuthError, "invalid_request", id="token-400"),
        pytest.param(503, "upstream\nbusy", True, CXoneServerError, "upstream", id="token-503-stays-retryable"),
        pytest.param(403, {"error": "insufficient_scope"}, False, CXoneAuthError, "insufficient_scope", id="403"),
        pytest.param(429, {"error": "rate_limited"}, False, CXoneRateLimitError, "rate_limited", id="429"),
        pytest.param(
            400,
            {"errors": [{"index": 4, "field": "phoneNumbers[0].number", "message": "+14155550123 is bad"}]},
            False,
            CXoneValidationError,
            "record 4 phoneNumbers[0].number: ***23 is bad",
            id="400-phone-masked",
        ),
        pytest.param(
            409, {"warnings": [{"index": 0}, {"index": 1}]}, False, CXoneConflictError, "2 duplicate", id="409"
        ),
        pytest.param(502, "<html>bad gateway</html>", False, CXoneServerError, "bad gateway", id="502-text"),
        pytest.param(404, {"message": "no such list"}, False, CXoneStatusError, "no such list", id="404-generic"),
    ],
)
def test_status_errors_are_typed_one_line_and_picklable(status_code, body, token_endpoint, error_type, reason) -> None:
    error = status_error(
        status_code, operation="call", request_id="req-1", body=body, token_endpoint=token_endpoint
    )
    error.attempts = 3

    assert type(error) is error_type
    text = str(error)
    assert "\n" not in text and str(status_code) in text and "req-1" in text and reason in text
    assert "after 3 attempts" in text
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.status_code, copy.body) == (error_type, text, status_code, error.body)


def test_secrets_in_error_bodies_are_scrubbed() -> None:
    body = {"error": "x", "client_secret": "s3cret"}

    error = status_error(400, operation="token request", body=body, token_endpoint=True)

    assert error.body == {"error": "x", "client_secret": "***"}


def test_connection_errors_are_one_line_and_picklable() -> None:
    error = CXoneConnectionError("no answer", attempts=2, outcome_uncertain=True)

    assert str(error) == "no answer [after 2 attempts, outcome uncertain]"
    assert isinstance(pickle.loads(pickle.dumps(error)), CXoneError)


# ---- regions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "host", "expected"),
    [
        pytest.param(None, None, "https://api.cloud.nice-incontact.com", id="default-us"),
        pytest.param("EU", None, "https://api-eu.cloud.nice-incontact.com", id="eu"),
        pytest.param("eu", "http://127.0.0.1:8765/", "http://127.0.0.1:8765", id="explicit-host-wins"),
        pytest.param(None, "api-au.example.com", "https://api-au.example.com", id="host-without-scheme"),
    ],
)
def test_base_url_for(region, host, expected) -> None:
    assert base_url_for(region, host) == expected


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="region"):
        base_url_for("mars")


# ---- logs -------------------------------------------------------------------------------------


def test_logs_never_show_secret_token_or_phone_numbers(sandbox, make_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    fake = FakeClock()
    limiter = RateLimiter(60_000, clock=fake.clock, sleep=fake.sleep)
    client = make_client(on_token=issued.append, rate_limiter=limiter)
    batch = make_batch(0, 3)
    errors: list[Exception] = []

    client.import_batch(LIST_ID, batch)
    sandbox.revoke_tokens()
    client.import_batch(LIST_ID, make_batch(3, 2))  # 401, new token, retry
    sandbox.configure(error_rate_5xx=1.0)
    with pytest.raises(CXoneServerError) as server_error:
        client.import_batch(LIST_ID, make_batch(5, 1))
    errors.append(server_error.value)
    sandbox.configure(error_rate_5xx=0.0)
    with pytest.raises(CXoneValidationError) as validation_error:
        client.import_batch(LIST_ID, [make_record(9, phoneNumbers=[{"type": "mobile", "number": "4155550109"}])])
    errors.append(validation_error.value)
    with pytest.raises(CXoneAuthError) as auth_error:
        make_client(client_secret=CLIENT_SECRET + "-wrong").fetch_token()
    errors.append(auth_error.value)

    assert len(issued) == 2
    text = caplog.text + "\n".join(str(error) for error in errors)
    assert "list list-outbound-q4" in caplog.text and "request id" in caplog.text  # it does log
    for secret in [CLIENT_SECRET, *issued]:
        assert secret not in text
    for record in batch:
        assert record["phoneNumbers"][0]["number"] not in text
    assert "4155550109" not in text
