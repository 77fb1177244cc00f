"""Keeping a calling list in sync (the ``call_lists`` profile): plain Python, no Airflow.

The plan is the records profile's (``sync.plan_sync``, ``sync/ops-{g}.parquet``); what differs is how it is sent.
The calling-list API has no update and reports nothing per record, so every step is verified by reading the list:

1. :meth:`CallListSyncer.remove`, before anything of the group is uploaded: note which of the group's ids the list
   holds (read once per round of removals, checkpointed), send the removals and the *changed records' old versions*
   through ``removeProspects`` in batches of ``MAX_PROSPECTS_PER_REMOVAL`` (a batch is marked in flight before it
   leaves, its answer checkpointed), then read the list again. An id is ``removed`` when the list held it before (or
   CXone answered it removed) and does not now, ``not_on_list`` when it held it neither before nor now, ``failed``
   when it still does. Held mirror removals are never sent (``removal_held``); a later approved try of the run
   sends exactly those. A changed record whose old version is gone goes to ``uploads/group-N/updates.parquet``: the
   group's upload (``uploads.GroupUploader``, create-only) sends it with the group's new records. With the
   ``dnc_group_id`` extra, the phones of each contact who withdrew consent go into that DNC group.
2. The upload's read-back settles the changed records: ``updated`` when the list holds the id again after its old
   version was seen gone; ``imported`` when the list did not hold it at all (it expired); ``failed`` otherwise.
3. :meth:`CallListSyncer.results`: one :class:`~include.cxone_import.sync.OpResult` per planned op, accounted by
   ``sync.record_group`` exactly like the records profile's.

What the read-back proves: that the id left the list and came back after our upload, not the content (the client
reads external ids only). Under the run's lease nothing else of this project uploads to the list meanwhile, and
an upload is create-only, so the record on the list is the one uploaded.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxone_provider.call_lists import MAX_PROSPECTS_PER_REMOVAL
from cxone_provider.errors import CXoneError

from include.cxone_import import sync
from include.cxone_import.engine import DUPLICATE, FAILED, IMPORTED, TransientImportError
from include.cxone_import.masking import mask_phone
from include.cxone_import.sources import PHONE_PREFIX
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import atomic_open, read_json, read_parquet, write_json, write_parquet

log = logging.getLogger(__name__)

DNC_NUMBERS_PER_CALL = 1000  # GUESS: no batch size for dnc-groups/{groupId}/records is published
SENDING, ANSWERED, REFUSED, UNANSWERED = "sending", "answered", "refused", "unanswered"
DNC_ADDED, DNC_FAILED = "dnc_added", "dnc_failed"


class RemovalClient(Protocol):
    """What the syncer needs of ``cxone_provider.call_lists.CallListClient``."""

    def remove_prospects(self, list_name: str, external_ids: list[str]) -> Any: ...

    def add_dnc_records(self, group_id: str, phone_numbers: list[str]) -> list[dict[str, Any]]: ...

    def iter_external_ids(self, list_id: str) -> Any: ...


class TransientSyncError(TransientImportError):
    """Removals or DNC entries got no answer after the client's retries; the task's retry sends only those."""


@dataclass
class SyncState:
    """What a group's removals have done so far (``uploads/group-NNNNN/sync.json``): only its own task writes it."""

    group_index: int
    round_ids: str = ""  # digest of the ids the current round removes (its before-snapshot is of those)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch id -> state, answer
    outcomes: dict[str, list[str]] = field(default_factory=dict)  # contact id -> [outcome, detail, at]
    dnc: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch id -> state, results
    updates_written: bool = False


def _digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\x1f" + str(part).encode())
    return digest.hexdigest()[:24]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 2)


def ids_on_list(client: Any, list_id: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` the list holds now (the list is read whole, page by page; nothing read for no ids)."""
    if not ids:
        return set()
    return {external_id for external_id in client.iter_external_ids(list_id) if external_id in ids}


def dnc_number(value: str) -> str:
    """A phone cell as the DNC group takes it: its digits, with the ``+`` kept (formatting stripped)."""
    return re.sub(r"[^\d+]", "", value)


class CallListSyncer:
    """Sends one group's removals, changed records' removals and DNC entries, and settles them from the list."""

    def __init__(self, client: RemovalClient, list_id: str, list_name: str, layout: RunLayout, *,
                 dnc_group_id: str | None = None) -> None:
        self._client = client
        self._list_id = list_id
        self._list_name = list_name
        self._layout = layout
        self._dnc_group_id = dnc_group_id

    @property
    def dnc_group_id(self) -> str | None:
        return self._dnc_group_id

    # -- files -------------------------------------------------------------------------------------------------

    def _load(self, group_index: int) -> SyncState:
        path = self._layout.upload_sync_state(group_index)
        return SyncState(**read_json(path)) if path.exists() else SyncState(group_index)

    def _save(self, state: SyncState) -> None:
        write_json(self._layout.upload_sync_state(state.group_index), asdict(state))

    def ops(self, group_index: int) -> pd.DataFrame | None:
        path = self._layout.sync_ops(group_index)
        if not path.exists():
            return None
        ops = read_parquet(path)
        return ops if len(ops) else None

    def _present(self, ids: set[str]) -> set[str]:
        return ids_on_list(self._client, self._list_id, ids)

    # -- 1. removals -------------------------------------------------------------------------------------------

    def remove(self, group_index: int, *, mirror_allowed: bool) -> None:
        """Remove what the group's ops remove (held mirror removals aside), settle it from the list, write the
        changed records to upload, then put withdrawn contacts' phones into the DNC group. Raises
        :class:`TransientSyncError` when something got no answer (nothing of the group is uploaded then)."""
        ops = self.ops(group_index)
        if ops is None:
            return
        state = self._load(group_index)
        sending = ops if mirror_allowed else ops[~((ops["action"] == sync.REMOVE) & (ops["reason"] == sync.MIRROR_ABSENT))]
        pending = list(dict.fromkeys(c for c in sending["contact_id"].astype(str) if c not in state.outcomes))
        if pending:
            self._remove_round(state, pending)
        if not state.updates_written:
            self._write_updates(state, ops)
        if self._dnc_group_id:
            self._add_dnc(state, ops)

    def _remove_round(self, state: SyncState, pending: list[str]) -> None:
        group_index = state.group_index
        round_ids = _digest(self._list_id, *pending)
        before_path = self._layout.upload_sync_before(group_index, round_ids)
        if state.round_ids != round_ids or not before_path.exists():
            present = self._present(set(pending))  # before anything of this round is sent
            write_parquet(before_path, pd.DataFrame({"contact_id": pd.Series(sorted(present), dtype="str")}))
            state.round_ids = round_ids
            self._save(state)
            log.info("group %d: %d of the %d ids to remove are on list %s", group_index, len(present), len(pending),
                     self._list_id)
        unanswered = 0
        for ids, batch_id, entry in self._batches(state, pending):
            if entry and entry["state"] in (ANSWERED, REFUSED):
                continue
            entry = {"state": SENDING, "records": len(ids), "started_at": _now(), "resumed": bool(entry),
                     "tries": int(entry.get("tries", 0)) + 1}
            state.batches[batch_id] = entry
            self._save(state)  # in flight before it leaves
            started = time.monotonic()
            try:
                answer = self._client.remove_prospects(self._list_name, ids)
            except CXoneError as exc:
                status = getattr(exc, "status_code", None)
                refused = status is not None and 400 <= status < 500 and status != 429
                entry.update(state=REFUSED if refused else UNANSWERED, error=str(exc), status_code=status,
                             attempts=int(getattr(exc, "attempts", 1) or 1), latency_ms=_ms(started))
                unanswered += not refused
            else:
                entry.update(state=ANSWERED, removed=sorted(answer.removed), failed=dict(answer.failed),
                             latency_ms=_ms(started))
            entry["finished_at"] = _now()
            self._save(state)
        if unanswered:
            raise TransientSyncError(f"group {group_index}: {unanswered} removal requests got no answer; the task "
                                     "retry sends them again (the list is read before and after, so none counts twice)")
        self._settle(state, pending, before_path)

    def _batches(self, state: SyncState, pending: list[str]) -> list[tuple[list[str], str, dict[str, Any]]]:
        """The round's removal batches: ids, batch id, checkpoint ({} when never sent)."""
        found = []
        for start in range(0, len(pending), MAX_PROSPECTS_PER_REMOVAL):
            ids = pending[start : start + MAX_PROSPECTS_PER_REMOVAL]
            batch_id = _digest(self._list_id, "remove", *ids)
            found.append((ids, batch_id, state.batches.get(batch_id) or {}))
        return found

    def _settle(self, state: SyncState, pending: list[str], before_path: Any) -> None:
        """Each id of the round from the list read before it and now (and what CXone answered)."""
        before = set(read_parquet(before_path)["contact_id"])
        after = self._present(set(pending))
        answered_removed: set[str] = set()
        codes: dict[str, str] = {}
        for ids, _, entry in self._batches(state, pending):
            answered_removed.update(entry.get("removed") or [])
            codes.update(entry.get("failed") or {})
            if entry["state"] == REFUSED:
                codes.update(dict.fromkeys(ids, f"removeProspects refused: {entry.get('error')}"))
        at = _now()
        for contact_id in pending:
            if contact_id in after:
                detail = codes.get(contact_id) or "still on the list after removeProspects answered"
                state.outcomes[contact_id] = [FAILED, f"still on the list ({detail})", at]
            elif contact_id in before or contact_id in answered_removed:
                retried = contact_id not in answered_removed
                state.outcomes[contact_id] = [sync.REMOVED_OUTCOME, "confirmed_on_retry" if retried else "", at]
            else:
                state.outcomes[contact_id] = [sync.NOT_ON_LIST, codes.get(contact_id, ""), at]
        self._save(state)
        counts = pd.Series([o[0] for o in state.outcomes.values()]).value_counts().to_dict()
        log.info("group %d: removals settled from list %s: %s", state.group_index, self._list_id, counts)

    def _write_updates(self, state: SyncState, ops: pd.DataFrame) -> None:
        """The changed records whose old version left the list (or was never on it): the group's upload sends them.
        Written once, before the group's upload looks at the list."""
        updates = ops[ops["action"] == sync.UPDATE]
        gone = updates["contact_id"].astype(str).map(
            lambda c: (state.outcomes.get(c) or [FAILED])[0] in (sync.REMOVED_OUTCOME, sync.NOT_ON_LIST))
        write_parquet(self._layout.upload_updates(state.group_index),
                      pd.DataFrame({"row_number": updates["row_number"][gone].astype("int64"),
                                    "contact_id": updates["contact_id"][gone].astype(str),
                                    "record_json": updates["record_json"][gone].astype(str)}))
        state.updates_written = True
        self._save(state)

    # -- DNC ---------------------------------------------------------------------------------------------------

    def _add_dnc(self, state: SyncState, ops: pd.DataFrame) -> None:
        """Every phone of each contact whose consent was withdrawn into the DNC group (idempotent: a number sent
        again is the same entry); each number's answer is checkpointed."""
        withdrawn = ops[(ops["action"] == sync.REMOVE) & (ops["reason"] == sync.CONSENT_WITHDRAWN)]
        pairs = self._phones(withdrawn)
        unanswered = 0
        for start in range(0, len(pairs), DNC_NUMBERS_PER_CALL):
            chunk = pairs[start : start + DNC_NUMBERS_PER_CALL]
            batch_id = _digest(self._dnc_group_id, "dnc", *(f"{c}:{p}" for c, p in chunk))
            entry = state.dnc.get(batch_id)
            if entry is not None and entry["state"] in (ANSWERED, REFUSED):
                continue
            entry = {"state": SENDING, "records": len(chunk), "started_at": _now(), "resumed": entry is not None}
            state.dnc[batch_id] = entry
            self._save(state)
            started = time.monotonic()
            try:
                answers = self._client.add_dnc_records(str(self._dnc_group_id), [p for _, p in chunk])
            except CXoneError as exc:
                status = getattr(exc, "status_code", None)
                refused = status is not None and 400 <= status < 500 and status != 429
                entry.update(state=REFUSED if refused else UNANSWERED, error=str(exc), status_code=status)
                entry["results"] = [[c, mask_phone(p), DNC_FAILED, str(exc)] for c, p in chunk]
                unanswered += not refused
            else:
                entry.update(state=ANSWERED)
                entry["results"] = [
                    [c, mask_phone(p), DNC_ADDED if (a or {}).get("success") else DNC_FAILED,
                     "" if (a or {}).get("success") else str((a or {}).get("error") or "no answer for this number")]
                    for (c, p), a in zip(chunk, [*answers, *[None] * (len(chunk) - len(answers))], strict=False)]
            entry.update(latency_ms=_ms(started), finished_at=_now())
            self._save(state)
        if unanswered:
            raise TransientSyncError(f"group {state.group_index}: {unanswered} DNC requests got no answer; the task "
                                     "retry sends them again")

    def _phones(self, withdrawn: pd.DataFrame) -> list[tuple[str, str]]:
        """(contactId, number) of every phone of tonight's withdrawing records, in the ops' order."""
        rows = withdrawn["row_number"].to_numpy(np.int64)
        if not len(rows):
            return []
        phones: dict[int, list[str]] = {}
        for part in self._layout.extract_parts():
            frame = read_parquet(part)
            frame = frame[np.isin(frame["row_number"].to_numpy(np.int64), rows)]
            columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
            for row_number, *values in frame[["row_number", *columns]].itertuples(index=False):
                numbers = [dnc_number(str(v)) for v in values if isinstance(v, str) and v.strip()]
                phones[int(row_number)] = [n for n in dict.fromkeys(numbers) if n.strip("+")]
        return [(str(c), number) for r, c in zip(rows, withdrawn["contact_id"], strict=True)
                for number in phones.get(int(r), [])]

    # -- 3. results --------------------------------------------------------------------------------------------

    def results(self, group_index: int, *, mirror_allowed: bool) -> tuple[sync.SyncSummary, list[sync.OpResult]]:
        """One result per planned op of the group (removals from the list's read-back around them, changed records
        from the upload's), and the group's requests for the report."""
        ops = self.ops(group_index)
        if ops is None:
            return sync.SyncSummary(), []
        state = self._load(group_index)
        uploaded = self._update_outcomes(group_index)
        results = []
        for op, action, row_number, contact_id, record_json, reason in zip(
                ops["op_id"], ops["action"], ops["row_number"].astype("int64"), ops["contact_id"].astype(str),
                ops["record_json"], ops["reason"], strict=True):
            result = sync.OpResult(op, action, int(row_number), contact_id, reason, "", record_json=record_json)
            removal = state.outcomes.get(contact_id)
            if removal is None:
                held = action == sync.REMOVE and reason == sync.MIRROR_ABSENT and not mirror_allowed
                result.outcome = sync.REMOVAL_HELD if held else FAILED
                result.detail = ("mirror removal held: over max_removal_share without approval, or not approved"
                                 if held else "not sent")
                result.at = _now()
            elif action == sync.REMOVE:
                result.outcome, result.detail, result.at = removal
            elif removal[0] == FAILED:
                result.outcome, result.detail, result.at = FAILED, f"old record not removed: {removal[1]}", removal[2]
            else:
                outcome, detail, at = uploaded.get(int(row_number), (FAILED, "not uploaded", _now()))
                if outcome == IMPORTED:
                    result.outcome = sync.UPDATED if removal[0] == sync.REMOVED_OUTCOME else IMPORTED
                    result.detail = "" if removal[0] == sync.REMOVED_OUTCOME else "not on the list: uploaded as new"
                elif outcome == DUPLICATE:
                    result.outcome, result.detail = FAILED, "the list held the old record at the upload"
                else:
                    result.outcome, result.detail = FAILED, detail
                result.at = at
            results.append(result)
        summary = sync.SyncSummary()
        for result in results:
            summary.counts[result.outcome] = summary.counts.get(result.outcome, 0) + 1
        for kind, batches in (("remove", state.batches), ("dnc", state.dnc)):
            for batch_id, entry in batches.items():
                summary.requests += 1
                summary.attempts += int(entry.get("attempts", 1) or 1)
                failed = entry["state"] != ANSWERED
                summary.metrics.append({
                    "batch_id": batch_id, "batch_index": -1, "records": int(entry["records"]), "imported": 0,
                    "duplicates": 0, "failed": int(entry["records"]) if failed else 0,
                    "status": entry["state"], "latency_ms": float(entry.get("latency_ms") or 0.0),
                    "attempts": int(entry.get("attempts", 1) or 1), "requests": 1, "rate_limited": 0,
                    "resumed": bool(entry.get("resumed")), "started_at": entry.get("started_at", ""),
                    "finished_at": entry.get("finished_at", ""), "kind": kind})
        return summary, results

    def dnc_results(self, group_index: int) -> list[dict[str, Any]]:
        """Each number's DNC outcome: contactId, masked number, ``dnc_added``/``dnc_failed``, why."""
        state = self._load(group_index)
        return [{"contactId": c, "phone": p, "outcome": o, "detail": d, "at": entry.get("finished_at", "")}
                for entry in state.dnc.values() for c, p, o, d in entry.get("results") or []]

    def _update_outcomes(self, group_index: int) -> dict[int, tuple[str, str, str]]:
        path = self._layout.upload_update_outcomes(group_index)
        if not path.exists():
            return {}
        frame = read_parquet(path)
        return {int(r): (o, d, a) for r, o, d, a in zip(frame["row_number"], frame["outcome"], frame["detail"],
                                                       frame["at"], strict=True)}


def resend_gone(layout: RunLayout, parts: int, held_ids: set[str]) -> int:
    """Records the list's state left out as already on the list (``unchanged``, or answered duplicate before) whose
    record the calling list no longer holds (it expired, or someone removed it): taken out of the decision file, so
    the run uploads them as new records. ``changes.json`` counts them (``gone_from_list``). Returns how many."""
    from include.cxone_import.state import (
        DECISION_SCHEMA,
        DECISION_UNCHANGED,
        DECISION_UNCONFIRMED,
        contact_keys,
    )

    path = layout.changes_decision
    if not path.exists():
        return 0
    decided = read_parquet(path)
    left_out = decided["decision"].isin([DECISION_UNCHANGED, DECISION_UNCONFIRMED]).to_numpy()
    if not left_out.any():
        return 0
    keys = sync.keys_of_rows(layout, parts, decided["row_number"].to_numpy(np.int64)[left_out])
    gone = np.zeros(len(decided), bool)
    gone[np.flatnonzero(left_out)] = ~np.isin(keys, contact_keys(np.array(sorted(held_ids), dtype=object)))
    if not gone.any():
        return 0
    with atomic_open(path, "wb") as handle:
        pq.write_table(pa.Table.from_pandas(decided[~gone], schema=DECISION_SCHEMA, preserve_index=False), handle)
    changes = read_json(layout.changes_summary)
    for name, code in (("unchanged", DECISION_UNCHANGED), ("unconfirmed", DECISION_UNCONFIRMED)):
        changes[name] = int(changes.get(name, 0)) - int((gone & (decided["decision"] == code).to_numpy()).sum())
    changes["gone_from_list"] = int(gone.sum())
    write_json(layout.changes_summary, changes)
    log.info("%d records the state holds as on the list are no longer on the calling list (expired?): sent again",
             int(gone.sum()))
    return int(gone.sum())


def dnc_audit_entries(group_id: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One audit entry per number sent to the DNC group (the number masked)."""
    return [{"auditId": _digest(group_id, e["contactId"], e["phone"], e["outcome"])[:32], "timestamp": e["at"],
             "kind": "dnc", "status": e["outcome"], "contactId": e["contactId"],
             "details": {"dncGroupId": group_id, "phone": e["phone"], "detail": e["detail"]}} for e in entries]


def dnc_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(1 for e in entries if e["outcome"] == name) for name in (DNC_ADDED, DNC_FAILED)}
