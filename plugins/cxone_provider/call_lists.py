"""HTTP client for NICE CXone's documented calling-list API (the ``call_lists`` profile; docs/api-call-lists.md).

Plain Python, no Airflow imports. Sign-in is an access key (password grant) with the application's OIDC client
as HTTP Basic, both endpoints found by discovery; :class:`AccessKeyAuth` owns the token and the tenant it names, and
the session carries it. Every call goes through the request loop both clients share
(:class:`~cxone_provider.base_client.BaseClient`: the tenant's shared rate limiter, typed errors, the retry policy,
a new token after a 401). Calls that create something (a list, an upload job) are retried only when the request
provably never arrived or was refused with 429: an upload is never sent twice.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from cxone_provider.auth import ClientCredentialsAuth
from cxone_provider.base_client import BaseClient, Call
from cxone_provider.errors import CXoneAuthError, CXoneError, CXoneStatusError, CXoneUntrustedHostError
from cxone_provider.ratelimit import RateLimiter
from cxone_provider.retry import RetryPolicy
from cxone_provider.sessions import answer_error, new_session, no_answer_error, parse_body

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_AUTH_BASE_URL",
    "MAX_FILE_BYTES",
    "MAX_FILE_RECORDS",
    "MAX_RECORD_CHARS",
    "AccessKeyAuth",
    "CallListClient",
    "ProspectRemoval",
    "UploadJob",
]

log = logging.getLogger(__name__)

DEFAULT_AUTH_BASE_URL = "https://cxone.niceincontact.com"
DEFAULT_API_VERSION = "v33.0"
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FILE_RECORDS = 500_000
MAX_RECORD_CHARS = 512
RECORDS_PAGE_SIZE = 1000  # GUESS: the largest `top` a list read accepts is not documented
MAX_PROSPECTS_PER_REMOVAL = 1000  # GUESS: no batch size for removeProspects is published
NICE_DOMAINS = ("niceincontact.com", "nice-incontact.com", "nicecxone.com", "incontact.com")
"""Where discovery may send the client (over https): NICE's own domains. Any other host must be one the connection
names itself (``auth_base_url``, ``api_base_url``, or the ``allowed_hosts`` extra: a proxy, the local sandbox)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default_port


def trusted_endpoint(url: str, *, what: str, configured: list[str]) -> str:
    """``url`` when discovery may send a credential or a record to it: https on one of :data:`NICE_DOMAINS`, or the
    scheme, host and port of a URL the connection configured. Otherwise :class:`CXoneUntrustedHostError`, raised
    before anything is sent there."""
    scheme, host, port = _origin(url)
    if (scheme, host, port) in {_origin(c) for c in configured if c}:
        return url
    if scheme == "https" and any(host == d or host.endswith(f".{d}") for d in NICE_DOMAINS):
        return url
    raise CXoneUntrustedHostError(
        f"CXone {what} named {scheme}://{host}{f':{port}' if port else ''}, which is neither on NICE's domains "
        f"({', '.join(NICE_DOMAINS)}, https) nor a host of the connection (auth_base_url, api_base_url, "
        "allowed_hosts); nothing was sent to it"
    )


def expiration_timestamp(moment: datetime) -> str:
    """An ``expirationDate``: ISO 8601 in UTC with milliseconds (``2027-01-05T02:00:00.000Z``)."""
    if moment.tzinfo is None:
        raise ValueError("an expiration date must carry its time zone")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without verifying its signature (the token came straight from the token endpoint
    over TLS; only the tenant is taken from it)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}


class AccessKeyAuth(ClientCredentialsAuth):
    """
    The password grant with an access key (``username``/``password``) and the OIDC client as HTTP Basic.

    The token endpoint comes from ``{auth_base_url}/.well-known/openid-configuration`` on the first token request;
    the tenant id from the ``id_token`` of each answer. Caching, refresh before expiry and invalidation after a 401
    are :class:`ClientCredentialsAuth`'s.
    """

    def __init__(self, auth_base_url: str, access_key_id: str, access_key_secret: str, *, client_id: str,
                 client_secret: str, **kwargs: Any) -> None:
        trusted_hosts = kwargs.pop("trusted_hosts", ())
        super().__init__("", client_id, client_secret, **kwargs)
        self.auth_base_url = auth_base_url.rstrip("/")
        self.trusted_hosts = [self.auth_base_url, *trusted_hosts]
        self.access_key_id = access_key_id
        self._access_key_secret = access_key_secret
        self.tenant_id: str | None = None

    def __repr__(self) -> str:
        return f"AccessKeyAuth(auth_base_url={self.auth_base_url!r}, access_key_id={self.access_key_id!r})"

    def _token_request(self) -> dict[str, Any]:
        form = {"grant_type": "password", "username": self.access_key_id, "password": self._access_key_secret}
        return {"data": form, "auth": HTTPBasicAuth(self.client_id, self._client_secret)}

    def _token_answered(self, body: Mapping[str, Any]) -> None:
        tenant = jwt_claims(str(body.get("id_token") or "")).get("tenantId")
        if tenant:
            self.tenant_id = str(tenant)

    def _fetch_locked(self) -> str:
        if not self.token_url:
            self.token_url = self._discover_token_endpoint()
        return super()._fetch_locked()

    def _discover_token_endpoint(self) -> str:
        url = f"{self.auth_base_url}/.well-known/openid-configuration"
        document = _get_document(self._session, url, timeout=self.timeout, verify=self.verify, what="OIDC discovery")
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise CXoneAuthError(f"CXone OIDC discovery: {url} names no token_endpoint", status_code=200)
        return trusted_endpoint(endpoint, what="OIDC discovery's token_endpoint", configured=self.trusted_hosts)

    def tenant(self) -> str:
        """The tenant named by the id_token (fetches a token when there is none yet)."""
        if self.tenant_id is None:
            self.get_token()
        if not self.tenant_id:
            raise CXoneAuthError("CXone token answer carried no id_token with a tenantId", status_code=200)
        return self.tenant_id

    def discover_api_endpoint(self) -> str:
        """API discovery: the tenant's ``api_endpoint`` (``{auth_base_url}/.well-known/cxone-configuration``), asked
        without the token like OIDC discovery."""
        url = f"{self.auth_base_url}/.well-known/cxone-configuration"
        document = _get_document(self._session, url, params={"tenantId": self.tenant()}, timeout=self.timeout,
                                 verify=self.verify, what="API discovery")
        endpoint = document.get("api_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise CXoneStatusError("CXone API discovery named no api_endpoint", status_code=200)
        return trusted_endpoint(endpoint, what="API discovery's api_endpoint", configured=self.trusted_hosts)


def _get_document(session: requests.Session, url: str, *, timeout: float, verify: Any, what: str,
                  params: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a discovery document (no auth); typed errors like every other call."""
    try:
        response = session.get(url, params=params, timeout=timeout, verify=verify, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise no_answer_error(exc, what, timeout) from exc
    body = parse_body(response)
    if not 200 <= response.status_code < 300 or not isinstance(body, dict):
        raise answer_error(response, what)
    return body


@dataclass(frozen=True)
class ProspectRemoval:
    """What ``removeProspects`` answered: external id -> result code, removed and not removed."""

    removed: dict[str, str]
    failed: dict[str, str]


@dataclass(frozen=True)
class UploadJob:
    """The state of an upload job; it reports no counts (what it accepted is read back from the list)."""

    job_id: str
    list_id: str
    is_complete: bool
    is_cancelled: bool
    completed_date: str | None

    @property
    def settled(self) -> bool:
        return self.is_complete or self.is_cancelled


class CallListClient(BaseClient):
    """
    Client for one tenant's calling lists; safe to share between threads.

    :param auth_base_url: where discovery lives (``https://cxone.niceincontact.com``).
    :param access_key_id: the access key id (the connection's login).
    :param access_key_secret: its secret; never logged, never part of an error message.
    :param client_id: the application's OIDC client id.
    :param client_secret: the application's OIDC client secret.
    :param api_base_url: the tenant's ``api_endpoint``; None asks API discovery for it.
    :param api_version: the path's version segment (``v33.0``).
    :param timeout: seconds per attempt.
    :param verify: TLS verification.
    :param retry_policy: attempts and backoff.
    :param rate_limiter: the tenant's shared limiter; every attempt takes a slot, a 429 pauses all senders.
    :param on_token: called with every new token (log masking).
    :param allowed_hosts: base URLs besides NICE's domains that discovery may name (a proxy; the local sandbox).
    """

    auth: AccessKeyAuth

    def __init__(
        self,
        auth_base_url: str,
        access_key_id: str,
        access_key_secret: str,
        *,
        client_id: str,
        client_secret: str,
        api_base_url: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 30.0,
        verify: bool | str = True,
        retry_policy: RetryPolicy = RetryPolicy(),
        rate_limiter: RateLimiter | None = None,
        on_token: Callable[[str], None] | None = None,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        if not (access_key_id and access_key_secret and client_id and client_secret):
            raise ValueError("an access key (id and secret) and the OIDC client (id and secret) are all required")
        self.api_version = api_version
        self._api_base_url = api_base_url.rstrip("/") if api_base_url else None
        trusted = [*(allowed_hosts or []), *([api_base_url] if api_base_url else [])]
        auth = AccessKeyAuth(auth_base_url, access_key_id, access_key_secret, client_id=client_id,
                             client_secret=client_secret, timeout=timeout, verify=verify, on_token=on_token,
                             trusted_hosts=trusted)
        super().__init__(auth, new_session(pool_connections=2, pool_maxsize=8), timeout=timeout, verify=verify,
                         retry_policy=retry_policy, rate_limiter=rate_limiter,
                         api_name=f"CXone calling-list API {auth_base_url}")

    def __repr__(self) -> str:
        return f"CallListClient(auth_base_url={self.auth.auth_base_url!r}, access_key_id={self.auth.access_key_id!r})"

    # -- discovery ---------------------------------------------------------------------------------------------

    @property
    def tenant_id(self) -> str:
        """The tenant named by the id_token (fetches a token when there is none yet)."""
        return self.auth.tenant()

    @property
    def base_url(self) -> str:
        """``{api_endpoint}/inContactAPI/services/{api_version}``; the endpoint from API discovery unless given."""
        if self._api_base_url is None:
            self._api_base_url = self.auth.discover_api_endpoint().rstrip("/")
        return f"{self._api_base_url}/inContactAPI/services/{self.api_version}"

    # -- calling lists -----------------------------------------------------------------------------------------

    def calling_lists(self) -> list[dict[str, Any]]:
        """``GET lists/call-lists``: every list's id, name, status and counts."""
        body = self._call("GET", "lists/call-lists", operation="calling-list index")
        lists = body.get("callingLists") if isinstance(body, dict) else None
        return list(lists) if isinstance(lists, list) else []

    def find_list(self, id_or_name: str) -> dict[str, Any] | None:
        """The list whose ``listId`` (digits) or ``listName`` is ``id_or_name``."""
        for entry in self.calling_lists():
            if str(entry.get("listId")) == id_or_name or entry.get("listName") == id_or_name:
                return entry
        return None

    def create_list(
        self,
        list_name: str,
        *,
        external_id_column: str,
        destination_mappings: list[dict[str, str]],
        custom_field_mappings: list[dict[str, str]],
    ) -> str:
        """``POST lists/call-lists``; the documented fields both ways the sources disagree on (query and body).
        Returns the new ``listId``."""
        query = {"listName": list_name, "externalIdColumn": external_id_column}
        body = {**query, "destinationMappings": destination_mappings, "customFieldMappings": custom_field_mappings}
        answer = self._call("POST", "lists/call-lists", params=query, json_body=body, creates=True,
                            operation=f"calling-list create ({list_name})")
        list_id = answer.get("listId") if isinstance(answer, dict) else None
        if list_id is None:
            raise CXoneStatusError("CXone calling-list create answered without a listId", status_code=201)
        log.info("created calling list %s (%s)", list_id, list_name)
        return str(list_id)

    def list_summary(self, list_id: str) -> dict[str, Any]:
        """``GET lists/call-lists/{listId}`` without records."""
        body = self._call("GET", f"lists/call-lists/{quote(list_id, safe='')}", operation=f"calling-list {list_id} read")
        return dict(body.get("resultSet") or {}) if isinstance(body, dict) else {}

    def iter_external_ids(self, list_id: str, *, page_size: int = RECORDS_PAGE_SIZE) -> Iterator[str]:
        """Every record's ``externalId`` on the list, read page by page (``includeRecords``, ``skip``, ``top``)."""
        skip = 0
        while True:
            body = self._call(
                "GET", f"lists/call-lists/{quote(list_id, safe='')}",
                params={"includeRecords": "true", "skip": str(skip), "top": str(page_size)},
                operation=f"calling-list {list_id} records read",
            )
            result = body.get("resultSet") if isinstance(body, dict) else None
            records = (result or {}).get("contactRecords") or []
            for record in records:
                if record.get("externalId") is not None:
                    yield str(record["externalId"])
            if len(records) < page_size:
                return
            skip += len(records)

    def upload(self, list_id: str, csv_bytes: bytes, *, file_name: str, expiration_date: datetime,
               skill_id: str | None = None, default_time_zone: str | None = None, start_skill: bool = False,
               send_email: bool = False) -> str:
        """
        ``POST lists/call-lists/{listId}/upload``: the file as base64 with every field NICE's published schema
        requires (``listFile``, ``forceOverwrite: false`` (append), ``expirationDate``, ``startSkill``,
        ``sendEmail``) and the optional ones given.

        Retried only on 429 and on connections that never reached the server. Any other failure raises with
        ``outcome_uncertain`` telling whether the server may have accepted the file: then it must not be sent again.

        :param expiration_date: when the file's records leave the list (an aware datetime).
        :param start_skill: start the skill's dialing once the file is processed.
        :param send_email: have CXone e-mail the list's owner when the upload completes.
        :return: the upload's ``jobId``.
        """
        if len(csv_bytes) > MAX_FILE_BYTES:
            raise ValueError(f"a calling-list file holds at most {MAX_FILE_BYTES} bytes, got {len(csv_bytes)}")
        body: dict[str, Any] = {
            "listFile": base64.b64encode(csv_bytes).decode("ascii"),
            "fileName": file_name,
            "forceOverwrite": False,
            "expirationDate": expiration_timestamp(expiration_date),
            "startSkill": bool(start_skill),
            "sendEmail": bool(send_email),
        }
        if skill_id:
            body["skillId"] = int(skill_id) if str(skill_id).isdigit() else skill_id
        if default_time_zone:
            body["defaultTimeZone"] = default_time_zone
        answer = self._call("POST", f"lists/call-lists/{quote(list_id, safe='')}/upload", json_body=body,
                            creates=True, operation=f"upload of {file_name} to calling list {list_id}")
        job_id = answer.get("jobId") if isinstance(answer, dict) else None
        if job_id is None:
            raise CXoneStatusError(f"CXone upload of {file_name} answered without a jobId", status_code=202,
                                   outcome_uncertain=True)
        return str(job_id)

    def remove_prospects(self, list_name: str, external_ids: list[str]) -> ProspectRemoval:
        """
        ``DELETE lists/call-lists/{sourceName}/removeProspects``: remove the records with these external ids.

        Safe to send again (a record already gone is answered ``failedRecords`` and read as gone), so it is retried
        like a read.

        :param list_name: the list's name (the ``sourceName``).
        :param external_ids: at most :data:`MAX_PROSPECTS_PER_REMOVAL` external ids.
        """
        if not 1 <= len(external_ids) <= MAX_PROSPECTS_PER_REMOVAL:
            raise ValueError(f"a removal names 1 to {MAX_PROSPECTS_PER_REMOVAL} external ids, got {len(external_ids)}")
        body = {"prospectsToRemove": [{"externalId": external_id} for external_id in external_ids]}
        answer = self._call("DELETE", f"lists/call-lists/{quote(list_name, safe='')}/removeProspects",
                            json_body=body, operation=f"removal of {len(external_ids)} records from {list_name}")
        answer = answer if isinstance(answer, dict) else {}

        def ids(key: str) -> dict[str, str]:
            return {str(r.get("externalId")): str(r.get("resultCode") or "") for r in answer.get(key) or []}

        return ProspectRemoval(removed=ids("successfulRecords"), failed=ids("failedRecords"))

    def add_dnc_records(self, group_id: str, phone_numbers: list[str], *, expired_date: str | None = None) -> list[dict[str, Any]]:
        """
        ``POST dnc-groups/{groupId}/records``: put these numbers into a do-not-call group.

        :param group_id: the DNC group.
        :param phone_numbers: numbers in E.164 (sent as digits, as CXone stores them).
        :param expired_date: when the entries lapse (ISO 8601); None: never.
        :return: ``recordResults`` (``success``, ``error``, ``formattedPhone``), one per number.
        """
        records = [{"phoneNumber": number.lstrip("+"), **({"expiredDate": expired_date} if expired_date else {})}
                   for number in phone_numbers]
        answer = self._call("POST", f"dnc-groups/{quote(group_id, safe='')}/records", json_body={"dncGroupRecords": records},
                            operation=f"{len(records)} numbers into DNC group {group_id}")
        result = answer.get("resultSet") if isinstance(answer, dict) else None
        return list((result or {}).get("recordResults") or [])

    def job(self, job_id: str) -> UploadJob:
        """``GET lists/call-lists/jobs/{jobId}``."""
        body = self._call("GET", f"lists/call-lists/jobs/{quote(job_id, safe='')}", operation=f"upload job {job_id} read")
        jobs = body.get("uploadJobs") if isinstance(body, dict) else None
        entry = next((j for j in jobs or [] if str(j.get("jobId")) == job_id), None)
        if entry is None:
            raise CXoneStatusError(f"CXone upload job {job_id}: not in the answer", status_code=200)
        return _upload_job(entry)

    def jobs(self) -> list[UploadJob]:
        """``GET lists/call-lists/jobs``: every upload job of the tenant."""
        body = self._call("GET", "lists/call-lists/jobs", operation="upload job index")
        return [_upload_job(j) for j in (body.get("uploadJobs") or [] if isinstance(body, dict) else [])]

    # -- one call ----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, operation: str, params: dict[str, str] | None = None,
              json_body: Any = None, creates: bool = False) -> Any:
        url = f"{self.base_url}/{path}"
        data = json.dumps(json_body).encode() if json_body is not None else None
        try:
            response, _ = self._request(Call(operation), method, url, data=data, params=params, creates=creates)
        except CXoneError as error:
            log.warning("%s: %s", operation, error)
            raise
        return parse_body(response)

def _upload_job(entry: Mapping[str, Any]) -> UploadJob:
    return UploadJob(
        job_id=str(entry.get("jobId")),
        list_id=str(entry.get("listId")),
        is_complete=bool(entry.get("isComplete")),
        is_cancelled=bool(entry.get("isCancelled")),
        completed_date=entry.get("completedDate"),
    )

