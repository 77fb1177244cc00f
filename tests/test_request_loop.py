"""The request loop both CXone clients share (``cxone_provider.base_client``), step by step, over real HTTP.

A scripted server on 127.0.0.1 answers each data request with the next scripted answer (a status, a status with
headers, or no answer at all) and logs what it received; a recording limiter logs each slot into the same log. Every
test runs through the public methods of both clients, so the two cannot drift apart again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cxone_provider.call_lists import CallListClient
from cxone_provider.client import CXoneClient
from cxone_provider.errors import CXoneAuthError, CXoneConnectionError, CXoneServerError
from cxone_provider.retry import RetryPolicy

DROP = "drop"  # a scripted answer: the server reads the request and hangs up without answering
TOKEN = "token"
THREE_ATTEMPTS = RetryPolicy(max_attempts=3, backoff_base_s=0.0, jitter=False)


@dataclass
class Script:
    """What the server answers next and what it (and the limiter) saw, in order."""

    answers: list[Any] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sends(self) -> list[str]:
        return [event for event in self.events if event.startswith("send")]


class RecordingLimiter:
    """A rate limiter that logs each slot taken and each pause asked for, and never waits."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.penalties: list[float] = []

    def acquire(self) -> None:
        self.script.events.append("slot")

    def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_DELETE = do_PUT = do_GET

    def _answer(self) -> None:
        script: Script = self.server.script  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path.startswith("/.well-known/openid-configuration"):
            return self._reply(200, {"token_endpoint": f"{base}/oauth2/token"})
        if self.path == "/oauth2/token":
            with script.lock:
                script.tokens += 1
                script.events.append(TOKEN)
                return self._reply(200, {"access_token": f"t-{script.tokens}", "expires_in": 3600})
        with script.lock:
            script.events.append(f"send {self.headers.get('Authorization')}")
            answer = script.answers.pop(0) if script.answers else 200
        if answer == DROP:
            self.close_connection = True
            return
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        self._reply(status, {"callingLists": [], "listId": 7, "recordsCreated": 1}, headers)

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    httpd.daemon_threads = True
    httpd.script = Script()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", httpd.script  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


@dataclass
class Subject:
    """One client under test: a call retried like a read, a call that creates something, and the client's limiter."""

    kind: str
    client: Any
    read: Callable[[], Any]
    create: Callable[[], Any]
    limiter: RecordingLimiter


def records_client(url: str, limiter: RecordingLimiter, policy: RetryPolicy) -> Subject:
    """The records client: removing a record (the read-like call) and importing a batch (retried like a read too:
    the records API names a record sent twice as a duplicate)."""
    client = CXoneClient(url, "client-1", "secret-1", timeout=5.0, retry_policy=policy, rate_limiter=limiter)
    return Subject("records", client, lambda: client.delete_record("list-1", "c-1"),
                   lambda: client.import_batch_json("list-1", ["{}"]), limiter)


def call_list_client(url: str, limiter: RecordingLimiter, policy: RetryPolicy) -> Subject:
    """The calling-list client: the list index (a read) and creating a list (sent again only when nothing arrived)."""
    client = CallListClient(url, "key-1", "key-secret-1", client_id="app", client_secret="app-secret",
                            api_base_url=url, timeout=5.0, retry_policy=policy, rate_limiter=limiter)
    return Subject("call_lists", client, client.calling_lists,
                   lambda: client.create_list("l", external_id_column="contactId", destination_mappings=[],
                                              custom_field_mappings=[]), limiter)


@pytest.fixture(params=[pytest.param(records_client, id="records"), pytest.param(call_list_client, id="call_lists")])
def make(request, server) -> Iterator[Callable[..., Subject]]:
    url, script = server
    subjects: list[Subject] = []

    def factory(answers: list[Any], policy: RetryPolicy = THREE_ATTEMPTS) -> Subject:
        script.answers[:] = answers
        subjects.append(request.param(url, RecordingLimiter(script), policy))
        return subjects[-1]

    yield factory
    for subject in subjects:
        subject.client.close()


def test_every_attempt_takes_a_limiter_slot_before_it_sends(make, server):
    _, script = server
    subject = make([503, 200])

    subject.read()

    assert script.events == ["slot", TOKEN, "send Bearer t-1", "slot", "send Bearer t-1"]
    assert subject.limiter.penalties == []


def test_a_429_with_retry_after_pauses_every_sender_that_long_then_retries(make, server):
    _, script = server
    subject = make([(429, {"Retry-After": "7"}), 200, (429, {"Retry-After": "120"}), 200])

    read = subject.read()
    created = subject.create()  # a 429 refused it: nothing was made, so even a creation is sent again

    assert subject.limiter.penalties == [7.0, 60.0]  # the server's wait, capped at the policy's retry_after_cap_s
    assert len(script.sends) == 4
    if subject.kind == "records":
        assert (read.attempts, read.rate_limited, created.attempts, created.rate_limited) == (2, 1, 2, 1)
    else:
        assert (read, created) == ([], "7")


def test_a_401_gets_one_new_token_and_one_more_send(make, server):
    _, script = server
    subject = make([401, 200])

    read = subject.read()

    assert script.sends == ["send Bearer t-1", "send Bearer t-2"]
    assert script.tokens == 2
    if subject.kind == "records":
        assert (read.found, read.attempts, read.outcome_uncertain) == (True, 2, False)


def test_a_401_with_the_new_token_is_an_auth_error_not_retried(make, server):
    _, script = server
    subject = make([401, 401, 200])

    with pytest.raises(CXoneAuthError) as raised:
        subject.read()

    assert (raised.value.status_code, raised.value.attempts, raised.value.outcome_uncertain) == (401, 2, False)
    assert script.sends == ["send Bearer t-1", "send Bearer t-2"]


def test_a_lost_reply_marks_the_outcome_uncertain_and_is_retried(make, server):
    _, script = server
    subject = make([DROP, 200, DROP, DROP, DROP])

    read = subject.read()
    with pytest.raises(CXoneConnectionError) as raised:
        subject.read()

    if subject.kind == "records":
        assert (read.found, read.attempts, read.outcome_uncertain) == (True, 2, True)
    assert (raised.value.attempts, raised.value.outcome_uncertain) == (3, True)
    assert len(script.sends) == 5


def test_a_creation_whose_reply_was_lost_is_sent_again_only_on_the_records_api(make, server):
    _, script = server
    subject = make([DROP, 200])

    if subject.kind == "records":  # the records API answers a record sent twice as a duplicate: safe to resend
        created = subject.create()
        assert (created.attempts, created.outcome_uncertain) == (2, True)
        assert len(script.sends) == 2
    else:  # a calling list (or an upload job) may have been made: never made twice
        with pytest.raises(CXoneConnectionError) as raised:
            subject.create()
        assert (raised.value.attempts, raised.value.outcome_uncertain) == (1, True)
        assert len(script.sends) == 1


@pytest.mark.parametrize("max_attempts", [pytest.param(1, id="one-attempt"), pytest.param(3, id="three-attempts")])
def test_a_5xx_is_retried_within_the_policy_and_marks_the_outcome_uncertain(make, server, max_attempts):
    _, script = server
    subject = make([503] * 5, RetryPolicy(max_attempts=max_attempts, backoff_base_s=0.0))

    with pytest.raises(CXoneServerError) as raised:
        subject.read()

    error = raised.value
    assert (error.status_code, error.attempts, error.outcome_uncertain) == (503, max_attempts, True)
    assert len(script.sends) == max_attempts
