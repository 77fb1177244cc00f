"""The sandbox's calling-list API (docs/api-call-lists.md) over HTTP: OIDC and API discovery, the password grant
with HTTP Basic client auth, calling lists, base64 CSV uploads and upload jobs that complete after a delay.

One server plays both hosts (the auth host and the tenant's API host). The contract lives in
`call_lists_contract`; this module adds tokens, jobs, faults and counters. Fault knobs count down: each names how
many of the next requests (or jobs) it hits, so a test says exactly what goes wrong.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import random
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from include.cxone_sandbox.call_lists_contract import (
    MAX_FILE_BYTES,
    MAX_FILE_RECORDS,
    MAX_RECORD_CHARS,
    CallingList,
    ContractError,
    check_header,
    create_request,
    id_token,
    dnc_phone,
    dnc_records_request,
    list_read_query,
    parse_upload,
    removal_request,
    stored_record,
)
from include.cxone_sandbox.config import SandboxConfigError
from include.cxone_sandbox.http_server import BodyError, IssuedTokens, JsonHandler, LocalHTTPServer, ServerRunner, parse_json_body

API_PREFIX = "/incontactapi/services/"  # matched case-insensitively (clients spell it either way)
COUNTDOWN_KNOBS = ("rate_limited_requests", "rate_limited_uploads", "read_errors_5xx",
                   "upload_errors_5xx_after_accept", "cancel_jobs", "stall_jobs")


@dataclass
class CallListSandboxConfig:
    """Knobs of the calling-list sandbox; change them live with `CallListSandbox.configure`."""

    access_key_id: str = "sandbox-access-key"
    access_key_secret: str = "sandbox-access-secret"
    client_id: str = "sandbox-app"
    client_secret: str = "sandbox-app-secret"
    tenant_id: str = "11eb0f4c-0000-4000-8000-00000000beef"
    token_lifetime_s: int = 3600
    job_delay_s: float = 0.2  # an upload job completes this long after it was accepted
    latency_ms: float = 0.0
    max_file_bytes: int = MAX_FILE_BYTES
    max_file_records: int = MAX_FILE_RECORDS
    max_record_chars: int = MAX_RECORD_CHARS
    rate_limited_requests: int = 0  # the next N API requests get 429 without Retry-After
    rate_limited_uploads: int = 0  # the next N uploads get 429 without Retry-After (nothing accepted)
    read_errors_5xx: int = 0  # the next N GET requests get 503
    upload_errors_5xx_after_accept: int = 0  # the next N uploads are accepted (a job runs) and answered 503
    cancel_jobs: int = 0  # the next N jobs end cancelled, nothing imported
    stall_jobs: int = 0  # the next N jobs never complete
    # rates (0..1), drawn from seeded generators: one for uploads (taken in upload order), one for other requests
    error_rate_5xx: float = 0.0  # an API request answered 503 before anything is done (an upload: no job)
    cancel_job_rate: float = 0.0  # an accepted upload's job ends cancelled
    upload_5xx_after_accept_rate: float = 0.0  # an upload accepted (its job runs) and answered 503
    remove_error_rate_5xx: float = 0.0  # a removeProspects answered 503 before anything is removed
    remove_5xx_after_apply_rate: float = 0.0  # a removeProspects applied, then answered 503 (the caller cannot tell)
    seed: int | None = None
    discovered_token_endpoint: str = ""  # OIDC discovery names this token_endpoint instead of its own
    discovered_api_endpoint: str = ""  # API discovery names this api_endpoint instead of its own

    def __post_init__(self) -> None:
        for name in ("token_lifetime_s", "max_file_bytes", "max_file_records", "max_record_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SandboxConfigError(f"{name} must be an integer >= 1")
        for name in ("error_rate_5xx", "cancel_job_rate", "upload_5xx_after_accept_rate", "remove_error_rate_5xx",
                     "remove_5xx_after_apply_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise SandboxConfigError(f"{name} must be a number from 0 to 1")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SandboxConfigError("seed must be None or an integer")
        for name in ("job_delay_s", "latency_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise SandboxConfigError(f"{name} must be a number >= 0")
        for name in COUNTDOWN_KNOBS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SandboxConfigError(f"{name} must be an integer >= 0")
        for name in ("access_key_id", "access_key_secret", "client_id", "client_secret", "tenant_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SandboxConfigError(f"{name} must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        """The knobs without the secrets."""
        knobs = dataclasses.asdict(self)
        knobs.pop("access_key_secret")
        knobs.pop("client_secret")
        return knobs


@dataclass
class _Job:
    job_id: int
    list_id: int
    rows: list[dict[str, str]]
    due_at: float
    fate: str  # complete | cancel | stall
    submitted: str
    expires_at: float
    completed: str | None = None
    cancelled: bool = False
    file_name: str = ""

    def view(self, list_name: str) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "listId": self.list_id,
            "listName": list_name,
            "submitDate": self.submitted,
            "startDate": self.submitted,
            "isComplete": self.completed is not None and not self.cancelled,
            "isCancelled": self.cancelled,
            "completedDate": self.completed,
        }


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallListSandbox(IssuedTokens, ServerRunner):
    """Local calling-list API on 127.0.0.1 with fault knobs, store inspection and counters."""

    _thread_name = "cxone-call-lists"

    def __init__(self, config: CallListSandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._config = copy.deepcopy(config) if config is not None else CallListSandboxConfig()
        self._lock = threading.Lock()
        self._lists: dict[int, CallingList] = {}
        self._jobs: dict[int, _Job] = {}
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._upload_dice = random.Random(self._config.seed)
        self._request_dice = random.Random(None if self._config.seed is None else self._config.seed + 1)
        self._dnc_groups: dict[int, dict[str, Any]] = {}  # id -> {name, records: {phone: expiredDate}}
        self._next_list_id = 1001
        self._next_job_id = 50001
        self._stats: dict[str, Any] = {"token_requests": 0, "uploads": 0, "status_counts": {}, "requests": 0,
                                       "rows_uploaded": 0, "rows_uploaded_while_on_list": 0}

    # ---- public API -----------------------------------------------------------------------------

    def start(self) -> "CallListSandbox":
        super().start()
        return self

    @property
    def config(self) -> CallListSandboxConfig:
        with self._lock:
            return copy.deepcopy(self._config)

    def configure(self, **knobs: Any) -> CallListSandboxConfig:
        """Change knobs live (names as in CallListSandboxConfig)."""
        unknown = sorted(set(knobs) - {f.name for f in dataclasses.fields(CallListSandboxConfig)})
        if unknown:
            raise SandboxConfigError(f"unknown sandbox knob(s): {', '.join(unknown)}")
        with self._lock:
            self._config = dataclasses.replace(self._config, **knobs)
            if "seed" in knobs:
                self._upload_dice.seed(self._config.seed)
                self._request_dice.seed(None if self._config.seed is None else self._config.seed + 1)
            return copy.deepcopy(self._config)

    def lists(self) -> list[dict[str, Any]]:
        with self._lock:
            self._advance_jobs()
            return [c.summary() for c in self._lists.values()]

    def list_id(self, name: str) -> int | None:
        with self._lock:
            return next((c.list_id for c in self._lists.values() if c.list_name == name), None)

    def records(self, list_name_or_id: str | int) -> list[dict[str, Any]]:
        """The records of a list (by name or id), upload order, as the API shows them."""
        with self._lock:
            self._advance_jobs()
            found = self._find(list_name_or_id)
            return [{k: v for k, v in r.items() if not k.startswith("_")} for r in found.records.values()] if found else []

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            self._advance_jobs()
            return [j.view(self._lists[j.list_id].list_name) | {"fileName": j.file_name} for j in self._jobs.values()]

    def create_dnc_group(self, name: str) -> int:
        """A do-not-call group (as an administrator would have made it); its id."""
        with self._lock:
            group_id = 7000 + len(self._dnc_groups) + 1
            self._dnc_groups[group_id] = {"name": name, "records": {}}
            return group_id

    def dnc_records(self, group_id: int) -> dict[str, str | None]:
        """The numbers of a DNC group (digits) and their expiry."""
        with self._lock:
            return dict(self._dnc_groups[group_id]["records"])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._stats)

    def seed_records(self, list_name_or_id: str | int, rows: list[dict[str, str]]) -> None:
        """Store rows (CSV-shaped, by column) on an existing list as if an earlier upload had."""
        with self._lock:
            found = self._find(list_name_or_id)
            if found is None:
                raise SandboxConfigError(f"no list {list_name_or_id!r}")
            for row in rows:
                record = stored_record(found, row, _now_iso())
                if record is not None:
                    found.records.setdefault(record["externalId"], record)

    # ---- internals (called with the lock held unless said otherwise) ----------------------------

    def _find(self, key: str | int) -> CallingList | None:
        if isinstance(key, int) or str(key).isdigit():
            found = self._lists.get(int(key))
            if found is not None:
                return found
        return next((c for c in self._lists.values() if c.list_name == str(key)), None)

    def _advance_jobs(self) -> None:
        """Jobs whose delay has passed complete (their valid rows join the list) or end cancelled."""
        now = time.monotonic()
        for calling_list in self._lists.values():
            calling_list.expire(time.time())
        for job in self._jobs.values():
            if job.completed is not None or job.fate == "stall" or now < job.due_at:
                continue
            job.completed = _now_iso()
            if job.fate == "cancel":
                job.cancelled = True
                continue
            calling_list = self._lists[job.list_id]
            for row in job.rows:
                record = stored_record(calling_list, row, job.completed, job.expires_at)
                if record is None:
                    calling_list.invalid_records += 1
                else:  # GUESS: forceOverwrite false keeps a record the list already holds (same externalId)
                    calling_list.records.setdefault(record["externalId"], record)
            calling_list.upload_date = job.completed
            job.rows = []

    def _roll(self, method: str, route: str, rate: float) -> bool:
        """A fault at ``rate``: uploads draw from their own generator, so a seed gives every upload the same fate
        however many polls happened in between."""
        if rate <= 0:
            return False
        is_upload = method == "POST" and route.rstrip("/").endswith("/upload")
        return (self._upload_dice if is_upload else self._request_dice).random() < rate

    def _take(self, knob: str) -> bool:
        """Use up one count of a countdown knob."""
        left = getattr(self._config, knob)
        if left <= 0:
            return False
        self._config = dataclasses.replace(self._config, **{knob: left - 1})
        return True

    def _count(self, status: int) -> None:
        counts = self._stats["status_counts"]
        counts[str(status)] = counts.get(str(status), 0) + 1

    # ---- request handling ------------------------------------------------------------------------

    def _openid_configuration(self, handler: JsonHandler) -> None:
        issuer = self.url
        handler.send_json(200, {
            "issuer": issuer,
            "token_endpoint": self._config.discovered_token_endpoint or f"{issuer}/auth/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "grant_types_supported": ["password", "refresh_token"],
        })

    def _cxone_configuration(self, handler: JsonHandler, query: dict[str, str]) -> None:
        if query.get("tenantId") != self._config.tenant_id:
            handler.send_json(404, {"error": "TenantNotFound", "errorDescription": "unknown tenantId"})
            return
        handler.send_json(200, {
            "api_endpoint": self._config.discovered_api_endpoint or self.url, "area": "na1", "cluster": "sandbox", "domain": "127.0.0.1",
            "tenantId": self._config.tenant_id, "ui_endpoint": self.url, "auth_endpoint": self.url,
        })

    def _issue_token(self, handler: JsonHandler, body: bytes) -> None:
        status, payload = self._token_reply(handler, body)
        with self._lock:
            self._stats["token_requests"] += 1
            if status == 200:
                self._tokens[payload["access_token"]] = time.monotonic() + self._config.token_lifetime_s
                self._issued.append(payload["access_token"])
        handler.send_json(status, payload, {"Cache-Control": "no-store"})

    def _token_reply(self, handler: JsonHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        config = self._config
        authorization = handler.headers.get("Authorization", "")
        if authorization[:6].lower() != "basic ":
            return 401, {"error": "invalid_client", "error_description": "client authentication is HTTP Basic"}
        try:
            client_id, _, client_secret = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return 401, {"error": "invalid_client"}
        if not (_same(unquote(client_id), config.client_id) and _same(unquote(client_secret), config.client_secret)):
            return 401, {"error": "invalid_client"}
        try:
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            return 400, {"error": "invalid_request"}
        if form.get("grant_type") != "password":
            return 400, {"error": "unsupported_grant_type"}
        if not (_same(form.get("username", ""), config.access_key_id)
                and _same(form.get("password", ""), config.access_key_secret)):
            return 400, {"error": "invalid_grant", "error_description": "access key rejected"}
        claims = {"tenantId": config.tenant_id, "icBUId": 4600001, "icClusterId": "SBX1", "iss": self.url,
                  "iat": int(time.time()), "exp": int(time.time()) + config.token_lifetime_s}
        return 200, {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "refresh_token": secrets.token_urlsafe(24),
            "expires_in": config.token_lifetime_s,
            "id_token": id_token(claims),
        }

    def _api(self, handler: JsonHandler, method: str, route: str, query: dict[str, str], body: bytes) -> None:
        """One API request: auth, faults, then the route (``route`` is the path under the version segment)."""
        with self._lock:
            self._stats["requests"] += 1
            config = self._config
            token = _bearer(handler.headers.get("Authorization", ""))
            expiry = self._tokens.get(token) if token else None
            if expiry is None or time.monotonic() >= expiry:
                status, payload, headers = 401, {"error": "InvalidToken", "errorDescription": "token missing or expired"}, None
            elif self._take("rate_limited_requests") or (
                method == "POST" and route.rstrip("/").endswith("/upload") and self._take("rate_limited_uploads")
            ):
                status, payload, headers = 429, {"error": "TooManyRequests", "errorDescription": "slow down"}, None
            elif (method == "GET" and self._take("read_errors_5xx")) or self._roll(method, route, config.error_rate_5xx):
                status, payload, headers = 503, {"error": "ServiceUnavailable", "errorDescription": "try again"}, None
            else:
                status = 0
            if status:
                self._count(status)
        if status:
            handler.send_json(status, payload, headers)
            return
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000.0)
        try:
            status, payload = self._route(method, route, query, body)
        except ContractError as exc:
            status, payload = 400, exc.body()
        with self._lock:
            self._count(status)
        handler.send_json(status, payload)

    def _route(self, method: str, route: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = [unquote(p) for p in route.strip("/").split("/")]
        if parts[:1] == ["dnc-groups"]:
            return self._dnc_route(method, parts[1:], body)
        if parts[:2] != ["lists", "call-lists"]:
            return 404, {"error": "NotFound", "errorDescription": "no such resource"}
        rest = parts[2:]
        with self._lock:
            self._advance_jobs()
            if not rest and method == "GET":
                return 200, {"callingLists": [c.summary() for c in self._lists.values()]}
            if not rest and method == "POST":
                ok, payload = parse_json_body(body) if body.strip() else (True, {})
                if not ok:
                    raise ContractError("InvalidRequest", "the body is not JSON")
                fields = create_request(query, payload)
                if any(c.list_name == fields["list_name"] for c in self._lists.values()):
                    raise ContractError("DuplicateListName", "a list with this name exists")
                list_id = self._next_list_id
                self._next_list_id += 1
                self._lists[list_id] = CallingList(list_id, **fields)
                return 201, {"listId": list_id}
            if rest[0] == "jobs":
                return self._jobs_route(method, rest[1:])
            if rest[1:] == ["removeProspects"] and method == "DELETE":
                return self._remove_prospects(rest[0], body)
            calling_list = self._lists.get(int(rest[0])) if rest[0].isdigit() else None
            if calling_list is None:
                return 404, {"error": "ListNotFound", "errorDescription": "no such calling list"}
            if len(rest) == 1 and method == "GET":
                return 200, {"resultSet": calling_list.result_set(**list_read_query(query))}
            if rest[1:] == ["upload"] and method == "POST":
                return self._upload(calling_list, body)
        return 404, {"error": "NotFound", "errorDescription": "no such resource"}

    def _upload(self, calling_list: CallingList, body: bytes) -> tuple[int, Any]:
        config = self._config
        ok, payload = parse_json_body(body)
        upload = parse_upload(payload if ok else None, max_bytes=config.max_file_bytes,
                              max_records=config.max_file_records, max_record_chars=config.max_record_chars)
        check_header(calling_list, upload.header)
        held = calling_list.records.keys()
        self._stats["rows_uploaded"] += len(upload.rows)
        self._stats["rows_uploaded_while_on_list"] += sum(
            1 for row in upload.rows if (row.get(calling_list.external_id_column) or "").strip() in held)
        cancel = self._take("cancel_jobs") or self._roll("POST", "upload", config.cancel_job_rate)
        fate = "cancel" if cancel else "stall" if self._take("stall_jobs") else "complete"
        job = _Job(self._next_job_id, calling_list.list_id, upload.rows, time.monotonic() + config.job_delay_s, fate,
                   _now_iso(), upload.expires_at, file_name=upload.file_name)
        self._next_job_id += 1
        self._jobs[job.job_id] = job
        self._stats["uploads"] += 1
        if self._take("upload_errors_5xx_after_accept") or self._roll("POST", "upload", config.upload_5xx_after_accept_rate):
            return 503, {"error": "ServiceUnavailable", "errorDescription": "the gateway timed out"}
        return 202, {"jobId": job.job_id}

    def _remove_prospects(self, source_name: str, body: bytes) -> tuple[int, Any]:
        """``DELETE lists/call-lists/{sourceName}/removeProspects``: the named records leave the list (GUESS: the
        source is the list's name, or its id)."""
        calling_list = self._find(source_name)
        if calling_list is None:
            return 404, {"error": "ListNotFound", "errorDescription": "no such calling list"}
        ok, payload = parse_json_body(body)
        external_ids = removal_request(payload if ok else None)
        if self._roll("DELETE", "removeProspects", self._config.remove_error_rate_5xx):
            return 503, {"error": "ServiceUnavailable", "errorDescription": "try again"}
        done, failed = [], []
        for external_id in external_ids:
            if calling_list.records.pop(external_id, None) is not None:
                done.append({"externalId": external_id, "resultCode": "Success"})
            else:
                failed.append({"externalId": external_id, "resultCode": "NotFound"})
        self._stats["prospects_removed"] = self._stats.get("prospects_removed", 0) + len(done)
        self._stats["removal_requests"] = self._stats.get("removal_requests", 0) + 1
        if self._roll("DELETE", "removeProspects", self._config.remove_5xx_after_apply_rate):
            return 503, {"error": "ServiceUnavailable", "errorDescription": "the gateway timed out"}
        return 200, {"successfulRecords": done, "failedRecords": failed}

    def _dnc_route(self, method: str, rest: list[str], body: bytes) -> tuple[int, Any]:
        with self._lock:
            if not rest and method == "GET":
                groups = [{"dncGroupId": k, "dncGroupName": g["name"], "validRecords": len(g["records"]),
                           "isActive": True} for k, g in self._dnc_groups.items()]
                return 200, {"resultSet": {"totalGroups": len(groups), "dncGroups": groups}}
            group = self._dnc_groups.get(int(rest[0])) if rest and rest[0].isdigit() else None
            if group is None:
                return 404, {"error": "DncGroupNotFound", "errorDescription": "no such DNC group"}
            if rest[1:] == ["records"] and method == "POST":
                ok, payload = parse_json_body(body)
                results = []
                for phone, expired in dnc_records_request(payload if ok else None):
                    digits = dnc_phone(phone)
                    if digits is None:
                        results.append({"success": False, "error": "InvalidPhoneNumber", "formattedPhone": phone})
                    else:
                        group["records"][digits] = expired
                        results.append({"success": True, "error": None, "formattedPhone": digits})
                errors = sum(1 for r in results if not r["success"])
                return 200, {"resultSet": {"errorCount": errors, "recordResults": results}}
        return 404, {"error": "NotFound", "errorDescription": "no such resource"}

    def _jobs_route(self, method: str, rest: list[str]) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, {"uploadJobs": [j.view(self._lists[j.list_id].list_name) for j in self._jobs.values()]}
        job = self._jobs.get(int(rest[0])) if rest and rest[0].isdigit() else None
        if job is None:
            return 404, {"error": "JobNotFound", "errorDescription": "no such job"}
        if method == "DELETE":
            if job.completed is None:
                job.completed, job.cancelled = _now_iso(), True
            return 200, {"jobId": job.job_id, "isCancelled": job.cancelled}
        return 200, {"uploadJobs": [job.view(self._lists[job.list_id].list_name)]}


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def _bearer(authorization: str) -> str | None:
    return authorization[7:].strip() or None if authorization[:7].lower() == "bearer " else None


class _CallListHandler(JsonHandler):
    server: LocalHTTPServer
    server_version = "CXoneCallListSandbox/1.0"

    def _dispatch(self, method: str) -> None:
        app: CallListSandbox = self.server.app
        parts = urlsplit(self.path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            body = self.read_body()
        except BodyError as exc:
            self.send_json(exc.status, {"error": exc.error})
            return
        with self.answering():
            lowered = path.lower()
            if method == "GET" and path.rstrip("/") == "/.well-known/openid-configuration":
                app._openid_configuration(self)
            elif method == "GET" and path.rstrip("/") == "/.well-known/cxone-configuration":
                app._cxone_configuration(self, query)
            elif method == "POST" and path.rstrip("/") == "/auth/token":
                app._issue_token(self, body)
            elif lowered.startswith(API_PREFIX):
                version, _, route = path[len(API_PREFIX):].partition("/")
                if not (version.lower().startswith("v") and version.endswith(".0")):
                    self.send_json(404, {"error": "NotFound", "errorDescription": "unknown API version"})
                else:
                    app._api(self, method, route, query, body)
            else:
                self.send_json(404, {"error": "NotFound"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


CallListSandbox._handler_class = _CallListHandler
