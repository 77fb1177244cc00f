"""Where the runs are stored: the storage base (an ObjectStoragePath), from the ``cxone_storage_base`` and
``cxone_storage_conn_id`` Variables, else ``CXONE_IMPORT_STORAGE_BASE``, else ``{AIRFLOW_HOME}/cxone-data``. Workers
read the Variables through the Task SDK; the api-server's report pages pass a reader of the metadata DB's."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

STORAGE_BASE_VARIABLE = "cxone_storage_base"
STORAGE_CONN_VARIABLE = "cxone_storage_conn_id"


def task_variable(key: str, default: Any = None) -> Any:
    """The Variable as a task reads it, or ``default`` when it is not set; a failure to read it (secrets backend)
    fails the task."""
    from airflow.sdk import Variable

    return Variable.get(key, default=default)


def storage_base(variable: Callable[[str, Any], Any] | None = None) -> Any:
    """The storage base; ``variable(key, default)`` reads Variables (default: :func:`task_variable`)."""
    from airflow.sdk import ObjectStoragePath

    variable = variable or task_variable
    default = os.environ.get("CXONE_IMPORT_STORAGE_BASE") or "file://" + os.path.join(
        os.environ.get("AIRFLOW_HOME", os.getcwd()), "cxone-data"
    )
    uri = variable(STORAGE_BASE_VARIABLE, default) or default
    conn_id = variable(STORAGE_CONN_VARIABLE, None)
    return ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
