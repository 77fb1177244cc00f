"""Shared fixtures. Airflow's environment is set before anything imports airflow (see scripts/env.sh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
for path in (str(ROOT), str(ROOT / "plugins")):
    if path not in sys.path:
        sys.path.insert(0, path)

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from include.cxone_sandbox import CXoneSandbox, SandboxConfig, WebhookSink  # noqa: E402

CONTACT_LIST_ID = "list-e2e"
pytest_plugins = ["tests.stack"]  # the session's real Airflow stack fixture (airflow_stack), started on first use


@pytest.fixture
def cxone_sandbox():
    with CXoneSandbox(SandboxConfig(seed=7)) as sandbox:
        yield sandbox


@pytest.fixture
def call_list_sandbox():
    """The calling-list API (the call_lists profile) with short job delays."""
    from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig

    with CallListSandbox(CallListSandboxConfig(job_delay_s=0.2)) as sandbox:
        yield sandbox


@pytest.fixture
def webhook_sink():
    with WebhookSink() as sink:
        yield sink


@dataclass
class ImportRun:
    """One dag.test() run of the import DAG and what it left behind."""

    dag_run: Any
    report: dict[str, Any] | None
    root: Path

    @property
    def state(self) -> str:
        return str(getattr(self.dag_run.state, "value", self.dag_run.state))

    def file(self, name: str) -> Path:
        return self.root / name

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.file(name).read_text().splitlines() if line.strip()]


@pytest.fixture
def storage_base(tmp_path, monkeypatch) -> Path:
    base = tmp_path / "storage"
    base.mkdir()
    monkeypatch.setenv("CXONE_IMPORT_STORAGE_BASE", f"file://{base}")
    return base


@pytest.fixture
def run_import(storage_base, cxone_sandbox, webhook_sink, monkeypatch, request):
    """Run the DAG against the sandbox: ``run_import(conf, profile="records", **connection_options) -> ImportRun``.
    ``profile="call_lists"`` runs it against the calling-list sandbox (fixture ``call_list_sandbox``)."""
    from tools.localrun import call_list_connection_env, connection_env, run_dag
    from cxone_runs.layout import safe_segment

    def _run(conf: dict[str, Any], *, webhook_url: str | None = None, logical_date: Any = None,
             profile: str = "records", **conn: Any) -> ImportRun:
        if profile == "call_lists":
            sandbox = request.getfixturevalue("call_list_sandbox")
            env = call_list_connection_env(sandbox.url, webhook_url or webhook_sink.url, **conn)
        else:
            conn.setdefault("max_concurrency", 4)
            env = connection_env(cxone_sandbox.url, webhook_url or webhook_sink.url, **conn)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        conf = {"contact_list_id": CONTACT_LIST_ID, **conf}
        dag_run = run_dag(conf, logical_date=logical_date)
        root = storage_base / "runs" / "cxone_contact_import" / safe_segment(dag_run.run_id)
        report_path = root / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return ImportRun(dag_run, report, root)

    return _run


_FOLD_KILLED_WHILE_WRITING_CURRENT = """
import json, os, signal, sys
import numpy as np
from upath import UPath
from include.cxone_import import storage
from include.cxone_import.state import ContactListState, ListKey

real_open = open

def open_then_die(path, mode="r", *args, **kwargs):
    handle = real_open(path, mode, *args, **kwargs)
    if "CURRENT.json" in str(path) and "w" in mode:
        handle.write('{"format": 2, "gene')
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return handle

storage.open = open_then_die  # the open() of storage.atomic_open
state = ContactListState(UPath(sys.argv[1]), sys.argv[2], ListKey.from_dict(json.loads(sys.argv[3])),
                         buckets=int(sys.argv[4]))
empty = np.empty(0, np.uint64)
state.compare(np.empty(0, np.int64), empty, empty, fold=True)
"""


def fold_killed_while_writing_current(base: str, dag_id: str, key: Any, *, buckets: int = 32) -> None:
    """Fold a list's state in another process that is SIGKILLed half-way through writing ``CURRENT.json``."""
    import signal
    import subprocess

    child = subprocess.run([sys.executable, "-c", _FOLD_KILLED_WHILE_WRITING_CURRENT, base, dag_id,
                            json.dumps(key.to_dict()), str(buckets)], cwd=ROOT, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]


class _Approver:
    """The user an in-process answer is recorded as (what the api-server's auth manager would hand the route)."""

    def get_id(self) -> str:
        return "approver"

    def get_name(self) -> str:
        return "approver"


@pytest.fixture
def answer_approval():
    """``with answer_approval("Approve") as asked: run_import(...)``: answers the run's ``approve_removals`` request
    the moment it waits, through the REST API's own route function on the shared metadata DB (what the Required
    Actions page does; ``dag.test()`` waits for exactly that). ``asked`` holds the request's body and how often one
    was answered."""
    import threading
    from contextlib import contextmanager

    @contextmanager
    def answering(answer: str, timeout_s: float = 240.0):
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        asked: dict[str, Any] = {"answered": 0, "body": None, "error": None}
        stop = threading.Event()

        def respond() -> None:
            try:
                answer_when_asked()
            except Exception as exc:  # noqa: BLE001 - the test reads it: a responder that died must not hang it
                asked["error"] = repr(exc)

        def answer_when_asked() -> None:
            deadline = time.monotonic() + timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                with create_session() as session:
                    waiting = session.query(TaskInstance).filter(
                        TaskInstance.task_id == "approve_removals",
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT).all()
                    for ti in waiting:
                        asked["body"] = session.query(HITLDetail).filter(HITLDetail.ti_id == ti.id).one().body
                        update_hitl_detail(dag_id=ti.dag_id, dag_run_id=ti.run_id, task_id=ti.task_id,
                                           update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[answer]),
                                           user=_Approver(), session=session, map_index=ti.map_index)
                        asked["answered"] += 1
                stop.wait(0.3)

        responder = threading.Thread(target=respond, name="approver", daemon=True)
        responder.start()
        try:
            yield asked
        finally:
            stop.set()
            responder.join(timeout=10)

    return answering


def run_killed(conf: dict, day: Any, env: dict[str, str], log_path: Path, ready, *, setup: str = "",
               deadline_s: float = 240) -> None:
    """Run the DAG in another process (``setup``: Python run first) and SIGKILL it the moment ``ready()`` is true."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (f"from datetime import datetime\n{setup}\nfrom tools.localrun import run_dag\n"
            f"run_dag({{**{conf!r}, 'contact_list_id': {CONTACT_LIST_ID!r}}}, "
            f"logical_date=datetime.fromisoformat({day.isoformat()!r}))\n")
    with log_path.open("w") as log:
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + deadline_s
            while time.monotonic() < deadline:
                if ready():
                    break
                assert child.poll() is None, "the run ended before it could be killed: " + log_path.read_text()[-3000:]
                time.sleep(0.02)
            else:
                pytest.fail("the run never got to where it is to be killed")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
