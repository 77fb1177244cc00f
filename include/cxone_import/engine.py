"""The import engine: send one group of batches concurrently, lose nothing, create nothing twice.

Every record of the group ends in exactly one outcome: ``imported``, ``duplicate`` or ``failed``.

- A batch's outcome is checkpointed as soon as it is known; a re-run skips acknowledged batches.
- Before a batch is sent an in-flight marker is written; if a later attempt finds the marker (the earlier one was
  sent but its answer never arrived), the duplicates the server reports for it are our own records from that
  attempt, so they count as ``imported``.
- A 409 (atomic: nothing created) sets aside the duplicates the server names and sends the rest again; when it
  names none the batch is split in halves until each duplicate is isolated. A 400 is handled the same way, the
  records the server names (or isolates) ending ``failed`` with the server's reason.
- A 200 is read whole: the records its ``warnings`` name are ``duplicate``, those its ``errors`` name ``failed``
  with CXone's reason, the rest ``imported``. A record refused for a transient reason fails the batch
  transiently (below). An answer whose counts do not add up (``recordsCreated`` is not the records neither named,
  a named record that is not in the batch, or named twice) proves nothing: the batch is sent again at once as if
  its answer had been lost, and if the second answer does not add up either it fails transiently. No record is
  ever ``imported`` on an answer that does not say so.
- A duplicate after an attempt that may have reached the server counts as ``imported`` only for a contact the
  list's state did not know before the run (``listed_before``): a contact the list already held was not created
  by that attempt, whatever was sent.
- Errors left after the client's retries (rate limit, 5xx, connection) fail the batch *transiently*: nothing is
  checkpointed, the task raises at the end, and Airflow's retry of the task sends only those batches again.
- A configuration error (a refused credential, a redirect, a list CXone does not know:
  ``retry.is_configuration_error``) or a lost list lease (``ListLeaseLostError``, raised by the client's fenced rate
  limiter before a request goes out) stops the group: no further request is sent, the records not sent end
  ``not_sent`` (nothing to redrive), what CXone answered stays checkpointed, and ``stopped_by`` says why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxone_provider.errors import CXoneConflictError, CXoneError, CXoneValidationError, ListLeaseLostError
from cxone_provider.models import RecordIssue, parse_record_issues
from cxone_provider.retry import is_configuration_error

from cxone_runs.layout import RunLayout
from include.cxone_import.handoffs import AuditEntry, GroupSummary
from include.cxone_import.storage import ensure_parent, fs_path, put_bytes, write_json, write_jsonl

log = logging.getLogger(__name__)

IMPORTED, DUPLICATE, FAILED = "imported", "duplicate", "failed"
OUTCOMES = (IMPORTED, DUPLICATE, FAILED)
NOT_SENT = "not_sent"  # the group stopped (configuration error, lost lease) before this record was sent


class BatchClient(Protocol):
    """What the engine needs of ``cxone_provider.client.CXoneClient``."""

    def import_batch_json(self, contact_list_id: str, records_json: Sequence[str]) -> Any: ...


@dataclass(frozen=True)
class Row:
    row_number: int
    contact_id: str
    record_json: str
    listed_before: bool = False  # the list's state knew this contact before the run
    sent_unanswered: bool = False  # a killed run sent this very record and never read the answer


class Outcome(NamedTuple):
    """Where one record of a batch ended (a row of the group's outcome file)."""

    row_number: int
    contact_id: str
    outcome: str
    batch_id: str
    detail: str


@dataclass
class BatchMetrics:
    """Per-batch metrics: small, no personal data (they go to XCom, webhooks and the audit log)."""

    batch_id: str
    batch_index: int
    records: int
    imported: int = 0
    duplicates: int = 0
    failed: int = 0
    confirmed_on_retry: int = 0
    status: str = "pending"
    latency_ms: float = 0.0
    attempts: int = 0
    requests: int = 0
    rate_limited: int = 0
    uncounted_answers: int = 0  # 200s whose counts did not add up (each resolved like a lost answer)
    request_ids: list[str] = field(default_factory=list)
    error: str | None = None
    transient: bool = False
    resumed: bool = False
    started_at: str = ""
    finished_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A plain copy (``dataclasses.asdict`` deep-copies field by field: ten times slower, per batch)."""
        return {**self.__dict__, "request_ids": list(self.request_ids)}


class SettledBatch(NamedTuple):
    """What one batch of a group came to: its metrics, its records' outcomes and its audit entry (the provider's
    ``models.BatchResult`` is one request's answer)."""

    metrics: BatchMetrics
    outcomes: list[Outcome]
    audit: AuditEntry


BatchListener = Callable[[BatchMetrics, AuditEntry], None]
"""Told of each batch this task sent as soon as its outcome is final: (metrics, audit entry)."""
T = TypeVar("T")


class TransientImportError(RuntimeError):
    """Some batches could not be sent after the client's retries; the task should be retried."""


class CheckpointStore:
    """Batch outcomes and in-flight markers of *one group's batches*, as small JSON objects under the run's prefix.

    The checkpoint and marker folders are shared by every import task of the run, which run at the same time in
    separate processes. A store therefore only ever reads, writes and removes the files of the batch ids it was
    given, and removing a marker that is already gone is not an error (a retried task, or listing that lags on an
    object store). A batch costs two writes on the hot path (marker, outcome); what exists is listed once per
    group instead of asked per batch; markers of acknowledged batches are removed in bulk at the end
    (``tidy``). An outcome always wins over a marker.
    """

    def __init__(self, layout: RunLayout, batch_ids: Iterable[str]) -> None:
        self._fs = layout.root.fs
        self._own = frozenset(batch_ids)
        self._checkpoints = fs_path(layout.checkpoints_dir)
        self._inflight = fs_path(layout.inflight_dir)
        for directory in (self._checkpoints, self._inflight):
            self._fs.makedirs(directory, exist_ok=True)
        self._acknowledged = self._names(self._checkpoints)
        self._marked = self._names(self._inflight)
        self._lock = threading.Lock()

    def _names(self, directory: str) -> set[str]:
        """The batch ids of this group that have a file in ``directory`` (other groups' files are ignored)."""
        try:
            listed = self._fs.ls(directory, detail=False, refresh=True)
        except FileNotFoundError:
            return set()
        return {p.rsplit("/", 1)[-1].removesuffix(".json") for p in listed} & self._own

    def _file(self, directory: str, batch_id: str) -> str:
        return f"{directory}/{batch_id}.json"

    def _check_own(self, batch_id: str) -> None:
        if batch_id not in self._own:
            raise ValueError(f"batch {batch_id} does not belong to this group's checkpoint store")

    def load(self, batch_id: str) -> dict[str, Any] | None:
        if batch_id not in self._acknowledged:
            return None
        return json.loads(self._fs.cat_file(self._file(self._checkpoints, batch_id)))

    def save(self, batch_id: str, payload: dict[str, Any]) -> None:
        self._check_own(batch_id)
        put_bytes(self._fs, self._file(self._checkpoints, batch_id), json.dumps(payload, default=str).encode())
        with self._lock:
            self._acknowledged.add(batch_id)

    def mark_inflight(self, batch_id: str) -> None:
        self._check_own(batch_id)
        put_bytes(self._fs, self._file(self._inflight, batch_id), json.dumps({"batch_id": batch_id, "since": _now()}).encode())
        with self._lock:
            self._marked.add(batch_id)

    def was_inflight(self, batch_id: str) -> bool:
        return batch_id in self._marked

    def clear_inflight(self, batch_id: str) -> None:
        with self._lock:
            present = batch_id in self._marked
            self._marked.discard(batch_id)
        if present:
            self._remove([self._file(self._inflight, batch_id)])

    def tidy(self) -> None:
        """Remove the markers of this group's acknowledged batches (one bulk call)."""
        with self._lock:
            done = sorted(self._marked & self._acknowledged)
            self._marked -= set(done)
        if done:
            self._remove([self._file(self._inflight, b) for b in done])

    def _remove(self, paths: list[str]) -> None:
        """Delete files; one that is already gone is not an error (local fsspec raises, S3 does not)."""
        try:
            self._fs.rm(paths)
        except FileNotFoundError:
            for path in paths:
                try:
                    self._fs.rm_file(path)
                except FileNotFoundError:
                    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class GroupImporter:
    """Imports one group file's batches with bounded concurrency (the client holds the rate limiter)."""

    def __init__(
        self,
        client: BatchClient,
        contact_list_id: str,
        layout: RunLayout,
        *,
        concurrency: int = 8,
        fence: Callable[[], None] | None = None,
    ) -> None:
        """``fence()`` raises ``ListLeaseLostError`` once the run no longer holds the list: called before each batch
        (the client's fenced rate limiter also calls it before each request)."""
        self._client = client
        self._fence = fence
        self._contact_list_id = contact_list_id
        self._layout = layout
        self._concurrency = max(1, concurrency)
        self._stop_lock = threading.Lock()
        self.stopped_by: BaseException | None = None
        """Why the group stopped sending (a configuration error or a lost lease), or None."""

    def _stop(self, error: BaseException) -> None:
        with self._stop_lock:
            if self.stopped_by is None:
                self.stopped_by = error
                log.warning("stopped sending: %s", error)

    def run(self, group_index: int, on_batch: BatchListener | None = None) -> GroupSummary:
        """Import the group; write its outcomes, batch metrics and audit entries; return the group summary.

        Sending starts while the group file is still being read (a bounded window of batches is queued ahead of the
        senders). ``on_batch(metrics, audit_entry)`` is called as each batch sent by this task gets its final
        outcome (checkpointed), e.g. to send its CRM event at once; it is not called for batches resumed from a
        checkpoint, nor for transient failures, and an error it raises is logged, never raised."""
        path = self._layout.group_file(group_index)
        batch_ids, records = _group_batch_ids(path)
        self._checkpoints = CheckpointStore(self._layout, batch_ids)
        self._on_batch = on_batch
        log.info("group %d: %d records in %d batches, concurrency %d", group_index, records, len(batch_ids), self._concurrency)
        started = time.monotonic()
        self._progress = _Progress(group_index, len(batch_ids), started)
        metrics: list[BatchMetrics] = []
        audit: list[AuditEntry] = []
        with _OutcomeWriter(self._layout.outcome_file(group_index)) as outcomes, ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix=f"cxone-g{group_index}"
        ) as pool:
            for result in _bounded_map(pool, self._import_batch, _read_batches(path), window=4 * self._concurrency):
                outcomes.add(result.outcomes)  # written as they come: the task never holds the group's outcomes
                metrics.append(result.metrics)
                audit.append(result.audit)
        self._checkpoints.tidy()
        elapsed = time.monotonic() - started
        write_jsonl(self._layout.audit_part(f"import-group-{group_index:05d}"), audit)
        counts = outcomes.counts
        summary = group_summary(
            group_index, records, metrics, counts, elapsed,
            not_sent=int(counts.get(NOT_SENT, 0)),
            stopped={"error": type(self.stopped_by).__name__, "message": str(self.stopped_by)} if self.stopped_by else None,
        )
        write_json(self._layout.group_summary(group_index), summary, compact=True)
        log.info(
            "group %d done in %.1fs: %d imported, %d duplicate, %d failed, %d requests, %d answered 429",
            group_index, elapsed, summary[IMPORTED], summary[DUPLICATE], summary[FAILED], summary["requests"],
            summary["rate_limited"],
        )
        return summary

    def import_rows(self, batches: list[tuple[int, str, list[tuple]]]) -> list[SettledBatch]:
        """Send batches held in memory (``(batch_index, batch_id, members)`` as a group file gives them) with the same
        rules and checkpoints as a group's: records of updates the list no longer held, created after the group."""
        self._checkpoints = CheckpointStore(self._layout, [b[1] for b in batches])
        self._on_batch = None
        self._progress = _Progress(-1, len(batches), time.monotonic())
        return [self._import_batch(*batch) for batch in batches]

    # -- one batch ---------------------------------------------------------------------------------------------

    def _import_batch(self, batch_index: int, batch_id: str, members: list[tuple]) -> SettledBatch:
        metrics = BatchMetrics(batch_id=batch_id, batch_index=batch_index, records=len(members), started_at=_now())
        checkpoint = self._checkpoints.load(batch_id)
        if checkpoint is not None:
            metrics = BatchMetrics(**{**checkpoint["metrics"], "resumed": True})
            log.info("batch %s already acknowledged (%s); skipped", batch_id, metrics.status)
            # the same id is the same records; their rows are this run's (a corrected file may have moved them)
            row_of = {member[1]: member[0] for member in members}
            outcomes = [Outcome(row_of.get(o[1], o[0]), *o[1:]) for o in checkpoint["outcomes"]]
            return SettledBatch(metrics, outcomes, audit_entry(metrics))
        rows = [Row(*member) for member in members]
        if self.stopped_by is None and self._fence is not None:
            try:
                self._fence()
            except ListLeaseLostError as exc:
                self._stop(exc)
        if self.stopped_by is not None:
            return self._not_sent(rows, _BatchOutcomes(batch_id, metrics))
        uncertain = self._checkpoints.was_inflight(batch_id)
        self._checkpoints.mark_inflight(batch_id)
        outcomes = _BatchOutcomes(batch_id, metrics)
        try:
            self._send(rows, uncertain, outcomes)
        except ListLeaseLostError as exc:
            self._stop(exc)
        if self.stopped_by is not None and len(outcomes.items) < len(rows):
            return self._not_sent(rows, outcomes)
        metrics.finished_at = _now()
        for name, attr in ((IMPORTED, "imported"), (DUPLICATE, "duplicates"), (FAILED, "failed")):
            setattr(metrics, attr, sum(1 for o in outcomes.items if o.outcome == name))
        metrics.status = "failed" if metrics.failed == metrics.records else ("partial" if metrics.failed else "success")
        if metrics.transient:
            # Outcome not final: no checkpoint, so the task's retry sends this batch again.
            log.warning("batch %s failed transiently after %d attempts: %s", batch_id, metrics.attempts, metrics.error)
        else:
            self._checkpoints.save(batch_id, {"metrics": metrics.as_dict(), "outcomes": outcomes.items})
        result = SettledBatch(metrics, outcomes.items, audit_entry(metrics))
        if not metrics.transient and self._on_batch is not None:
            try:
                self._on_batch(metrics, result.audit)
            except Exception:  # noqa: BLE001 - a listener (CRM events) never fails the import
                log.warning("batch %s: the batch listener failed", batch_id, exc_info=True)
        self._progress.batch_done(metrics.records)
        return result

    def _not_sent(self, rows: list[Row], outcomes: _BatchOutcomes) -> SettledBatch:
        """The batch after the group stopped: its records without an answer end ``not_sent``; no checkpoint (a later
        run sends it again; its in-flight marker stays when a request of it may have reached CXone)."""
        metrics = outcomes.metrics
        answered = {o.row_number for o in outcomes.items}
        for row in rows:
            if row.row_number not in answered:
                outcomes.add(row, NOT_SENT, f"not sent: {type(self.stopped_by).__name__}")
        metrics.finished_at = _now()
        metrics.status, metrics.error, metrics.transient = NOT_SENT, str(self.stopped_by), False
        for name, attr in ((IMPORTED, "imported"), (DUPLICATE, "duplicates"), (FAILED, "failed")):
            setattr(metrics, attr, sum(1 for o in outcomes.items if o.outcome == name))
        self._progress.batch_done(metrics.records)
        return SettledBatch(metrics, outcomes.items, audit_entry(metrics))

    def _send(self, rows: list[Row], uncertain: bool, outcomes: _BatchOutcomes) -> None:
        metrics = outcomes.metrics
        metrics.requests += 1
        try:
            result = self._client.import_batch_json(self._contact_list_id, [r.record_json for r in rows])
        except CXoneConflictError as exc:
            self._account_call(metrics, exc)
            self._isolate(rows, uncertain or exc.outcome_uncertain, outcomes, exc.duplicates, DUPLICATE)
            return
        except CXoneValidationError as exc:
            self._account_call(metrics, exc)
            self._isolate(rows, uncertain, outcomes, parse_record_issues(exc.errors), FAILED, reason=str(exc))
            return
        except CXoneError as exc:
            self._account_call(metrics, exc)
            if is_configuration_error(exc):
                self._stop(exc)  # no retry can fix it: the caller ends the batch not_sent
                if not (exc.outcome_uncertain or uncertain):
                    self._checkpoints.clear_inflight(outcomes.batch_id)
                return
            metrics.transient = True
            metrics.error = str(exc)
            created_earlier = any(o.outcome == IMPORTED for o in outcomes.items)
            if not (exc.outcome_uncertain or uncertain or created_earlier):
                # A definitive refusal and nothing of this batch created: the retry starts clean.
                self._checkpoints.clear_inflight(outcomes.batch_id)
            for row in rows:
                outcomes.add(row, FAILED, str(exc))
            return
        self._account_call(metrics, result)
        if result.request_id:
            metrics.request_ids.append(result.request_id)
        metrics.latency_ms += result.latency_ms
        uncertain = uncertain or result.outcome_uncertain
        answer = _read_answer(rows, result)
        if answer.doubt:
            metrics.uncounted_answers += 1
            log.warning("batch %s: CXone's answer does not add up (%s); %s", outcomes.batch_id, answer.doubt,
                        "sending it again as after a lost answer" if metrics.uncounted_answers == 1 else "retried later")
            if metrics.uncounted_answers == 1:
                self._send(rows, True, outcomes)  # its records may have been created: duplicates of it are ours
            else:
                metrics.transient = True
                metrics.error = f"CXone's answer did not add up twice ({answer.doubt}); the batch is sent again"
                for row in rows:
                    outcomes.add(row, FAILED, metrics.error)
            return
        for i, row in enumerate(rows):
            if i in answer.duplicates:
                outcomes.add(row, DUPLICATE, _issue_text(answer.duplicates[i]), uncertain=uncertain)
            elif i in answer.errors:
                issue = answer.errors[i]
                outcomes.add(row, FAILED, f"CXone refused the record: {_issue_text(issue)}")
                if issue.transient:
                    metrics.transient = True
                    metrics.error = f"CXone refused {len(answer.errors)} record(s), some for now: {_issue_text(issue)}"
            else:
                outcomes.add(row, IMPORTED, "")
        if answer.errors and not metrics.transient:
            metrics.error = f"CXone refused {len(answer.errors)} record(s): {_issue_text(next(iter(answer.errors.values())))}"

    def _isolate(
        self,
        rows: list[Row],
        uncertain: bool,
        outcomes: _BatchOutcomes,
        named_items: Sequence[Any],
        outcome: str,
        reason: str = "",
    ) -> None:
        """Set aside the records the server named (or find them by halving) and send the rest again."""
        named = _named_indexes(rows, named_items)
        if named:
            for i, detail in named.items():
                outcomes.add(rows[i], outcome, detail or reason, uncertain=uncertain)
            rest = [r for i, r in enumerate(rows) if i not in named]
            if rest:
                self._send(rest, uncertain, outcomes)
        elif len(rows) == 1:
            outcomes.add(rows[0], outcome, reason or "duplicate", uncertain=uncertain)
        else:
            middle = len(rows) // 2
            self._send(rows[:middle], uncertain, outcomes)
            self._send(rows[middle:], uncertain, outcomes)

    @staticmethod
    def _account_call(metrics: BatchMetrics, result: Any) -> None:
        metrics.attempts += int(getattr(result, "attempts", 1) or 1)
        metrics.rate_limited += int(getattr(result, "rate_limited", 0) or 0)
        request_id = getattr(result, "request_id", None)
        if request_id and not hasattr(result, "created"):
            metrics.request_ids.append(request_id)


@dataclass
class _BatchOutcomes:
    """The outcomes of one batch as they become known, and the one rule that turns a duplicate into ``imported``."""

    batch_id: str
    metrics: BatchMetrics
    items: list[Outcome] = field(default_factory=list)

    def add(self, row: Row, outcome: str, detail: str, *, uncertain: bool = False) -> None:
        """Record ``row``'s outcome. A duplicate of a batch whose earlier attempt may have reached the server is
        our own record from that attempt (``imported``, counted as ``confirmed_on_retry``), and so is one a killed
        run sent exactly so without reading the answer, unless the list held the contact before this run: then
        that attempt created nothing of it."""
        if outcome == DUPLICATE and (uncertain or row.sent_unanswered) and not row.listed_before:
            self.metrics.confirmed_on_retry += 1
            outcome, detail = IMPORTED, "confirmed_on_retry"
        self.items.append(Outcome(row.row_number, row.contact_id, outcome, self.batch_id, detail))


class _Progress:
    """Logs a group's progress at each tenth of its batches (not per batch: a list has thousands)."""

    def __init__(self, group_index: int, batches: int, started: float) -> None:
        self._group, self._batches, self._started = group_index, batches, started
        self._done = self._records = 0
        self._lock = threading.Lock()

    def batch_done(self, records: int) -> None:
        with self._lock:
            self._done += 1
            self._records += records
            step = max(1, self._batches // 10)
            if self._done % step and self._done != self._batches:
                return
            elapsed = max(time.monotonic() - self._started, 1e-9)
            log.info(
                "group %d: %d/%d batches, %d records, %.0f records/s",
                self._group, self._done, self._batches, self._records, self._records / elapsed,
            )


READ_ROWS = 20_000  # rows decoded at a time while the group file is read (a few batches' worth of memory)


def _group_batch_ids(path: Any) -> tuple[list[str], int]:
    """The group's batch ids in order and its record count, from the ``batch_id`` column alone."""
    with path.open("rb") as handle:
        column = pq.read_table(handle, columns=["batch_id"])["batch_id"]
    return column.unique().to_pylist(), len(column)


def _read_batches(path: Any) -> Iterator[tuple[int, str, list[tuple[int, str, str, bool, bool]]]]:
    """A group file's batches in order, decoded ``READ_ROWS`` at a time:
    (batch_index, batch_id, [(row_number, contact_id, record_json, listed_before, sent_unanswered)]). A batch's rows
    are contiguous; the rows of
    the last batch of a read are held back until the next read shows that batch is whole."""
    held: pa.Table | None = None
    with path.open("rb") as handle:
        for chunk in pq.ParquetFile(handle).iter_batches(batch_size=READ_ROWS):
            table = pa.Table.from_batches([chunk])
            if held is not None:
                table = pa.concat_tables([held, table])
            index = table.column("batch_index").to_numpy()
            last = int(np.searchsorted(index, index[-1])) if len(index) else 0  # batch indexes ascend in a group
            yield from _whole_batches(table.slice(0, last))
            held = table.slice(last)
    if held is not None:
        yield from _whole_batches(held)


def _whole_batches(table: pa.Table) -> Iterator[tuple[int, str, list[tuple[int, str, str, bool, bool]]]]:
    """The batches of rows that hold only whole batches: five column conversions, then a slice per batch."""
    if not table.num_rows:
        return
    index = table.column("batch_index").to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(index)) + 1])
    ends = np.append(starts[1:], len(index))
    batch_ids = table.column("batch_id").take(pa.array(starts)).to_pylist()
    members = list(zip(table.column("row_number").to_pylist(), table.column("contact_id").to_pylist(),
                       table.column("record_json").to_pylist(), table.column("listed_before").to_pylist(),
                       table.column("sent_unanswered").to_pylist(), strict=True))
    for start, end, batch_id in zip(starts.tolist(), ends.tolist(), batch_ids, strict=True):
        yield int(index[start]), batch_id, members[start:end]


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[..., T], items: Iterable[tuple], *, window: int) -> Iterator[T]:
    """``fn(*item)`` for every item on ``pool``, results yielded in the items' order as they are done, with at most
    ``window`` items queued or running at once: the reader stays just ahead of the senders instead of loading the
    whole group first, and a slow item never holds the others back (only its own result waits to be yielded)."""
    slots = threading.BoundedSemaphore(window)
    pending: deque[Future[T]] = deque()
    for item in items:
        slots.acquire()
        future = pool.submit(fn, *item)
        future.add_done_callback(lambda _: slots.release())
        pending.append(future)
        while pending and pending[0].done():
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


OUTCOME_SCHEMA = pa.schema([(name, pa.int64() if name == "row_number" else pa.string()) for name in Outcome._fields])
OUTCOME_FLUSH_ROWS = 20_000


class _OutcomeWriter:
    """A group's outcome file, written ``OUTCOME_FLUSH_ROWS`` rows at a time as batches finish. It is written under
    a ``.partial`` name and renamed when complete: an outcome file that exists is always whole (the report and a
    task retry rely on that)."""

    def __init__(self, path: Any) -> None:
        self._path = path
        self._partial = path.with_name(path.name + ".partial")
        self._rows: list[Outcome] = []
        self.counts: dict[str, int] = {}

    def __enter__(self) -> _OutcomeWriter:
        ensure_parent(self._partial)
        self._handle = self._partial.open("wb")
        self._writer = pq.ParquetWriter(self._handle, OUTCOME_SCHEMA)
        return self

    def add(self, outcomes: list[Outcome]) -> None:
        self._rows.extend(outcomes)
        for o in outcomes:
            self.counts[o.outcome] = self.counts.get(o.outcome, 0) + 1
        if len(self._rows) >= OUTCOME_FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows, strict=True))
            self._writer.write_table(pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, OUTCOME_SCHEMA, strict=True)], schema=OUTCOME_SCHEMA
            ))
            self._rows = []

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()
            self._handle.close()
        if exc_type is None:
            fs = self._path.fs
            fs.mv(fs_path(self._partial), fs_path(self._path))
        else:
            self._partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Answer:
    """A 200 read whole: which rows it names a duplicate and which it refuses, or why it proves nothing."""

    duplicates: dict[int, RecordIssue]
    errors: dict[int, RecordIssue]
    doubt: str  # empty when the answer adds up


def _read_answer(rows: list[Row], result: Any) -> _Answer:
    """Match the answer's ``warnings`` and ``errors`` to the batch's rows and check its counts add up: each item
    names one record of the batch, no record twice, and ``recordsCreated`` is the records neither list names."""
    duplicates, unmatched_warnings = _name_rows(rows, result.duplicates)
    errors, unmatched_errors = _name_rows(rows, getattr(result, "errors", ()))
    doubts = []
    if unmatched_warnings or unmatched_errors:
        doubts.append(f"{unmatched_warnings + unmatched_errors} named record(s) not in the batch")
    both = duplicates.keys() & errors.keys()
    if both:
        doubts.append(f"{len(both)} record(s) named both a duplicate and an error")
    named_items = len(result.duplicates) + len(getattr(result, "errors", ()))
    if named_items != len(duplicates) + len(errors) + unmatched_warnings + unmatched_errors:
        doubts.append("a record named more than once")
    expected = len(rows) - len(duplicates.keys() | errors.keys())
    if result.created != expected:
        doubts.append(f"{result.created} created of {len(rows)} sent, {len(duplicates)} duplicate, {len(errors)} refused")
    return _Answer(duplicates, errors, "; ".join(doubts))


def _name_rows(rows: list[Row], items: Sequence[RecordIssue]) -> tuple[dict[int, RecordIssue], int]:
    """The row each item names (by index in this request and/or contactId) and how many items name none."""
    by_id = {row.contact_id: i for i, row in enumerate(rows)}
    named: dict[int, RecordIssue] = {}
    unmatched = 0
    for item in items:
        index = item.index
        if isinstance(index, int) and 0 <= index < len(rows) and (item.contact_id is None or rows[index].contact_id == item.contact_id):
            named[index] = item
        elif item.contact_id is not None and item.contact_id in by_id:
            named[by_id[item.contact_id]] = item
        else:
            unmatched += 1
    return named, unmatched


def _issue_text(item: RecordIssue) -> str:
    """How a record the server named is described in its outcome's detail: field, code and message."""
    return " ".join(p for p in (getattr(item, "field", None), getattr(item, "code", None), getattr(item, "message", None)) if p)


def _named_indexes(rows: list[Row], items: Sequence[Any]) -> dict[int, str]:
    """Map warnings/errors naming records (by index in this request and/or contactId) to row positions."""
    by_id: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_id.setdefault(row.contact_id, []).append(i)
    named: dict[int, str] = {}
    for item in items:
        index = getattr(item, "index", None)
        contact_id = getattr(item, "contact_id", None)
        detail = _issue_text(item)
        if isinstance(index, int) and 0 <= index < len(rows) and (contact_id is None or rows[index].contact_id == contact_id):
            named[index] = detail
        elif contact_id is not None and contact_id in by_id:
            for i in by_id[contact_id]:
                named[i] = detail
    return named


def group_summary(group_index: int, records: int, metrics: Sequence[BatchMetrics], counts: Mapping[str, int],
                  seconds: float, **profile: Any) -> GroupSummary:
    """What a group came to, for either API profile: its counts by outcome and its batches' (or uploaded files')
    metrics; ``profile``: the profile's own fields (``GroupSummary`` names them)."""
    summary: GroupSummary = {
        "group_index": group_index,
        "records": records,
        "batches": len(metrics),
        IMPORTED: int(counts.get(IMPORTED, 0)),
        DUPLICATE: int(counts.get(DUPLICATE, 0)),
        FAILED: int(counts.get(FAILED, 0)),
        "transient_failed_batches": sum(1 for m in metrics if m.transient),
        "resumed_batches": sum(1 for m in metrics if m.resumed),
        "requests": sum(m.requests for m in metrics),
        "rate_limited": sum(m.rate_limited for m in metrics),
        "seconds": round(seconds, 3),
        "batch_metrics": [m.as_dict() for m in metrics],
    }
    return {**summary, **profile}


def audit_entry(metrics: BatchMetrics, *, kind: str = "batch", details: Mapping[str, Any] | None = None) -> AuditEntry:
    """The batch's audit entry (also the ``auditTrailer`` of its CRM event); ``kind`` and ``details``: an uploaded
    file's (the call_lists profile) instead of a records batch's."""
    return {
        "auditId": str(uuid.uuid4()),
        "timestamp": metrics.finished_at or _now(),
        "kind": kind,
        "batchId": metrics.batch_id,
        "batchIndex": metrics.batch_index,
        "recordCount": metrics.records,
        "status": metrics.status if not metrics.transient else "failed_transient",
        "latencyMs": round(metrics.latency_ms, 2),
        "details": dict(details) if details is not None else {
            "imported": metrics.imported,
            "duplicates": metrics.duplicates,
            "failed": metrics.failed,
            "confirmedOnRetry": metrics.confirmed_on_retry,
            "attempts": metrics.attempts,
            "requests": metrics.requests,
            "rateLimited": metrics.rate_limited,
            "requestIds": metrics.request_ids[:10],
            "error": metrics.error,
            "resumed": metrics.resumed,
        },
    }
