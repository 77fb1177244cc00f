"""A real Airflow stack for tests: api-server, scheduler (LocalExecutor), dag-processor, CXone sandbox and webhook
sink, started through ``scripts/stack.sh`` in an isolated AIRFLOW_HOME (its own SQLite DB) on free 127.0.0.1 ports.

Usage in a test module (pytest finds fixtures in the test module's namespace)::

    from tests.stack import airflow_stack  # noqa: F401

    def test_something(airflow_stack):
        airflow_stack.set_variable("cxone_contact_list_id", "list-x")
        run = airflow_stack.trigger("cxone_contact_import", conf={"source_uri": "/abs/path/contacts.csv"})
        run = airflow_stack.wait_for_run("cxone_contact_import", run["dag_run_id"], timeout=300)
        assert run["state"] == "success", airflow_stack.describe_run("cxone_contact_import", run["dag_run_id"])
        assert len(airflow_stack.sandbox_records("list-x")) == ...

A browser test logs in at ``airflow_stack.api_url`` with ``airflow_stack.username`` / ``airflow_stack.password``
(SimpleAuthManager's login form; ``airflow_stack.api`` uses the same credentials for a JWT from ``POST /auth/token``).
``extra_users`` are two more logins with less permission (a viewer, and an outsider without a role);
``login_token(name)`` gets any user's JWT.

What the fixture gives you:

- One stack per test session (``scope="session"``), shared by every module that imports the fixture (a module-level
  registry counts the users, so importing it into several modules still starts it once; ``pytest_plugins =
  ["tests.stack"]`` in conftest.py would register it globally instead). Start-up takes 35-50 s on two cores (DB
  migration, settings, then the processes); it is stopped at session end, also when a test or the start fails, and
  a watchdog process stops it if the pytest process dies without tearing down (SIGKILL, ``os._exit``).
- The scheduler does not create scheduled runs (``AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False``), so the DAGs in
  ``UNPAUSED_DAGS`` are unpaused at start without a surprise 02:00 run: runs come only from triggers and backfills.
- ``storage_base`` (``{home}/data``) is the import's storage base; scheduled runs and backfills read their day's
  file from ``{storage_base}/incoming/contacts_{ds}.csv``. Task retries wait 5 s (``CXONE_IMPORT_RETRY_DELAY_S``).
- ``airflow(*args)`` runs the ``airflow`` CLI against this stack's DB (``scripts/stack.sh run airflow ...``).
- Everything the stack wrote (``{home}/stack/*.log``, task logs in ``{home}/logs``, run files in ``{home}/data``)
  stays in pytest's basetemp after the session, for post-mortems; ``describe_run`` adds the task states to a
  failing assertion's message.

Knobs: ``AirflowStack(home, extra_env={...})`` for anything else (e.g. ``AIRFLOW__CORE__PARALLELISM``). Inherited
``AIRFLOW__*``, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*`` and ``CXONE_*`` variables of the test process are not passed
on, so the stack never picks up the repo's 8080 URLs or a test's monkeypatched connections.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
STACK_SH = ROOT / "scripts" / "stack.sh"
DAG_ID = "cxone_contact_import"
UNPAUSED_DAGS = (DAG_ID,)
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
START_TIMEOUT_S = 120  # for the processes, after set-up (DB migration ~12 s)
STOP_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 30
PORT_ATTEMPTS = 3
STRIPPED_ENV_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "CXONE_")
STRIPPED_ENV_KEYS = ("AIRFLOW_HOME", "AIRFLOW_API_PORT", "STACK_OWNER_PID", "STACK_FROM_WATCHDOG")


SQLITE_LOCKED_ATTEMPTS = 3
RETRIED_CLI_REFUSALS = ("database is locked", "AlreadyRunningBackfill")  # refused, nothing written


class StackError(RuntimeError):
    """The stack did not start (the message carries scripts/stack.sh's output and the log tail it printed)."""


class AirflowApiError(RuntimeError):
    """The Airflow REST API answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


class AirflowStack:
    """One local Airflow stack in ``home``; ``start()`` / ``stop()`` or use it as a context manager."""

    username = "admin"
    # More logins (name: (SimpleAuthManager role, password)): a viewer reads DAGs and runs but edits nothing; an
    # outsider is signed in without a role, so the auth manager allows it nothing.
    extra_users = {"viewer": ("viewer", "viewer-pw"), "outsider": ("", "outsider-pw")}

    def __init__(
        self,
        home: Path,
        *,
        password: str = "admin",
        unpaused_dags: tuple[str, ...] = UNPAUSED_DAGS,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.password = password
        self.unpaused_dags = unpaused_dags
        self.api_port, self.sandbox_port, self.webhook_port = free_ports(3)
        self.storage_base = self.home / "data"
        self.start_seconds: float | None = None
        self._extra_env = dict(extra_env or {})
        self._token: str | None = None
        self._session = requests.Session()
        self._started = False

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The UI and the REST API (``/api/v2``)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment scripts/stack.sh gets (it derives the Airflow settings of every component from it)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(STRIPPED_ENV_PREFIXES) and key not in STRIPPED_ENV_KEYS
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW_API_PORT": str(self.api_port),
                "AIRFLOW_ADMIN_PASSWORD": self.password,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db?timeout=60",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "CXONE_SANDBOX_PORT": str(self.sandbox_port),
                "CXONE_WEBHOOK_PORT": str(self.webhook_port),
                "CXONE_IMPORT_STORAGE_BASE": f"file://{self.storage_base}",
                "CXONE_IMPORT_RETRY_DELAY_S": "5",
                "STACK_START_TIMEOUT": str(START_TIMEOUT_S),
                "STACK_OWNER_PID": str(os.getpid()),
                "STACK_EXTRA_USERS": ",".join(f"{n}:{r}:{pw}" for n, (r, pw) in self.extra_users.items()),
            }
        )
        env.update(self._extra_env)
        return env

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> AirflowStack:
        self.home.mkdir(parents=True, exist_ok=True)
        self.storage_base.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._started = True  # from here on stop() has something to clean up, even if start fails half-way
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                result = subprocess.run(
                    ["bash", str(STACK_SH), "start"],
                    env=self.env, cwd=ROOT, capture_output=True, text=True, check=False,
                    timeout=START_TIMEOUT_S + 120,
                )
            except subprocess.TimeoutExpired as exc:
                raise StackError(
                    f"scripts/stack.sh start did not return in {exc.timeout:.0f}s; logs: {self.home}/stack"
                ) from exc
            if result.returncode == 0:
                break
            if "is in use" in result.stderr and attempt < PORT_ATTEMPTS:
                # Another process took one of the free ports before the stack bound it: pick new ones.
                self.api_port, self.sandbox_port, self.webhook_port = free_ports(3)
                continue
            raise StackError(
                f"scripts/stack.sh start failed (exit {result.returncode}); logs: {self.home}/stack\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
            )
        for dag_id in self.unpaused_dags:
            self.set_paused(dag_id, False)
        self.start_seconds = round(time.monotonic() - started, 1)
        return self

    def stop(self) -> None:
        """Stop every process the stack started; safe to call more than once."""
        if not self._started:
            return
        result = subprocess.run(
            ["bash", str(STACK_SH), "stop"],
            env=self.env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=STOP_TIMEOUT_S + 30,
        )
        self._session.close()
        self._started = False
        if result.returncode != 0:
            raise StackError(f"scripts/stack.sh stop failed: {result.stdout}\n{result.stderr}")

    def __enter__(self) -> AirflowStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- Airflow ---------------------------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this stack's DB and config; raises on a non-zero exit when ``check``.

        On SQLite a command that reads and then writes while the scheduler holds the write lock is refused at once
        ("database is locked": SQLite does not wait for a lock upgrade, whatever the busy timeout); such a command
        wrote nothing (its transaction rolled back) and is run again, as a user would. So is a ``backfill create``
        refused with ``AlreadyRunningBackfill`` just after the previous backfill of the DAG was marked complete.
        """
        for attempt in range(1, SQLITE_LOCKED_ATTEMPTS + 1):
            result = subprocess.run(
                ["bash", str(STACK_SH), "run", "airflow", *args],
                env=self.env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
            )
            if result.returncode == 0 or not any(m in result.stdout + result.stderr for m in RETRIED_CLI_REFUSALS):
                break
            time.sleep(attempt)
        if check and result.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def token(self, *, refresh: bool = False) -> str:
        """A JWT for the admin user from SimpleAuthManager's ``POST /auth/token``."""
        if self._token is None or refresh:
            response = self._session.post(
                f"{self.api_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=REQUEST_TIMEOUT_S,
            )
            if response.status_code not in (200, 201):
                raise AirflowApiError("POST", "/auth/token", response.status_code, response.text)
            self._token = response.json()["access_token"]
        return self._token

    def login_token(self, username: str) -> str:
        """A JWT for one of ``extra_users`` (or admin) from ``POST /auth/token``, as its login would get."""
        password = self.password if username == self.username else self.extra_users[username][1]
        response = self._session.post(
            f"{self.api_url}/auth/token", json={"username": username, "password": password}, timeout=REQUEST_TIMEOUT_S
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError("POST", "/auth/token", response.status_code, response.text)
        return response.json()["access_token"]

    def api(self, method: str, path: str, *, params: dict[str, Any] | None = None, **json_body: Any) -> Any:
        """Call the REST API as admin: ``api("GET", "/dags/x")`` or a full ``/api/v2/...`` path; returns the JSON.

        Keyword arguments other than ``params`` are the JSON body (none: no body).
        """
        url_path = path if path.startswith(("/api/", "/auth/")) else "/api/v2/" + path.lstrip("/")
        for attempt in (1, 2):
            response = self._session.request(
                method,
                self.api_url + url_path,
                params=params,
                json=json_body if json_body else None,
                headers={"Authorization": f"Bearer {self.token(refresh=attempt == 2)}"},
                timeout=REQUEST_TIMEOUT_S,
            )
            if response.status_code != 401:
                break
        if response.status_code >= 400:
            raise AirflowApiError(method, url_path, response.status_code, response.text)
        return response.json() if response.content else None

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"/dags/{dag_id}", is_paused=paused)

    def set_variable(self, key: str, value: str) -> None:
        """Create or overwrite an Airflow Variable."""
        try:
            self.api("POST", "/variables", key=key, value=value)
        except AirflowApiError as exc:
            if exc.status != 409:
                raise
            self.api("PATCH", f"/variables/{quote(key, safe='')}", key=key, value=value)

    def trigger(self, dag_id: str, *, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> dict:
        """Trigger a manual run and return it. Without ``logical_date`` the run has none, so pass the file to import
        as ``conf={"source_uri": ...}``; with one (ISO-8601) it reads that day's ``contacts_{ds}.csv``."""
        return self.api("POST", f"/dags/{dag_id}/dagRuns", logical_date=logical_date, conf=conf or {})

    def dag_runs(self, dag_id: str, **filters: Any) -> list[dict[str, Any]]:
        """The DAG's runs (newest first), filtered by the API's query parameters, e.g. ``run_type="backfill"``."""
        params = {"limit": 100, "order_by": "-run_after", **filters}
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return list(self.api("GET", path, params={"limit": 1000})["task_instances"])

    def describe_run(self, dag_id: str, run_id: str) -> str:
        """The run's state and its task instances' states, for assertion messages."""
        try:
            run = self.dag_run(dag_id, run_id)
            tasks = self.task_instances(dag_id, run_id)
        except (AirflowApiError, requests.RequestException) as exc:
            return f"{dag_id} {run_id}: cannot describe ({exc})"
        lines = [f"{dag_id} {run_id}: {run['state']} (task logs under {self.home}/logs)"]
        for ti in sorted(tasks, key=lambda t: (t["task_id"], t.get("map_index", -1))):
            index = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
            lines.append(f"  {ti['task_id']}{index}: {ti['state']} (try {ti.get('try_number')})")
        return "\n".join(lines)

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 300,
        *,
        finished_after: datetime | None = None,
        poll_s: float = 1.0,
    ) -> dict[str, Any]:
        """Wait until the run is ``success`` or ``failed`` and return it; ``finished_after`` ignores an end
        state from before that instant (a cleared run that has not been picked up again yet)."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                run = self.dag_run(dag_id, run_id)
            except AirflowApiError as exc:
                if exc.status != 404:
                    raise
            else:
                ended = run.get("end_date")
                fresh = finished_after is None or (
                    ended is not None and datetime.fromisoformat(ended) > finished_after
                )
                if run.get("state") in TERMINAL_RUN_STATES and fresh:
                    return run
            time.sleep(poll_s)
        raise TimeoutError(
            f"{dag_id} {run_id} not finished after {timeout:.0f}s (state {run.get('state')})\n"
            + self.describe_run(dag_id, run_id)
        )

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})["backfills"])

    def wait_for_backfills(self, dag_id: str, timeout: float = 120, poll_s: float = 1.0) -> None:
        """Wait until the scheduler has marked every backfill of the DAG completed (one may run at a time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(b["completed_at"] for b in self.backfills(dag_id)):
                return
            time.sleep(poll_s)
        raise TimeoutError(f"backfills of {dag_id} not completed after {timeout:.0f}s: {self.backfills(dag_id)}")

    def run_report(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any] | None:
        """The run's ``report.json`` under the storage base, or None."""
        import json

        from cxone_runs.layout import safe_segment

        path = self.storage_base / "runs" / dag_id / safe_segment(run_id) / "report.json"
        return json.loads(path.read_text()) if path.exists() else None

    # -- sandbox ---------------------------------------------------------------------------------------------

    def sandbox_records(self, contact_list_id: str) -> list[dict[str, Any]]:
        """Records stored on a contact list of the sandbox, in creation order."""
        response = self._session.get(
            f"{self.sandbox_url}/_sandbox/records/{quote(contact_list_id, safe='')}", timeout=REQUEST_TIMEOUT_S
        )
        response.raise_for_status()
        return list(response.json()["records"])

    def sandbox_stats(self) -> dict[str, Any]:
        """The sandbox's counters (token and records requests, records created, ...)."""
        response = self._session.get(f"{self.sandbox_url}/_sandbox/stats", timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def webhook_events(self) -> list[dict[str, Any]]:
        response = self._session.get(f"{self.webhook_url}/_sink/events", timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        return list(response.json()["events"])


# One stack per session, however many modules import the fixture (each import registers its own fixture
# definition, and pytest caches a session fixture per definition).
_shared: dict[str, Any] = {"stack": None, "users": 0}
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """The session's Airflow stack (see the module docstring)."""
    with _shared_lock:
        if _shared["stack"] is None:
            stack = AirflowStack(tmp_path_factory.mktemp("airflow-stack"))
            try:
                stack.start()
            except BaseException:
                stack.stop()
                raise
            _shared["stack"] = stack
        _shared["users"] += 1
        stack = _shared["stack"]
    try:
        yield stack
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                _shared["stack"] = None
                stack.stop()
