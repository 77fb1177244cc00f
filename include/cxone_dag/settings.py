"""Names and settings the DAG file needs when it is parsed. Nothing here imports pandas, pyarrow or pandera: the
DAG file stays quick to parse (the dag-processor and every task process parse it, under
``dagbag_import_timeout``); the task bodies (``include.cxone_import.tasks``) import the heavy libraries when they
run, and import these names from here."""

from __future__ import annotations

import os
from datetime import timedelta

DAG_ID = "cxone_contact_import"
CXONE_CONN_ID = "cxone_default"
WEBHOOK_CONN_ID = "crm_webhook"
CONTACT_LIST_ASSET_ALIAS = "cxone_contact_list"


def retry_delay() -> timedelta:
    """Delay before a task retry (the import resumes from its checkpoints); tests shorten it."""
    return timedelta(seconds=float(os.environ.get("CXONE_IMPORT_RETRY_DELAY_S", "30")))


def list_wait() -> timedelta:
    """How long an import task waits (rescheduled, its worker slot freed) while another run holds its list."""
    return timedelta(seconds=float(os.environ.get("CXONE_LIST_WAIT_S", "30")))


def list_handover() -> timedelta:
    """How long a run keeps its list between its tasks (after chunk, and after each import task) while none of them
    renews it: import tasks queued for a ``cxone_api`` pool slot must find the list still theirs. The report task
    releases it sooner; a run that died between tasks frees it after this long."""
    return timedelta(seconds=float(os.environ.get("CXONE_LIST_HANDOVER_S", str(6 * 3600))))
