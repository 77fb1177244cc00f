"""Where CRM exports may be read from, decided before anything is read.

Anyone allowed to trigger the DAG chooses ``source_uri``; without a check that is any file the workers can read,
any bucket any Airflow connection can read (``s3://conn_id@bucket/key`` picks the connection) and any URL the
workers can reach. A source is read only when it lies under one of the allowed prefixes (Airflow Variable
``cxone_source_allowed_prefixes``, a JSON list). Not set: local files (an absolute path or ``file://``) and the
source base's own scheme and bucket, which is what the DAG read before this check existed.

Plain Python (no Airflow import): the task resolves the Variable and calls :func:`check_source`.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cxone_provider.redaction import mask_uri

from include.cxone_import.sources import SourceFormatError

ALLOWED_PREFIXES_VARIABLE = "cxone_source_allowed_prefixes"
SOURCE_ALLOWED = "source_allowed"
_LOCAL_SCHEMES = ("file", "local")
_URL_SCHEMES = ("http", "https")


class SourceNotAllowedError(SourceFormatError):
    """The source lies outside the places exports may come from; refused before anything was read (no retry)."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(uri, None, SOURCE_ALLOWED, reason)


@dataclass(frozen=True)
class Place:
    """A URI or a prefix, normalised for comparison: local paths resolved (symlinks, ``..``), scheme and host in
    lower case, the user part (``conn_id@``) kept apart."""

    scheme: str
    user: str | None
    host: str
    path: str

    def holds(self, other: Place) -> bool:
        """Whether ``other`` lies under this prefix (whole path segments: ``/data/in`` does not hold ``/data/inx``)."""
        if (self.scheme, self.user, self.host) != (other.scheme, other.user, other.host):
            return False
        prefix = self.path.rstrip("/")
        return not prefix or other.path == prefix or other.path.startswith(prefix + "/")


def place_of(uri: str) -> Place:
    """The normalised place of a source URI or of an allowed prefix; ``ValueError`` when it cannot be judged."""
    text = str(uri).strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        return Place("file", None, "", os.path.realpath(os.path.abspath(text)))
    if scheme in _LOCAL_SCHEMES:
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// URI names no host (file:///absolute/path)")
        path = unquote(parts.path)
        return Place("file", None, "", os.path.realpath(path) if path not in ("", "/") else "")
    user, _, host = parts.netloc.rpartition("@")
    for path in (parts.path, unquote(parts.path)):
        if any(segment in (".", "..") for segment in path.split("/")):
            raise ValueError("the path has . or .. segments")
    return Place(scheme, user or None, host.lower(), posixpath.normpath(unquote(parts.path)) if parts.path.strip("/") else "")


def default_allowed_prefixes(source_base: str) -> list[str]:
    """What is allowed when the Variable is not set: local files, and the source base's scheme and bucket, read with
    the storage connection or with the one the base itself names (``s3://conn_id@bucket/...``, as a storage base
    with a connection is written)."""
    prefixes = ["file://"]
    base = urlsplit(str(source_base))
    if base.scheme and base.scheme.lower() not in _LOCAL_SCHEMES and base.netloc:
        user, _, bucket = base.netloc.rpartition("@")
        prefixes.append(f"{base.scheme.lower()}://{bucket}/")
        if user:
            prefixes.append(f"{base.scheme.lower()}://{user}@{bucket}/")
    return prefixes


def parse_allowed_prefixes(value: Any) -> list[str]:
    """The Variable's value: a JSON list of prefixes (or the list itself, when the caller decoded the JSON)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValueError(f'Variable {ALLOWED_PREFIXES_VARIABLE} must be a JSON list of URI prefixes, e.g. '
                         f'["file:///data/exports/", "s3://crm-exports/"]')
    return [item.strip() for item in value]


def check_source(uri: str, allowed: Sequence[str]) -> None:
    """Refuse (:class:`SourceNotAllowedError`, the URI shown masked) a source no allowed prefix holds. A user part
    (``conn_id@``) and http(s) are only read when a prefix names them exactly so."""
    shown = mask_uri(uri)
    try:
        source = place_of(uri)
    except ValueError as exc:
        raise SourceNotAllowedError(shown, f"the source cannot be judged: {exc}") from None
    prefixes = []
    for prefix in allowed:
        try:
            prefixes.append(place_of(prefix))
        except ValueError:
            raise SourceNotAllowedError(
                shown, f"Variable {ALLOWED_PREFIXES_VARIABLE} holds a prefix that cannot be judged: {mask_uri(prefix)}"
            ) from None
    if any(prefix.holds(source) for prefix in prefixes):
        return
    listed = ", ".join(mask_uri(p) for p in allowed) or "nothing"
    if source.user is not None:
        reason = ("a source URI must not name a connection or user (the part before @): sources are read with the "
                  f"storage connection; to read with another, list a prefix naming it in {ALLOWED_PREFIXES_VARIABLE}")
    elif source.scheme in _URL_SCHEMES:
        reason = f"http(s) sources are read only under a prefix listed in {ALLOWED_PREFIXES_VARIABLE}"
    else:
        reason = "the source is outside the places exports may come from"
    raise SourceNotAllowedError(shown, f"{reason} (allowed: {listed})")
