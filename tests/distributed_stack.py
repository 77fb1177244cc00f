"""The distributed stack for tests: ``scripts/distributed.sh`` (PostgreSQL, Redis, moto S3, then scripts/stack.sh on
CeleryExecutor with two workers) in one folder on free 127.0.0.1 ports, driven like :class:`tests.stack.AirflowStack`.

Only the life cycle and the storage differ from the local stack: ``start``/``stop``/``airflow`` go through
scripts/distributed.sh, run files live in the moto bucket (``run_report``, ``upload``), and the test can SIGKILL a
worker (``kill_worker``) and list what the stack listens on (``listeners``). ``stop`` stops every process the
stack started, also after a failed start; a watchdog stops it if the test process dies without tearing down.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from tests.stack import DAG_ID, ROOT, AirflowStack, StackError

DISTRIBUTED_SH = ROOT / "scripts" / "distributed.sh"
START_TIMEOUT_S = 300  # set-up + PostgreSQL + DB migration + seven processes on two busy cores
STOP_TIMEOUT_S = 120


class DistributedStack(AirflowStack):
    """scripts/distributed.sh in ``home``: ``start()`` / ``stop()`` or a context manager."""

    def __init__(self, home: Path, *, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(home, extra_env=extra_env)
        self.settings: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        for key in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "CXONE_IMPORT_STORAGE_BASE"):
            env.pop(key, None)  # distributed.sh sets them (PostgreSQL, s3://)
        env["DISTRIBUTED_HOME"] = str(self.home)
        env["STACK_START_TIMEOUT"] = str(START_TIMEOUT_S - 60)
        return env

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    def start(self) -> DistributedStack:
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._started = True  # stop() has something to clean up from here on, even if start fails half-way
        try:
            result = subprocess.run(
                ["bash", str(DISTRIBUTED_SH), "start"],
                env=self.env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            message = f"scripts/distributed.sh start did not return in {exc.timeout:.0f}s; logs: {self.home}"
            raise StackError(message) from exc
        if result.returncode != 0:
            raise StackError(
                f"scripts/distributed.sh start failed (exit {result.returncode}); logs: {self.home}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
            )
        self.settings = _read_env_file(self.home / "stack.env")
        self.api_port = int(self.settings["AIRFLOW_API_PORT"])
        self.sandbox_port = int(self.settings["CXONE_SANDBOX_PORT"])
        self.webhook_port = int(self.settings["CXONE_WEBHOOK_PORT"])
        for dag_id in self.unpaused_dags:
            self.set_paused(dag_id, False)
        self.start_seconds = round(time.monotonic() - started, 1)
        return self

    def stop(self) -> None:
        """Stop every process the stack started; safe to call more than once."""
        if not self._started:
            return
        result = subprocess.run(
            ["bash", str(DISTRIBUTED_SH), "stop"],
            env=self.env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=STOP_TIMEOUT_S,
        )
        self._session.close()
        self._started = False
        if result.returncode != 0:
            raise StackError(f"scripts/distributed.sh stop failed: {result.stdout}\n{result.stderr}")

    def airflow(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(DISTRIBUTED_SH), "run", "airflow", *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"airflow {shlex.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    # -- storage (the moto bucket) ---------------------------------------------------------------------------

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.settings["DISTRIBUTED_S3_ENDPOINT"], region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    @property
    def storage_uri(self) -> str:
        return self.settings["CXONE_IMPORT_STORAGE_BASE"]

    def upload(self, path: Path, name: str) -> str:
        """Put a local file under ``{storage base}/incoming/``; returns its s3:// URI."""
        bucket, _, prefix = self.storage_uri.removeprefix("s3://").partition("/")
        key = f"{prefix}/incoming/{name}"
        self.s3().upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"

    def run_report(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        from cxone_runs.layout import safe_segment

        bucket, _, prefix = self.storage_uri.removeprefix("s3://").partition("/")
        key = f"{prefix}/runs/{dag_id}/{safe_segment(run_id)}/report.json"
        try:
            return json.loads(self.s3().get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError:
            return None

    # -- processes -------------------------------------------------------------------------------------------

    def _pid(self, pid_file: Path) -> int | None:
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def workers(self) -> list[str]:
        return self.settings.get("STACK_CELERY_WORKERS", "").split()

    def worker_tree(self, worker: str) -> list[psutil.Process]:
        """The worker's process and every descendant (pool processes, task supervisors and runners)."""
        pid = self._pid(self.airflow_home / "stack" / f"celery-{worker}.pid")
        if pid is None or not psutil.pid_exists(pid):
            return []
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]

    def kill_worker(self, worker: str) -> int:
        """SIGKILL the worker and everything it started at once, the way a lost host ends; returns how many."""
        tree = self.worker_tree(worker)
        for process in tree:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        return len(tree)

    def processes(self) -> list[psutil.Process]:
        """Every live process this stack started (services and Airflow components, with their descendants)."""
        pid_files = [*(self.home / "services").glob("*.pid"), *(self.airflow_home / "stack").glob("*.pid")]
        found: dict[int, psutil.Process] = {}
        for pid_file in pid_files:
            pid = self._pid(pid_file)
            if pid is None or not psutil.pid_exists(pid):
                continue
            leader = psutil.Process(pid)
            for process in (leader, *leader.children(recursive=True)):
                found[process.pid] = process
        return list(found.values())

    def listeners(self) -> list[dict[str, Any]]:
        """The TCP sockets the stack's processes listen on: ``{"pid", "name", "address", "port"}``."""
        pids = {process.pid: process for process in self.processes()}
        found = []
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                try:
                    name = pids[conn.pid].name()
                except psutil.NoSuchProcess:
                    name = "?"
                found.append({"pid": conn.pid, "name": name, "address": conn.laddr.ip, "port": conn.laddr.port})
        return found

    # -- REST API helpers ------------------------------------------------------------------------------------

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        """Every try of a task instance (each with its ``hostname``)."""
        from urllib.parse import quote

        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/{map_index}/tries"
        return list(self.api("GET", path)["task_instances"])

    def sandbox_requests(self) -> list[dict[str, Any]]:
        """The sandbox's own log of records requests (arrival time, list, status, size, created)."""
        response = self._session.get(f"{self.sandbox_url}/_sandbox/requests", timeout=30)
        response.raise_for_status()
        return list(response.json()["requests"])

    def configure_sandbox(self, **knobs: Any) -> dict[str, Any]:
        response = self._session.post(f"{self.sandbox_url}/_sandbox/config", json=knobs, timeout=30)
        response.raise_for_status()
        return response.json()


def _read_env_file(path: Path) -> dict[str, str]:
    """``export KEY=value`` lines (bash ``%q`` quoting) as a dict."""
    settings = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            words = shlex.split(value)
            settings[key] = words[0] if words else ""
    return settings
