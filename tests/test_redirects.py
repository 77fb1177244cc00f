"""No secret, record or signed event follows a redirect: each HTTP call of the provider (token endpoint, records API,
calling-list discovery and API, CRM webhook) answered 307/308 towards a second local server fails with a typed error
naming the location, is not retried, and the second server receives nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cxone_provider.call_lists import CallListClient
from cxone_provider.client import CXoneClient
from cxone_provider.crm_webhook import WebhookSender, WebhookTarget
from cxone_provider.errors import CXoneRedirectError
from cxone_provider.retry import RetryPolicy

CLIENT_SECRET = "redirect-test-client-secret"
PHONE = "+14155550123"
RECORD = {"contactId": "c-1", "phoneNumbers": [{"type": "mobile", "number": PHONE}],
          "consentTimestamp": "2026-01-01T00:00:00.000Z", "optInStatus": "confirmed"}
EVENT = {"eventId": "run-1:summary", "event": "cxone_contact_import_run_complete", "metrics": {"successCount": 1}}
RETRIES = RetryPolicy(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, jitter=False)


class LocalServer:
    """An HTTP server on 127.0.0.1 answering each path as scripted (``routes``: path -> (status, headers, body));
    any other path is answered with ``default``. Every request is recorded with its body."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.default: tuple[int, dict[str, str], bytes] = (200, {"Content-Type": "application/json"}, b"{}")
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                server.requests.append({"method": self.command, "path": path, "body": body,
                                        "headers": dict(self.headers.items())})
                status, headers, answer = server.routes.get(path, server.default)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(answer))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def redirect(self, path: str, status: int, target: str) -> None:
        self.routes[path] = (status, {"Location": target}, b"")

    def json(self, path: str, body: dict[str, Any]) -> None:
        self.routes[path] = (200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def first() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


@pytest.fixture
def second() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


TOKEN = {"access_token": "t-123", "token_type": "bearer", "expires_in": 3600}


def token_endpoint(first: LocalServer, second: LocalServer, status: int) -> Any:
    first.redirect("/oauth2/token", status, f"{second.url}/oauth2/token")
    return lambda: CXoneClient(first.url, "client-1", CLIENT_SECRET, retry_policy=RETRIES).fetch_token()


def records_api(first: LocalServer, second: LocalServer, status: int) -> Any:
    first.json("/oauth2/token", TOKEN)
    first.redirect("/api/v2/contactlists/list-1/records", status, f"{second.url}/api/v2/contactlists/list-1/records")
    return lambda: CXoneClient(first.url, "client-1", CLIENT_SECRET, retry_policy=RETRIES).import_batch("list-1", [RECORD])


def call_list_discovery(first: LocalServer, second: LocalServer, status: int) -> Any:
    first.redirect("/.well-known/openid-configuration", status, f"{second.url}/.well-known/openid-configuration")
    return lambda: _call_list_client(first).fetch_token()


def call_list_api(first: LocalServer, second: LocalServer, status: int) -> Any:
    first.json("/.well-known/openid-configuration", {"token_endpoint": f"{first.url}/auth/token"})
    first.json("/auth/token", TOKEN)
    path = "/inContactAPI/services/v33.0/lists/call-lists"
    first.redirect(path, status, f"{second.url}{path}")
    return lambda: _call_list_client(first).calling_lists()


def _call_list_client(first: LocalServer) -> CallListClient:
    return CallListClient(first.url, "key-1", CLIENT_SECRET, client_id="app-1", client_secret=CLIENT_SECRET,
                          api_base_url=first.url, retry_policy=RETRIES)


@pytest.mark.parametrize("status", [307, 308], ids=["307", "308"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(token_endpoint, id="token-endpoint"),
        pytest.param(records_api, id="records-api"),
        pytest.param(call_list_discovery, id="call-list-discovery"),
        pytest.param(call_list_api, id="call-list-api"),
    ],
)
def test_cxone_call_refuses_the_redirect(first, second, call, status):
    run = call(first, second, status)

    with pytest.raises(CXoneRedirectError) as caught:
        run()

    assert caught.value.status_code == status
    assert caught.value.location and caught.value.location.startswith(second.url)
    assert second.url in str(caught.value) and "not followed" in str(caught.value)
    assert second.requests == [], "the second server received nothing"
    redirected = [r for r in first.requests if r["path"] in first.routes and first.routes[r["path"]][0] == status]
    assert len(redirected) == 1, "a redirect is not retried"
    assert CLIENT_SECRET not in str(caught.value)


@pytest.mark.parametrize("status", [307, 308], ids=["307", "308"])
def test_crm_event_is_not_delivered_to_the_redirect(first, second, status):
    first.redirect("/crm/events", status, f"{second.url}/crm/events")
    sender = WebhookSender(WebhookTarget(url=f"{first.url}/crm/events", secret="signing-secret", retry_policy=RETRIES))

    delivery = sender.send(EVENT)

    assert (delivery.ok, delivery.status_code, delivery.attempts) == (False, status, 1)
    assert f"{second.url}/crm/events" in (delivery.error or "")
    assert second.requests == []
    assert len(first.requests) == 1


def test_a_session_passed_in_refuses_redirects_too(first, second):
    import requests

    first.json("/oauth2/token", TOKEN)
    first.redirect("/api/v2/contactlists/list-1/records", 307, f"{second.url}/x")
    client = CXoneClient(first.url, "client-1", CLIENT_SECRET, retry_policy=RETRIES, session=requests.Session())

    with pytest.raises(CXoneRedirectError):
        client.import_batch("list-1", [RECORD])
    assert second.requests == []
