"""A throwaway redis-server on a free 127.0.0.1 port in a temporary folder (Debian's package, installed by
scripts/install_redis.sh when missing). Used by the rate-budget tests; the fixture skips with the reason when
redis-server cannot be installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL_REDIS_SH = ROOT / "scripts" / "install_redis.sh"
INSTALL_TIMEOUT_S = 900


def ensure_redis_server() -> str:
    """The redis-server executable, installed when missing; ``pytest.skip`` with the reason when it cannot be."""
    try:
        result = subprocess.run(
            ["bash", str(INSTALL_REDIS_SH)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"redis-server could not be installed: scripts/install_redis.sh ran over {INSTALL_TIMEOUT_S}s")
    executable = shutil.which("redis-server")
    if result.returncode != 0 or executable is None:
        pytest.skip(f"redis-server could not be installed (scripts/install_redis.sh): {result.stderr.strip()[-1500:]}")
    return executable


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server (no persistence) and yield its ``redis://127.0.0.1:<port>/0`` URL; stop it on exit."""
    executable = ensure_redis_server()
    with tempfile.TemporaryDirectory(prefix="redis-") as folder:
        port = free_port()
        process = subprocess.Popen(
            [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", folder, "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--logfile", str(Path(folder) / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log = Path(folder, "redis.log")
                    raise RuntimeError(f"redis-server did not start: {log.read_text()[-1000:] if log.exists() else ''}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
