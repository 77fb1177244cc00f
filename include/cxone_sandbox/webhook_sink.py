"""Stand-in for the CRM webhook: stores every POST and can be told to fail a number of times; given the signing
secret it checks each event's signature as a receiver should (README, "Security") and refuses what fails."""

from __future__ import annotations

import copy
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from include.cxone_sandbox.config import SandboxConfigError
from include.cxone_sandbox.http_server import JsonHandler, LocalHTTPServer, ServerRunner, parse_json_body


SIGNATURE_TOLERANCE_S = 300.0


def verify_signature(body: bytes, headers: Mapping[str, str], secret: str, *,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None) -> str:
    """A receiver's check of one event, written from the contract (not from the sender's code): ``valid``, or why
    not: ``unsigned`` (a header missing), ``invalid`` (the HMAC over ``{timestamp}.{body}`` differs) or ``stale``
    (the timestamp is more than ``tolerance_s`` from this clock: a replay, or a clock that is off)."""
    signature, stamp = headers.get("X-Signature"), headers.get("X-Signature-Timestamp")
    if not signature or not stamp:
        return "unsigned"
    expected = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "invalid"
    try:
        age = (time.time() if now is None else now) - int(stamp)
    except ValueError:
        return "invalid"
    return "valid" if abs(age) <= tolerance_s else "stale"


class WebhookSink(ServerRunner):
    """Stand-in for the CRM webhook: stores every POST and can be told to fail a number of times. With ``secret``
    each event's ``signature`` is checked (:func:`verify_signature`) and one that is not ``valid`` is answered 401."""

    _thread_name = "webhook-sink"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, secret: str | None = None) -> None:
        super().__init__(host, port)
        self._secret = secret
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._fail_status: int | None = None
        self._fail_count: int | None = None
        self._retry_after: int | None = None

    def start(self) -> "WebhookSink":
        super().start()
        return self

    def events(self) -> list[dict[str, Any]]:
        """Every POST received (failed deliveries included), oldest first; each carries the `status` answered."""
        with self._lock:
            return copy.deepcopy(self._events)

    def configure(
        self, fail_status: int | None = None, fail_count: int | None = None, retry_after: int | None = None
    ) -> None:
        """Answer `fail_status` to the next `fail_count` POSTs (to all of them when `fail_count` is None), with a
        `Retry-After: <retry_after>` header when that is set.

        `configure()` with no arguments turns failures off.
        """
        if fail_status is not None and (
            not isinstance(fail_status, int) or isinstance(fail_status, bool) or not 100 <= fail_status <= 599
        ):
            raise SandboxConfigError("fail_status must be an HTTP status code or None")
        if fail_count is not None and (
            not isinstance(fail_count, int) or isinstance(fail_count, bool) or fail_count < 0
        ):
            raise SandboxConfigError("fail_count must be None or an integer >= 0")
        if retry_after is not None and (
            not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0
        ):
            raise SandboxConfigError("retry_after must be None or an integer >= 0")
        with self._lock:
            self._fail_status = fail_status
            self._fail_count = fail_count
            self._retry_after = retry_after

    def reset(self) -> None:
        """Forget events and failure settings."""
        with self._lock:
            self._events.clear()
            self._fail_status = None
            self._fail_count = None
            self._retry_after = None

    def _receive(self, handler: JsonHandler, path: str, body: bytes) -> None:
        parsed_ok, payload = parse_json_body(body)
        event_body = payload if parsed_ok else body.decode("utf-8", errors="replace")
        signature = verify_signature(body, handler.headers, self._secret) if self._secret else None
        with self._lock:
            status = 200 if signature in (None, "valid") else 401
            retry_after = self._retry_after
            if status == 200 and self._fail_status is not None:
                if self._fail_count is None:
                    status = self._fail_status
                elif self._fail_count > 0:
                    status = self._fail_status
                    self._fail_count -= 1
            self._events.append(
                {
                    "path": path,
                    "headers": dict(handler.headers.items()),
                    "body": event_body,
                    "received_at": datetime.now(timezone.utc).isoformat(),
                    "status": status,
                    "signature": signature,
                }
            )
        if status == 200:
            handler.send_json(200, {"ok": True})
        elif status == 401:
            handler.send_json(401, {"ok": False, "error": f"signature {signature}"})
        else:
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            handler.send_json(status, {"ok": False, "error": "configured failure"}, headers)

    def _control(self, handler: JsonHandler, method: str, path: str, body: bytes) -> None:
        route = path.rstrip("/")
        if method == "GET" and route == "/_sink/events":
            handler.send_json(200, {"events": self.events()})
        elif method == "GET" and route == "/_sink/health":
            handler.send_json(200, {"status": "ok"})
        elif method == "POST" and route == "/_sink/reset":
            self.reset()
            handler.send_json(200, {"ok": True})
        elif method == "POST" and route == "/_sink/config":
            parsed_ok, payload = parse_json_body(body) if body.strip() else (True, {})
            if not parsed_ok or not isinstance(payload, dict):
                handler.send_json(400, {"error": "invalid_json", "message": "body must be a JSON object"})
                return
            unknown = sorted(set(payload) - {"fail_status", "fail_count", "retry_after"})
            try:
                if unknown:
                    raise SandboxConfigError(f"unknown sink knob(s): {', '.join(unknown)}")
                self.configure(**payload)
            except SandboxConfigError as exc:
                handler.send_json(400, {"error": "invalid_config", "message": str(exc)})
                return
            handler.send_json(200, {"ok": True})
        else:
            handler.send_json(404, {"error": "not_found"})


class _SinkHandler(JsonHandler):
    server: LocalHTTPServer

    def _handle(self, method: str) -> None:
        sink: WebhookSink = self.server.app
        request = self.read_request()
        if request is None:
            return
        path, body = request
        if path.startswith("/_sink/"):
            sink._control(self, method, path, body)
        elif method == "POST":
            sink._receive(self, path, body)
        else:
            self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})

    def do_POST(self) -> None:
        self._handle("POST")

    def do_GET(self) -> None:
        self._handle("GET")


WebhookSink._handler_class = _SinkHandler
