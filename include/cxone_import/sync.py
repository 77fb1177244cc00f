"""Keeping a list in sync (``sync_mode``): what a run updates and removes, planned once, then sent record by record.

Plain functions over the run folder and the list's state (no Airflow, no API profile): the chunk task plans, the
import task of a profile sends. The plan:

- ``append``: create only (the records API's own behaviour); nothing here changes the run.
- ``upsert``: a record the list holds with other content (or whose content CXone answered ``duplicate``) is an
  *update*; a contact on the list whose consent tonight is withdrawn (``optInStatus`` revoked or opted_out) or older
  than ``max_consent_age_days`` is a *removal* (``consent_withdrawn``, ``consent_expired``).
- ``mirror``: ``upsert``, and a *removal* (``mirror_absent``) of each contact this project put on the list (state
  ``origin``) that tonight's export no longer holds.

Backfills: each contact's state carries the logical date of the version CXone acknowledged. A run older than that
never updates the contact (``stale``), a consent removal older than it is ``stale`` too (a newer day granted
consent again), and a run older than the newest day the list holds removes nothing by mirror.

Files (``{run}/sync/``): ``plan.json`` (:class:`SyncPlan`, also chunk's XCom ``sync``), ``removals.parquet``
(contact_id, reason, row_number: what the bulk-removal guard shows), ``stale.parquet`` (contact_id, kind),
``ops-{group}.parquet`` (the requests of each import group), ``removal_decision.json`` (written by the approval
step: ``{"mirror_removals": "approved" | "held"}``), ``outcomes-{group}.parquet`` (what each request came to).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxone_provider.errors import CXoneConflictError, CXoneError, CXoneValidationError

from include.cxone_import.masking import mask_text
from include.cxone_import.rules import CONSENT_MAX_AGE as EXPIRED_RULE  # its reject means "consent too old"
from include.cxone_import.schema import consent_withdrawn
from include.cxone_import.state import (
    DECISION_LISTED,
    DECISION_STALE,
    DECISION_UNCONFIRMED,
    DECISION_UPDATE,
    REMOVED,
    ContactListState,
    contact_keys,
)
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import atomic_open, read_json, read_parquet, write_json, write_jsonl

log = logging.getLogger(__name__)

SyncMode = Literal["append", "upsert", "mirror"]
SYNC_MODES: tuple[str, ...] = ("append", "upsert", "mirror")
DEFAULT_SYNC_MODE = "upsert"
SYNC_MODE_VARIABLE = "cxone_sync_mode"

CONSENT_WITHDRAWN, CONSENT_EXPIRED, MIRROR_ABSENT = "consent_withdrawn", "consent_expired", "mirror_absent"
REMOVAL_REASONS = (CONSENT_WITHDRAWN, CONSENT_EXPIRED, MIRROR_ABSENT)
CONSENT_REASONS = (CONSENT_WITHDRAWN, CONSENT_EXPIRED)  # an obligation: never held back by the guard
UPDATE, REMOVE = "update", "remove"

# outcomes of the requests (besides imported / duplicate / failed of an update whose record was gone)
UPDATED, REMOVED_OUTCOME, NOT_ON_LIST, REMOVAL_HELD, STALE = "updated", "removed", "not_on_list", "removal_held", "stale"
SYNC_OUTCOMES = (UPDATED, REMOVED_OUTCOME, NOT_ON_LIST, REMOVAL_HELD, STALE)
GONE = "gone"  # a PUT answered 404: not final, the record is created with the batched POST

SAMPLES = 5
OPS_SCHEMA = pa.schema([("op_id", pa.string()), ("action", pa.string()), ("row_number", pa.int64()),
                        ("contact_id", pa.string()), ("record_json", pa.string()), ("reason", pa.string())])
SYNC_OUTCOME_SCHEMA = pa.schema([("op_id", pa.string()), ("action", pa.string()), ("row_number", pa.int64()),
                                 ("contact_id", pa.string()), ("reason", pa.string()), ("outcome", pa.string()),
                                 ("detail", pa.string()), ("at", pa.string())])


class SyncPlan(TypedDict):
    """``sync/plan.json`` and chunk's XCom ``sync``: what the run will create, update and remove."""

    mode: str
    creates: int
    updates: int
    removals: dict[str, int]  # reason -> count
    stale: dict[str, int]  # "updates" / "removals" not made because the list holds a newer day's version
    state_records: int  # contacts the list's state holds (tombstones of removed contacts not counted)
    mirror_share: float  # mirror removals / state_records
    samples: dict[str, list[str]]  # reason -> masked contactIds, at most SAMPLES
    rejected_on_list: int  # contacts on the list whose record tonight is rejected for another reason: left as they are
    withdrawn_unknown: int  # withdrawn consent of contacts the state does not know: nothing to remove
    backfill: bool  # the run is older than the newest day the list holds


def read_plan(layout: RunLayout) -> SyncPlan | None:
    path = layout.sync_plan
    return read_json(path) if path.exists() else None  # type: ignore[return-value]


def op_id(scope: str, action: str, contact_id: str, content: str) -> str:
    """A request's id: its list, what it does, to whom and with which content (an update of other content is
    another request, sent; the same one is resumed from its checkpoint)."""
    digest = hashlib.sha256(scope.encode())
    for part in (action, contact_id, content):
        digest.update(b"\x1f" + part.encode())
    return digest.hexdigest()[:24]


def masked_id(contact_id: str) -> str:
    return mask_text(str(contact_id))


# -- planning ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StateIndex:
    """The folded state sorted by key, for lookups."""

    key: np.ndarray
    acknowledged: np.ndarray
    unconfirmed: np.ndarray
    origin: np.ndarray
    logical_date: np.ndarray

    @classmethod
    def of(cls, state: ContactListState | None) -> _StateIndex:
        columns = state.snapshot() if state is not None else None
        if columns is None or not len(columns["key"]):
            empty = np.empty(0, np.uint64)
            return cls(empty, empty, empty, np.empty(0, np.uint8), np.empty(0, np.int64))
        order = np.argsort(columns["key"], kind="stable")
        return cls(*(columns[n][order] for n in ("key", "acknowledged", "unconfirmed", "origin", "logical_date")))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(known, position) of each key."""
        if not len(self.key):
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
        at = np.searchsorted(self.key, keys).clip(max=len(self.key) - 1)
        return self.key[at] == keys, at

    @property
    def present(self) -> np.ndarray:
        """Contacts the list holds as far as the state knows (not removed)."""
        return (self.acknowledged != REMOVED) & ((self.acknowledged != 0) | (self.unconfirmed != 0))


def plan_sync(
    layout: RunLayout,
    state: ContactListState | None,
    *,
    mode: str,
    parts: int,
    extract_parts: int,
    logical_date: int,
    scope: str,
    creates: Callable[[], int],
) -> SyncPlan:
    """Decide the run's updates, removals and stale records, once per run (a re-run reuses the plan, so its
    requests keep their ids and checkpoints): rewrite the decision file (``DECISION_UPDATE`` / ``DECISION_STALE``)
    and write ``sync/plan.json``, ``sync/removals.parquet``, ``sync/stale.parquet`` and the pending update rows.
    ``creates()`` counts the records left for the batched POST once the decision file is final."""
    saved = read_plan(layout)
    if saved is not None and saved["mode"] == mode:
        log.info("sync: reusing this run's plan (%s)", mode)
        return saved
    index = _StateIndex.of(state)
    newest = int(index.logical_date.max()) if len(index.logical_date) else 0
    backfill = bool(newest and logical_date < newest)
    stale: dict[str, int] = {"updates": 0, "removals": 0}
    removals = _empty_removals()
    rejected_on_list = withdrawn_unknown = 0
    updates = 0
    if mode in ("upsert", "mirror") and len(index.key):
        updates, stale["updates"] = _plan_updates(layout, parts, index, logical_date)
        consent, stale["removals"], rejected_on_list, withdrawn_unknown, exported = _plan_consent_removals(
            layout, extract_parts, index, logical_date)
        removals = consent
        if mode == "mirror" and not backfill:
            removals = pd.concat([consent, _plan_mirror_removals(layout, parts, state, index, exported)], ignore_index=True)
        elif mode == "mirror":
            log.info("sync: the run's logical date is older than the newest day the list holds: no mirror removals")
    state_records = int(index.present.sum())
    counts = {reason: int((removals["reason"] == reason).sum()) for reason in REMOVAL_REASONS}
    plan: SyncPlan = {
        "mode": mode,
        "creates": int(creates()),
        "updates": updates,
        "removals": counts,
        "stale": stale,
        "state_records": state_records,
        "mirror_share": round(counts[MIRROR_ABSENT] / state_records, 6) if state_records else 0.0,
        "samples": {reason: [masked_id(c) for c in removals.loc[removals["reason"] == reason, "contact_id"].head(SAMPLES)]
                    for reason in REMOVAL_REASONS},
        "rejected_on_list": rejected_on_list,
        "withdrawn_unknown": withdrawn_unknown,
        "backfill": backfill,
    }
    with atomic_open(layout.sync_removals, "wb") as handle:
        pq.write_table(pa.Table.from_pandas(removals, preserve_index=False), handle)
    write_json(layout.sync_plan, plan)
    log.info("sync (%s): %d creates, %d updates, removals %s, %d stale updates, %d stale removals, %d contacts on "
             "the list rejected tonight left as they are%s", mode, plan["creates"], updates, counts, stale["updates"],
             stale["removals"], rejected_on_list, " (backfill)" if backfill else "")
    return plan


def _empty_removals() -> pd.DataFrame:
    return pd.DataFrame({"contact_id": pd.Series(dtype="str"), "reason": pd.Series(dtype="str"),
                         "row_number": pd.Series(dtype="int64")})


def _plan_updates(layout: RunLayout, parts: int, index: _StateIndex, logical_date: int) -> tuple[int, int]:
    """Sent records the state knows with other content (or answered duplicate): updates, or stale when the list
    holds a newer day's version; a contact the state saw removed is created again (unless newer: stale)."""
    path = layout.changes_decision
    if not path.exists():
        return 0, 0
    decided = read_parquet(path)
    candidate = decided["decision"].isin([DECISION_LISTED, DECISION_UNCONFIRMED]).to_numpy()
    if not candidate.any():
        return 0, 0
    rows = decided["row_number"].to_numpy(np.int64)[candidate]
    keys = keys_of_rows(layout, parts, rows)
    known, at = index.find(keys)
    acknowledged, dated = index.acknowledged[at], index.logical_date[at]
    removed = known & (acknowledged == REMOVED)
    newer = known & (dated > logical_date)
    decision = np.full(len(rows), DECISION_UPDATE, np.int8)
    decision[newer] = DECISION_STALE
    decision[removed & ~newer] = 0  # removed before: created again with the batched POST
    codes = decided["decision"].to_numpy(np.int8).copy()
    codes[np.flatnonzero(candidate)] = decision
    keep = codes != 0
    with atomic_open(path, "wb") as handle:
        pq.write_table(pa.Table.from_pandas(decided.assign(decision=codes)[keep], preserve_index=False), handle)
    return int((decision == DECISION_UPDATE).sum()), int((decision == DECISION_STALE).sum())


def keys_of_rows(layout: RunLayout, parts: int, rows: np.ndarray) -> np.ndarray:
    """The contact keys of valid rows, in the order of ``rows``."""
    found_rows, found_ids = [], []
    for n in range(parts):
        frame = read_parquet(layout.valid_part(n), columns=["row_number", "contact_id"])
        hit = np.isin(frame["row_number"].to_numpy(np.int64), rows)
        found_rows.append(frame["row_number"].to_numpy(np.int64)[hit])
        found_ids.append(frame["contact_id"].to_numpy(object)[hit])
    all_rows = np.concatenate(found_rows) if found_rows else np.empty(0, np.int64)
    keys = contact_keys(np.concatenate(found_ids)) if found_ids else np.empty(0, np.uint64)
    order = np.argsort(all_rows)
    return keys[order][np.searchsorted(all_rows[order], rows)]


def _plan_consent_removals(layout: RunLayout, extract_parts: int, index: _StateIndex,
                           logical_date: int) -> tuple[pd.DataFrame, int, int, int, np.ndarray]:
    """Rejected records of contacts on the list: withdrawn or expired consent is a removal (stale when the list holds
    a newer day's version); any other reject leaves the contact as it is (counted). Also returns the keys of every
    contact the rejects name (what the export still holds, for mirror)."""
    rejects = read_parquet(layout.rejects_parquet, columns=["row_number", "contact_id", "rule"])
    rejects = rejects[rejects["contact_id"].notna()]
    if not len(rejects):
        return _empty_removals(), 0, 0, 0, np.empty(0, np.uint64)
    expired_rows = rejects.loc[rejects["rule"] == EXPIRED_RULE, "row_number"].to_numpy(np.int64)
    per_row = rejects.drop_duplicates("row_number")
    rows = per_row["row_number"].to_numpy(np.int64)
    contact_ids = per_row["contact_id"].to_numpy(object)
    withdrawn = np.zeros(len(rows), bool)
    for n in range(extract_parts):
        part = read_parquet(layout.extract_part(n), columns=["row_number", "opt_in_status"])
        hit = np.isin(part["row_number"].to_numpy(np.int64), rows)
        if hit.any():
            said = part["row_number"].to_numpy(np.int64)[hit][consent_withdrawn(part["opt_in_status"][hit])]
            withdrawn |= np.isin(rows, said)
    expired = np.isin(rows, expired_rows) & ~withdrawn
    keys = contact_keys(contact_ids)
    known, at = index.find(keys)
    on_list = known & index.present[at]
    newer = on_list & (index.logical_date[at] > logical_date)
    reason = np.where(withdrawn, CONSENT_WITHDRAWN, np.where(expired, CONSENT_EXPIRED, ""))
    remove = on_list & ~newer & (reason != "")
    removals = pd.DataFrame({"contact_id": contact_ids[remove].astype(str), "reason": reason[remove],
                             "row_number": rows[remove]}).drop_duplicates("contact_id")
    return (removals, int((on_list & newer & (reason != "")).sum()), int((on_list & (reason == "")).sum()),
            int((withdrawn & ~on_list).sum()), keys)


def _plan_mirror_removals(layout: RunLayout, parts: int, state: ContactListState | None, index: _StateIndex,
                          rejected_keys: np.ndarray) -> pd.DataFrame:
    """Contacts this project put on the list that tonight's export (valid or rejected rows) no longer holds."""
    exported = [rejected_keys]
    for n in range(parts):
        exported.append(contact_keys(read_parquet(layout.valid_part(n), columns=["contact_id"])["contact_id"].to_numpy(object)))
    absent = index.present & (index.origin == 1) & ~np.isin(index.key, np.concatenate(exported))
    keys = index.key[absent]
    if not len(keys) or state is None:
        return _empty_removals()
    ids = state.contact_ids_of(keys)
    missing = len(keys) - len(ids)
    if missing:
        log.warning("sync: %d contacts this project created have no contactId on record: they cannot be removed by mirror",
                    missing)
    return pd.DataFrame({"contact_id": pd.Series(list(ids.values()), dtype="str"), "reason": MIRROR_ABSENT,
                         "row_number": np.zeros(len(ids), np.int64)})


def write_group_ops(layout: RunLayout, parts: int, scope: str, groups: int) -> list[dict[str, int]]:
    """Spread the plan's updates and removals over ``groups`` import groups (``sync/ops-{g}.parquet``); returns each
    group's counts. Updates carry the record as the POST would send it."""
    from include.cxone_import.payloads import record_json
    from include.cxone_import.state import read_decided_rows

    update_rows = read_decided_rows(layout, DECISION_UPDATE)
    frames = []
    for n in range(parts):
        frame = read_parquet(layout.valid_part(n))
        frame = frame[np.isin(frame["row_number"].to_numpy(np.int64), update_rows)].reset_index(drop=True)
        if len(frame):
            frames.append(pd.DataFrame({"row_number": frame["row_number"].to_numpy(np.int64),
                                        "contact_id": frame["contact_id"].astype(str).to_numpy(object),
                                        "record_json": record_json(frame).to_pylist(), "reason": ""}))
    updates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"row_number": pd.Series(dtype="int64"), "contact_id": [], "record_json": [], "reason": []})
    updates.insert(0, "action", UPDATE)
    removals = read_parquet(layout.sync_removals)
    removals = pd.DataFrame({"action": REMOVE, "row_number": removals["row_number"].astype("int64"),
                             "contact_id": removals["contact_id"].astype(str), "record_json": "",
                             "reason": removals["reason"].astype(str)})
    ops = pd.concat([updates, removals], ignore_index=True)
    ops.insert(0, "op_id", [op_id(scope, a, c, r or j) for a, c, j, r in
                            zip(ops["action"], ops["contact_id"], ops["record_json"], ops["reason"], strict=True)])
    counts = []
    for group_index, share in enumerate(np.array_split(np.arange(len(ops)), max(groups, 1))):
        part = ops.iloc[share]
        with atomic_open(layout.sync_ops(group_index), "wb") as handle:
            pq.write_table(pa.Table.from_pandas(part, schema=OPS_SCHEMA, preserve_index=False), handle)
        counts.append({"updates": int((part["action"] == UPDATE).sum()), "removals": int((part["action"] == REMOVE).sum())})
    return counts


def requests_needed(plan: SyncPlan, batches: int) -> int:
    """Requests the plan takes: one per batch of creates, one per update and per removal (held ones aside)."""
    return batches + plan["updates"] + sum(plan["removals"].values())


def mirror_removals_allowed(layout: RunLayout, plan: SyncPlan | None, max_removal_share: float) -> bool | None:
    """Whether this run may send its mirror removals: the approval step's decision when it wrote one (True: approved,
    False: held), else whether they stay within ``max_removal_share`` of the list's state (None: no plan)."""
    if plan is None:
        return None
    path = layout.removal_decision
    if path.exists():
        decision = read_json(path).get("mirror_removals")
        if decision in ("approved", "held"):
            return decision == "approved"
        log.warning("sync: %s says %r (not approved/held): mirror removals held", path, decision)
        return False
    return float(plan["mirror_share"]) <= float(max_removal_share)


# -- sending -------------------------------------------------------------------------------------------------------


class RecordClient(Protocol):
    """What the sender needs of ``cxone_provider.client.CXoneClient``."""

    def update_record_json(self, contact_list_id: str, contact_id: str, record_json: str) -> Any: ...

    def delete_record(self, contact_list_id: str, contact_id: str) -> Any: ...


@dataclass
class OpResult:
    """What one update or removal came to (a row of the group's sync outcome file) and what it took."""

    op_id: str
    action: str
    row_number: int
    contact_id: str
    reason: str
    outcome: str
    detail: str = ""
    at: str = ""
    requests: int = 0
    attempts: int = 0
    rate_limited: int = 0
    latency_ms: float = 0.0
    transient: bool = False
    resumed: bool = False
    started_at: str = ""
    record_json: str = ""  # updates only (kept for a gone record's creation; not written)


@dataclass
class SyncSummary:
    """A group's updates and removals: counts by outcome and the metrics the report's totals and chart need."""

    counts: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    attempts: int = 0
    rate_limited: int = 0
    transient: int = 0
    gone: list[OpResult] = field(default_factory=list)  # updates answered 404: to create with the batched POST
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class SyncSender:
    """Sends one group's updates (PUT) and removals (DELETE), one request each, with bounded concurrency through the
    client (its rate limiter and retries). Each request is checkpointed when its outcome is final and marked in flight
    before it is sent: a re-run never sends a finished request again, and a removal answered 404 after an attempt that
    may have been applied is that attempt's removal (``removed``), never a second one."""

    def __init__(self, client: RecordClient, contact_list_id: str, layout: RunLayout, *, concurrency: int = 8) -> None:
        self._client = client
        self._list = contact_list_id
        self._layout = layout
        self._concurrency = max(1, concurrency)

    def run(self, group_index: int, *, mirror_allowed: bool) -> tuple[SyncSummary, list[OpResult]]:
        from include.cxone_import.engine import CheckpointStore

        path = self._layout.sync_ops(group_index)
        if not path.exists():
            return SyncSummary(), []
        ops = read_parquet(path)
        if not len(ops):
            return SyncSummary(), []
        self._checkpoints = CheckpointStore(self._layout, ops["op_id"].tolist())
        self._mirror_allowed = mirror_allowed
        log.info("group %d: %d updates and %d removals to send, %d at a time", group_index,
                 int((ops["action"] == UPDATE).sum()), int((ops["action"] == REMOVE).sum()), self._concurrency)
        members = list(zip(ops["op_id"], ops["action"], ops["row_number"].astype("int64"), ops["contact_id"],
                           ops["record_json"], ops["reason"], strict=True))
        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix=f"cxone-sync-g{group_index}") as pool:
            results = list(pool.map(lambda m: self._one(*m), members))
        self._checkpoints.tidy()
        summary = SyncSummary()
        for result in results:
            summary.counts[result.outcome] = summary.counts.get(result.outcome, 0) + 1
            summary.requests += result.requests
            summary.attempts += result.attempts
            summary.rate_limited += result.rate_limited
            summary.transient += int(result.transient)
            if result.outcome == GONE:
                summary.gone.append(result)
            if result.requests or result.resumed:
                summary.metrics.append({"batch_id": result.op_id, "batch_index": -1, "records": 1, "imported": 0,
                                        "duplicates": 0, "failed": int(result.outcome == "failed"), "status": result.outcome,
                                        "latency_ms": round(result.latency_ms, 2), "attempts": result.attempts,
                                        "requests": result.requests, "rate_limited": result.rate_limited,
                                        "resumed": result.resumed, "started_at": result.started_at,
                                        "finished_at": result.at, "kind": result.action})
        return summary, results

    def _one(self, op: str, action: str, row_number: int, contact_id: str, record_json: str, reason: str) -> OpResult:
        result = OpResult(op, action, int(row_number), contact_id, reason, "", started_at=_now(), record_json=record_json)
        saved = self._checkpoints.load(op)
        if saved is not None:
            result.outcome, result.detail, result.at, result.resumed = saved["outcome"], saved["detail"], saved["at"], True
            result.attempts = int(saved.get("attempts", 0))
            return result
        if action == REMOVE and reason == MIRROR_ABSENT and not self._mirror_allowed:
            result.outcome, result.at = REMOVAL_HELD, _now()
            result.detail = "mirror removal held: over max_removal_share without approval, or not approved"
            return result
        uncertain = self._checkpoints.was_inflight(op)
        self._checkpoints.mark_inflight(op)
        result.requests = 1
        started = time.monotonic()
        try:
            if action == UPDATE:
                answer = self._client.update_record_json(self._list, contact_id, record_json)
                result.outcome = UPDATED if answer.found else GONE
                result.detail = "" if answer.found else "the list holds no such record (404): created with the batched POST"
            else:
                answer = self._client.delete_record(self._list, contact_id)
                applied_before = uncertain or answer.outcome_uncertain
                result.outcome = REMOVED_OUTCOME if answer.found or applied_before else NOT_ON_LIST
                result.detail = "confirmed_on_retry" if not answer.found and applied_before else ""
            result.attempts, result.rate_limited = answer.attempts, answer.rate_limited
        except (CXoneConflictError, CXoneValidationError) as exc:
            result.outcome, result.detail = "failed", str(exc)
            result.attempts = int(getattr(exc, "attempts", 1) or 1)
        except CXoneError as exc:
            result.outcome, result.detail, result.transient = "failed", str(exc), True
            result.attempts = int(getattr(exc, "attempts", 1) or 1)
            if not (exc.outcome_uncertain or uncertain):
                self._checkpoints.clear_inflight(op)
        result.latency_ms = (time.monotonic() - started) * 1000.0
        result.at = _now()
        if not result.transient:
            self._checkpoints.save(op, {"outcome": result.outcome, "detail": result.detail, "at": result.at,
                                        "attempts": result.attempts})
        return result


def write_outcomes(layout: RunLayout, group_index: int, results: list[OpResult]) -> None:
    """The group's sync outcome file (one row per update and removal, final outcomes only)."""
    table = pa.table({name: pa.array([getattr(r, name) for r in results], type=SYNC_OUTCOME_SCHEMA.field(name).type)
                      for name in SYNC_OUTCOME_SCHEMA.names}, schema=SYNC_OUTCOME_SCHEMA)
    with atomic_open(layout.sync_outcomes(group_index), "wb") as handle:
        pq.write_table(table, handle)


def record_group(layout: RunLayout, group_index: int, summary: SyncSummary, results: list[OpResult], *,
                 mirror_allowed: bool | None, audit: list[dict[str, Any]] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Account for a group's updates and removals, whatever the API profile: its sync outcome file, its audit
    entries (each removal with contactId, reason and time; ``audit`` adds the profile's own) and its counts
    (``sync/outcomes-{g}.json``, which the report reads). Returns the counts without the per-request metrics."""
    write_outcomes(layout, group_index, results)
    write_jsonl(layout.audit_part(f"sync-group-{group_index:05d}"),
                update_audit_entries(results) + removal_audit_entries(results) + list(audit or []))
    counts = {"counts": summary.counts, "requests": summary.requests, "attempts": summary.attempts,
              "rate_limited": summary.rate_limited, "transient": summary.transient, "metrics": summary.metrics,
              "mirror_allowed": mirror_allowed, **(extra or {})}
    write_json(layout.sync_summary(group_index), counts, compact=True)
    log.info("group %d: sync %s, %d requests", group_index, summary.counts, summary.requests)
    return {k: v for k, v in counts.items() if k != "metrics"}


def read_outcomes(layout: RunLayout) -> pd.DataFrame:
    """Every sync outcome of the run (all groups)."""
    frames = [read_parquet(p) for p in layout.sync_outcome_files()]
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype="int64" if name == "row_number" else "str")
                             for name in SYNC_OUTCOME_SCHEMA.names})
    return pd.concat(frames, ignore_index=True)


def removal_audit_entries(results: list[OpResult]) -> list[dict[str, Any]]:
    """One audit entry per removal request (the evidence of a revocation honoured): contactId, reason, time."""
    return [{"auditId": hashlib.sha256(f"{r.op_id}:{r.outcome}".encode()).hexdigest()[:32], "timestamp": r.at,
             "kind": "removal", "status": r.outcome, "contactId": r.contact_id, "rowNumber": r.row_number or None,
             "details": {"reason": r.reason, "detail": r.detail, "attempts": r.attempts, "resumed": r.resumed}}
            for r in results if r.action == REMOVE]


def update_audit_entries(results: list[OpResult]) -> list[dict[str, Any]]:
    return [{"auditId": hashlib.sha256(f"{r.op_id}:{r.outcome}".encode()).hexdigest()[:32], "timestamp": r.at,
             "kind": "update", "status": r.outcome, "contactId": r.contact_id, "rowNumber": r.row_number,
             "details": {"detail": r.detail, "attempts": r.attempts, "resumed": r.resumed}}
            for r in results if r.action == UPDATE]


def answers_of(results: list[OpResult]) -> tuple[list[str], list[str], list[str]]:
    """(contactIds, record JSON, outcomes) of the final outcomes the state learns from."""
    told = [r for r in results if r.outcome in (UPDATED, REMOVED_OUTCOME, NOT_ON_LIST, "imported", "duplicate")]
    return [r.contact_id for r in told], [r.record_json for r in told], [r.outcome for r in told]


def estimate(plan: SyncPlan, batches: int, requests_per_minute: float | None) -> str:
    """What the run needs before sending: requests and how long they take at the budget."""
    needed = requests_needed(plan, batches)
    minutes = needed / requests_per_minute if requests_per_minute else None
    return (f"{needed} requests ({batches} batches of creates, {plan['updates']} updates, "
            f"{sum(plan['removals'].values())} removals)" + (f", {minutes * 60:.0f} s at {requests_per_minute:.0f} "
                                                             "requests/min" if minutes is not None else ""))


