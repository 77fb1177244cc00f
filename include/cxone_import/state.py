"""Change detection per contact list: what the list already acknowledged, so a nightly run sends only changes.

The state of a list lives under ``{storage base}/state/{dag_id}/{contact_list_id}/``::

    CURRENT.json                                   which generation is current, bucket count, fingerprint kind
    base/{generation}/bucket-{b:03d}.parquet       folded state: key (contactId hash) -> fingerprint, sorted by key
    deltas/{t_ns:020d}-{run}-g{group:05d}-{tag}.parquet   what one import task had acknowledged (one file each)
    runs/{run}.json                                runs that may still hold acknowledged batches without a delta

A contact's *key* is a 64-bit hash of its contactId and its *fingerprint* a 64-bit hash of the record JSON as
sent (``record_json``, which holds the contactId too). Both are SipHash-2-4 (pandas' ``hash_array``), vectorised.

- **Written only from acknowledged outcomes.** An import task writes one delta file of its group's ``imported``
  and ``duplicate`` records when it ends (also when it fails transiently: what was acknowledged is kept). No two
  tasks write the same file (the name carries the run, the group and a random tag). A task killed before it
  could write its delta leaves its run registered under ``runs/``; the next fold reads that run's checkpoints
  (acknowledged batches only) instead.
- **Folded and compared bucket by bucket.** The chunk task of the next run folds the deltas (in the order they
  were written, the later acknowledgement winning) into a new generation of the base, one bucket of
  ``key % buckets`` at a time, and in the same pass compares the run's records with that bucket. Memory is one
  bucket of the state (16 bytes a contact) plus 24 bytes per record of the run. ``CURRENT.json`` is switched
  after every bucket is written, then the folded deltas are removed: a crash before the switch leaves the old
  state and the deltas, a crash after it at worst folds a delta twice (idempotent).
- A state entry can only make a record ``unchanged`` when the very same record was acknowledged before; losing an
  entry (a crash, an unreadable delta) only costs sending that record again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from include.cxone_import.storage import (
    RunLayout,
    ensure_parent,
    iter_rows_of,
    list_files,
    read_json,
    read_parquet,
    safe_segment,
    write_json,
)

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = 32
FINGERPRINT_KIND = "siphash24-64:record_json/v1"
ACKNOWLEDGED = ("imported", "duplicate")
STATE_SCHEMA = pa.schema([("key", pa.uint64()), ("fingerprint", pa.uint64())])


def contact_keys(contact_ids: Any) -> np.ndarray:
    """The 64-bit key of each contactId."""
    return _hash_strings(contact_ids)


def fingerprints(records_json: Any) -> np.ndarray:
    """The 64-bit fingerprint of each record as sent (its JSON text)."""
    return _hash_strings(records_json)


def _hash_strings(values: Any) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    array = np.asarray(values, dtype=object)
    if not len(array):
        return np.empty(0, dtype=np.uint64)
    return pd.util.hash_array(array, categorize=False).astype(np.uint64, copy=False)


@dataclass(frozen=True)
class Comparison:
    """The records of a run that the list already holds exactly as they are now."""

    unchanged_rows: np.ndarray  # row numbers, sorted
    state_contacts: int  # contacts in the state after folding
    folded_deltas: int
    recovered_groups: int


class ContactListState:
    """The acknowledged fingerprints of one contact list (see the module docstring for layout and guarantees)."""

    def __init__(self, base: Any, dag_id: str, contact_list_id: str, *, buckets: int = DEFAULT_BUCKETS) -> None:
        self._base = base
        self._dag_id = dag_id
        self.root = base / "state" / safe_segment(dag_id) / safe_segment(contact_list_id)
        self._default_buckets = buckets

    # -- paths -----------------------------------------------------------------------------------------------

    @property
    def _current_file(self) -> Any:
        return self.root / "CURRENT.json"

    def _bucket_file(self, generation: str, bucket: int) -> Any:
        return self.root / "base" / generation / f"bucket-{bucket:03d}.parquet"

    def _registration(self, run_id: str) -> Any:
        return self.root / "runs" / f"{safe_segment(run_id)}.json"

    def current(self) -> dict[str, Any] | None:
        if not self._current_file.exists():
            return None
        current = read_json(self._current_file)
        if current.get("fingerprint") != FINGERPRINT_KIND:
            log.warning("state of %s has fingerprints of another kind (%s): ignored", self.root, current.get("fingerprint"))
            return None
        return current

    def deltas(self) -> list[Any]:
        return list_files(self.root / "deltas", "*.parquet")  # sorted by name: the time they were written

    def is_empty(self) -> bool:
        return self.current() is None and not self.deltas() and not list_files(self.root / "runs", "*.json")

    # -- written by a run ------------------------------------------------------------------------------------

    def register_run(self, run_id: str, groups: list[int]) -> None:
        """Before a run sends anything: remember it, so that a run killed before writing its deltas is recovered
        from its checkpoints by the next fold."""
        path = self._registration(run_id)
        registered_ns = read_json(path)["registered_ns"] if path.exists() else time.time_ns()
        write_json(path, {"run_id": run_id, "groups": sorted(groups), "registered_ns": registered_ns})

    def write_delta(
        self, run_id: str, group_index: int, keys: np.ndarray, fps: np.ndarray, *, written_ns: int | None = None
    ) -> Any:
        """One delta file of acknowledged (key, fingerprint) pairs: a row group per bucket, its own file name."""
        buckets = self._buckets_for_writing()
        stamp = written_ns if written_ns is not None else time.time_ns()
        path = self.root / "deltas" / f"{stamp:020d}-{safe_segment(run_id)}-g{group_index:05d}-{uuid.uuid4().hex[:8]}.parquet"
        bucket_of = (keys % np.uint64(buckets)).astype(np.int64)
        order = np.argsort(bucket_of, kind="stable")
        keys, fps, bucket_of = keys[order], fps[order], bucket_of[order]
        present, starts = np.unique(bucket_of, return_index=True)
        ends = np.append(starts[1:], len(keys))
        schema = STATE_SCHEMA.with_metadata({b"buckets": json.dumps([buckets, present.tolist()]).encode()})
        ensure_parent(path)
        with path.open("wb") as handle, pq.ParquetWriter(handle, schema) as writer:
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                writer.write_table(
                    pa.table({"key": keys[start:end], "fingerprint": fps[start:end]}, schema=schema),
                    row_group_size=max(end - start, 1),
                )
        return path

    def _buckets_for_writing(self) -> int:
        current = self.current()
        return int(current["buckets"]) if current else self._default_buckets

    # -- read by the next run --------------------------------------------------------------------------------

    def compare(
        self,
        row_numbers: np.ndarray,
        keys: np.ndarray,
        fps: np.ndarray,
        *,
        fold: bool,
        skip_run_id: str | None = None,
    ) -> Comparison:
        """Fold the deltas into the state (when ``fold``) and find the records whose fingerprint it holds.

        ``fold=False`` (a dry run) reads the same state and writes nothing.
        """
        current = self.current()
        buckets = int(current["buckets"]) if current else self._default_buckets
        recovered = self._recover_orphans(skip_run_id) if fold else 0
        deltas = [_Delta(p) for p in self.deltas()]
        deltas = [d for d in deltas if d.readable]
        usable = [d for d in deltas if d.buckets == buckets]
        if len(usable) != len(deltas):
            log.warning("%d delta files of another bucket count ignored", len(deltas) - len(usable))
        generation = f"gen-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        rewrite = fold and bool(usable)
        bucket_of = (keys % np.uint64(buckets)).astype(np.int64)
        order = np.argsort(bucket_of, kind="stable")
        starts = np.searchsorted(bucket_of[order], np.arange(buckets + 1))
        unchanged: list[np.ndarray] = []
        contacts = 0
        for bucket in range(buckets):
            state_keys, state_fps = self._read_bucket(current, bucket)
            if usable:
                parts = [(state_keys, state_fps)] + [d.bucket(bucket) for d in usable]
                state_keys, state_fps = _latest_per_key(parts)
            if rewrite:
                _write_state(self._bucket_file(generation, bucket), state_keys, state_fps)
            contacts += len(state_keys)
            mine = order[starts[bucket] : starts[bucket + 1]]
            if not len(mine) or not len(state_keys):
                continue
            at = np.searchsorted(state_keys, keys[mine]).clip(max=len(state_keys) - 1)
            same = (state_keys[at] == keys[mine]) & (state_fps[at] == fps[mine])
            unchanged.append(row_numbers[mine[same]])
        for delta in deltas:
            delta.close()
        if rewrite:
            self._switch(current, generation, buckets, contacts, [d.path for d in usable])
        rows = np.sort(np.concatenate(unchanged)) if unchanged else np.empty(0, dtype=np.int64)
        return Comparison(rows.astype(np.int64), contacts, len(usable) if rewrite else 0, recovered)

    def _read_bucket(self, current: dict[str, Any] | None, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        if current is None:
            return np.empty(0, np.uint64), np.empty(0, np.uint64)
        path = self._bucket_file(current["generation"], bucket)
        table = read_parquet(path)
        return table["key"].to_numpy(dtype=np.uint64), table["fingerprint"].to_numpy(dtype=np.uint64)

    def _switch(self, current: dict[str, Any] | None, generation: str, buckets: int, contacts: int, folded: list[Any]) -> None:
        """Make the new generation current, then remove what it replaced (the old generation, folded deltas)."""
        write_json(
            self._current_file,
            {"generation": generation, "buckets": buckets, "fingerprint": FINGERPRINT_KIND, "contacts": contacts,
             "folded_at_ns": time.time_ns()},
        )
        for path in folded:
            _remove(path)
        if current is not None:
            for path in list_files(self.root / "base" / current["generation"], "*.parquet"):
                _remove(path)
        log.info("state %s: generation %s, %d contacts, %d deltas folded", self.root, generation, contacts, len(folded))

    def _recover_orphans(self, skip_run_id: str | None) -> int:
        """Runs registered without a delta for some group: write those deltas from the run's checkpoints."""
        recovered = 0
        deltas = [p.name for p in self.deltas()]
        for registration in list_files(self.root / "runs", "*.json"):
            info = read_json(registration)
            run_id = info["run_id"]
            if run_id == skip_run_id:
                continue
            segment = safe_segment(run_id)
            for group_index in info["groups"]:
                tag = f"-{segment}-g{group_index:05d}-"
                if any(tag in name for name in deltas):
                    continue
                layout = RunLayout.for_run(self._base, self._dag_id, run_id)
                keys, fps = checkpointed_acknowledgements(layout, group_index)
                if len(keys):
                    self.write_delta(run_id, group_index, keys, fps, written_ns=int(info["registered_ns"]))
                recovered += 1
                log.info("state: run %s group %d had no delta; %d acknowledged records recovered from its checkpoints",
                         run_id, group_index, len(keys))
            _remove(registration)
        return recovered


def acknowledged_from_outcomes(layout: RunLayout, group_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, fingerprint) of the group's acknowledged records, from its outcome file and group file."""
    outcomes = read_parquet(layout.outcome_file(group_index), columns=["row_number", "outcome"])
    acknowledged = outcomes.loc[outcomes["outcome"].isin(ACKNOWLEDGED), "row_number"].to_numpy(dtype=np.int64)
    return _records_of_rows(layout, group_index, acknowledged)


def checkpointed_acknowledgements(layout: RunLayout, group_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, fingerprint) of the acknowledged records of a group whose task never wrote its outcome file."""
    from include.cxone_import.engine import CheckpointStore

    group_file = layout.group_file(group_index)
    if not group_file.exists():
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    batch_ids = pd.unique(read_parquet(group_file, columns=["batch_id"])["batch_id"]).tolist()
    store = CheckpointStore(layout, batch_ids)
    rows: list[int] = []
    for batch_id in batch_ids:
        checkpoint = store.load(batch_id)
        if checkpoint is not None:
            rows += [int(o[0]) for o in checkpoint["outcomes"] if o[2] in ACKNOWLEDGED]
    return _records_of_rows(layout, group_index, np.array(rows, dtype=np.int64))


def _records_of_rows(layout: RunLayout, group_index: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(rows):
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    keys: list[np.ndarray] = []
    fps: list[np.ndarray] = []
    for chunk in iter_rows_of(layout.group_file(group_index), rows, ["contact_id", "record_json"]):
        keys.append(contact_keys(chunk.column("contact_id")))
        fps.append(fingerprints(chunk.column("record_json")))
    if not keys:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    return np.concatenate(keys), np.concatenate(fps)


class _Delta:
    """A delta file opened once; its row groups read bucket by bucket."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.readable = True
        self._handle = None
        try:
            self._handle = path.open("rb")
            self._file = pq.ParquetFile(self._handle)
            self.buckets, present = json.loads(self._file.schema_arrow.metadata[b"buckets"])
            self._row_group = {int(b): i for i, b in enumerate(present)}
        except Exception:  # noqa: BLE001 - a half-written delta (writer killed) is skipped, never folded wrongly
            log.warning("state: unreadable delta %s skipped", path)
            self.readable = False
            self.close()

    def bucket(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._row_group.get(bucket)
        if index is None:
            return np.empty(0, np.uint64), np.empty(0, np.uint64)
        table = self._file.read_row_group(index)
        return table["key"].to_numpy(), table["fingerprint"].to_numpy()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _latest_per_key(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (key, fingerprint) parts in order; for a key in several, the last part wins. Sorted by key."""
    keys = np.concatenate([k for k, _ in parts]).astype(np.uint64, copy=False)
    fps = np.concatenate([f for _, f in parts]).astype(np.uint64, copy=False)
    if not len(keys):
        return keys, fps
    reversed_keys = keys[::-1]
    unique, first = np.unique(reversed_keys, return_index=True)  # first in reverse = last written
    return unique, fps[::-1][first]


def _write_state(path: Any, keys: np.ndarray, fps: np.ndarray) -> None:
    ensure_parent(path)
    with path.open("wb") as handle:
        pq.write_table(pa.table({"key": keys, "fingerprint": fps}, schema=STATE_SCHEMA), handle)


def _remove(path: Any) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def iter_valid_records(layout: RunLayout, parts: int) -> Iterator[tuple[np.ndarray, pa.Array, pa.Array]]:
    """(row numbers, contactIds, record JSON) of each valid part, the JSON built as the chunk step builds it."""
    from include.cxone_import.payloads import record_json

    for n in range(parts):
        frame = read_parquet(layout.valid_part(n))
        if not len(frame):
            continue
        yield frame["row_number"].to_numpy(dtype=np.int64), frame["contact_id"], record_json(frame)


UNCHANGED_FILE = "unchanged.parquet"
CHANGES_FILE = "changes.json"


def unchanged_file(layout: RunLayout) -> Any:
    """Row numbers (and fingerprints) of the run's records left out as ``unchanged``."""
    return layout.root / UNCHANGED_FILE


def read_changes(layout: RunLayout) -> dict[str, Any] | None:
    """How the run used the list's state (``changes.json``: mode, unchanged count, fold figures)."""
    path = layout.root / CHANGES_FILE
    return read_json(path) if path.exists() else None


def read_unchanged_rows(layout: RunLayout) -> np.ndarray:
    path = unchanged_file(layout)
    if not path.exists():
        return np.empty(0, dtype=np.int64)
    return read_parquet(path, columns=["row_number"])["row_number"].to_numpy(dtype=np.int64)


def find_unchanged(
    layout: RunLayout,
    state: ContactListState,
    *,
    parts: int,
    run_id: str,
    mode: str,
) -> dict[str, Any]:
    """Decide, once per run, which valid records the list already holds as they are; write ``unchanged.parquet``.

    ``mode``: ``compare`` (fold the state, then compare), ``dry_run`` (compare without writing the state),
    ``full_resync`` / ``redrive`` (send everything). A re-run of the same run (a cleared task, a backfill run
    again) reuses the decision of its first attempt, so it plans the same batches and its checkpoints apply: a
    record stays ``unchanged`` only if it is still the same record at the same row.
    """
    summary_path = layout.root / CHANGES_FILE
    started = time.monotonic()
    if summary_path.exists():
        decided = read_json(summary_path)
        saved = read_parquet(unchanged_file(layout)) if decided["unchanged"] else None
        rows = np.empty(0, dtype=np.int64)
        if saved is not None and len(saved):
            rows_all, fps_all = _valid_fingerprints(layout, parts)
            saved_rows = saved["row_number"].to_numpy(dtype=np.int64)
            saved_fps = saved["fingerprint"].to_numpy(dtype=np.uint64)
            at = np.searchsorted(saved_rows, rows_all).clip(max=len(saved_rows) - 1)
            same = (saved_rows[at] == rows_all) & (saved_fps[at] == fps_all)
            rows = rows_all[same]
            _write_unchanged(layout, rows, fps_all[same])
        log.info("changes: reusing this run's decision (%s): %d records unchanged", decided["mode"], len(rows))
        return {**decided, "unchanged": int(len(rows)), "reused": True}
    unchanged = np.empty(0, dtype=np.int64)
    unchanged_fps = np.empty(0, dtype=np.uint64)
    details: dict[str, Any] = {}
    if mode in ("compare", "dry_run") and not state.is_empty():
        rows_all, keys_all, fps_all = _valid_keys_and_fingerprints(layout, parts)
        comparison = state.compare(rows_all, keys_all, fps_all, fold=mode == "compare", skip_run_id=run_id)
        unchanged = comparison.unchanged_rows
        unchanged_fps = fps_all[np.isin(rows_all, unchanged)]
        details = {"state_contacts": comparison.state_contacts, "deltas_folded": comparison.folded_deltas,
                   "groups_recovered": comparison.recovered_groups}
    _write_unchanged(layout, unchanged, unchanged_fps)
    decided = {"mode": mode, "unchanged": int(len(unchanged)), "seconds": round(time.monotonic() - started, 3), **details}
    write_json(summary_path, decided)
    log.info("changes (%s): %d valid records unchanged since the list's last acknowledgement %s", mode, len(unchanged), details)
    return {**decided, "reused": False}


def _write_unchanged(layout: RunLayout, rows: np.ndarray, fps: np.ndarray) -> None:
    order = np.argsort(rows, kind="stable")
    path = unchanged_file(layout)
    ensure_parent(path)
    with path.open("wb") as handle:
        pq.write_table(
            pa.table({"row_number": pa.array(rows[order], pa.int64()), "fingerprint": pa.array(fps[order], pa.uint64())}),
            handle,
        )


def _valid_keys_and_fingerprints(layout: RunLayout, parts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, keys, fps = [], [], []
    for row_numbers, contact_ids, records in iter_valid_records(layout, parts):
        rows.append(row_numbers)
        keys.append(contact_keys(contact_ids))
        fps.append(fingerprints(records))
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64)
    return np.concatenate(rows), np.concatenate(keys), np.concatenate(fps)


def _valid_fingerprints(layout: RunLayout, parts: int) -> tuple[np.ndarray, np.ndarray]:
    rows, _, fps = _valid_keys_and_fingerprints(layout, parts)
    return rows, fps
