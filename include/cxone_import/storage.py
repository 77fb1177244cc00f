"""Reading and writing a run's files on any storage (ObjectStoragePath / UPath: file://, s3://, ...): whole-or-nothing
writes, parquet, JSON and JSON lines. Which files a run has is ``cxone_runs.layout.RunLayout``'s."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def ensure_parent(path: Any) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (NotImplementedError, FileExistsError):  # object stores have no directories
        pass


def fs_path(path: Any) -> str:
    """The filesystem-level path of an ObjectStoragePath / UPath (no protocol), without a trailing slash."""
    return str(getattr(path, "path", path)).rstrip("/")


def _is_local(fs: Any) -> bool:
    """A local disk: fsspec's local filesystem, or a plain ``pathlib`` path (``fs`` None)."""
    from fsspec.implementations.local import LocalFileSystem

    return fs is None or isinstance(fs, LocalFileSystem)


@contextmanager
def atomic_open(path: Any, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` so that it appears whole or not at all, on every storage. On a local disk the file is written
    under a temporary name beside it (``.{name}.tmp-{random}``) and renamed over it when complete (a kill mid-write
    leaves the old file and a stray temporary file); an object store makes an object visible only once its upload
    completes, so the content is gathered in memory and put in one request (an error before that puts nothing).
    For files a later run relies on (the list state, checkpoints, JSON written for the next task); large spool
    files between tasks are written directly (a re-run writes them again)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    ensure_parent(path)
    fs = getattr(path, "fs", None)
    if _is_local(fs):
        with _local_replace(fs_path(path), mode) as handle:
            yield handle
        return
    buffer: IO[Any] = io.StringIO() if mode == "w" else io.BytesIO()
    yield buffer
    data = buffer.getvalue()
    fs.pipe_file(fs_path(path), data.encode("utf-8") if isinstance(data, str) else data)


def put_bytes(fs: Any, path: str, data: bytes) -> None:
    """``fs.pipe_file`` that never leaves a half-written file on a local disk (see :func:`atomic_open`)."""
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    with _local_replace(path, "wb") as handle:
        handle.write(data)


@contextmanager
def _local_replace(final: str, mode: str) -> Iterator[IO[Any]]:
    """A local file written under a temporary name beside ``final``, renamed over it once whole."""
    temporary = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
        os.replace(temporary, final)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


# Parts one task writes for the next (extract, valid): mostly unique strings, read whole, never filtered by
# statistics, so neither dictionaries nor min/max statistics pay for themselves (writing takes half the CPU)
SPOOL_PARQUET = {"use_dictionary": False, "write_statistics": False}


def write_parquet(path: Any, frame: pd.DataFrame | pa.Table, **options: Any) -> None:
    """``options`` go to ``pyarrow.parquet.write_table`` (``SPOOL_PARQUET`` for parts between tasks)."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    ensure_parent(path)
    with path.open("wb") as handle:
        pq.write_table(table, handle, **options)


def read_parquet(path: Any, columns: list[str] | None = None) -> pd.DataFrame:
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns).to_pandas()


def iter_rows_of(path: Any, rows: Any, columns: list[str], *, slice_rows: int = 20_000) -> Iterator[pa.RecordBatch]:
    """The rows of a parquet file whose ``row_number`` is in ``rows``, with ``row_number`` and ``columns``, in file
    order, read ``slice_rows`` at a time (a whole group file never sits in memory)."""
    with path.open("rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=slice_rows, columns=["row_number", *columns]):
            keep = np.isin(batch.column("row_number").to_numpy(), rows)
            if keep.any():
                yield batch.filter(pa.array(keep))


def write_json(path: Any, payload: Any, *, compact: bool = False) -> None:
    """Indented for people; ``compact`` for large machine-read files (json's C encoder only runs without indent).
    Written whole or not at all (:func:`atomic_open`): a reader never sees half a JSON document."""
    with atomic_open(path, "w") as handle:
        if compact:  # one C-encoded string, one write (json.dump writes chunk by chunk through the file object)
            handle.write(json.dumps(payload, separators=(",", ":"), default=str))
        else:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)


def read_json(path: Any) -> Any:
    with path.open("r") as handle:
        return json.load(handle)


_jsonl_line = json.JSONEncoder(default=str, separators=(",", ":")).encode  # json.dumps(..) builds one per call


def write_jsonl(path: Any, entries: Iterable[dict[str, Any]]) -> int:
    ensure_parent(path)
    n = 0
    with path.open("w") as handle:
        for entry in entries:
            handle.write(_jsonl_line(entry) + "\n")
            n += 1
    return n


def iter_jsonl(path: Any) -> Iterator[dict[str, Any]]:
    with path.open("r") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)

