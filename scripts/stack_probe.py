"""Readiness probe for ``scripts/stack.sh``: standard library only, so it starts in milliseconds.

    python scripts/stack_probe.py wait --stack-dir DIR --api-url URL --user U --password-file F --dag-id ID \
        [--timeout S]
    python scripts/stack_probe.py health --api-url URL

``wait`` returns 0 once the api-server answers, the scheduler and the dag-processor report healthy heartbeats and
the DAG is serialized (``GET /api/v2/dags/{dag_id}/details`` answers), and prints ``paused`` or ``active`` (the
DAG's state). It fails early, with the tail of the log that explains it, when a process recorded in ``DIR/*.pid``
exits or the DAG file has an import error, and after ``--timeout`` seconds otherwise. ``health`` prints the
api-server's ``/api/v2/monitor/health`` answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 40
REQUEST_TIMEOUT_S = 5.0


class ProbeError(Exception):
    """The stack will not become ready; ``log`` names the log file whose tail explains why."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def _request(method: str, url: str, *, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def dead_components(stack_dir: Path) -> list[str]:
    dead = []
    for pid_file in sorted(stack_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _alive(pid):
            dead.append(pid_file.stem)
    return dead


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def health(api_url: str) -> dict[str, Any] | None:
    try:
        status, body = _request("GET", f"{api_url}/api/v2/monitor/health")
    except (OSError, urllib.error.URLError):
        return None
    return body if status == 200 and isinstance(body, dict) else None


def _healthy(report: dict[str, Any], component: str) -> bool:
    return (report.get(component) or {}).get("status") == "healthy"


def token(api_url: str, user: str, password: str) -> str:
    status, body = _request("POST", f"{api_url}/auth/token", body={"username": user, "password": password})
    if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
        raise ProbeError(f"login as {user!r} failed: HTTP {status} {body}")
    return body["access_token"]


def import_errors(api_url: str, access_token: str) -> list[dict[str, Any]]:
    """The DAG bundle's import errors (the stack's bundle is the repo's dags/ folder alone)."""
    status, body = _request("GET", f"{api_url}/api/v2/importErrors?limit=100", token=access_token)
    if status != 200 or not isinstance(body, dict):
        return []
    return list(body.get("import_errors", []))


def _password(path: str, user: str) -> str:
    """The user's password from SimpleAuthManager's passwords file (kept off the command line)."""
    try:
        return str(json.loads(Path(path).read_text(encoding="utf-8"))[user])
    except (OSError, ValueError, KeyError) as exc:
        raise ProbeError(f"no password for {user!r} in {path}: {exc!r}") from exc


def wait_ready(args: argparse.Namespace) -> dict[str, Any]:
    """Poll until ready; return the DAG's details."""
    stack_dir = Path(args.stack_dir)
    password = _password(args.password_file, args.user)
    deadline = time.monotonic() + args.timeout
    access_token = None
    while True:
        dead = dead_components(stack_dir)
        if dead:
            raise ProbeError(f"{dead[0]} exited during start-up", stack_dir / f"{dead[0]}.log")
        report = health(args.api_url)
        if report is None:
            waiting_for, log = f"the api-server on {args.api_url}", "api-server"
        elif not _healthy(report, "metadatabase"):
            waiting_for, log = "the metadata DB (api-server health check)", "api-server"
        elif not _healthy(report, "scheduler"):
            waiting_for, log = "the scheduler's first heartbeat", "scheduler"
        elif not _healthy(report, "dag_processor"):
            waiting_for, log = "the dag-processor's first heartbeat", "dag-processor"
        else:
            waiting_for, log = f"the dag-processor to serialize {args.dag_id}", "dag-processor"
            try:
                access_token = access_token or token(args.api_url, args.user, password)
                status, details = _request(
                    "GET", f"{args.api_url}/api/v2/dags/{args.dag_id}/details", token=access_token
                )
                if status == 200 and isinstance(details, dict):
                    return details
                errors = import_errors(args.api_url, access_token)
            except OSError:  # the api-server went away between two requests: the next round tells
                errors = []
            if errors:
                first = errors[0]
                raise ProbeError(
                    f"DAG import error in {first.get('filename')}:\n{first.get('stack_trace', '').rstrip()}",
                    stack_dir / "dag-processor.log",
                )
        if time.monotonic() > deadline:
            message = f"not ready after {args.timeout:.0f}s: waiting for {waiting_for}"
            raise ProbeError(message, stack_dir / f"{log}.log")
        time.sleep(args.interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait")
    wait.add_argument("--stack-dir", required=True)
    wait.add_argument("--api-url", required=True)
    wait.add_argument("--user", required=True)
    wait.add_argument("--password-file", required=True, help="SimpleAuthManager's passwords file (JSON)")
    wait.add_argument("--dag-id", required=True)
    wait.add_argument("--timeout", type=float, default=120.0)
    wait.add_argument("--interval", type=float, default=1.0)
    check = sub.add_parser("health")
    check.add_argument("--api-url", required=True)
    args = parser.parse_args(argv)

    if args.command == "health":
        report = health(args.api_url)
        print(json.dumps(report) if report else "not answering")
        return 0 if report else 1
    try:
        details = wait_ready(args)
    except ProbeError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        if exc.log is not None:
            print(f"--- last {LOG_TAIL_LINES} lines of {exc.log} ---\n{tail(exc.log)}\n---", file=sys.stderr)
        return 1
    print("paused" if details.get("is_paused") else "active")
    return 0


if __name__ == "__main__":
    sys.exit(main())
