"""Local CXone sandbox: a real HTTP server speaking the contact-list records API, with fault knobs.

It implements section 1 of /work/shared/cxone-api.md (token grant, records import, duplicates,
validation) on 127.0.0.1, plus a webhook sink that stands in for the CRM. Used by the demo, the
tests and the throughput benchmark, so the request path holds one lock briefly and never logs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import json
import math
import random
import re
import secrets
import socket
import socketserver
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "CXoneSandbox",
    "MAX_BATCH_RECORDS",
    "SandboxConfig",
    "SandboxConfigError",
    "WebhookSink",
]

MAX_BATCH_RECORDS = 100
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_SCOPE = "contactlists:write contactlists:read"
DUPLICATE_MODES = ("warnings", "conflict")
OPT_IN_STATUSES = frozenset({"confirmed", "pending"})
E164_PATTERN = re.compile(r"^\+[1-9]\d{1,14}$")
RATE_WINDOW_S = 60.0

_RECORDS_PATH = re.compile(r"^/api/v2/contactlists/([^/]+)/records/?$")
_CONTROL_RECORDS_PATH = re.compile(r"^/_sandbox/records/([^/]+)/?$")
_CONTROL_SEED_PATH = re.compile(r"^/_sandbox/seed/([^/]+)/?$")


class SandboxConfigError(ValueError):
    """A sandbox or sink knob has an unknown name or an invalid value."""


class _BodyError(Exception):
    """The request body could not be read (bad framing or too large)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass
class SandboxConfig:
    """Behaviour knobs of the sandbox; every field can be changed live with `CXoneSandbox.configure`."""

    latency_ms: float = 0.0
    requests_per_minute: int | None = None
    retry_after: bool = True
    rate_window_s: float = RATE_WINDOW_S  # sliding window; the limit is requests_per_minute scaled to it
    error_rate_5xx: float = 0.0
    drop_rate: float = 0.0
    drop_after_commit_rate: float = 0.0
    token_lifetime_s: int = 3600
    duplicate_mode: str = "warnings"
    conflict_names_duplicates: bool = True
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.latency_ms, (int, float)) or isinstance(self.latency_ms, bool) or self.latency_ms < 0:
            raise SandboxConfigError("latency_ms must be a number >= 0")
        if self.requests_per_minute is not None and (
            not isinstance(self.requests_per_minute, int)
            or isinstance(self.requests_per_minute, bool)
            or self.requests_per_minute < 1
        ):
            raise SandboxConfigError("requests_per_minute must be None or an integer >= 1")
        if not isinstance(self.rate_window_s, (int, float)) or isinstance(self.rate_window_s, bool) or self.rate_window_s <= 0:
            raise SandboxConfigError("rate_window_s must be a number > 0")
        for name in ("error_rate_5xx", "drop_rate", "drop_after_commit_rate"):
            share = getattr(self, name)
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share <= 1.0:
                raise SandboxConfigError(f"{name} must be a number between 0 and 1")
        if (
            not isinstance(self.token_lifetime_s, int)
            or isinstance(self.token_lifetime_s, bool)
            or self.token_lifetime_s < 1
        ):
            raise SandboxConfigError("token_lifetime_s must be an integer >= 1")
        if self.duplicate_mode not in DUPLICATE_MODES:
            raise SandboxConfigError(f"duplicate_mode must be one of {DUPLICATE_MODES}")
        for name in ("retry_after", "conflict_names_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise SandboxConfigError(f"{name} must be a boolean")
        for name in ("client_id", "client_secret"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SandboxConfigError(f"{name} must be a non-empty string")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SandboxConfigError("seed must be None or an integer")

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a plain dict, without the client secret."""
        knobs = dataclasses.asdict(self)
        knobs.pop("client_secret")
        return knobs


_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(SandboxConfig))


def _updated_config(config: SandboxConfig, knobs: dict[str, Any]) -> SandboxConfig:
    """A copy of `config` with `knobs` applied; unknown names and bad values raise SandboxConfigError."""
    unknown = sorted(set(knobs) - _CONFIG_FIELDS)
    if unknown:
        raise SandboxConfigError(f"unknown sandbox knob(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **knobs)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing shared by the sandbox and the sink
# --------------------------------------------------------------------------------------------------


class _LocalHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server that tracks open connections so `stop()` can close idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: Any) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.connections_accepted = 0
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.connections_accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (idle keep-alive ones would otherwise live on)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is normal here (timeouts, benchmarks); stay quiet.
        return


class _JsonHandler(BaseHTTPRequestHandler):
    """Request handler with JSON replies, keep-alive and no stderr logging."""

    protocol_version = "HTTP/1.1"
    server_version = "CXoneSandbox/1.0"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and a small body leave in one send

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return

    def version_string(self) -> str:
        return self.server_version

    def read_body(self) -> bytes:
        """The request body, always fully consumed so the connection can be reused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise _BodyError(400, "invalid_content_length") from None
        if length < 0:
            self.close_connection = True
            raise _BodyError(400, "invalid_content_length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BodyError(413, "payload_too_large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _BodyError(400, "invalid_chunked_body") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _BodyError(413, "payload_too_large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # CRLF after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(chunks)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send one complete JSON response with Content-Length and a fresh X-Request-Id."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method) as JSON too; the body may be unread."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("error",))[0]
        self.send_json(code, {"error": reason.lower().replace(" ", "_")})

    def drop_connection(self) -> None:
        """Close the connection without sending any response."""
        self.close_connection = True

    def split_path(self) -> str:
        return urlsplit(self.path).path

    def _method_not_allowed(self) -> None:
        try:
            self.read_body()
        except _BodyError:
            pass
        self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed


class _ServerRunner:
    """Start/stop/url/context-manager plumbing around one `_LocalHTTPServer` on a background thread."""

    _handler_class: type[BaseHTTPRequestHandler]
    _thread_name = "http-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._server: _LocalHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "_ServerRunner":
        """Bind and serve on a daemon thread; a restarted server binds the port it had before."""
        if self._server is not None:
            return self
        server = _LocalHTTPServer((self._host, self._requested_port), self._handler_class, self)
        self._requested_port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() may wait
            name=f"{self._thread_name}:{self._requested_port}",
            daemon=True,
        )
        self._server = server
        self._thread = thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket, join the thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def _connections_accepted(self) -> int:
        return self._server.connections_accepted if self._server is not None else 0

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _parse_json_body(body: bytes) -> tuple[bool, Any]:
    """(True, value) for a JSON body, (False, None) otherwise."""
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


# --------------------------------------------------------------------------------------------------
# CXone sandbox
# --------------------------------------------------------------------------------------------------


@dataclass
class _ContactList:
    """Stored records of one contact list plus the indexes used for duplicate detection."""

    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    contact_ids: set[str] = dataclasses.field(default_factory=set)
    phone_numbers: set[str] = dataclasses.field(default_factory=set)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        contact_id = record.get("contactId")
        if isinstance(contact_id, str):
            self.contact_ids.add(contact_id)
        self.phone_numbers.update(_phone_numbers_of(record))


def _phone_numbers_of(record: Any) -> list[str]:
    if not isinstance(record, dict) or not isinstance(record.get("phoneNumbers"), list):
        return []
    return [
        phone["number"]
        for phone in record["phoneNumbers"]
        if isinstance(phone, dict) and isinstance(phone.get("number"), str)
    ]


def _field_error(index: int, contact_id: Any, field: str, code: str, message: str) -> dict[str, Any]:
    return {"index": index, "contactId": contact_id, "field": field, "code": code, "message": message}


def _validate_record(index: int, record: Any) -> list[dict[str, Any]]:
    """Field errors of one record (empty when valid). Messages never echo phone numbers."""
    if not isinstance(record, dict):
        return [_field_error(index, None, "", "INVALID_PAYLOAD", "record must be a JSON object")]
    errors: list[dict[str, Any]] = []
    contact_id = record.get("contactId")
    reported_id = contact_id if isinstance(contact_id, str) else None
    if not isinstance(contact_id, str) or not contact_id.strip():
        errors.append(
            _field_error(index, reported_id, "contactId", "MISSING_FIELD", "contactId must be a non-empty string")
        )

    phones = record.get("phoneNumbers")
    if not isinstance(phones, list) or not phones:
        errors.append(
            _field_error(
                index, reported_id, "phoneNumbers", "MISSING_FIELD", "phoneNumbers must be a non-empty list"
            )
        )
    else:
        for position, phone in enumerate(phones):
            field = f"phoneNumbers[{position}].number"
            number = phone.get("number") if isinstance(phone, dict) else None
            if number is None or number == "":
                errors.append(_field_error(index, reported_id, field, "MISSING_FIELD", f"{field} is required"))
            elif not isinstance(number, str) or not E164_PATTERN.match(number):
                errors.append(
                    _field_error(index, reported_id, field, "INVALID_E164", f"{field} is not an E.164 number")
                )

    consent = record.get("consentTimestamp")
    if consent is None or consent == "":
        errors.append(
            _field_error(index, reported_id, "consentTimestamp", "MISSING_FIELD", "consentTimestamp is required")
        )
    elif not _is_iso8601(consent):
        errors.append(
            _field_error(
                index,
                reported_id,
                "consentTimestamp",
                "INVALID_TIMESTAMP",
                "consentTimestamp is not an ISO-8601 timestamp",
            )
        )

    opt_in = record.get("optInStatus")
    if opt_in is None or opt_in == "":
        errors.append(_field_error(index, reported_id, "optInStatus", "MISSING_FIELD", "optInStatus is required"))
    elif opt_in not in OPT_IN_STATUSES:
        errors.append(
            _field_error(
                index, reported_id, "optInStatus", "INVALID_OPT_IN", "optInStatus must be 'confirmed' or 'pending'"
            )
        )

    custom_fields = record.get("customFields")
    if custom_fields is not None:
        if not isinstance(custom_fields, dict):
            errors.append(
                _field_error(
                    index, reported_id, "customFields", "INVALID_CUSTOM_FIELD", "customFields must be an object"
                )
            )
        else:
            for key, value in custom_fields.items():
                if not isinstance(value, str):
                    errors.append(
                        _field_error(
                            index,
                            reported_id,
                            f"customFields.{key}",
                            "INVALID_CUSTOM_FIELD",
                            f"customFields.{key} must be a string",
                        )
                    )
    return errors


def _is_iso8601(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


class _Reply:
    """What the records flow decided to answer; `drop` means close the socket without a response."""

    __slots__ = ("status", "payload", "headers", "drop")

    def __init__(
        self, status: int = 0, payload: Any = None, headers: dict[str, str] | None = None, drop: bool = False
    ) -> None:
        self.status = status
        self.payload = payload
        self.headers = headers
        self.drop = drop


def _empty_stats() -> dict[str, Any]:
    return {
        "token_requests": 0,
        "records_requests": 0,
        "records_created": 0,
        "status_counts": {},
        "token_status_counts": {},
        "dropped": 0,
        "dropped_after_commit": 0,
        "max_batch_seen": 0,
        "concurrent_max": 0,
    }


class CXoneSandbox(_ServerRunner):
    """Local CXone records API on 127.0.0.1 with fault knobs, store inspection and counters."""

    _thread_name = "cxone-sandbox"

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._initial_config = copy.deepcopy(config) if config is not None else SandboxConfig()
        self._config = copy.deepcopy(self._initial_config)
        self._lock = threading.Lock()
        self._lists: dict[str, _ContactList] = {}
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._rate_window: deque[float] = deque()
        self._random = random.Random(self._config.seed)
        self._stats = _empty_stats()
        self._in_flight = 0

    # ---- public API -----------------------------------------------------------------------------

    def start(self) -> "CXoneSandbox":
        super().start()
        return self

    @property
    def config(self) -> SandboxConfig:
        """A copy of the current knobs."""
        with self._lock:
            return copy.deepcopy(self._config)

    def configure(self, **knobs: Any) -> SandboxConfig:
        """Change knobs live (names as in SandboxConfig); a new `seed` reseeds the fault generator."""
        with self._lock:
            self._config = _updated_config(self._config, knobs)
            if "seed" in knobs:
                self._random.seed(self._config.seed)
            return copy.deepcopy(self._config)

    def reset(self, keep_config: bool = False, **knobs: Any) -> None:
        """Clear records, tokens, counters and the rate window.

        The config goes back to the one the sandbox was created with, unless `keep_config`;
        `knobs` are then applied on top.
        """
        with self._lock:
            config = self._config if keep_config else copy.deepcopy(self._initial_config)
            self._config = _updated_config(config, knobs)
            self._lists.clear()
            self._tokens.clear()
            self._issued.clear()
            self._rate_window.clear()
            self._random.seed(self._config.seed)
            self._stats = _empty_stats()

    def records(self, contact_list_id: str) -> list[dict[str, Any]]:
        """Stored records of a contact list, in creation order, exactly as posted (copies)."""
        with self._lock:
            contact_list = self._lists.get(contact_list_id)
            return copy.deepcopy(contact_list.records) if contact_list else []

    def seed_records(self, contact_list_id: str, records: list[dict[str, Any]]) -> None:
        """Store records without validation and without counting them as created."""
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise SandboxConfigError("seed records must be a list of objects")
        copies = copy.deepcopy(records)
        with self._lock:
            contact_list = self._lists.setdefault(contact_list_id, _ContactList())
            for record in copies:
                contact_list.add(record)

    def issued_tokens(self) -> list[str]:
        """Every access token issued since start or the last reset (for tests that grep logs for leaks)."""
        with self._lock:
            return list(self._issued)

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far; returns how many were live."""
        with self._lock:
            revoked = len(self._tokens)
            self._tokens.clear()
            return revoked

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset (a copy)."""
        with self._lock:
            stats = copy.deepcopy(self._stats)
            stats["in_flight"] = self._in_flight
        stats["connections_accepted"] = self._connections_accepted()
        return stats

    # ---- request handling (called from handler threads) -----------------------------------------

    def _issue_token(self, handler: _JsonHandler, body: bytes) -> None:
        status, payload = self._token_reply(handler, body)
        with self._lock:
            self._stats["token_requests"] += 1
            counts = self._stats["token_status_counts"]
            counts[str(status)] = counts.get(str(status), 0) + 1
            if status == 200:
                lifetime = self._config.token_lifetime_s
                now = time.monotonic()
                if len(self._tokens) > 1000:
                    self._tokens = {token: expiry for token, expiry in self._tokens.items() if expiry > now}
                self._tokens[payload["access_token"]] = now + lifetime
                self._issued.append(payload["access_token"])
                payload["expires_in"] = lifetime
        headers = {"Cache-Control": "no-store"}
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="cxone-sandbox"'
        handler.send_json(status, payload, headers)

    def _token_reply(self, handler: _JsonHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return 400, {"error": "invalid_request"}
        fields = {name: values[0] for name, values in form.items()}
        grant_type = fields.get("grant_type", "")
        if not grant_type:
            return 400, {"error": "invalid_request"}
        if grant_type != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}

        authorization = handler.headers.get("Authorization", "")
        if authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return 401, {"error": "invalid_client"}
            client_id, _, client_secret = decoded.partition(":")
            client_id, client_secret = unquote(client_id), unquote(client_secret)
        else:
            client_id, client_secret = fields.get("client_id", ""), fields.get("client_secret", "")
        if not client_id or not client_secret:
            return 400, {"error": "invalid_request"}

        config = self._config  # replaced, never mutated: a consistent snapshot without the lock
        if not (
            secrets.compare_digest(client_id.encode(), config.client_id.encode())
            and secrets.compare_digest(client_secret.encode(), config.client_secret.encode())
        ):
            return 401, {"error": "invalid_client"}
        return 200, {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": config.token_lifetime_s,
            "scope": fields.get("scope") or DEFAULT_SCOPE,
        }

    def _import_records(self, handler: _JsonHandler, contact_list_id: str, body: bytes) -> None:
        parsed_ok, payload = _parse_json_body(body)
        records = payload.get("records") if parsed_ok and isinstance(payload, dict) else None
        batch_size = len(records) if isinstance(records, list) else 0
        with self._lock:
            stats = self._stats
            stats["records_requests"] += 1
            self._in_flight += 1
            if self._in_flight > stats["concurrent_max"]:
                stats["concurrent_max"] = self._in_flight
            if batch_size > stats["max_batch_seen"]:
                stats["max_batch_seen"] = batch_size
        reply = _Reply(500, {"error": "internal_error"})
        try:
            reply = self._records_flow(handler, contact_list_id, parsed_ok, records)
        finally:
            with self._lock:
                self._in_flight -= 1
                if reply.drop:
                    self._stats["dropped"] += 1
                else:
                    counts = self._stats["status_counts"]
                    counts[str(reply.status)] = counts.get(str(reply.status), 0) + 1
        if reply.drop:
            handler.drop_connection()
        else:
            handler.send_json(reply.status, reply.payload, reply.headers)

    def _records_flow(self, handler: _JsonHandler, contact_list_id: str, parsed_ok: bool, records: Any) -> _Reply:
        token = _bearer_token(handler.headers.get("Authorization", ""))
        with self._lock:
            config = self._config
            now = time.monotonic()
            expiry = self._tokens.get(token) if token else None
            if expiry is None or now >= expiry:
                return _Reply(
                    401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            if config.drop_rate > 0 and self._random.random() < config.drop_rate:
                return _Reply(drop=True)
            if config.requests_per_minute is not None:
                window = self._rate_window
                span = config.rate_window_s
                allowed = max(1, int(config.requests_per_minute * span / 60.0))
                while window and window[0] <= now - span:
                    window.popleft()
                if len(window) >= allowed:
                    headers = None
                    if config.retry_after:
                        wait_s = max(1, math.ceil(window[0] + span - now))
                        headers = {"Retry-After": str(wait_s)}
                    return _Reply(429, {"error": "rate_limited"}, headers)
                window.append(now)
            if config.error_rate_5xx > 0 and self._random.random() < config.error_rate_5xx:
                return _Reply(503, {"error": "service_unavailable"})
            drop_after_commit = (
                config.drop_after_commit_rate > 0 and self._random.random() < config.drop_after_commit_rate
            )

        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)

        if not parsed_ok or not isinstance(records, list):
            return _Reply(
                400,
                {"errors": [{"code": "INVALID_PAYLOAD", "message": "body must be a JSON object with a records list"}]},
            )
        if len(records) > MAX_BATCH_RECORDS:
            return _Reply(
                400,
                {
                    "errors": [
                        {
                            "code": "BATCH_TOO_LARGE",
                            "message": f"at most {MAX_BATCH_RECORDS} records per request, got {len(records)}",
                        }
                    ]
                },
            )
        field_errors = [error for index, record in enumerate(records) for error in _validate_record(index, record)]
        if field_errors:
            return _Reply(400, {"errors": field_errors})

        with self._lock:
            contact_list = self._lists.setdefault(contact_list_id, _ContactList())
            warnings, accepted = _find_duplicates(contact_list, records)
            if warnings and config.duplicate_mode == "conflict":
                return _Reply(409, {"warnings": warnings if config.conflict_names_duplicates else []})
            for record in accepted:
                contact_list.add(record)
            self._stats["records_created"] += len(accepted)
            if drop_after_commit:
                self._stats["dropped_after_commit"] += 1
        if drop_after_commit:
            return _Reply(drop=True)
        return _Reply(
            200, {"id": uuid.uuid4().hex, "recordsCreated": len(accepted), "warnings": warnings, "errors": []}
        )

    def _control_get(self, handler: _JsonHandler, path: str) -> None:
        match = _CONTROL_RECORDS_PATH.match(path)
        if match:
            handler.send_json(200, {"records": self.records(unquote(match.group(1)))})
        elif path.rstrip("/") == "/_sandbox/stats":
            handler.send_json(200, self.stats())
        elif path.rstrip("/") == "/_sandbox/health":
            handler.send_json(200, {"status": "ok"})
        elif path.rstrip("/") == "/_sandbox/config":
            handler.send_json(200, self.config.to_dict())
        else:
            handler.send_json(404, {"error": "not_found"})

    def _control_post(self, handler: _JsonHandler, path: str, body: bytes) -> None:
        route = path.rstrip("/")
        parsed_ok, payload = _parse_json_body(body) if body.strip() else (True, {})
        if not parsed_ok or not isinstance(payload, dict):
            handler.send_json(400, {"error": "invalid_json", "message": "body must be a JSON object"})
            return
        try:
            if route == "/_sandbox/config":
                handler.send_json(200, self.configure(**payload).to_dict())
            elif route == "/_sandbox/reset":
                knobs = payload.get("config") or {}
                if not isinstance(knobs, dict):
                    raise SandboxConfigError("config must be an object")
                self.reset(keep_config=bool(payload.get("keep_config", False)), **knobs)
                handler.send_json(200, {"ok": True, "config": self.config.to_dict()})
            elif route == "/_sandbox/revoke-tokens":
                handler.send_json(200, {"revoked": self.revoke_tokens()})
            elif _CONTROL_SEED_PATH.match(path):
                contact_list_id = unquote(_CONTROL_SEED_PATH.match(path).group(1))
                records = payload.get("records")
                self.seed_records(contact_list_id, records)
                handler.send_json(200, {"seeded": len(records)})
            else:
                handler.send_json(404, {"error": "not_found"})
        except SandboxConfigError as exc:
            handler.send_json(400, {"error": "invalid_config", "message": str(exc)})


def _bearer_token(authorization: str) -> str | None:
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def _find_duplicates(
    contact_list: _ContactList, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Warnings for records that repeat a stored or earlier (accepted) record of the batch, and the rest.

    The batch is processed in order, as if each accepted record were stored before the next is
    checked; one warning per duplicate record (a contactId clash wins over a phone clash).
    """
    warnings: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    batch_ids: dict[str, int] = {}
    batch_phones: dict[str, int] = {}
    for index, record in enumerate(records):
        contact_id = record["contactId"]
        numbers = _phone_numbers_of(record)
        warning = None
        if contact_id in contact_list.contact_ids:
            warning = ("DUPLICATE_CONTACT_ID", "contactId already exists in the contact list")
        elif contact_id in batch_ids:
            warning = (
                "DUPLICATE_CONTACT_ID",
                f"contactId repeats the record at index {batch_ids[contact_id]} of this batch",
            )
        else:
            for position, number in enumerate(numbers):
                if number in contact_list.phone_numbers:
                    warning = (
                        "DUPLICATE_PHONE",
                        f"phoneNumbers[{position}].number already exists in the contact list",
                    )
                    break
                if number in batch_phones:
                    warning = (
                        "DUPLICATE_PHONE",
                        f"phoneNumbers[{position}].number repeats the record at index {batch_phones[number]} "
                        "of this batch",
                    )
                    break
        if warning is not None:
            code, message = warning
            warnings.append({"index": index, "contactId": contact_id, "code": code, "message": message})
            continue
        accepted.append(record)
        batch_ids[contact_id] = index
        for number in numbers:
            batch_phones.setdefault(number, index)
    return warnings, accepted


class _SandboxHandler(_JsonHandler):
    server: _LocalHTTPServer

    def do_POST(self) -> None:
        app: CXoneSandbox = self.server.app
        path = self.split_path()
        try:
            body = self.read_body()
        except _BodyError as exc:
            self.send_json(exc.status, {"error": exc.error})
            return
        try:
            match = _RECORDS_PATH.match(path)
            if match:
                app._import_records(self, unquote(match.group(1)), body)
            elif path.rstrip("/") == "/oauth2/token":
                app._issue_token(self, body)
            elif path.startswith("/_sandbox/"):
                app._control_post(self, path, body)
            else:
                self.send_json(404, {"error": "not_found"})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a sandbox bug must still answer, not hang the client
            self.close_connection = True
            self.send_json(500, {"error": "internal_error"})

    def do_GET(self) -> None:
        app: CXoneSandbox = self.server.app
        path = self.split_path()
        try:
            self.read_body()
        except _BodyError as exc:
            self.send_json(exc.status, {"error": exc.error})
            return
        if path.startswith("/_sandbox/"):
            app._control_get(self, path)
        elif _RECORDS_PATH.match(path) or path.rstrip("/") == "/oauth2/token":
            self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
        else:
            self.send_json(404, {"error": "not_found"})


CXoneSandbox._handler_class = _SandboxHandler


# --------------------------------------------------------------------------------------------------
# Webhook sink
# --------------------------------------------------------------------------------------------------


class WebhookSink(_ServerRunner):
    """Stand-in for the CRM webhook: stores every POST and can be told to fail a number of times."""

    _thread_name = "webhook-sink"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._fail_status: int | None = None
        self._fail_count: int | None = None

    def start(self) -> "WebhookSink":
        super().start()
        return self

    def events(self) -> list[dict[str, Any]]:
        """Every POST received (failed deliveries included), oldest first; each carries the `status` answered."""
        with self._lock:
            return copy.deepcopy(self._events)

    def configure(self, fail_status: int | None = None, fail_count: int | None = None) -> None:
        """Answer `fail_status` to the next `fail_count` POSTs (to all of them when `fail_count` is None).

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
        with self._lock:
            self._fail_status = fail_status
            self._fail_count = fail_count

    def reset(self) -> None:
        """Forget events and failure settings."""
        with self._lock:
            self._events.clear()
            self._fail_status = None
            self._fail_count = None

    def _receive(self, handler: _JsonHandler, path: str, body: bytes) -> None:
        parsed_ok, payload = _parse_json_body(body)
        event_body = payload if parsed_ok else body.decode("utf-8", errors="replace")
        with self._lock:
            status = 200
            if self._fail_status is not None:
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
                }
            )
        if status == 200:
            handler.send_json(200, {"ok": True})
        else:
            handler.send_json(status, {"ok": False, "error": "configured failure"})

    def _control(self, handler: _JsonHandler, method: str, path: str, body: bytes) -> None:
        route = path.rstrip("/")
        if method == "GET" and route == "/_sink/events":
            handler.send_json(200, {"events": self.events()})
        elif method == "GET" and route == "/_sink/health":
            handler.send_json(200, {"status": "ok"})
        elif method == "POST" and route == "/_sink/reset":
            self.reset()
            handler.send_json(200, {"ok": True})
        elif method == "POST" and route == "/_sink/config":
            parsed_ok, payload = _parse_json_body(body) if body.strip() else (True, {})
            if not parsed_ok or not isinstance(payload, dict):
                handler.send_json(400, {"error": "invalid_json", "message": "body must be a JSON object"})
                return
            unknown = sorted(set(payload) - {"fail_status", "fail_count"})
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


class _SinkHandler(_JsonHandler):
    server: _LocalHTTPServer

    def _handle(self, method: str) -> None:
        sink: WebhookSink = self.server.app
        path = self.split_path()
        try:
            body = self.read_body()
        except _BodyError as exc:
            self.send_json(exc.status, {"error": exc.error})
            return
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
