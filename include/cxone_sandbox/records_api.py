"""The sandbox's records API over HTTP: token grant, records import with fault knobs, control endpoints.

The contract itself (what a valid record is, what counts as a duplicate) lives in `contract`; this module adds
what a server does around it: tokens, the rate window, injected faults, counters and the store.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote

from include.cxone_sandbox.config import SandboxConfig, SandboxConfigError, updated_config
from include.cxone_sandbox.contract import (
    DEFAULT_SCOPE,
    ContactList,
    batch_errors,
    find_duplicates,
    phone_clash,
    update_errors,
)
from include.cxone_sandbox.http_server import IssuedTokens, JsonHandler, LocalHTTPServer, ServerRunner, parse_json_body

_RECORDS_PATH = re.compile(r"^/api/v2/contactlists/([^/]+)/records/?$")
_RECORD_PATH = re.compile(r"^/api/v2/contactlists/([^/]+)/records/([^/]+)/?$")
_CONTROL_RECORDS_PATH = re.compile(r"^/_sandbox/records/([^/]+)/?$")
_CONTROL_SEED_PATH = re.compile(r"^/_sandbox/seed/([^/]+)/?$")


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
        "records_refused": 0,
        "records_updated": 0,
        "records_removed": 0,
        "status_counts": {},
        "token_status_counts": {},
        "dropped": 0,
        "dropped_after_commit": 0,
        "max_batch_seen": 0,
        "concurrent_max": 0,
    }


class CXoneSandbox(IssuedTokens, ServerRunner):
    """Local CXone records API on 127.0.0.1 with fault knobs, store inspection and counters."""

    _thread_name = "cxone-sandbox"

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._initial_config = copy.deepcopy(config) if config is not None else SandboxConfig()
        self._config = copy.deepcopy(self._initial_config)
        self._lock = threading.Lock()
        self._lists: dict[str, ContactList] = {}
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._rate_window: deque[float] = deque()
        self._random = random.Random(self._config.seed)
        self._stats = _empty_stats()
        self._in_flight = 0
        self._request_log: list[dict[str, Any]] = []

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
            self._config = updated_config(self._config, knobs)
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
            self._config = updated_config(config, knobs)
            self._lists.clear()
            self._tokens.clear()
            self._issued.clear()
            self._rate_window.clear()
            self._random.seed(self._config.seed)
            self._stats = _empty_stats()
            self._request_log.clear()

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
            contact_list = self._lists.setdefault(contact_list_id, ContactList())
            for record in copies:
                contact_list.add(record)

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset (a copy)."""
        with self._lock:
            stats = copy.deepcopy(self._stats)
            stats["in_flight"] = self._in_flight
        stats["connections_accepted"] = self._connections_accepted()
        return stats

    def request_log(self) -> list[dict[str, Any]]:
        """One entry per records request since start or the last reset, in arrival order: ``at`` (arrival, Unix
        seconds), ``contact_list_id``, ``status`` (None for a dropped connection), ``records`` (batch size) and
        ``created``. What a client sent, 429s included: the ground truth for rate-budget checks."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    # ---- request handling (called from handler threads) -----------------------------------------

    def _issue_token(self, handler: JsonHandler, body: bytes) -> None:
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

    def _token_reply(self, handler: JsonHandler, body: bytes) -> tuple[int, dict[str, Any]]:
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

    def _import_records(self, handler: JsonHandler, contact_list_id: str, body: bytes) -> None:
        arrived_at = time.time()
        parsed_ok, payload = parse_json_body(body)
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
            reply = self._records_flow(handler, contact_list_id, records)
        finally:
            with self._lock:
                self._in_flight -= 1
                if reply.drop:
                    self._stats["dropped"] += 1
                else:
                    counts = self._stats["status_counts"]
                    counts[str(reply.status)] = counts.get(str(reply.status), 0) + 1
                created = reply.payload.get("recordsCreated", 0) if isinstance(reply.payload, dict) else 0
                self._request_log.append(
                    {
                        "at": arrived_at,
                        "contact_list_id": contact_list_id,
                        "status": None if reply.drop else reply.status,
                        "records": batch_size,
                        "created": created,
                    }
                )
        if reply.drop:
            handler.drop_connection()
        else:
            handler.send_json(reply.status, reply.payload, reply.headers)

    def _admitted(self, handler: JsonHandler, config: SandboxConfig) -> _Reply | None:
        """What every records call answers before its own rules (the caller holds the lock): 401 without a live
        token, a dropped connection, 429 over the rate window; None when the call may go on."""
        token = _bearer_token(handler.headers.get("Authorization", ""))
        now = time.monotonic()
        expiry = self._tokens.get(token) if token else None
        if expiry is None or now >= expiry:
            return _Reply(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
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
        return None

    def _records_flow(self, handler: JsonHandler, contact_list_id: str, records: Any) -> _Reply:
        with self._lock:
            config = self._config
            refused_early = self._admitted(handler, config)
            if refused_early is not None:
                return refused_early
            if config.error_rate_5xx > 0 and self._random.random() < config.error_rate_5xx:
                return _Reply(503, {"error": "service_unavailable"})
            drop_after_commit = (
                config.drop_after_commit_rate > 0 and self._random.random() < config.drop_after_commit_rate
            )
            miscount = config.miscount_rate > 0 and self._random.random() < config.miscount_rate

        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)

        errors = batch_errors(records)
        if errors:
            return _Reply(400, {"errors": errors})

        with self._lock:
            contact_list = self._lists.setdefault(contact_list_id, ContactList())
            warnings, accepted = find_duplicates(contact_list, records)
            if warnings and config.duplicate_mode == "conflict":
                return _Reply(409, {"warnings": warnings if config.conflict_names_duplicates else []})
            refused = _refused(records, accepted, config, self._random)
            for record in accepted:
                if id(record) not in refused:
                    contact_list.add(record)
            created = len(accepted) - len(refused)
            self._stats["records_created"] += created
            self._stats["records_refused"] += len(refused)
            if drop_after_commit:
                self._stats["dropped_after_commit"] += 1
        if drop_after_commit:  # committed, then the answer is lost: the request log still counts what was created
            return _Reply(payload={"recordsCreated": created}, drop=True)
        # a faulty answer: one short of what it stored (one more when it stored nothing)
        reported = (created - 1 if created else 1) if miscount else created
        return _Reply(
            200, {"id": uuid.uuid4().hex, "recordsCreated": reported, "warnings": warnings,
                  "errors": list(refused.values())}
        )

    def _record_call(self, handler: JsonHandler, method: str, contact_list_id: str, contact_id: str, body: bytes) -> None:
        """``PUT`` (update) or ``DELETE`` (remove) of one stored record, found by its contactId."""
        arrived_at = time.time()
        with self._lock:
            self._stats["records_requests"] += 1
        reply = _Reply(500, {"error": "internal_error"})
        try:
            reply = self._record_flow(handler, method, contact_list_id, contact_id, body)
        finally:
            with self._lock:
                if reply.drop:
                    self._stats["dropped"] += 1
                else:
                    counts = self._stats["status_counts"]
                    counts[str(reply.status)] = counts.get(str(reply.status), 0) + 1
                self._request_log.append({"at": arrived_at, "contact_list_id": contact_list_id, "method": method,
                                          "status": None if reply.drop else reply.status, "records": 1, "created": 0})
        if reply.drop:
            handler.drop_connection()
        elif reply.status == 204:
            handler.send_empty(204)
        else:
            handler.send_json(reply.status, reply.payload, reply.headers)

    def _record_flow(self, handler: JsonHandler, method: str, contact_list_id: str, contact_id: str, body: bytes) -> _Reply:
        with self._lock:
            config = self._config
            refused_early = self._admitted(handler, config)
            if refused_early is not None:
                return refused_early
            rate = config.put_error_rate_5xx if method == "PUT" else config.delete_error_rate_5xx
            failing = rate > 0 and self._random.random() < rate
            after_applying = failing and self._random.random() < 0.5  # the change was made, its answer is a 503
        if failing and not after_applying:
            return _Reply(503, {"error": "service_unavailable"})
        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)
        if method == "PUT":
            parsed_ok, record = parse_json_body(body)
            errors = update_errors(contact_id, record if parsed_ok else None)
            if errors:
                return _Reply(400, {"errors": errors})
        with self._lock:
            contact_list = self._lists.get(contact_list_id)
            if contact_list is None or contact_list.get(contact_id) is None:
                return _Reply(404, {"error": "not_found", "message": "no record with this contactId in the list"})
            if method == "PUT":
                clash = phone_clash(contact_list, contact_id, record)
                if clash is not None:
                    return _Reply(409, {"warnings": [clash]})
                contact_list.replace(contact_id, record)
                self._stats["records_updated"] += 1
                reply = _Reply(200, {"updated": True})
            else:
                contact_list.remove(contact_id)
                self._stats["records_removed"] += 1
                reply = _Reply(204)
        return _Reply(503, {"error": "service_unavailable"}) if after_applying else reply

    def _control_get(self, handler: JsonHandler, path: str) -> None:
        match = _CONTROL_RECORDS_PATH.match(path)
        if match:
            handler.send_json(200, {"records": self.records(unquote(match.group(1)))})
        elif path.rstrip("/") == "/_sandbox/stats":
            handler.send_json(200, self.stats())
        elif path.rstrip("/") == "/_sandbox/requests":
            handler.send_json(200, {"requests": self.request_log()})
        elif path.rstrip("/") == "/_sandbox/health":
            handler.send_json(200, {"status": "ok"})
        elif path.rstrip("/") == "/_sandbox/config":
            handler.send_json(200, self.config.to_dict())
        else:
            handler.send_json(404, {"error": "not_found"})

    def _control_post(self, handler: JsonHandler, path: str, body: bytes) -> None:
        route = path.rstrip("/")
        parsed_ok, payload = parse_json_body(body) if body.strip() else (True, {})
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


def _refused(records: list[dict[str, Any]], accepted: list[dict[str, Any]], config: SandboxConfig,
             draw: random.Random) -> dict[int, dict[str, Any]]:
    """The accepted records the fault knob ``record_error_rate`` refuses (not stored), by ``id()``, with the
    ``errors[]`` item of the 200 that names each (the 400 error shape, ``record_error_code``)."""
    if config.record_error_rate <= 0:
        return {}
    index_of = {id(record): index for index, record in enumerate(records)}
    temporary = config.record_error_code in ("TEMPORARY_FAILURE", "INTERNAL_ERROR")
    message = "the record could not be stored now; send it again" if temporary else "the record could not be stored"
    return {
        id(record): {"index": index_of[id(record)], "contactId": record.get("contactId"), "field": None,
                     "code": config.record_error_code, "message": message}
        for record in accepted if draw.random() < config.record_error_rate
    }


def _bearer_token(authorization: str) -> str | None:
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None



class _SandboxHandler(JsonHandler):
    server: LocalHTTPServer

    def do_POST(self) -> None:
        app: CXoneSandbox = self.server.app
        request = self.read_request()
        if request is None:
            return
        path, body = request
        with self.answering():
            match = _RECORDS_PATH.match(path)
            if match:
                app._import_records(self, unquote(match.group(1)), body)
            elif path.rstrip("/") == "/oauth2/token":
                app._issue_token(self, body)
            elif path.startswith("/_sandbox/"):
                app._control_post(self, path, body)
            else:
                self.send_json(404, {"error": "not_found"})

    def do_GET(self) -> None:
        app: CXoneSandbox = self.server.app
        request = self.read_request()
        if request is None:
            return
        path, _ = request
        if path.startswith("/_sandbox/"):
            app._control_get(self, path)
        elif _RECORDS_PATH.match(path) or path.rstrip("/") == "/oauth2/token":
            self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
        elif _RECORD_PATH.match(path):
            self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "PUT, DELETE"})
        else:
            self.send_json(404, {"error": "not_found"})

    def _record_method(self, method: str) -> None:
        app: CXoneSandbox = self.server.app
        request = self.read_request()
        if request is None:
            return
        path, body = request
        match = _RECORD_PATH.match(path)
        if match is None:
            self.send_json(404 if not _RECORDS_PATH.match(path) else 405, {"error": "not_found"})
            return
        with self.answering():
            app._record_call(self, method, unquote(match.group(1)), unquote(match.group(2)), body)

    def do_PUT(self) -> None:
        self._record_method("PUT")

    def do_DELETE(self) -> None:
        self._record_method("DELETE")

    def send_empty(self, status: int) -> None:
        """An answer without a body (204)."""
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()


CXoneSandbox._handler_class = _SandboxHandler

