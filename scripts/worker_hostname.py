"""``[core] hostname_callable`` for Celery workers that share one machine (scripts/stack.sh sets it on each worker).

A task instance records the hostname of the worker that ran it; on one machine every worker would report the same
FQDN, so each reports the name it was started with (``STACK_WORKER_HOSTNAME``) instead.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("STACK_WORKER_HOSTNAME") or socket.getfqdn()
