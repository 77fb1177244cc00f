"""Change detection per contact list: what CXone acknowledged of the list, so a nightly run sends only changes.

A list's state is keyed by its tenant and its resolved list id (:func:`list_key`); it lives under
``{storage base}/state/{dag_id}/tenant={tenant digest}/{list id}/``::

    LIST.json                                      which tenant and list this is (for people)
    CURRENT.json                                   which generation is current, bucket count, format
    base/{generation}/bucket-{b:03d}.parquet       folded state, one row per contact, sorted by key
    deltas/{t_ns:020d}-{run}-g{group:05d}-{tag}.parquet   what one import task was told (one file each; its
                                                   updates and removals: group ``SYNC_DELTA_OFFSET + group``)
    ids/{delta name}, ids/compact-{t_ns}-{tag}.parquet   contactIds of the contacts this project put on the list
    runs/{run}.json                                runs that may still hold answers without a delta
    unreadable/                                    state files that could not be read, moved aside for a person

A contact's *key* is a 64-bit hash of its contactId and a *fingerprint* a 64-bit hash of the record JSON as sent
(``record_json``, which holds the contactId too). Both are SipHash-2-4 (pandas' ``hash_array``), vectorised. Per
contact the state holds:

- ``acknowledged``: the fingerprint of the content CXone acknowledged (it created that record; 0: none);
- ``unconfirmed``: the fingerprint of the content last sent since then and answered ``duplicate`` (the list holds
  the contact, not necessarily this content; 0: none);
- ``origin``: 1 when this project created (or, later, updated) the record on the list, 0 when it was found there;
- ``logical_date``: the logical date (Unix seconds) of the run whose content CXone acknowledged (0: unknown).

A record is ``unchanged`` only when its fingerprint is the ``acknowledged`` one. When it is the ``unconfirmed``
one, CXone already answered ``duplicate`` for this very content: sending it again changes nothing on the list, so
it is not sent and ends ``duplicate`` again, said so in the report; any other content is sent.

- **Written only from CXone's answers.** An import task writes one delta file of its group's ``imported``
  (acknowledged) and ``duplicate`` (present, content not confirmed) records when it ends (also when it fails
  transiently). No two tasks write the same file. A task killed before it could write its delta leaves its run
  registered under ``runs/``; the next fold reads that run's checkpoints instead: its batches' and its updates' and
  removals' (``sync/ops-{g}.parquet`` and their checkpoints), so the state never claims a contact a killed task
  removed is on the list, nor an updated one holds its old content. A request in flight at the kill (sent, answer
  never read) tells the state nothing: the next run sends it again (a PUT is idempotent, a second DELETE is
  answered 404: ``not_on_list``).
- **ids/ stays the size of the list.** Each delta has its ids file; a fold that switches the state compacts the ids
  files of what it folded into one file of the contacts still on the list and this project's (written whole, then
  the files it replaces removed: a kill in between leaves both, which read the same).
- **Folded and compared bucket by bucket.** The chunk task of the next run folds the deltas (in the order they
  were written) into a new generation of the base, one bucket of ``key % buckets`` at a time, and in the same pass
  compares the run's records with that bucket. A later acknowledgement replaces the content; a ``duplicate``
  answer never replaces acknowledged content, it only notes what was sent. ``CURRENT.json`` is switched after
  every bucket is written, then the folded deltas are removed: a crash before the switch leaves the old state and
  the deltas, a crash after it at worst folds a delta twice (idempotent).
- **Written whole or not at all** (``storage.atomic_open``): temporary name then rename on a local disk, one put on
  an object store. A state file that cannot be read anyway is moved aside and reported, and its records are sent
  in full: losing an entry only costs sending that record again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxone_runs.layout import RunLayout, list_files, safe_segment
from include.cxone_import.storage import atomic_open, fs_path, iter_rows_of, read_json, read_parquet, write_json

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = 32
STATE_FORMAT = 2  # 1: (key, fingerprint) of imported and duplicate records alike, keyed by the list id alone
FINGERPRINT_KIND = "siphash24-64:record_json/v1"
ORIGIN_OURS = 1  # this project created (or updated) the record on the list
STATE_SCHEMA = pa.schema([
    ("key", pa.uint64()),
    ("acknowledged", pa.uint64()),
    ("unconfirmed", pa.uint64()),
    ("origin", pa.uint8()),
    ("logical_date", pa.int64()),
])

# What an outcome tells the state: True = CXone acknowledged the content, False = present, content not confirmed.
# Outcomes not named here (failed, removal_held, stale) tell it nothing.
ACKNOWLEDGES = {"imported": True, "duplicate": False, "updated": True, "removed": True, "not_on_list": True}
# Outcomes that say the list no longer holds the contact: the contact leaves the state's content; what stays is a
# tombstone (``acknowledged`` = REMOVED) with the logical date, so an older backfill never puts it back.
REMOVES = ("removed", "not_on_list")
REMOVED = np.uint64(1)  # the "fingerprint" of a removed contact (a real one is 1 with odds of 2^-64)
SYNC_DELTA_OFFSET = 50_000  # the group number of a group's sync delta (its own file name, never a group's)
COMPACT_IDS = "compact-"  # the name of a compacted ids file starts so (a delta's never does)


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


# -- which list ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListKey:
    """One contact list of one tenant: the key of its state, its lease and its batch ids (see :func:`list_key`)."""

    tenant: str  # "records <base url> <client id>" or "call_lists <tenant id>": never a secret
    list_id: str  # the resolved list id (call_lists: the numeric listId, whether the run named it by id or name)
    label: str  # the tenant for people: "api.example.com, client id X" or "tenant 11eb..."

    @property
    def tenant_digest(self) -> str:
        return hashlib.sha256(self.tenant.encode()).hexdigest()[:16]

    @property
    def lease_name(self) -> str:
        """The list's lease in the tenant's budget store (the same list named by id or by name: one lease)."""
        return f"{self.tenant_digest}:{self.list_id}"

    @property
    def batch_scope(self) -> str:
        """What a batch id hashes besides the records: a batch for another list or tenant is another batch."""
        return self.lease_name

    def describe(self) -> str:
        return f"list {self.list_id} on {self.label}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ListKey:
        return cls(str(value["tenant"]), str(value["list_id"]), str(value["label"]))


def list_key(list_id: str, *, base_url: str | None = None, client_id: str | None = None,
             tenant_id: str | None = None) -> ListKey:
    """The key of a contact list: its tenant and its resolved id. The records API names a tenant by the
    connection's host and client id (``base_url``, ``client_id``), the calling-list API by the ``tenantId`` its
    token names (``tenant_id``); give one or the other."""
    if tenant_id is not None and (base_url is not None or client_id is not None):
        raise ValueError("a list's tenant is either a records connection (base_url, client_id) or a tenant_id")
    if tenant_id is not None:
        if not str(tenant_id).strip():
            raise ValueError("a calling-list tenant id is required")
        return ListKey(f"call_lists {tenant_id}", str(list_id), f"tenant {tenant_id}")
    if not base_url or not client_id:
        raise ValueError("a records tenant needs the connection's base URL and client id")
    url = base_url.strip().rstrip("/").lower()
    host = url.split("://", 1)[-1]
    return ListKey(f"records {url} {client_id}", str(list_id), f"{host}, client id {client_id}")


# -- the state -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledgements:
    """What CXone said about some records: their keys and fingerprints, and for each whether it acknowledged that
    content (``True``: created) or only that the list holds the contact (``False``: answered ``duplicate``)."""

    keys: np.ndarray
    fingerprints: np.ndarray  # REMOVED for a contact the list no longer holds
    acknowledged: np.ndarray  # bool
    contact_ids: np.ndarray | None = None  # object; kept (``ids/``) for contacts this project put on the list

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> Acknowledgements:
        return cls(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, bool), np.empty(0, object))

    @classmethod
    def of(cls, contact_ids: Any, records_json: Any, outcomes: Any) -> Acknowledgements:
        """From records and their outcomes; outcomes :data:`ACKNOWLEDGES` does not name are left out."""
        outcomes = np.asarray(outcomes, dtype=object)
        told = np.isin(outcomes, list(ACKNOWLEDGES))
        acknowledged = np.isin(outcomes, [o for o, ack in ACKNOWLEDGES.items() if ack])
        keys, fps = contact_keys(contact_ids), fingerprints(records_json)
        fps[np.isin(outcomes, REMOVES)] = REMOVED
        ids = np.asarray(contact_ids.to_pylist() if isinstance(contact_ids, (pa.Array, pa.ChunkedArray)) else contact_ids,
                         dtype=object)
        return cls(keys[told], fps[told], acknowledged[told], ids[told])

    @classmethod
    def concat(cls, parts: list[Acknowledgements]) -> Acknowledgements:
        if not parts:
            return cls.empty()
        ids = [p.contact_ids if p.contact_ids is not None else np.full(len(p), None, object) for p in parts]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("keys", "fingerprints", "acknowledged")),
                   np.concatenate(ids))


class _Columns(TypedDict):
    key: np.ndarray
    acknowledged: np.ndarray
    unconfirmed: np.ndarray
    origin: np.ndarray
    logical_date: np.ndarray


def _empty_columns() -> _Columns:
    return {f.name: np.empty(0, dtype=f.type.to_pandas_dtype()) for f in STATE_SCHEMA}  # type: ignore[return-value]


def _columns_of(table: pa.Table) -> _Columns:
    return {f.name: table[f.name].to_numpy().astype(f.type.to_pandas_dtype(), copy=False) for f in STATE_SCHEMA}  # type: ignore[return-value]


@dataclass(frozen=True)
class Comparison:
    """How a run's records stand against the list's state."""

    unchanged_rows: np.ndarray  # acknowledged exactly as they are now (row numbers, sorted)
    unconfirmed_rows: np.ndarray  # answered duplicate for this very content before: sending them changes nothing
    listed_rows: np.ndarray  # the state knows the contact (acknowledged or present), the content differs
    answer_lost_rows: np.ndarray  # unknown contacts a killed run sent exactly so without reading the answer
    state_contacts: int  # contacts in the state after folding
    folded_deltas: int
    recovered_groups: int
    unreadable: tuple[str, ...]  # state files that could not be read (moved aside); their records are sent
    migrated: dict[str, Any] | None  # the list's unkeyed state of the previous format, adopted by this fold


class ContactListState:
    """The acknowledged fingerprints of one contact list of one tenant (layout and guarantees: module docstring)."""

    def __init__(self, base: Any, dag_id: str, key: ListKey, *, buckets: int = DEFAULT_BUCKETS) -> None:
        self._base = base
        self._dag_id = dag_id
        self.key = key
        self.root = base / "state" / safe_segment(dag_id) / f"tenant={key.tenant_digest}" / safe_segment(key.list_id)
        # format 1 kept a list's state under its id alone, whatever the tenant (see _migrate_legacy)
        self.legacy_root = base / "state" / safe_segment(dag_id) / safe_segment(key.list_id)
        self._default_buckets = buckets
        self._unreadable: list[str] = []

    # -- paths -----------------------------------------------------------------------------------------------

    @property
    def _current_file(self) -> Any:
        return self.root / "CURRENT.json"

    def _bucket_file(self, generation: str, bucket: int) -> Any:
        return self.root / "base" / generation / f"bucket-{bucket:03d}.parquet"

    def _registration(self, run_id: str) -> Any:
        return self.root / "runs" / f"{safe_segment(run_id)}.json"

    def describe(self) -> dict[str, Any]:
        """Which state this is, for the report."""
        return {"tenant": self.key.label, "tenant_digest": self.key.tenant_digest, "list_id": self.key.list_id,
                "path": str(self.root)}

    def current(self) -> dict[str, Any] | None:
        """``CURRENT.json``, or None when there is none or it cannot be read (noted in ``unreadable``)."""
        if not self._current_file.exists():
            return None
        try:
            current = read_json(self._current_file)
            if current.get("format") != STATE_FORMAT or current.get("fingerprint") != FINGERPRINT_KIND:
                raise ValueError(f"format {current.get('format')}, fingerprints {current.get('fingerprint')}")
            int(current["buckets"]), str(current["generation"])
        except Exception as exc:  # noqa: BLE001 - an unreadable state costs sending its records, never the run
            self._note_unreadable(self._current_file, exc)
            return None
        return current

    def deltas(self) -> list[Any]:
        return list_files(self.root / "deltas", "*.parquet")  # sorted by name: the time they were written

    def is_empty(self) -> bool:
        return (not self._current_file.exists() and not self.deltas()
                and not list_files(self.root / "runs", "*.json") and not self._legacy_pending())

    def _note_unreadable(self, path: Any, exc: BaseException) -> None:
        name = str(path)[len(str(self.root)) + 1:] if str(path).startswith(str(self.root)) else str(path)
        self._unreadable.append(f"{name}: {type(exc).__name__}")
        log.warning("state %s: %s cannot be read (%s): its records are sent in full", self.key.describe(), name,
                    type(exc).__name__)

    def _set_aside(self, path: Any) -> None:
        """Move an unreadable state file under ``unreadable/`` for a person (it is never read again)."""
        target = self.root / "unreadable" / f"{time.time_ns():020d}-{path.name}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (NotImplementedError, FileExistsError):
            pass
        try:
            path.fs.mv(fs_path(path), fs_path(target))
        except FileNotFoundError:
            pass

    # -- written by a run ------------------------------------------------------------------------------------

    def register_run(self, run_id: str, groups: list[int], *, logical_date: int = 0) -> None:
        """Before a run sends anything: remember it, so that a run killed before writing its deltas is recovered
        from its checkpoints by the next fold."""
        if not (self.root / "LIST.json").exists():
            write_json(self.root / "LIST.json", {**self.describe(), "format": STATE_FORMAT})
        path = self._registration(run_id)
        registered_ns = time.time_ns()
        if path.exists():
            try:
                registered_ns = int(read_json(path)["registered_ns"])
            except Exception:  # noqa: BLE001 - rewritten below
                pass
        write_json(path, {"run_id": run_id, "groups": sorted(groups), "registered_ns": registered_ns,
                          "logical_date": int(logical_date)})

    def write_delta(self, run_id: str, group_index: int, answers: Acknowledgements, *, logical_date: int = 0,
                    written_ns: int | None = None) -> Any:
        """One delta file of what CXone said about a group's records: a row group per bucket, its own file name."""
        acknowledged = answers.acknowledged.astype(bool)
        zeros = np.zeros(len(answers), np.uint64)
        columns: _Columns = {
            "key": answers.keys.astype(np.uint64),
            "acknowledged": np.where(acknowledged, answers.fingerprints, zeros).astype(np.uint64),
            "unconfirmed": np.where(acknowledged, zeros, answers.fingerprints).astype(np.uint64),
            "origin": acknowledged.astype(np.uint8) * np.uint8(ORIGIN_OURS),
            "logical_date": np.where(acknowledged, int(logical_date), 0).astype(np.int64),
        }
        stamp = written_ns if written_ns is not None else time.time_ns()
        name = f"{stamp:020d}-{safe_segment(run_id)}-g{group_index:05d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.root / "deltas" / name
        self._write_ids(name, answers)
        _write_bucketed(path, columns, self._buckets_for_writing())
        return path

    def _write_ids(self, name: str, answers: Acknowledgements) -> None:
        """The contactIds of the contacts CXone acknowledged as this project's (``ids/``): a mirror removal needs the
        contactId, the state keeps only its hash. Written before the delta, so a delta always has its ids."""
        if answers.contact_ids is None:
            return
        ours = answers.acknowledged.astype(bool) & (answers.fingerprints != REMOVED)
        ids = answers.contact_ids[ours]
        if not len(ids):
            return
        with atomic_open(self.root / "ids" / name, "wb") as handle:
            pq.write_table(pa.table({"key": answers.keys[ours].astype(np.uint64),
                                     "contact_id": pa.array(ids.tolist(), pa.string())}), handle)

    def contact_ids_of(self, keys: np.ndarray) -> dict[int, str]:
        """The contactId of each of ``keys`` this project put on the list (from ``ids/``), where known."""
        wanted = np.unique(keys.astype(np.uint64))
        found: dict[int, str] = {}
        for path in list_files(self.root / "ids", "*.parquet"):
            try:
                table = read_parquet_table(path)
            except Exception as exc:  # noqa: BLE001 - an id that cannot be read is a removal that cannot be made
                self._note_unreadable(path, exc)
                continue
            file_keys = table["key"].to_numpy().astype(np.uint64)
            hit = np.isin(file_keys, wanted)
            if hit.any():
                found.update(zip(file_keys[hit].tolist(), table["contact_id"].filter(pa.array(hit)).to_pylist(), strict=True))
        return found

    def compact_ids(self, ours: np.ndarray) -> int:
        """Rewrite the ids files of folded deltas (and earlier compactions) as one file holding only ``ours`` (the
        keys of the contacts on the list this project put there, from the state just folded); the ids of deltas not
        folded yet stay as they are. Returns the ids kept. The new file is written whole before the old ones are
        removed: a kill in between leaves ids files that overlap, which read the same (a key names one contactId)."""
        pending = {p.name for p in self.deltas()}
        inputs = [p for p in list_files(self.root / "ids", "*.parquet") if p.name not in pending]
        if not inputs:
            return 0
        tables = []
        for path in inputs:
            try:
                tables.append(read_parquet_table(path))
            except Exception as exc:  # noqa: BLE001 - kept for a person; its contacts cannot be removed by mirror
                self._note_unreadable(path, exc)
                self._set_aside(path)
        inputs = [p for p in inputs if p.exists()]
        table = pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.uint64()),
                                                                  "contact_id": pa.array([], pa.string())})
        keys = table["key"].to_numpy().astype(np.uint64)
        _, first = np.unique(keys, return_index=True)
        keep = np.zeros(len(keys), bool)
        keep[first] = True
        keep &= np.isin(keys, ours)
        kept = table.filter(pa.array(keep))
        if len(inputs) == 1 and len(kept) == len(table):
            return len(kept)  # nothing to gain
        name = f"{COMPACT_IDS}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_open(self.root / "ids" / name, "wb") as handle:
            pq.write_table(kept.select(["key", "contact_id"]), handle)
        for path in inputs:
            _remove(path)
        log.info("state %s: %d ids files compacted into %s (%d contactIds kept, %d dropped)", self.key.describe(),
                 len(inputs), name, len(kept), len(table) - len(kept))
        return len(kept)

    def snapshot(self) -> _Columns:
        """The state as it stands: the current generation with the deltas not folded yet folded in memory (a dry run
        folds nothing on storage), written nowhere."""
        current = self.current()
        buckets = int(current["buckets"]) if current else self._default_buckets
        deltas = [d for d in (_Delta(p) for p in self.deltas()) if d.readable]
        usable = [d for d in deltas if d.buckets == buckets]
        parts = []
        for bucket in range(buckets):
            state = self._read_bucket(current, bucket)
            parts.append(_fold([state] + [d.bucket(bucket) for d in usable]) if usable else state)
        for delta in deltas:
            delta.close()
        if not parts:
            return _empty_columns()
        return {name: np.concatenate([p[name] for p in parts]) for name in STATE_SCHEMA.names}  # type: ignore[misc]

    def _buckets_for_writing(self) -> int:
        current = self.current()
        return int(current["buckets"]) if current else self._default_buckets

    def start_fresh(self, reason: str) -> None:
        """The list was created by this run: whatever a state under its key holds belonged to a list that is gone.
        Its files are moved under ``unreadable/`` (kept for a person, never read again)."""
        files = [*list_files(self.root / "deltas", "*.parquet"), *list_files(self.root / "runs", "*.json")]
        if self._current_file.exists():
            files.append(self._current_file)
        for path in files:
            self._set_aside(path)
        if files:
            log.warning("state %s: %d files of an earlier list with this id set aside (%s)", self.key.describe(),
                        len(files), reason)

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
        """Fold the deltas into the state (when ``fold``) and find where each record stands.

        ``fold=False`` (a dry run) reads the same state and writes nothing.
        """
        self._unreadable = []
        migrated = self._migrate_legacy() if fold else None
        current = self.current()
        current_broken = current is None and self._current_file.exists()
        buckets = int(current["buckets"]) if current else self._default_buckets
        recovered, unanswered = self._recover_orphans(skip_run_id) if fold else (0, Acknowledgements.empty())
        deltas = [_Delta(p) for p in self.deltas()]
        for delta in deltas:
            if not delta.readable:
                self._note_unreadable(delta.path, delta.error or ValueError("unreadable"))
        readable = [d for d in deltas if d.readable]
        usable = [d for d in readable if d.buckets == buckets]
        if len(usable) != len(readable):
            log.warning("%d delta files of another bucket count ignored", len(readable) - len(usable))
        generation = f"gen-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        rewrite = fold and (bool(usable) or current_broken)
        bucket_of = (keys % np.uint64(buckets)).astype(np.int64)
        order = np.argsort(bucket_of, kind="stable")
        starts = np.searchsorted(bucket_of[order], np.arange(buckets + 1))
        found: dict[str, list[np.ndarray]] = {"unchanged": [], "unconfirmed": [], "listed": []}
        ours: list[np.ndarray] = []  # keys of the contacts on the list this project put there (what ids/ keeps)
        contacts = 0
        for bucket in range(buckets):
            state = self._read_bucket(current, bucket)
            if usable:
                state = _fold([state] + [d.bucket(bucket) for d in usable])
            if rewrite:
                _write_state(self._bucket_file(generation, bucket), state)
                ours.append(state["key"][_ours(state)])
            contacts += len(state["key"])
            mine = order[starts[bucket] : starts[bucket + 1]]
            if not len(mine) or not len(state["key"]):
                continue
            at = np.searchsorted(state["key"], keys[mine]).clip(max=len(state["key"]) - 1)
            known = state["key"][at] == keys[mine]
            acknowledged, unconfirmed = state["acknowledged"][at], state["unconfirmed"][at]
            unchanged = known & (acknowledged != 0) & (acknowledged == fps[mine])
            same_as_duplicate = known & ~unchanged & (unconfirmed != 0) & (unconfirmed == fps[mine])
            found["unchanged"].append(row_numbers[mine[unchanged]])
            found["unconfirmed"].append(row_numbers[mine[same_as_duplicate]])
            found["listed"].append(row_numbers[mine[known & ~unchanged & ~same_as_duplicate]])
        for delta in deltas:
            delta.close()
        if fold:
            for delta in deltas:
                if not delta.readable:
                    self._set_aside(delta.path)
        if rewrite:
            if current_broken:
                self._set_aside(self._current_file)
            self._switch(current, generation, buckets, contacts, [d.path for d in usable])
            self.compact_ids(np.concatenate(ours) if ours else np.empty(0, np.uint64))
        rows = {name: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64)
                for name, parts in found.items()}
        known = np.isin(row_numbers, np.concatenate(list(rows.values())))
        answer_lost = ~known & np.isin(_pair(keys, fps), _pair(unanswered.keys, unanswered.fingerprints))
        return Comparison(rows["unchanged"], rows["unconfirmed"], rows["listed"], np.sort(row_numbers[answer_lost]),
                          contacts, len(usable) if rewrite else 0, recovered, tuple(self._unreadable), migrated)

    def _read_bucket(self, current: dict[str, Any] | None, bucket: int) -> _Columns:
        if current is None:
            return _empty_columns()
        path = self._bucket_file(current["generation"], bucket)
        try:
            return _columns_of(read_parquet_table(path))
        except Exception as exc:  # noqa: BLE001 - a missing or damaged bucket: its contacts are sent again (the
            self._note_unreadable(path, exc)  # next fold writes the bucket anew from what they are answered)
            return _empty_columns()

    def _switch(self, current: dict[str, Any] | None, generation: str, buckets: int, contacts: int, folded: list[Any]) -> None:
        """Make the new generation current, then remove what it replaced (the old generation, folded deltas)."""
        write_json(
            self._current_file,
            {"format": STATE_FORMAT, "generation": generation, "buckets": buckets, "fingerprint": FINGERPRINT_KIND,
             "contacts": contacts, "folded_at_ns": time.time_ns()},
        )
        for path in folded:
            _remove(path)
        if current is not None:
            for path in list_files(self.root / "base" / current["generation"], "*.parquet"):
                _remove(path)
        log.info("state %s: generation %s, %d contacts, %d deltas folded", self.key.describe(), generation, contacts,
                 len(folded))

    def _recover_orphans(self, skip_run_id: str | None) -> tuple[int, Acknowledgements]:
        """Runs registered without a delta for some group: write those deltas from the run's checkpoints. Also
        returns the records of their batches still marked in flight (sent, the answer never read): the next run
        that sends one of them exactly so may count its duplicate as that run's creation."""
        recovered = 0
        unanswered: list[Acknowledgements] = []
        deltas = [p.name for p in self.deltas()]
        for registration in list_files(self.root / "runs", "*.json"):
            try:
                info = read_json(registration)
                run_id, groups = str(info["run_id"]), [int(g) for g in info["groups"]]
            except Exception as exc:  # noqa: BLE001 - that run's answers are lost to the state: records sent again
                self._note_unreadable(registration, exc)
                self._set_aside(registration)
                continue
            if run_id == skip_run_id:
                continue
            segment = safe_segment(run_id)
            layout = RunLayout.for_run(self._base, self._dag_id, run_id)
            logical_date, written_ns = int(info.get("logical_date") or 0), int(info["registered_ns"])
            for group_index in groups:
                if not any(f"-{segment}-g{group_index:05d}-" in name for name in deltas):
                    answers, lost = checkpointed_answers(layout, group_index)
                    if len(answers):
                        self.write_delta(run_id, group_index, answers, logical_date=logical_date, written_ns=written_ns)
                    unanswered.append(lost)
                    recovered += 1
                    log.info("state: run %s group %d had no delta; %d answers recovered from its checkpoints, %d "
                             "records sent without an answer", run_id, group_index, len(answers), len(lost))
                sync_group = SYNC_DELTA_OFFSET + group_index
                if not any(f"-{segment}-g{sync_group:05d}-" in name for name in deltas):
                    answers = checkpointed_sync_answers(layout, group_index)
                    if len(answers):  # after the group's creates: an update or removal is the later answer
                        self.write_delta(run_id, sync_group, answers, logical_date=logical_date,
                                         written_ns=written_ns + 1)
                        log.info("state: run %s group %d had no delta of its updates and removals; %d answers "
                                 "recovered from their checkpoints", run_id, group_index, len(answers))
            _remove(registration)
        return recovered, Acknowledgements.concat(unanswered)

    # -- the format-1 state of the list's id ------------------------------------------------------------------

    def _legacy_pending(self) -> bool:
        root = self.legacy_root
        return ((root / "CURRENT.json").exists() or bool(list_files(root / "deltas", "*.parquet"))) and not (
            root / "MIGRATED.json").exists()

    def _migrate_legacy(self) -> dict[str, Any] | None:
        """Adopt the state the previous format kept under the list's id alone, once, for the first tenant that
        compares this list while its own state is empty (``MIGRATED.json`` then says where it went; its files stay).

        Format 1 recorded ``imported`` and ``duplicate`` records alike. The run folders still on storage tell them
        apart: contacts they answered ``duplicate`` become present with their content not confirmed, contacts they
        ``imported`` acknowledged and created by this project; entries no run folder explains are taken as
        acknowledged (what format 1 assumed) but not as created by this project."""
        if (self._current_file.exists() or self.deltas() or list_files(self.root / "runs", "*.json")
                or not self._legacy_pending()):
            return None
        root = self.legacy_root
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        unreadable: list[str] = []
        current_file = root / "CURRENT.json"
        if current_file.exists():
            try:
                current = read_json(current_file)
                for path in list_files(root / "base" / str(current["generation"]), "*.parquet"):
                    table = read_parquet_table(path)
                    parts.append((table["key"].to_numpy().astype(np.uint64), table["fingerprint"].to_numpy().astype(np.uint64)))
            except Exception as exc:  # noqa: BLE001 - what cannot be read is sent again
                unreadable.append(f"{current_file.name}: {type(exc).__name__}")
        for path in list_files(root / "deltas", "*.parquet"):
            try:
                table = read_parquet_table(path)
                parts.append((table["key"].to_numpy().astype(np.uint64), table["fingerprint"].to_numpy().astype(np.uint64)))
            except Exception as exc:  # noqa: BLE001
                unreadable.append(f"deltas/{path.name}: {type(exc).__name__}")
        keys = np.concatenate([k for k, _ in parts]) if parts else np.empty(0, np.uint64)
        fps = np.concatenate([f for _, f in parts]) if parts else np.empty(0, np.uint64)
        if len(keys):
            reversed_keys = keys[::-1]
            keys, first = np.unique(reversed_keys, return_index=True)  # the later entry wins, as format 1 folded
            fps = fps[::-1][first]
        imported, duplicate = _legacy_outcomes(self._base, self._dag_id, self.key.list_id)
        present = np.isin(keys, duplicate)
        ours = np.isin(keys, imported) & ~present
        zeros = np.zeros(len(keys), np.uint64)
        columns: _Columns = {
            "key": keys,
            "acknowledged": np.where(present, zeros, fps).astype(np.uint64),
            "unconfirmed": np.where(present, fps, zeros).astype(np.uint64),
            "origin": ours.astype(np.uint8),
            "logical_date": np.zeros(len(keys), np.int64),
        }
        _write_bucketed(self.root / "deltas" / f"{0:020d}-format-1-migration.parquet", columns, self._default_buckets)
        migrated = {"from": str(root), "contacts": int(len(keys)), "present_unconfirmed": int(present.sum()),
                    "created_here": int(ours.sum()), "unexplained_taken_as_acknowledged": int((~present & ~ours).sum()),
                    "unreadable": unreadable}
        write_json(root / "MIGRATED.json", {**migrated, "to": self.describe(), "at_ns": time.time_ns()})
        log.warning("state %s: adopted the format-1 state of list %s (%d contacts, %d present with content not "
                    "confirmed)", self.key.describe(), self.key.list_id, len(keys), int(present.sum()))
        return migrated


def read_parquet_table(path: Any) -> pa.Table:
    with path.open("rb") as handle:
        return pq.read_table(handle)


def _legacy_outcomes(base: Any, dag_id: str, list_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the contacts the run folders still on storage ``imported`` / answered ``duplicate`` for a list."""
    imported: list[np.ndarray] = []
    duplicate: list[np.ndarray] = []
    for layout in RunLayout.runs_of(base, dag_id):
        try:
            if not layout.report.exists():
                continue
            run = read_json(layout.report).get("run") or {}
            if str(run.get("contact_list_id")) != list_id or run.get("dry_run"):
                continue
            for path in layout.outcome_files():
                frame = read_parquet(path, columns=["contact_id", "outcome"])
                imported.append(contact_keys(frame.loc[frame["outcome"] == "imported", "contact_id"].to_numpy()))
                duplicate.append(contact_keys(frame.loc[frame["outcome"] == "duplicate", "contact_id"].to_numpy()))
        except Exception:  # noqa: BLE001 - a run folder that cannot be read explains nothing
            log.warning("state migration: run folder %s could not be read", layout.root.name)
    join = lambda parts: np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)  # noqa: E731
    return join(imported), join(duplicate)


def _write_bucketed(path: Any, columns: _Columns, buckets: int) -> None:
    """A state file with a row group per bucket (``key % buckets``), the buckets present named in its metadata."""
    bucket_of = (columns["key"] % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket_of, kind="stable")
    ordered = {name: values[order] for name, values in columns.items()}
    bucket_of = bucket_of[order]
    present, starts = np.unique(bucket_of, return_index=True)
    ends = np.append(starts[1:], len(bucket_of))
    schema = STATE_SCHEMA.with_metadata({b"buckets": json.dumps([buckets, present.tolist()]).encode()})
    with atomic_open(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            writer.write_table(
                pa.table({name: values[start:end] for name, values in ordered.items()}, schema=schema),
                row_group_size=max(end - start, 1),
            )


def acknowledged_from_outcomes(layout: RunLayout, group_index: int) -> Acknowledgements:
    """What CXone said about the group's records, from its outcome file and group file."""
    outcomes = read_parquet(layout.outcome_file(group_index), columns=["row_number", "outcome"])
    told = outcomes[outcomes["outcome"].isin(list(ACKNOWLEDGES))]
    return _answers_of_rows(layout, group_index, dict(zip(told["row_number"].astype("int64"), told["outcome"], strict=True)))


def checkpointed_answers(layout: RunLayout, group_index: int) -> tuple[Acknowledgements, Acknowledgements]:
    """What CXone said about the records of a group whose task never wrote its outcome file (its checkpoints), and
    the records of its batches still marked in flight (sent, answer never read: ``acknowledged`` False)."""
    from include.cxone_import.engine import CheckpointStore

    group_file = layout.group_file(group_index)
    if not group_file.exists():
        return Acknowledgements.empty(), Acknowledgements.empty()
    batches = read_parquet(group_file, columns=["row_number", "batch_id"])
    batch_ids = pd.unique(batches["batch_id"]).tolist()
    store = CheckpointStore(layout, batch_ids)
    outcome_of: dict[int, str] = {}
    in_flight: list[str] = []
    for batch_id in batch_ids:
        checkpoint = store.load(batch_id)
        if checkpoint is not None:
            outcome_of.update({int(o[0]): o[2] for o in checkpoint["outcomes"] if o[2] in ACKNOWLEDGES})
        elif store.was_inflight(batch_id):
            in_flight.append(batch_id)
    lost_rows = batches.loc[batches["batch_id"].isin(in_flight), "row_number"].astype("int64")
    lost = _answers_of_rows(layout, group_index, dict.fromkeys(lost_rows.tolist(), "duplicate"))
    return _answers_of_rows(layout, group_index, outcome_of), lost


def checkpointed_sync_answers(layout: RunLayout, group_index: int) -> Acknowledgements:
    """What CXone said about a group's updates and removals, from their checkpoints (``SyncSender``'s, by request
    id), for a group whose task never wrote the delta of them. A PUT answered 404 (``gone``) says nothing here: the
    record's creation after it is a batch of its own."""
    from include.cxone_import.engine import CheckpointStore

    path = layout.sync_ops(group_index)
    if not path.exists():
        return Acknowledgements.empty()
    ops = read_parquet(path, columns=["op_id", "contact_id", "record_json"])
    if not len(ops):
        return Acknowledgements.empty()
    store = CheckpointStore(layout, ops["op_id"].tolist())
    outcomes = [(store.load(op) or {}).get("outcome", "") for op in ops["op_id"]]
    return Acknowledgements.of(ops["contact_id"].to_numpy(object), ops["record_json"].to_numpy(object), outcomes)


def _ours(state: _Columns) -> np.ndarray:
    """The contacts on the list this project put there (a removed one's contactId is no longer needed)."""
    return (state["origin"] == ORIGIN_OURS) & (state["acknowledged"] != 0) & (state["acknowledged"] != REMOVED)


def _pair(keys: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """One 64-bit value per (contact, content) pair."""
    with np.errstate(over="ignore"):
        return (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ fps.astype(np.uint64)


def _answers_of_rows(layout: RunLayout, group_index: int, outcome_of: dict[int, str]) -> Acknowledgements:
    if not outcome_of:
        return Acknowledgements.empty()
    rows = np.fromiter(outcome_of, dtype=np.int64, count=len(outcome_of))
    parts = []
    for chunk in iter_rows_of(layout.group_file(group_index), rows, ["contact_id", "record_json"]):
        outcomes = [outcome_of[r] for r in chunk.column("row_number").to_pylist()]
        parts.append(Acknowledgements.of(chunk.column("contact_id"), chunk.column("record_json"), outcomes))
    return Acknowledgements.concat(parts)


class _Delta:
    """A delta file opened once; its row groups read bucket by bucket."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.readable = True
        self.error: BaseException | None = None
        self._handle = None
        try:
            self._handle = path.open("rb")
            self._file = pq.ParquetFile(self._handle)
            if not self._file.schema_arrow.remove_metadata().equals(STATE_SCHEMA):
                raise ValueError("not a state delta of this format")
            self.buckets, present = json.loads(self._file.schema_arrow.metadata[b"buckets"])
            self._row_group = {int(b): i for i, b in enumerate(present)}
        except Exception as exc:  # noqa: BLE001 - a damaged delta is set aside and reported, never folded wrongly
            self.readable = False
            self.error = exc
            self.close()

    def bucket(self, bucket: int) -> _Columns:
        index = self._row_group.get(bucket)
        if index is None:
            return _empty_columns()
        return _columns_of(self._file.read_row_group(index))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _last_per_key(keys: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The keys where ``mask`` holds and, for each, the position of its last such entry."""
    positions = np.flatnonzero(mask)[::-1]
    unique, first = np.unique(keys[positions], return_index=True)  # first in reverse = last written
    return unique, positions[first]


def _fold(parts: list[_Columns]) -> _Columns:
    """Entries in the order they were written folded into one per contact, sorted by key: the last acknowledged
    content (and its logical date) wins; an unconfirmed content counts only when sent after it (and not equal to
    it); a record once created by this project stays so."""
    columns: _Columns = {name: np.concatenate([p[name] for p in parts]) for name in STATE_SCHEMA.names}  # type: ignore[misc]
    keys = columns["key"]
    if not len(keys):
        return columns
    unique, inverse = np.unique(keys, return_inverse=True)
    acknowledged_at = np.full(len(unique), -1, np.int64)
    found, at = _last_per_key(keys, columns["acknowledged"] != 0)
    acknowledged_at[np.searchsorted(unique, found)] = at
    unconfirmed_at = np.full(len(unique), -1, np.int64)
    found, at = _last_per_key(keys, columns["unconfirmed"] != 0)
    unconfirmed_at[np.searchsorted(unique, found)] = at
    has_acknowledged = acknowledged_at >= 0
    acknowledged = np.where(has_acknowledged, columns["acknowledged"][acknowledged_at], np.uint64(0)).astype(np.uint64)
    logical_date = np.where(has_acknowledged, columns["logical_date"][acknowledged_at], 0).astype(np.int64)
    later = (unconfirmed_at >= 0) & (unconfirmed_at >= acknowledged_at)  # a base row holds both: in that order
    unconfirmed = np.where(later, columns["unconfirmed"][unconfirmed_at], np.uint64(0)).astype(np.uint64)
    unconfirmed[unconfirmed == acknowledged] = 0
    origin = (np.bincount(inverse, weights=columns["origin"], minlength=len(unique)) > 0).astype(np.uint8)
    return {"key": unique.astype(np.uint64), "acknowledged": acknowledged, "unconfirmed": unconfirmed,
            "origin": origin, "logical_date": logical_date}


def _write_state(path: Any, columns: _Columns) -> None:
    with atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(dict(columns), schema=STATE_SCHEMA), handle)


def _remove(path: Any) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- the run's decision ----------------------------------------------------------------------------------------------


def iter_valid_records(layout: RunLayout, parts: int) -> Iterator[tuple[np.ndarray, pa.Array, pa.Array]]:
    """(row numbers, contactIds, record JSON) of each valid part, the JSON built as the chunk step builds it."""
    from include.cxone_import.payloads import record_json

    for n in range(parts):
        frame = read_parquet(layout.valid_part(n))
        if not len(frame):
            continue
        yield frame["row_number"].to_numpy(dtype=np.int64), frame["contact_id"], record_json(frame)


# what the run decided for a record the list's state knows (records it does not know are sent, not listed), or
# that a killed run sent without reading the answer (sent; a duplicate of it is that run's record)
DECISION_UNCHANGED, DECISION_UNCONFIRMED, DECISION_LISTED, DECISION_ANSWER_LOST = 1, 2, 3, 4
# sync (include/cxone_import/sync.py): sent as an update (PUT), or not sent because the list holds a newer day's
DECISION_UPDATE, DECISION_STALE = 5, 6
# full_resync / redrive: acknowledged exactly so, sent again anyway as a create (never an update: the list holds this
# very content, so a sync run re-creates what is gone and leaves the rest as it is)
DECISION_RESENT = 7
LEFT_OUT = (DECISION_UNCHANGED, DECISION_UNCONFIRMED, DECISION_UPDATE, DECISION_STALE)  # not in the batched POST
DECISION_SCHEMA = pa.schema([("row_number", pa.int64()), ("fingerprint", pa.uint64()), ("decision", pa.int8())])
# modes: compare (fold, leave out what the list holds), dry_run (compare without writing), full_resync and redrive
# (fold, send everything), new_list (the run created the list: nothing to compare), not_compared (no tenant to key by)
SEND_EVERYTHING = ("full_resync", "redrive")


class ChangeDecision(TypedDict, total=False):
    """``changes.json``: how the run used the list's state (the report's ``changes``)."""

    mode: str
    state: dict[str, Any] | None  # which state it compared against (tenant, list id, path), None: none
    unchanged: int  # left out: acknowledged exactly as they are
    unconfirmed: int  # left out: answered duplicate before for this very content (they end duplicate)
    listed: int  # sent; the state knew the contact with other content
    answer_lost: int  # sent; a killed run had sent them exactly so and never read the answer
    resent: int  # sent again as creates (full_resync, redrive): acknowledged exactly so
    state_contacts: int
    deltas_folded: int
    groups_recovered: int
    unreadable: list[str]
    migrated: dict[str, Any] | None
    seconds: float
    reused: bool


def read_changes(layout: RunLayout) -> ChangeDecision | None:
    """How the run used the list's state (``changes.json``)."""
    path = layout.changes_summary
    return read_json(path) if path.exists() else None


def read_decided_rows(layout: RunLayout, *decisions: int) -> np.ndarray:
    """Row numbers of the run's records with one of ``decisions`` (sorted)."""
    path = layout.changes_decision
    if not path.exists():
        return np.empty(0, dtype=np.int64)
    table = read_parquet(path, columns=["row_number", "decision"])
    return table.loc[table["decision"].isin(decisions), "row_number"].to_numpy(dtype=np.int64)


def decide_changes(
    layout: RunLayout,
    state: ContactListState | None,
    *,
    parts: int,
    run_id: str,
    mode: str,
) -> ChangeDecision:
    """Decide, once per run, where each valid record stands against the list's state; write the decision file.

    ``state`` None: nothing to compare with (mode ``new_list``, or no tenant to key the state by). A re-run of the
    same run (a cleared task, a backfill run again) against the same list reuses the decision of its first
    attempt, so it plans the same batches and its checkpoints apply; a record whose content changed since is sent
    (and known to the state as before).
    """
    summary_path = layout.changes_summary
    started = time.monotonic()
    if summary_path.exists():
        decided: ChangeDecision = read_json(summary_path)
        same_list = (decided.get("state") or {}).get("tenant_digest") == (state.key.tenant_digest if state else None) \
            and (decided.get("state") or {}).get("list_id") == (state.key.list_id if state else None)
        if same_list and decided.get("mode") == mode:
            return _reuse_decision(layout, parts, decided)
        log.info("changes: the first attempt decided for another list or mode; deciding again")
    details: ChangeDecision = {"state": state.describe() if state is not None else None}
    rows_all, fps_all, decision = np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int8)
    if state is not None and mode != "new_list" and not state.is_empty():  # else nothing to read the records for
        rows_all, keys_all, fps_all = _valid_keys_and_fingerprints(layout, parts)
        decision = np.zeros(len(rows_all), np.int8)
        comparison = state.compare(rows_all, keys_all, fps_all, fold=mode != "dry_run", skip_run_id=run_id)
        send_all = mode in SEND_EVERYTHING
        decision[np.isin(rows_all, comparison.unchanged_rows)] = DECISION_RESENT if send_all else DECISION_UNCHANGED
        decision[np.isin(rows_all, comparison.unconfirmed_rows)] = DECISION_LISTED if send_all else DECISION_UNCONFIRMED
        decision[np.isin(rows_all, comparison.listed_rows)] = DECISION_LISTED
        decision[np.isin(rows_all, comparison.answer_lost_rows)] = DECISION_ANSWER_LOST
        details.update(state_contacts=comparison.state_contacts, deltas_folded=comparison.folded_deltas,
                       groups_recovered=comparison.recovered_groups, unreadable=list(comparison.unreadable),
                       migrated=comparison.migrated)
    known = decision != 0
    _write_decision(layout, rows_all[known], fps_all[known], decision[known])
    decided = {"mode": mode, **details, **_decision_counts(decision), "seconds": round(time.monotonic() - started, 3)}
    write_json(summary_path, decided)
    log.info("changes (%s): %d valid records unchanged, %d answered duplicate before for this content, %d known with "
             "other content (%s)", mode, decided["unchanged"], decided["unconfirmed"], decided["listed"],
             state.key.describe() if state is not None else "no state")
    return {**decided, "reused": False}  # type: ignore[typeddict-item]


def _decision_counts(decision: np.ndarray) -> ChangeDecision:
    return {"unchanged": int((decision == DECISION_UNCHANGED).sum()), "unconfirmed": int((decision == DECISION_UNCONFIRMED).sum()),
            "listed": int((decision == DECISION_LISTED).sum()), "answer_lost": int((decision == DECISION_ANSWER_LOST).sum()),
            "resent": int((decision == DECISION_RESENT).sum())}


def _reuse_decision(layout: RunLayout, parts: int, decided: ChangeDecision) -> ChangeDecision:
    saved = read_parquet(layout.changes_decision) if layout.changes_decision.exists() else None
    if saved is None or not len(saved):
        log.info("changes: reusing this run's decision (%s): nothing known to the state", decided["mode"])
        return {**decided, **_decision_counts(np.empty(0, np.int8)), "reused": True}  # type: ignore[typeddict-item]
    rows_all, fps_all = _valid_fingerprints(layout, parts)
    saved_rows = saved["row_number"].to_numpy(dtype=np.int64)
    at = np.searchsorted(saved_rows, rows_all).clip(max=len(saved_rows) - 1)
    known = saved_rows[at] == rows_all
    decision = np.where(known, saved["decision"].to_numpy(dtype=np.int8)[at], 0).astype(np.int8)
    changed = known & (saved["fingerprint"].to_numpy(dtype=np.uint64)[at] != fps_all)
    decision[changed & (decision != DECISION_ANSWER_LOST)] = DECISION_LISTED  # changed since: sent, known contact
    decision[changed & (decision == DECISION_ANSWER_LOST)] = 0  # not what the killed run sent: an unknown contact
    keep = decision != 0
    _write_decision(layout, rows_all[keep], fps_all[keep], decision[keep])
    counts = _decision_counts(decision)
    log.info("changes: reusing this run's decision (%s): %d unchanged, %d answered duplicate before, %d records "
             "changed since the first attempt", decided["mode"], counts["unchanged"], counts["unconfirmed"], int(changed.sum()))
    return {**decided, **counts, "reused": True}  # type: ignore[typeddict-item]


def _write_decision(layout: RunLayout, rows: np.ndarray, fps: np.ndarray, decision: np.ndarray) -> None:
    order = np.argsort(rows, kind="stable")
    with atomic_open(layout.changes_decision, "wb") as handle:
        pq.write_table(pa.table({"row_number": rows[order].astype(np.int64), "fingerprint": fps[order].astype(np.uint64),
                                 "decision": decision[order].astype(np.int8)}, schema=DECISION_SCHEMA), handle)


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
