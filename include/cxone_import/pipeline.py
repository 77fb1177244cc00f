"""The extract, validate and chunk steps: plain functions over storage paths, streaming chunk by chunk."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cxone_provider.redaction import mask_uri

from include.cxone_import.arrow_text import arrow_strings
from include.cxone_import.handoffs import ExtractResult, ImportGroup, ValidateResult
from include.cxone_import.masking import neutralise_formulas
from include.cxone_import.payloads import record_json
from include.cxone_import.schema import REJECT_COLUMNS, ChunkValidator, ContactRecordSchema
from include.cxone_import.sources import ROW_NUMBER, iter_canonical_chunks
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import SPOOL_PARQUET, ensure_parent, read_parquet, write_parquet

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 100
MAX_BATCHES_PER_GROUP = 2500  # bounds an import task's run time and XCom; 1M records at 100 = 4 groups (the pool's 4 slots)
MIN_BATCHES_PER_GROUP = 500  # below this a task's start-up costs more than spreading the list over workers gains
GROUP_SCHEMA = pa.schema(
    [
        (ROW_NUMBER, pa.int64()),
        ("batch_index", pa.int64()),
        ("batch_id", pa.string()),
        ("contact_id", pa.string()),
        ("record_json", pa.string()),
        ("listed_before", pa.bool_()),  # the list's state knew this contact before the run (with other content)
        ("sent_unanswered", pa.bool_()),  # a killed run sent this very record and never read CXone's answer
    ]
)


def extract(source: Any, layout: RunLayout, *, fmt: str | None = None, chunk_rows: int = 200_000) -> ExtractResult:
    """Read the source in chunks into canonical parquet parts under the run."""
    parts: list[str] = []
    rows = 0
    for n, frame in enumerate(iter_canonical_chunks(source, fmt=fmt, chunk_rows=chunk_rows)):
        path = layout.extract_part(n)
        write_parquet(path, frame, **SPOOL_PARQUET)
        parts.append(str(path))
        rows += len(frame)
        log.info("extracted part %d: %d rows (total %d)", n, len(frame), rows)
        del frame  # not held while the next chunk is read: the peak is one chunk's, whatever the file's size
        pa.default_memory_pool().release_unused()  # and its Arrow memory handed back (a few % at 2M rows)
    return {"source_uri": mask_uri(str(source)), "parts": len(parts), "input_rows": rows}  # shown: credentials masked


def validate(
    layout: RunLayout,
    *,
    parts: int,
    max_consent_age_days: int,
    as_of: datetime | None = None,
    default_phone_region: str | None = None,
    max_record_chars: int | None = None,
) -> ValidateResult:
    """Validate every extracted part; write valid parts, the rejects files and the rejection audit entries.
    ``max_record_chars``: the longest record as a calling-list CSV line (the call_lists profile), else no limit."""
    schema = ContactRecordSchema.policy(
        max_consent_age_days, as_of or datetime.now(timezone.utc), default_phone_region=default_phone_region,
        max_record_chars=max_record_chars,
    )
    validator = ChunkValidator(schema)
    totals = {"input_rows": 0, "valid_rows": 0, "rejected_rows": 0, "reject_entries": 0}
    normalised: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    reject_frames: list[pd.DataFrame] = []
    started = datetime.now(timezone.utc)
    started_cpu = time.process_time()
    schema_seconds = schema_cpu_seconds = 0.0

    def rejected(frame: pd.DataFrame) -> None:
        totals["reject_entries"] += len(frame)
        for rule, count in frame["rule"].value_counts().items():
            by_rule[str(rule)] = by_rule.get(str(rule), 0) + int(count)
        reject_frames.append(frame)

    for n in range(parts):
        frame = read_parquet(layout.extract_part(n))
        tick, tick_cpu = time.perf_counter(), time.process_time()
        result = validator.chunk(frame)
        schema_seconds += time.perf_counter() - tick
        schema_cpu_seconds += time.process_time() - tick_cpu
        del frame  # one chunk at a time
        write_parquet(layout.valid_part(n), result.valid, **SPOOL_PARQUET)
        totals["input_rows"] += len(result.valid) + result.rejected_rows
        totals["valid_rows"] += len(result.valid)
        totals["rejected_rows"] += result.rejected_rows
        for how, count in result.normalised.items():
            normalised[how] = normalised.get(how, 0) + count
        rejected(result.rejects)
        log.info(
            "validated part %d: %d valid, %d rejected", n, len(result.valid), result.rejected_rows
        )
        del result
        pa.default_memory_pool().release_unused()  # hand the chunk's Arrow memory back: flat peak per chunk
    tick, tick_cpu = time.perf_counter(), time.process_time()
    rejected(validator.finish())  # the model's reasons for the flagged rows not yet written
    schema_seconds += time.perf_counter() - tick
    schema_cpu_seconds += time.process_time() - tick_cpu
    rejects = pd.concat(reject_frames, ignore_index=True) if reject_frames else pd.DataFrame(columns=REJECT_COLUMNS)
    _write_rejects(layout, rejects)
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    return {
        **totals,
        "normalised": normalised,
        "rejects_by_rule": dict(sorted(by_rule.items())),
        "rejects_csv": str(layout.rejects_csv),
        "parts": parts,
        "validation_seconds": round(elapsed, 3),
        "schema_seconds": round(schema_seconds, 3),  # normalise + pre-pass + pandera + rejections, no I/O
        # process CPU time (all threads): what one core spends, whatever else the machine runs
        "validation_cpu_seconds": round(time.process_time() - started_cpu, 3),
        "schema_cpu_seconds": round(schema_cpu_seconds, 3),
    }


def reject_gate_tripped(validated: ValidateResult, max_reject_share: float | None) -> bool:
    """More rows rejected than the run allows: then nothing is sent (decided before the first request)."""
    if max_reject_share is None or not validated.get("input_rows"):
        return False
    return validated["rejected_rows"] / validated["input_rows"] > float(max_reject_share)


def _write_rejects(layout: RunLayout, rejects: pd.DataFrame) -> None:
    """rejects.parquet (for reconciliation), rejects.csv (for people, formula-safe), audit entries per record."""
    rejects = rejects.astype({"row_number": "int64"})
    write_parquet(layout.rejects_parquet, rejects)
    ensure_parent(layout.rejects_csv)
    with layout.rejects_csv.open("w") as handle:
        neutralise_formulas(rejects).to_csv(handle, index=False)
    path = layout.audit_part("rejects")
    ensure_parent(path)
    with path.open("w") as handle:
        handle.writelines(_rejection_audit_lines(rejects))


def _rejection_audit_lines(rejects: pd.DataFrame) -> Iterator[str]:
    """One audit entry (a JSON line) per rejected record, its rules and columns, in row order. The entries are
    what ``write_jsonl`` writes for the same dicts; the few distinct rule/column sets are serialised once each."""
    ordered = rejects.sort_values("row_number", kind="stable")
    rows = ordered["row_number"].to_numpy()
    if not len(rows):
        return
    starts = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1])
    ends = np.append(starts[1:], len(rows))
    contact_ids = ordered["contact_id"].to_numpy(dtype=object)
    rules = ordered["rule"].to_numpy(dtype=object)
    columns = ordered["column"].to_numpy(dtype=object)
    line = (
        '{"auditId":"%s","timestamp":' + json.dumps(datetime.now(timezone.utc).isoformat())
        + ',"kind":"record","status":"validation_failed","rowNumber":%d,"contactId":%s,"latencyMs":null,"details":%s}\n'
    )
    details: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
    for start, end, row, contact_id in zip(
        starts.tolist(), ends.tolist(), rows[starts].tolist(), contact_ids[starts], strict=True
    ):
        key = (tuple(sorted(set(rules[start:end]))), tuple(sorted(set(columns[start:end]))))
        if key not in details:
            details[key] = json.dumps({"rules": list(key[0]), "columns": list(key[1])}, separators=(",", ":"))
        contact = json.dumps(contact_id) if isinstance(contact_id, str) else "null"
        yield line % (uuid.uuid4(), row, contact, details[key])


@dataclass(frozen=True)
class GroupPlan:
    """How the valid records split into batches and mapped import tasks."""

    batches: int
    groups: int
    batches_per_group: int

    @classmethod
    def plan(cls, valid_rows: int, batch_size: int, parallelism: int, max_map_length: int) -> GroupPlan:
        """
        Groups follow the list size (at most ``MAX_BATCHES_PER_GROUP`` batches each) and the executor: a large
        list is spread over up to ``parallelism`` tasks of at least ``MIN_BATCHES_PER_GROUP`` batches, so that
        several workers send (and start up) side by side. All of them draw on the one tenant budget, so how many
        actually run at once never changes the rate; never more than ``max_map_length`` groups.
        """
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
        batches = math.ceil(valid_rows / batch_size)
        if batches == 0:
            return cls(0, 0, 0)
        by_size = math.ceil(batches / MAX_BATCHES_PER_GROUP)
        spread = min(parallelism, batches // MIN_BATCHES_PER_GROUP)
        groups = max(1, min(max(by_size, spread), batches, max_map_length))
        per_group = math.ceil(batches / groups)
        return cls(batches, math.ceil(batches / per_group), per_group)


def _batch_aligned(
    layout: RunLayout, parts: int, batch_size: int, left_out_rows: np.ndarray | None = None
) -> Iterator[pd.DataFrame]:
    """The valid parts, less the rows left out, re-cut so that no batch spans two frames (a batch id covers
    all its records). A batch that spans two parts is yielded alone; a part is never copied whole, and what is
    carried to the next part holds none of the previous part's buffers (one part in memory at a time)."""
    carry: pd.DataFrame | None = None
    for n in range(parts):
        frame = read_parquet(layout.valid_part(n))
        if left_out_rows is not None and len(left_out_rows):
            frame = frame[~np.isin(frame[ROW_NUMBER].to_numpy(), left_out_rows)].reset_index(drop=True)
        if carry is not None:
            need = batch_size - len(carry)
            carry = pd.concat([carry, frame.iloc[:need]], ignore_index=True)
            frame = frame.iloc[need:].reset_index(drop=True)
            if len(carry) < batch_size:
                carry = _detached(carry)
                continue
            yield carry
        whole = len(frame) - len(frame) % batch_size
        if whole:
            yield frame.iloc[:whole]
        carry = _detached(frame.iloc[whole:]) if whole < len(frame) else None
        del frame
    if carry is not None:
        yield carry


def _detached(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a few rows that does not keep the buffers of the frame they were sliced from alive."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.take(pa.array(np.arange(table.num_rows))).to_pandas()


def _batch_runs(batch_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each batch starts and ends in ``batch_index`` (its rows are contiguous)."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(batch_index)) + 1]).astype(np.int64)
    return starts, np.append(starts[1:], len(batch_index))


def _batch_ids(scope: str, starts: np.ndarray, ends: np.ndarray, records_json: pa.Array) -> list[str]:
    """``batch_id`` of each batch ``records_json[start:end]``, hashing the bytes Arrow already holds: every record
    prefixed with the separator is one contiguous range of one buffer per batch (no Python string per record)."""
    if records_json.null_count:
        values = records_json.to_pylist()
        return [batch_id(scope, values[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    separated = pc.binary_join_element_wise(_SEPARATOR, records_json.cast(pa.large_string()), _EMPTY)
    _, offsets_buffer, data = separated.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[separated.offset : separated.offset + len(separated) + 1]
    data_view = memoryview(data) if data is not None else memoryview(b"")
    scoped = hashlib.sha256(scope.encode())
    ids = []
    for a, b in zip(offsets[starts].tolist(), offsets[ends].tolist(), strict=True):
        digest = scoped.copy()
        digest.update(data_view[a:b])
        ids.append(digest.hexdigest()[:24])
    return ids


_SEPARATOR = pa.scalar("\x1f", pa.large_string())
_EMPTY = pa.scalar("", pa.large_string())
# the records are unique strings: a dictionary only pays for the batch columns (100 rows a value)
_GROUP_PARQUET = {"use_dictionary": ["batch_index", "batch_id", "listed_before", "sent_unanswered"],
                  "write_statistics": False}
CHUNK_SLICE_ROWS = 50_000  # records serialised and written at a time: bounds the chunk task's peak


def batch_id(scope: str, records: Any) -> str:
    """The id of a batch: a hash of its scope (the list and its tenant, ``ListKey.batch_scope``) and of its records
    exactly as sent (their JSON, or the lines of an uploaded file), in order. The same records give the same id run
    after run; a record whose content changed makes another batch, which is sent, never resumed as acknowledged."""
    digest = hashlib.sha256(scope.encode())
    for record in records:
        digest.update(b"\x1f" + (record if isinstance(record, bytes) else record.encode()))
    return digest.hexdigest()[:24]


@dataclass
class _GroupFiles:
    """The group files of a chunk run (those still being written are open) and what each holds."""

    layout: RunLayout
    writers: dict[int, pq.ParquetWriter]
    handles: dict[int, Any]
    groups: dict[int, ImportGroup]

    def write(self, group_index: int, table: pa.Table) -> None:
        """Append to a group's file; groups fill in order, so the files of the groups before it are complete and
        closed (an open writer holds a few MiB: the peak would grow with the number of groups)."""
        for done in [g for g in self.writers if g < group_index]:
            self.writers.pop(done).close()
            self.handles.pop(done).close()
        if group_index not in self.groups:
            path = self.layout.group_file(group_index)
            ensure_parent(path)
            self.handles[group_index] = path.open("wb")
            self.writers[group_index] = pq.ParquetWriter(self.handles[group_index], GROUP_SCHEMA, **_GROUP_PARQUET)
            self.groups[group_index] = {"group_index": group_index, "path": str(path), "records": 0}
        self.writers[group_index].write_table(table)
        self.groups[group_index]["records"] += table.num_rows

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for handle in self.handles.values():
            handle.close()


def _payload(frame: pd.DataFrame, first_position: int, batch_size: int, batch_scope: str,
             listed_rows: np.ndarray | None, answer_lost_rows: np.ndarray | None) -> tuple[pa.Table, pd.DataFrame]:
    """The group-file rows of ``frame`` (whole batches from ``first_position`` on) and its batches' manifest rows."""
    batch_index = (np.arange(first_position, first_position + len(frame)) // batch_size).astype(np.int64)
    starts, ends = _batch_runs(batch_index)
    contact_ids = arrow_strings(frame["contact_id"])
    records = record_json(frame)
    ids = _batch_ids(batch_scope, starts, ends, records)
    row_numbers = frame[ROW_NUMBER].to_numpy(dtype=np.int64)
    flags = [np.isin(row_numbers, rows) if rows is not None and len(rows) else np.zeros(len(frame), bool)
             for rows in (listed_rows, answer_lost_rows)]
    table = pa.table(
        {
            ROW_NUMBER: pa.array(row_numbers, pa.int64()),
            "batch_index": pa.array(batch_index, pa.int64()),
            "batch_id": pa.array(ids, pa.string()).take(pa.array(np.repeat(np.arange(len(ids)), ends - starts))),
            "contact_id": contact_ids.cast(pa.string()),
            "record_json": records.cast(pa.string()),
            "listed_before": pa.array(flags[0], pa.bool_()),
            "sent_unanswered": pa.array(flags[1], pa.bool_()),
        },
        schema=GROUP_SCHEMA,
    )
    batches = pd.DataFrame(
        {
            "batch_index": batch_index[starts],
            "batch_id": pd.array(ids, dtype="str"),
            "records": (ends - starts).astype(np.int64),
            "first_row": np.minimum.reduceat(row_numbers, starts) if len(starts) else row_numbers[:0],
            "last_row": np.maximum.reduceat(row_numbers, starts) if len(starts) else row_numbers[:0],
        }
    )
    return table, batches


def write_empty_group(layout: RunLayout, group_index: int) -> None:
    """A group file without records: an import group that only updates or removes."""
    path = layout.group_file(group_index)
    ensure_parent(path)
    with path.open("wb") as handle:
        pq.write_table(GROUP_SCHEMA.empty_table(), handle)


def chunk(
    layout: RunLayout,
    *,
    parts: int,
    valid_rows: int,
    batch_scope: str,
    batch_size: int,
    parallelism: int,
    max_map_length: int,
    left_out_rows: np.ndarray | None = None,
    listed_rows: np.ndarray | None = None,
    answer_lost_rows: np.ndarray | None = None,
) -> list[ImportGroup]:
    """Number the valid records to send (all but ``left_out_rows``, which the list already holds) into batches
    whose ids hash ``batch_scope`` and the records, stream them into one file per import group (``listed_rows``
    marked ``listed_before``, ``answer_lost_rows`` ``sent_unanswered``), write the manifest."""
    to_send = valid_rows - (len(left_out_rows) if left_out_rows is not None else 0)
    plan = GroupPlan.plan(to_send, batch_size, parallelism, max_map_length)
    rows_per_group = plan.batches_per_group * batch_size
    step = batch_size * max(1, CHUNK_SLICE_ROWS // batch_size)  # whole batches: a slice never splits one
    files = _GroupFiles(layout, {}, {}, {})
    manifest: list[pd.DataFrame] = []
    position = 0  # index of the next valid record across all parts
    try:
        for frame in _batch_aligned(layout, parts, batch_size, left_out_rows):
            for start in range(0, len(frame), step):
                table, batches = _payload(frame.iloc[start : start + step], position, batch_size, batch_scope,
                                          listed_rows, answer_lost_rows)
                group_of_row = np.arange(position, position + table.num_rows) // rows_per_group
                for group_index in np.unique(group_of_row).tolist():
                    at = np.flatnonzero(group_of_row == group_index)
                    files.write(int(group_index), table.slice(int(at[0]), len(at)))  # a group's rows are contiguous
                batches.insert(2, "group_index", (batches["batch_index"].to_numpy() * batch_size) // rows_per_group)
                manifest.append(batches)
                position += table.num_rows
                del table, batches
            del frame  # one part's records at a time
            pa.default_memory_pool().release_unused()  # and its Arrow memory handed back before the next is read
    finally:
        files.close()
    groups = files.groups
    if manifest:
        batches = pd.concat(manifest, ignore_index=True)  # batches never span two slices: no merging
        write_parquet(layout.batch_manifest, batches)
        counts = batches.groupby("group_index")["batch_index"].size()
        for group_index, info in groups.items():
            info["batches"] = int(counts[group_index])
    log.info("chunked %d records into %d batches of <= %d in %d groups", to_send, plan.batches, batch_size, len(groups))
    return [groups[g] for g in sorted(groups)]
