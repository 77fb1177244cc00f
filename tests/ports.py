"""Free TCP ports on 127.0.0.1 for tests: the one helper, so no test hard-codes a port."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on right now (all probes are held open until every one is picked)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    """A port nothing listens on right now."""
    return free_ports(1)[0]
