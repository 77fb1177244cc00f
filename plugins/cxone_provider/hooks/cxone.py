"""``CXoneHook``: builds a :class:`~cxone_provider.client.CXoneClient` from an Airflow connection."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.log import mask_secret

from cxone_provider.call_lists import DEFAULT_API_VERSION, DEFAULT_AUTH_BASE_URL, MAX_FILE_RECORDS, CallListClient
from cxone_provider.client import DEFAULT_SCOPE, CXoneClient, base_url_for
from cxone_provider.connection_form import (
    API_PROFILES,
    CONN_FIELDS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REQUESTS_PER_MINUTE,
    DEFAULT_LIST_EXPIRATION_DAYS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_UPLOAD_RECORDS_PER_FILE,
    MAX_LIST_EXPIRATION_DAYS,
    UI_FIELD_BEHAVIOUR,
)
from cxone_provider.connections import connection_url, parse_bool
from cxone_provider.errors import CXoneConfigurationError, CXoneError
from cxone_provider.leases import ListLease
from cxone_provider.models import BatchResult
from cxone_provider.ratelimit import BudgetStore, RateLimiter, budget_store, tenant_key
from cxone_provider.retry import RetryPolicy

if TYPE_CHECKING:
    from airflow.sdk.definitions.connection import Connection

RATE_BUDGET_URL_ENV = "CXONE_RATE_BUDGET_URL"
RATE_BUDGET_FILE = "cxone-rate-budget.sqlite"
SHARED_BUDGET_SCHEMES = frozenset({"redis", "rediss", "unix"})  # stores every host reaches
SINGLE_HOST_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
BUDGET_SCOPES = ("shared", "host")


class CXoneHook(BaseHook):
    """
    Talk to the NICE CXone contact-list API with the credentials of an Airflow connection.

    Connection: login = OAuth2 client id, password = client secret. Extras (all optional):
    ``region`` (us, eu), ``host`` (explicit base URL; the connection's own host/port/schema work
    too), ``scope``, ``timeout`` (seconds), ``requests_per_minute`` (default 1000),
    ``verify_ssl`` (default true), ``max_concurrency`` (default 32), ``rate_budget_url`` (where the tenant's
    shared request budget lives, see :attr:`rate_budget_url`), and the retry policy's ``max_attempts``,
    ``backoff_base_s``, ``backoff_max_s``, ``retry_after_cap_s``.

    ``api_profile`` picks the API: ``records`` (default, above) or ``call_lists`` (NICE's documented calling-list
    API): login = access key id, password = access key secret; extras ``client_id``, ``client_secret`` (the
    application's OIDC client), ``auth_base_url``, ``api_base_url`` (skips API discovery), ``api_version``,
    ``skill_id``, ``default_time_zone``, ``external_id_column``, ``upload_records_per_file``,
    ``list_expiration_days`` (default 30), ``start_skill`` and ``send_email`` (default false), ``dnc_group_id``
    (sync: withdrawn consent's phones go into this do-not-call group) and the job wait's
    ``job_poll_first_s``, ``job_poll_max_s``, ``job_timeout_s``.

    :param cxone_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff for clients built by this hook.
    """

    conn_name_attr = "cxone_conn_id"
    default_conn_name = "cxone_default"
    conn_type = "cxone"
    hook_name = "NICE CXone"

    def __init__(
        self,
        cxone_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cxone_conn_id = cxone_conn_id
        self._retry_policy = retry_policy

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy given to the hook, else one from the extras ``max_attempts``, ``backoff_base_s``,
        ``backoff_max_s`` and ``retry_after_cap_s`` (each defaulting to :class:`RetryPolicy`'s)."""
        return self._retry_policy if self._retry_policy is not None else RetryPolicy.from_extras(self._extra)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """
        Extra fields for the Flask connection form of Airflow < 3.2.

        Airflow 3.2+ reads ``conn-fields`` from the provider info instead and never calls this.
        """
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, PasswordField, StringField
        from wtforms.validators import NumberRange, Optional, any_of

        def label(name: str) -> Any:
            return lazy_gettext(CONN_FIELDS[name]["label"])

        return {
            "region": StringField(
                label("region"), validators=[Optional(), any_of(["us", "eu"])], widget=BS3TextFieldWidget()
            ),
            "host": StringField(label("host"), widget=BS3TextFieldWidget()),
            "scope": StringField(label("scope"), widget=BS3TextFieldWidget(), default=DEFAULT_SCOPE),
            "requests_per_minute": IntegerField(
                label("requests_per_minute"),
                validators=[Optional(), NumberRange(min=1)],
                widget=BS3TextFieldWidget(),
                default=DEFAULT_REQUESTS_PER_MINUTE,
            ),
            "max_concurrency": IntegerField(
                label("max_concurrency"),
                validators=[Optional(), NumberRange(min=1)],
                widget=BS3TextFieldWidget(),
                default=DEFAULT_MAX_CONCURRENCY,
            ),
            "timeout": StringField(label("timeout"), widget=BS3TextFieldWidget(), default=str(DEFAULT_TIMEOUT_S)),
            "verify_ssl": BooleanField(label("verify_ssl"), default=True),
            "start_skill": BooleanField(label("start_skill"), default=False),
            "send_email": BooleanField(label("send_email"), default=False),
            "api_profile": StringField(
                label("api_profile"), validators=[Optional(), any_of(list(API_PROFILES))], widget=BS3TextFieldWidget()
            ),
            **{
                name: StringField(label(name), widget=BS3TextFieldWidget())
                for name in ("client_id", "auth_base_url", "api_base_url", "api_version", "skill_id",
                             "default_time_zone", "external_id_column", "upload_records_per_file",
                             "list_expiration_days", "dnc_group_id")
            },
            "client_secret": PasswordField(label("client_secret"), widget=BS3PasswordFieldWidget()),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Standard-field behaviour for Airflow < 3.2 (3.2+ reads ``ui-field-behaviour`` from the provider info)."""
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.cxone_conn_id)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """A copy of the connection's extras; the connection itself is never mutated."""
        return copy.deepcopy(self.connection.extra_dejson)

    def _extra(self, name: str, default: Any = None) -> Any:
        # accept both plain keys and the "extra__cxone__<name>" keys older UIs wrote
        for key in (name, f"extra__{self.conn_type}__{name}"):
            value = self.extras.get(key)
            if value is not None and value != "":
                return value
        return default

    @property
    def api_profile(self) -> str:
        """``records`` (the contact-list records API, default) or ``call_lists`` (calling-list uploads)."""
        profile = str(self._extra("api_profile", API_PROFILES[0])).strip().lower()
        if profile not in API_PROFILES:
            raise ValueError(
                f"connection {self.cxone_conn_id}: api_profile must be one of {', '.join(API_PROFILES)}, got {profile!r}"
            )
        return profile

    @property
    def auth_base_url(self) -> str:
        """call_lists: where OpenID and API discovery live."""
        return str(self._extra("auth_base_url", DEFAULT_AUTH_BASE_URL)).rstrip("/")

    @property
    def upload_records_per_file(self) -> int:
        """call_lists: records per uploaded file (at most the documented 500,000)."""
        per_file = int(self._positive_number("upload_records_per_file", DEFAULT_UPLOAD_RECORDS_PER_FILE, int))
        return min(per_file, MAX_FILE_RECORDS)

    @property
    def call_list_options(self) -> dict[str, Any]:
        """call_lists: what an upload needs besides the file (no secrets; safe for XCom and logs)."""
        return {
            "skill_id": self._extra("skill_id"),
            "dnc_group_id": self._extra("dnc_group_id"),  # sync: withdrawn consent's phones go into this DNC group
            "default_time_zone": self._extra("default_time_zone"),
            "external_id_column": str(self._extra("external_id_column", "contactId")),
            "upload_records_per_file": self.upload_records_per_file,
            "list_expiration_days": self.list_expiration_days,
            "start_skill": parse_bool(self._extra("start_skill", False), name=f"connection {self.cxone_conn_id}: start_skill"),
            "send_email": parse_bool(self._extra("send_email", False), name=f"connection {self.cxone_conn_id}: send_email"),
            # waiting for upload jobs (on the triggerer): first poll interval, doubling up to the max, and when to stop
            "job_poll_first_s": self._positive_number("job_poll_first_s", 5.0, float),
            "job_poll_max_s": self._positive_number("job_poll_max_s", 60.0, float),
            "job_timeout_s": self._positive_number("job_timeout_s", 3600.0, float),
        }

    @property
    def base_url(self) -> str:
        """The ``host`` extra, else the connection's host (with schema and port), else the region's URL. On the
        call_lists profile: ``api_base_url`` when set, else the auth base URL (names the tenant in budget keys)."""
        if self.api_profile == "call_lists":
            return str(self._extra("api_base_url") or self.auth_base_url).rstrip("/")
        host = self._extra("host")
        conn = self.connection
        if not host and conn.host:
            host = connection_url(conn.host, conn.schema, conn.port)
        return base_url_for(region=self._extra("region"), host=host)

    @property
    def requests_per_minute(self) -> float:
        """The tenant's request budget, shared by every sender of every process (see :attr:`rate_limiter`)."""
        return self._positive_number("requests_per_minute", DEFAULT_REQUESTS_PER_MINUTE, float)

    @property
    def max_concurrency(self) -> int:
        """How many requests one task keeps in flight at most (its sender threads)."""
        return int(self._positive_number("max_concurrency", DEFAULT_MAX_CONCURRENCY, int))

    @property
    def timeout(self) -> float:
        return self._positive_number("timeout", DEFAULT_TIMEOUT_S, float)

    @property
    def list_expiration_days(self) -> int:
        """call_lists: days from an upload to its records' ``expirationDate`` (1 to NICE's 30-day inventory)."""
        days = int(self._positive_number("list_expiration_days", DEFAULT_LIST_EXPIRATION_DAYS, int))
        if days > MAX_LIST_EXPIRATION_DAYS:
            raise ValueError(f"connection {self.cxone_conn_id}: list_expiration_days must be at most "
                             f"{MAX_LIST_EXPIRATION_DAYS} (NICE keeps 30 days of calling-list inventory), got {days}")
        return days

    @property
    def verify_ssl(self) -> bool:
        return parse_bool(self._extra("verify_ssl", True), name=f"connection {self.cxone_conn_id}: verify_ssl")

    @property
    def scope(self) -> str:
        return str(self._extra("scope", DEFAULT_SCOPE))

    def _positive_number(self, name: str, default: float, kind: type) -> Any:
        value = self._extra(name, default)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or number <= 0:
            raise ValueError(f"connection {self.cxone_conn_id}: {name} must be a positive number, got {value!r}")
        return number

    @property
    def rate_budget_url(self) -> str:
        """
        Where the tenant's budget lives: the ``rate_budget_url`` extra, else env ``CXONE_RATE_BUDGET_URL``, else
        ``sqlite:///$AIRFLOW_HOME/cxone-rate-budget.sqlite`` (every process of one machine; nothing to start).
        A deployment with workers on several hosts names a Redis: ``redis://host:6379/0``.
        """
        url = self._extra("rate_budget_url") or os.environ.get(RATE_BUDGET_URL_ENV)
        if url:
            return str(url)
        airflow_home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        return f"sqlite:///{os.path.abspath(os.path.join(airflow_home, RATE_BUDGET_FILE))}"

    @property
    def rate_budget_scope(self) -> str:
        """``shared`` (default: one budget and one lease per list for every host) or ``host`` (the extra
        ``rate_budget_scope``: each host's own store is meant, e.g. one worker host per tenant)."""
        scope = str(self._extra("rate_budget_scope", BUDGET_SCOPES[0])).strip().lower()
        if scope not in BUDGET_SCOPES:
            raise ValueError(f"connection {self.cxone_conn_id}: rate_budget_scope must be one of "
                             f"{', '.join(BUDGET_SCOPES)}, got {scope!r}")
        return scope

    def check_budget_store(self, executor: str) -> None:
        """
        Refuse to send when tasks may run on several hosts (``executor`` is not Local/Sequential) and the budget store
        is one host's (SQLite, memory): each host would get its own budget and its own list leases (N times the rate,
        two runs in one list), unless the connection says so (``rate_budget_scope: host``).

        :param executor: the executor the task runs on (a class name, a module path, or ``alias:path``).
        :raises CXoneConfigurationError: naming the setting to change.
        """
        name = executor.split(":")[-1].rsplit(".", 1)[-1].strip()
        if name in SINGLE_HOST_EXECUTORS or self.rate_budget_scope == "host":
            return
        url = self.rate_budget_url
        scheme = url.split("://", 1)[0].lower()
        if scheme in SHARED_BUDGET_SCHEMES:
            return
        raise CXoneConfigurationError(
            f"connection {self.cxone_conn_id}: the {name} runs tasks on several hosts, but the rate budget store "
            f"({scheme}://, {'this host' if scheme == 'sqlite' else 'this process'} only) is not shared: each host "
            f"would send at the full budget and hold its own list leases. Set the connection's rate_budget_url extra "
            f"(or the environment variable {RATE_BUDGET_URL_ENV}) to a Redis every worker reaches "
            f"(redis://host:6379/0), or set the extra rate_budget_scope to \"host\" if a budget per host is meant",
            conn_id=self.cxone_conn_id, cause="rate_budget_url",
        )

    @cached_property
    def budget_store(self) -> BudgetStore:
        """The store at :attr:`rate_budget_url` (one per URL and process)."""
        return budget_store(self.rate_budget_url)

    @property
    def budget_key(self) -> str:
        """The tenant's key in the store: a hash of the base URL and the client id, never the secret."""
        return tenant_key(self.base_url, self.connection.login or "")

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """
        The tenant's shared limiter at the connection's ``requests_per_minute``: every thread, task, process and
        worker using this tenant takes its slots from the one budget in :attr:`budget_store`, a 429 pauses them all,
        and no 60 s window holds more than the budget.
        """
        return RateLimiter.for_budget(self.requests_per_minute, store=self.budget_store, key=self.budget_key)

    @staticmethod
    def _list_lease_key(list_key: str) -> str:
        return f"cxone-list:{list_key}"

    def acquire_list_lease(self, list_key: str, owner: str, ttl_s: float) -> str:
        """
        Take or renew the exclusive lease on a contact list for ``owner``; return the holder.

        :param list_key: names the list and its tenant (the same list must always get the same key, whichever
            connection or name reaches it; e.g. a digest of the tenant and the resolved list id).
        :param owner: who asks (a DAG run).
        :param ttl_s: the lease lapses this long after the last renewal (a run that died frees the list).
        """
        return self.budget_store.acquire_lease(self._list_lease_key(list_key), owner, ttl_s)

    def list_lease(self, list_key: str, owner: str, ttl_s: float, *, label: str) -> ListLease:
        """
        ``owner``'s tenure of the lease on a contact list (not taken yet: :meth:`ListLease.take`), with its fencing
        token and a check senders call before each request.

        :param list_key: as for :meth:`acquire_list_lease`.
        :param owner: who asks (a DAG run).
        :param ttl_s: the lease lapses this long after the last renewal.
        :param label: how logs and errors name the list.
        """
        return ListLease(self.budget_store, self._list_lease_key(list_key), owner, ttl_s, label=label)

    def release_list_lease(self, list_key: str, owner: str) -> bool:
        """Give the list back when ``owner`` holds it."""
        return self.budget_store.release_lease(self._list_lease_key(list_key), owner)

    def get_client(self, rate_limiter: RateLimiter | None = None) -> CXoneClient:
        """
        Build a client for this connection; the caller closes it.

        :param rate_limiter: limiter for every attempt; defaults to the tenant's shared :attr:`rate_limiter`.
        """
        conn = self.connection
        if not conn.login or not conn.password:
            raise ValueError(
                f"connection {self.cxone_conn_id}: login (client id) and password (client secret) are required"
            )
        return CXoneClient(
            self.base_url,
            conn.login,
            conn.password,
            scope=self.scope,
            timeout=self.timeout,
            verify=self.verify_ssl,
            retry_policy=self.retry_policy,
            rate_limiter=rate_limiter or self.rate_limiter,
            pool_size=self.max_concurrency,
            on_token=mask_secret,
        )

    def get_call_list_client(self, rate_limiter: RateLimiter | None = None) -> CallListClient:
        """
        Build a calling-list client (the ``call_lists`` profile) for this connection; the caller closes it.

        :param rate_limiter: limiter for every attempt; defaults to the tenant's shared :attr:`rate_limiter`.
        """
        conn = self.connection
        client_id, client_secret = self._extra("client_id"), self._extra("client_secret")
        if not (conn.login and conn.password and client_id and client_secret):
            raise ValueError(
                f"connection {self.cxone_conn_id}: the call_lists profile needs login (access key id), password "
                "(access key secret) and the extras client_id and client_secret (the OIDC client)"
            )
        mask_secret(client_secret)
        return CallListClient(
            self.auth_base_url,
            conn.login,
            conn.password,
            client_id=str(client_id),
            client_secret=str(client_secret),
            api_base_url=self._extra("api_base_url"),
            api_version=str(self._extra("api_version", DEFAULT_API_VERSION)),
            timeout=self.timeout,
            verify=self.verify_ssl,
            retry_policy=self.retry_policy,
            rate_limiter=rate_limiter or self.rate_limiter,
            on_token=mask_secret,
            allowed_hosts=self.allowed_hosts,
        )

    @property
    def allowed_hosts(self) -> list[str]:
        """call_lists: base URLs besides NICE's domains that discovery may name (extra ``allowed_hosts``, a list or
        comma-separated: a proxy in front of CXone)."""
        value = self._extra("allowed_hosts") or []
        hosts = value.split(",") if isinstance(value, str) else list(value)
        return [str(h).strip() for h in hosts if str(h).strip()]

    @cached_property
    def client(self) -> CXoneClient:
        """A client kept for this hook's lifetime (used by :meth:`import_batch`)."""
        return self.get_client()

    def get_conn(self) -> CXoneClient:
        return self.client

    def import_batch(self, contact_list_id: str, records: Sequence[Mapping[str, Any]]) -> BatchResult:
        """
        Send up to 100 records to a contact list with this hook's client.

        :param contact_list_id: the CXone contact list.
        :param records: records in the API shape.
        """
        return self.client.import_batch(contact_list_id, records)

    def test_connection(self) -> tuple[bool, str]:
        """Request a token with the connection's credentials (call_lists: discovery, token and one list read); on
        failure return the server's answer."""
        try:
            if self.api_profile == "call_lists":
                with self.get_call_list_client() as call_lists:
                    lists = call_lists.calling_lists()
                    return True, f"Signed in to tenant {call_lists.tenant_id}; {len(lists)} calling lists at {call_lists.base_url}"
            with self.get_client() as client:
                client.fetch_token()
        except (CXoneError, ValueError) as exc:
            return False, str(exc)
        return True, f"Fetched an access token from {client.base_url}"
