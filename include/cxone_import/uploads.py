"""The import of one group through calling-list uploads (the ``call_lists`` profile): plain Python, no Airflow.

An upload job reports no per-record result, so outcomes come from reading the list back:

1. ``submit``: note which of the group's contactIds the list already holds (checkpointed once, before anything is
   uploaded), write the others as CSV files within the documented limits and upload each with
   ``forceOverwrite: false``. Every step is checkpointed in ``uploads/group-NNNNN/state.json`` *before* the next
   one: the job id as soon as the server names it, and an "uploading" mark before a file leaves. A file that has a
   job, was refused, or may have reached the server (5xx, dropped answer, a task killed mid-upload) is never
   uploaded again.
2. Someone waits for the jobs (the DAG's trigger, on Airflow's triggerer, so no worker slot is held).
3. ``reconcile``: read the list again. Present before = ``duplicate``; present after and not before = ``imported``;
   absent = ``failed`` with why (``not present after job <id> completed``, a cancelled job, a refused file ...).

The outcome, summary and audit files have the shapes the records engine writes, so the report, the webhook
events and the list's change-detection state work the same for both profiles.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pandas as pd
import pyarrow.parquet as pq

from cxone_provider.errors import CXoneError

from include.cxone_import.call_list_sync import ids_on_list
from include.cxone_import.engine import DUPLICATE, FAILED, IMPORTED, BatchMetrics, Outcome, audit_entry, group_summary
from include.cxone_import.handoffs import AuditEntry, GroupSummary
from include.cxone_import.pipeline import batch_id
from include.cxone_import.sources import CUSTOM_PREFIX, PHONE_PREFIX, phone_type_of
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_json, read_parquet, write_json, write_jsonl, write_parquet

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FILE_RECORDS = 500_000
CONSENT_COLUMN, OPT_IN_COLUMN = "consentTimestamp", "optInStatus"
PRESENT_BEFORE = "present-before-upload"  # the batch id of records the list held before anything was uploaded
SUBMITTED, UNCERTAIN, REFUSED, UPLOADING, NOT_SENT = "submitted", "uncertain", "refused", "uploading", "not_sent"
COMPLETE, CANCELLED, PENDING = "complete", "cancelled", "pending"
MAX_RECOVERY_ROUNDS = 3
"""How often the rows of a cancelled job, or of an upload whose reply was lost, that the list does not hold are
uploaded again in a new file within the run; rows still absent after that end ``failed``."""


@dataclass(frozen=True)
class UploadOptions:
    """What every upload names besides its file (the connection's extras and the run's params)."""

    expiration_days: int
    skill_id: str | None = None
    default_time_zone: str | None = None
    start_skill: bool = False
    send_email: bool = False

    def expiration_date(self) -> datetime:
        """The ``expirationDate`` of a file uploaded now."""
        return datetime.now(timezone.utc) + timedelta(days=self.expiration_days)


class UploadClient(Protocol):
    """What the uploader needs of ``cxone_provider.call_lists.CallListClient``."""

    def upload(self, list_id: str, csv_bytes: bytes, *, file_name: str, expiration_date: datetime,
               skill_id: str | None = None, default_time_zone: str | None = None, start_skill: bool = False,
               send_email: bool = False) -> str: ...

    def iter_external_ids(self, list_id: str) -> Iterator[str]: ...


@dataclass(frozen=True)
class CallListColumns:
    """The calling list of a run and its CSV columns (decided once, in ``chunk``; ``call_list.json``)."""

    list_id: str
    list_name: str
    external_id_column: str
    phone_columns: dict[str, list[str]]  # phone type -> CSV columns (``mobile_phone``, ``mobile_phone_2``)
    custom_columns: list[str]
    created: bool = False

    @classmethod
    def for_columns(cls, list_id: str, list_name: str, external_id_column: str, canonical_columns: Iterable[str],
                    *, created: bool = False) -> CallListColumns:
        """CSV columns for the canonical columns of the valid records: one per phone column (by type) and custom
        field, plus consent and opt-in (kept on the list as other fields)."""
        phones: dict[str, list[str]] = {}
        customs: list[str] = []
        for column in canonical_columns:
            if column.startswith(PHONE_PREFIX):
                kind = phone_type_of(column)
                taken = phones.setdefault(kind, [])
                taken.append(f"{kind}_phone" if not taken else f"{kind}_phone_{len(taken) + 1}")
            elif column.startswith(CUSTOM_PREFIX):
                customs.append(column[len(CUSTOM_PREFIX):])
        return cls(list_id, list_name, external_id_column, phones, customs, created)

    @property
    def header(self) -> list[str]:
        phones = [c for columns in self.phone_columns.values() for c in columns]
        return [self.external_id_column, *phones, *self.custom_columns, CONSENT_COLUMN, OPT_IN_COLUMN]

    def destination_mappings(self) -> list[dict[str, str]]:
        """Which CSV column holds a phone (GUESS: fieldName is the destination's name on the list, taken as the
        column's own name)."""
        return [{"fieldName": c, "fieldValue": c} for columns in self.phone_columns.values() for c in columns]

    def custom_field_mappings(self) -> list[dict[str, str]]:
        return [{"fieldName": c, "fieldValue": c} for c in [*self.custom_columns, CONSENT_COLUMN, OPT_IN_COLUMN]]

    def csv_row(self, record: dict[str, Any]) -> list[str]:
        """A record in the API shape as a CSV row: the k-th phone of a type goes to that type's k-th column."""
        cells = {self.external_id_column: record["contactId"], CONSENT_COLUMN: record.get("consentTimestamp", ""),
                 OPT_IN_COLUMN: record.get("optInStatus", "")}
        seen: dict[str, int] = {}
        for phone in record.get("phoneNumbers") or []:
            columns = self.phone_columns.get(phone.get("type"), [])
            k = seen.get(phone.get("type"), 0)
            if k < len(columns):
                cells[columns[k]] = phone.get("number", "")
                seen[phone.get("type")] = k + 1
        cells.update({k: v for k, v in (record.get("customFields") or {}).items() if k in self.custom_columns})
        return [cells.get(c, "") for c in self.header]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> CallListColumns:
        return cls(**value)


@dataclass(frozen=True)
class UploadFile:
    """One CSV file of a group: its deterministic id (list + the file's lines as uploaded), rows and bytes."""

    index: int
    file_id: str
    row_numbers: list[int]
    contact_ids: list[str]
    content: bytes
    recovery_round: int = 0

    @property
    def file_name(self) -> str:
        return f"cxone-import-{self.file_id}.csv"


def csv_files(call_list: CallListColumns, rows: Sequence[tuple[int, str, str]], *, records_per_file: int,
              max_bytes: int = MAX_FILE_BYTES, recovery_round: int = 0, first_index: int = 0) -> list[UploadFile]:
    """The group's records as CSV files of at most ``records_per_file`` records and ``max_bytes`` bytes, each with
    the header (the same rows always give the same files and ids; a recovery round's files carry their round in
    their id, so a re-upload of the same rows is a file of its own)."""
    files: list[UploadFile] = []
    header = _csv_line(call_list.header)
    numbers: list[int] = []
    ids: list[str] = []
    lines: list[bytes] = []
    size = len(header)

    def close() -> None:
        nonlocal numbers, ids, lines, size
        if numbers:
            file_id = batch_id(call_list.list_id, [header, *lines]) + (f"-r{recovery_round}" if recovery_round else "")
            files.append(UploadFile(first_index + len(files), file_id, numbers, ids, header + b"".join(lines),
                                    recovery_round))
        numbers, ids, lines, size = [], [], [], len(header)

    for row_number, contact_id, record_json in rows:
        line = _csv_line(call_list.csv_row(json.loads(record_json)))
        if numbers and (len(numbers) >= min(records_per_file, MAX_FILE_RECORDS) or size + len(line) > max_bytes):
            close()
        numbers.append(int(row_number))
        ids.append(contact_id)
        lines.append(line)
        size += len(line)
    close()
    return files


def _csv_line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")


@dataclass
class GroupState:
    """What a group's upload has done so far (``uploads/group-NNNNN/state.json``): only its own task writes it."""

    group_index: int
    before_taken: bool = False
    submitted_at: float | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file_id -> {state, job_id, job_state, ...}
    reconciled: bool = False
    recovery_rounds: int = 0  # rounds planned: round r's rows are in uploads/group-NNNNN/round-RR.parquet

    def jobs(self) -> list[str]:
        return [f["job_id"] for f in self.files.values() if f["state"] == SUBMITTED]

    def settled_jobs(self) -> set[str]:
        """Jobs an earlier wait saw complete or cancelled (a recovery round waits only for its own)."""
        return {f["job_id"] for f in self.files.values() if f.get("job_state") in (COMPLETE, CANCELLED)}

    def uncertain(self) -> bool:
        return any(f["state"] == UNCERTAIN for f in self.files.values())

    def not_sent(self) -> list[str]:
        return [i for i, f in self.files.items() if f["state"] == NOT_SENT]


class GroupUploader:
    """Uploads one group's records to a calling list and reconciles them by reading the list back."""

    def __init__(self, client: UploadClient, call_list: CallListColumns, layout: RunLayout, *,
                 records_per_file: int, options: UploadOptions) -> None:
        self._client = client
        self._call_list = call_list
        self._layout = layout
        self._records_per_file = records_per_file
        self._options = options

    @property
    def list_id(self) -> str:
        return self._call_list.list_id

    # -- files under the run ----------------------------------------------------------------------------------

    def load_state(self, group_index: int) -> GroupState:
        path = self._layout.upload_state(group_index)
        return GroupState(**read_json(path)) if path.exists() else GroupState(group_index)

    def _save(self, state: GroupState) -> None:
        write_json(self._layout.upload_state(state.group_index), asdict(state))

    def _group_rows(self, group_index: int) -> list[tuple[int, str, str]]:
        """The group's new records, then the changed records whose old version sync removed (``updates.parquet``,
        written before the group's first upload: see ``call_list_sync``)."""
        rows = []
        for path in (self._layout.group_file(group_index), self._updates_file(group_index)):
            if path.exists():
                with path.open("rb") as handle:
                    table = pq.read_table(handle, columns=["row_number", "contact_id", "record_json"])
                rows += zip(table["row_number"].to_pylist(), table["contact_id"].to_pylist(),
                            table["record_json"].to_pylist(), strict=True)
        return rows

    def _updates_file(self, group_index: int) -> Any:
        return self._layout.upload_updates(group_index)

    def _update_rows(self, group_index: int) -> set[int]:
        path = self._updates_file(group_index)
        return set(read_parquet(path, columns=["row_number"])["row_number"].tolist()) if path.exists() else set()

    def _present(self, group_ids: set[str]) -> set[str]:
        """The group's contactIds the list holds now."""
        return ids_on_list(self._client, self._call_list.list_id, group_ids)

    def _before(self, group_index: int) -> set[str]:
        return set(read_parquet(self._layout.upload_before(group_index))["contact_id"])

    def _round_file(self, group_index: int, recovery_round: int) -> Any:
        return self._layout.upload_round(group_index, recovery_round)

    def _files(self, group_index: int, state: GroupState) -> tuple[list[tuple[int, str, str]], list[UploadFile]]:
        """The group's rows and every file of the group: those of the first upload (the rows the list did not hold
        before), then each recovery round's (the rows it uploads again), in that order."""
        rows = self._group_rows(group_index)
        before = self._before(group_index)
        files = csv_files(self._call_list, [r for r in rows if r[1] not in before],
                          records_per_file=self._records_per_file)
        for recovery_round in range(1, state.recovery_rounds + 1):
            again = set(read_parquet(self._round_file(group_index, recovery_round))["row_number"].tolist())
            files += csv_files(self._call_list, [r for r in rows if r[0] in again],
                               records_per_file=self._records_per_file, recovery_round=recovery_round,
                               first_index=len(files))
        return rows, files

    # -- 1. submit --------------------------------------------------------------------------------------------

    def submit(self, group_index: int) -> GroupState:
        """Upload every file of the group that was never sent (a file that could not be sent stays ``not_sent``:
        it fails in this attempt's reconciliation and the task's retry sends it)."""
        state = self.load_state(group_index)
        if state.reconciled and not state.not_sent():
            return state
        if not state.before_taken:
            rows = self._group_rows(group_index)
            present = self._present({r[1] for r in rows})
            write_parquet(self._layout.upload_before(group_index),
                          pd.DataFrame({"contact_id": pd.Series(sorted(present), dtype="str")}))
            state.before_taken = True
            self._save(state)
            log.info("group %d: %d of %d records already on list %s", group_index, len(present), len(rows),
                     self._call_list.list_id)
        _, files = self._files(group_index, state)
        for upload in files:
            entry = state.files.get(upload.file_id)
            if entry is not None and entry["state"] == UPLOADING:
                # an earlier attempt died while this file was on its way: it may have arrived, never send it again
                entry.update(state=UNCERTAIN, error="the task ended while the file was being uploaded")
                self._save(state)
            if entry is not None and entry["state"] != NOT_SENT:
                continue
            entry = {"state": UPLOADING, "index": upload.index, "records": len(upload.row_numbers),
                     "bytes": len(upload.content), "file_name": upload.file_name, "started_at": _now(),
                     "round": upload.recovery_round}
            state.files[upload.file_id] = entry
            state.submitted_at = state.submitted_at or time.time()
            state.reconciled = False  # this file's records get their outcome from a new read-back
            self._save(state)
            started = time.monotonic()
            try:
                options = self._options
                job_id = self._client.upload(
                    self._call_list.list_id, upload.content, file_name=upload.file_name,
                    expiration_date=options.expiration_date(), skill_id=options.skill_id,
                    default_time_zone=options.default_time_zone, start_skill=options.start_skill,
                    send_email=options.send_email)
            except CXoneError as exc:
                entry.update(latency_ms=_ms(started), attempts=exc.attempts, error=str(exc),
                             status_code=getattr(exc, "status_code", None))
                if exc.outcome_uncertain:
                    entry["state"] = UNCERTAIN
                elif getattr(exc, "status_code", None) is not None and 400 <= exc.status_code < 500 and exc.status_code != 429:
                    entry["state"] = REFUSED
                else:  # never reached the server, or still rate limited after the retries: the task retry sends it
                    entry["state"] = NOT_SENT
                log.warning("group %d: file %d (%d records): %s", group_index, upload.index,
                            len(upload.row_numbers), entry["state"])
            else:
                entry.update(state=SUBMITTED, job_id=job_id, latency_ms=_ms(started))
                log.info("group %d: file %d (%d records, %d bytes) uploaded as job %s", group_index, upload.index,
                         len(upload.row_numbers), len(upload.content), job_id)
            self._save(state)
        return state

    # -- 3. reconcile -----------------------------------------------------------------------------------------

    def reconcile(self, group_index: int, job_states: dict[str, str], *, timeout_s: float | None = None,
                  recover: bool = True) -> GroupSummary | None:
        """
        Read the list again and settle every record of the group.

        Rows of a cancelled job, or of an upload whose reply was lost, that the list does not hold are planned as a
        new recovery round (at most :data:`MAX_RECOVERY_ROUNDS`): then nothing is written and None says "submit and
        wait again". Otherwise write the outcome, summary and audit files like the records engine and return the
        group summary.
        """
        state = self.load_state(group_index)
        for entry in state.files.values():
            if entry.get("job_id") in job_states:
                entry["job_state"] = job_states[entry["job_id"]]
        rows, files = self._files(group_index, state)
        before = self._before(group_index)
        after = self._present({r[1] for r in rows})
        owner = {n: upload for upload in files for n in upload.row_numbers}  # a row's last file decides it
        absent = [n for n, c, _ in rows if n in owner and c not in after]
        again = [n for n in absent if _recoverable(state.files.get(owner[n].file_id))]
        if again and recover and state.recovery_rounds < MAX_RECOVERY_ROUNDS:
            state.recovery_rounds += 1
            write_parquet(self._round_file(group_index, state.recovery_rounds),
                          pd.DataFrame({"row_number": pd.Series(again, dtype="int64")}))
            state.reconciled = False
            self._save(state)
            log.warning("group %d: %d records of cancelled or unanswered uploads are not on list %s; uploading them "
                        "again (recovery round %d of %d)", group_index, len(again), self._call_list.list_id,
                        state.recovery_rounds, MAX_RECOVERY_ROUNDS)
            return None
        outcomes: list[Outcome] = []
        metrics: list[BatchMetrics] = []
        for row_number, contact_id, _ in rows:
            if contact_id in before:
                outcomes.append(Outcome(int(row_number), contact_id, DUPLICATE, PRESENT_BEFORE, "on the list before the upload"))
        for upload in files:
            entry = state.files.get(upload.file_id) or {"state": NOT_SENT}
            reason = _absence_reason(entry, timeout_s)
            owned = [(n, c) for n, c in zip(upload.row_numbers, upload.contact_ids, strict=True) if owner[n] is upload]
            file_outcomes = [
                Outcome(n, c, IMPORTED, upload.file_id, "") if c in after else Outcome(n, c, FAILED, upload.file_id, reason)
                for n, c in owned
            ]
            outcomes += file_outcomes
            metrics.append(_file_metrics(upload, entry, file_outcomes, len(upload.row_numbers) - len(owned)))
        frame = pd.DataFrame(outcomes, columns=list(Outcome._fields)).astype({"row_number": "int64"})
        updates = frame["row_number"].isin(self._update_rows(group_index))
        if updates.any():  # changed records: sync accounts for them (``call_list_sync``), not the group's outcomes
            write_parquet(self._layout.upload_update_outcomes(group_index),
                          frame[updates][["row_number", "outcome", "detail"]].assign(at=_now()))
        frame = frame[~updates].reset_index(drop=True)
        write_parquet(self._layout.outcome_file(group_index), frame)
        write_jsonl(self._layout.audit_part(f"import-group-{group_index:05d}"), (_audit_entry(m, state) for m in metrics))
        summary = group_summary(
            group_index, len(frame), metrics, frame["outcome"].value_counts(),
            time.time() - (state.submitted_at or time.time()),
            jobs={f["job_id"]: f.get("job_state", PENDING) for f in state.files.values() if f.get("job_id")},
            recovery_rounds=state.recovery_rounds,
        )
        write_json(self._layout.outcome_file(group_index).with_suffix(".json"), summary)
        state.reconciled = True  # files still not_sent are sent by the task's retry, which reconciles again
        self._save(state)
        log.info("group %d reconciled from list %s: %d imported, %d duplicate, %d failed (%d recovery rounds)",
                 group_index, self._call_list.list_id, summary[IMPORTED], summary[DUPLICATE], summary[FAILED],
                 state.recovery_rounds)
        return summary


def _recoverable(entry: dict[str, Any] | None) -> bool:
    """A file whose absent rows may be uploaded again: its job was cancelled (it imported nothing), or its reply
    was lost (no job id; the list's jobs have settled, so what is absent now was never imported)."""
    if entry is None:
        return False
    return entry["state"] == UNCERTAIN or (entry["state"] == SUBMITTED and entry.get("job_state") == CANCELLED)


def _absence_reason(entry: dict[str, Any], timeout_s: float | None) -> str:
    """Why a record of this file is not on the list."""
    job_id = entry.get("job_id")
    if entry["state"] == SUBMITTED:
        job_state = entry.get("job_state", PENDING)
        if job_state == COMPLETE:
            return f"not present after job {job_id} completed"
        if job_state == CANCELLED:
            return f"job {job_id} was cancelled"
        return f"job {job_id} did not complete within {timeout_s or 0:g}s; it may still import the file"
    if entry["state"] == REFUSED:
        return f"upload refused: {entry.get('error')}"
    if entry["state"] == UNCERTAIN:
        return f"not present after the list's jobs settled; the upload got no job id ({entry.get('error')})"
    return f"not uploaded ({entry.get('error') or 'not sent'}); the task's retry sends it"


def _file_metrics(upload: UploadFile, entry: dict[str, Any], outcomes: list[Outcome], uploaded_again: int) -> BatchMetrics:
    """A file's metrics over the records it settled (those it lost to a recovery round's file count there)."""
    imported = sum(1 for o in outcomes if o.outcome == IMPORTED)
    failed = len(outcomes) - imported
    error = entry.get("error") or (None if not failed else entry.get("job_state", entry["state"]))
    if uploaded_again:
        error = f"{uploaded_again} records uploaded again in a recovery round" + (f"; {error}" if error else "")
    return BatchMetrics(
        batch_id=upload.file_id,
        batch_index=upload.index,
        records=len(outcomes),
        imported=imported,
        failed=failed,
        status=("failed" if outcomes and failed == len(outcomes) else "partial") if failed or uploaded_again else "success",
        latency_ms=float(entry.get("latency_ms") or 0.0),
        attempts=int(entry.get("attempts") or 1),
        requests=1 if entry["state"] != NOT_SENT else 0,
        request_ids=[f"job:{entry['job_id']}"] if entry.get("job_id") else [],
        error=error,
        started_at=entry.get("started_at") or "",
        finished_at=_now(),
    )


def _audit_entry(metrics: BatchMetrics, state: GroupState) -> AuditEntry:
    """An uploaded file's audit entry."""
    return audit_entry(metrics, kind="upload", details={
        "imported": metrics.imported,
        "failed": metrics.failed,
        "jobId": next((f.get("job_id") for i, f in state.files.items() if i == metrics.batch_id), None),
        "attempts": metrics.attempts,
        "error": metrics.error,
    })


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 2)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()

