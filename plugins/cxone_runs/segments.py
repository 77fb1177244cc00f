"""One name (a DAG id, a run id, a contact list id) as one path segment of a storage folder, injectively: two names
never share a folder, and no name escapes its parent (``..``, ``/``).

The names Airflow generates itself (``manual__2026-11-27T06:31:23+00:00``, ``scheduled__...``, ``backfill__...``,
with microseconds or a random suffix) keep the folder they always had (``manual__2026-11-27T06_31_23_00_00``).
Any other name keeps its letters, digits, ``_``, ``.`` and ``-``; every other byte of its UTF-8 is written ``~XX``
(hex), ``~`` included, and its first character is escaped too when the result would start with ``.`` or look like a
generated name's folder: ``my run:1`` -> ``my~20run~3A1``, ``manual__2026-11-27T06_31_23_00_00`` (typed by hand)
-> ``~6Danual__2026-11-27T06_31_23_00_00``. A name longer than 200 characters so written keeps its first part and
ends in ``~~`` and the SHA-256 of the name.
"""

from __future__ import annotations

import hashlib
import re
import string
from urllib.parse import unquote

MAX_SEGMENT_CHARS = 200
_KEPT = frozenset(string.ascii_letters + string.digits + "_.-")
_GENERATED_RUN_ID = re.compile(
    r"[a-z][a-z_]*__\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?\+00:00(?:_[A-Za-z0-9]{8})?"
)
_GENERATED_FOLDER = re.compile(r"[a-z][a-z_]*__\d{4}-\d{2}-\d{2}T\d{2}_\d{2}_\d{2}(?:\.\d{1,6})?_00_00(?:_[A-Za-z0-9]{8})?")


def path_segment(name: str) -> str:
    """The folder name of ``name`` (see the module's docstring); different names always give different folders."""
    if not name:
        raise ValueError("an empty name has no folder")
    if _GENERATED_RUN_ID.fullmatch(name):
        return name.replace(":", "_").replace("+", "_")  # the folder such runs always had
    written = "".join(char if char in _KEPT else _escape(char) for char in name)
    if written.startswith(".") or _GENERATED_FOLDER.fullmatch(written):
        written = _escape(written[0]) + written[1:]
    if len(written) <= MAX_SEGMENT_CHARS:
        return written
    head = written[: MAX_SEGMENT_CHARS - 66]
    head = head[: head.rfind("~")] if "~" in head[-2:] else head  # never half an escape
    return f"{head}~~{hashlib.sha256(name.encode()).hexdigest()}"


def name_of(segment: str) -> str | None:
    """The name a folder holds, for names that are not Airflow-generated run ids; None when the folder name was
    shortened with a hash (it cannot be read back)."""
    if "~~" in segment:
        return None
    return unquote(segment.replace("~", "%"))  # every ~ starts an escape; a name's own % was written ~25


def _escape(char: str) -> str:
    return "".join(f"~{byte:02X}" for byte in char.encode())
