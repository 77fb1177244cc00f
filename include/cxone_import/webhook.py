"""CRM webhook events: one per batch in the specification's shape, one per import group for its updates and removals
(counts per outcome and reason, masked samples: never one per request), a run summary, and a run failure. Every event
id names the run and what it tells of, never a try: a retry's delivery is a redelivery (the ``Idempotency-Key``).

Plain functions building the events and summarising their deliveries; the provider delivers them
(:mod:`cxone_provider.crm_webhook`: signed, keyed, retried). A failed delivery is recorded, never raised: the
import does not depend on the CRM being up.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from cxone_provider.crm_webhook import Delivery, WebhookSender
from include.cxone_import.masking import mask_text

BATCH_EVENT = "cxone_contact_import_batch_complete"
SYNC_GROUP_EVENT = "cxone_contact_list_sync_group_complete"
SUMMARY_EVENT = "cxone_contact_import_run_complete"
FAILURE_EVENT = "cxone_contact_import_run_failed"
SYNC_KINDS = ("update", "remove", "recreate", "dnc")  # request metrics of the sync ops: told per group, not per request
SYNC_SAMPLES = 5


def batch_event_id(run_key: str, batch_id: str) -> str:
    """A batch event's id, also its ``Idempotency-Key``: the same for every delivery of it."""
    return f"{run_key}:batch:{batch_id}"


def sync_group_event_id(run_key: str, group_index: int) -> str:
    """A group's sync event id, also its ``Idempotency-Key``: one per group and run, whichever try sends it."""
    return f"{run_key}:sync:group:{int(group_index):05d}"


def is_sync_request(metrics: dict[str, Any]) -> bool:
    """Whether a request metric is one of the sync ops' (an update, a removal, the creation of a gone record)."""
    return metrics.get("kind") in SYNC_KINDS


def sync_group_event(run_key: str, group_index: int, outcomes: pd.DataFrame, scope: dict[str, Any]) -> dict[str, Any]:
    """The event of one import group's updates and removals (``outcomes``: its final sync outcomes, columns action,
    contact_id, reason, outcome): counts per outcome and per removal reason, masked samples of the removed contacts,
    never a record. One per group, sent once its outcomes are final."""
    updates = outcomes[outcomes["action"] == "update"]
    removals = outcomes[outcomes["action"] == "remove"]
    by_reason: dict[str, dict[str, int]] = {}
    for (reason, outcome), count in removals.groupby(["reason", "outcome"]).size().items():
        by_reason.setdefault(str(reason), {})[str(outcome)] = int(count)
    samples = {str(reason): [mask_text(str(c)) for c in ids.head(SYNC_SAMPLES)]
               for reason, ids in removals.groupby("reason")["contact_id"]}
    event_id = sync_group_event_id(run_key, group_index)
    return {
        "eventId": event_id,
        "event": SYNC_GROUP_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "metrics": {
            "scope": {"kind": "group", "groupIndex": int(group_index), **scope},
            "updates": _counts(updates["outcome"]),
            "removals": _counts(removals["outcome"]),
            "removalsByReason": by_reason,
            "samples": samples,  # masked contactIds per removal reason
        },
        "auditTrailer": {"auditId": hashlib.sha256(event_id.encode()).hexdigest()[:32], "status": "sync_group_complete"},
    }


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().items()}


class RunningTotals:
    """The running totals a batch event carries, like the specification's syncCRM: records processed, succeeded
    (imported or duplicate) and failed, success rate and mean batch latency over the batches counted so far."""

    def __init__(self) -> None:
        self.batches = self.processed = self.success = self.failure = 0
        self._latency_total = 0.0

    def add(self, m: dict[str, Any]) -> dict[str, Any]:
        """Count one batch's metrics; return the totals as the event's ``metrics``."""
        self.batches += 1
        self.processed += m["records"]
        self.success += m["imported"] + m["duplicates"]
        self.failure += m["failed"]
        self._latency_total += m["latency_ms"]
        return {
            "totalProcessed": self.processed,
            "successCount": self.success,
            "failureCount": self.failure,
            "successRatePercent": round(100.0 * self.success / self.processed, 2) if self.processed else 0.0,
            "averageLatencyMs": round(self._latency_total / self.batches, 2),
        }


def batch_event(m: dict[str, Any], totals: RunningTotals, audit: dict[str, Any], run_key: str, scope: dict[str, Any]) -> dict[str, Any]:
    """One batch's event: its own counts, the running totals (``scope`` says over what) and its audit entry."""
    return {
        "eventId": batch_event_id(run_key, m["batch_id"]),
        "event": BATCH_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "metrics": {
            **totals.add(m),
            "scope": scope,
            "batch": {k: m[k] for k in ("batch_id", "batch_index", "records", "imported", "duplicates", "failed", "latency_ms", "attempts")},
        },
        "auditTrailer": audit,
    }


def batch_events(batch_metrics: list[dict[str, Any]], audit_by_batch: dict[str, dict[str, Any]], run_key: str,
                 scope: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Events for these batches in batch order, the running totals over them (by default the whole run's)."""
    totals = RunningTotals()
    scope = scope or {"kind": "run"}
    return [
        batch_event(m, totals, audit_by_batch.get(m["batch_id"], {}), run_key, scope)
        for m in sorted(batch_metrics, key=lambda m: m["batch_index"])
    ]


class LiveBatchEvents:
    """Sends each batch's event while the import task still sends (the batch listener of the import engine), so
    that the CRM hears of a batch seconds after CXone acknowledged it, not after the run's last batch.

    The running totals are those of the task's group, in the order its batches were acknowledged
    (``metrics.scope``: kind ``group``, its index, the number of groups and of batches in the group); the run's
    totals come in the summary event. Deliveries go on ``concurrency`` threads of their own and never slow the
    import; :meth:`close` waits for the last of them."""

    def __init__(self, sender: WebhookSender, run_key: str, scope: dict[str, Any]) -> None:
        self._sender = sender
        self._run_key = run_key
        self._scope = {"kind": "group", **scope}
        self._totals = RunningTotals()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, sender.target.concurrency), thread_name_prefix="crm-event")
        self._pending: list[Future[Delivery]] = []

    def batch_acknowledged(self, metrics: Any, audit: dict[str, Any]) -> None:
        """The engine's listener: queue the batch's event (``metrics``: the batch's ``BatchMetrics``)."""
        with self._lock:
            event = batch_event(metrics.as_dict(), self._totals, audit, self._run_key, self._scope)
            self._pending.append(self._pool.submit(self._sender.send, event))

    def sync_finished(self, group_index: int, outcomes: pd.DataFrame) -> None:
        """Queue the event of the group's updates and removals (their outcomes final)."""
        scope = {k: v for k, v in self._scope.items() if k not in ("kind", "groupIndex")}
        with self._lock:
            event = sync_group_event(self._run_key, group_index, outcomes, scope)
            self._pending.append(self._pool.submit(self._sender.send, event))

    def close(self) -> list[Delivery]:
        """Wait for every queued delivery; their outcomes in the order the batches were acknowledged."""
        self._pool.shutdown(wait=True)
        self._sender.close()
        return [f.result() for f in self._pending]


SYNC_METRICS = {"updatedCount": "updated", "staleCount": "stale", "removedCount": "removed",
                "notOnListCount": "not_on_list", "removalHeldCount": "removal_held", "removalFailedCount": "removal_failed"}


def summary_event(run_key: str, numbers: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    return {
        "eventId": f"{run_key}:summary",
        "event": SUMMARY_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "run": run,
        "metrics": {
            "totalProcessed": numbers["input"],
            "successCount": numbers["imported"] + numbers["duplicates"] + numbers.get("unchanged", 0)
            + numbers.get("updated", 0),
            "failureCount": numbers["failed"] + numbers["rejected"],
            "rejectedCount": numbers["rejected"],
            "importedCount": numbers["imported"],
            "duplicateCount": numbers["duplicates"],
            "unchangedCount": numbers.get("unchanged", 0),
            "failedCount": numbers["failed"],
            "successRatePercent": numbers["success_rate_percent"],
            "averageLatencyMs": numbers["average_batch_latency_ms"],
            "p95LatencyMs": numbers["p95_batch_latency_ms"],
            # sync (issue 22): present when the run planned updates or removals
            **{name: numbers[key] for name, key in SYNC_METRICS.items() if key in numbers},
            **({"removalsByReason": numbers["removals_by_reason"]} if numbers.get("removals_by_reason") else {}),
        },
        "auditTrailer": {"auditId": str(uuid.uuid4()), "timestamp": datetime.now(timezone.utc).isoformat(), "status": "run_complete"},
    }


def run_failed_event(run: dict[str, Any], reason: str, failed_task: str | None, problems: list[str], report: str,
                     run_key: str | None = None) -> dict[str, Any]:
    """The event a failed run sends (DAG ``on_failure_callback``): why, where, and the report's problems. ``run_key``
    keys the event (default: the run id)."""
    return {
        "eventId": f"{run_key or run['run_id']}:failed",
        "event": FAILURE_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "run": run,
        "reason": reason,
        "failedTask": failed_task,
        "problems": problems,
        "report": report,
        "auditTrailer": {"auditId": str(uuid.uuid4()), "status": "run_failed"},
    }


def delivery_audit(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """One audit entry per delivery (kept in the run's audit log; the summary is counted from them)."""
    now = datetime.now(timezone.utc).isoformat()
    return [
        {
            "auditId": str(uuid.uuid4()),
            "timestamp": now,
            "kind": "webhook",
            "status": "delivered" if d.ok else "delivery_failed",
            "latencyMs": None,
            "details": {"eventId": d.event_id, "event": d.event, "statusCode": d.status_code, "attempts": d.attempts, "error": d.error},
        }
        for d in deliveries
    ]


def delivered_event_ids(entries: list[dict[str, Any]]) -> set[str]:
    """The events some delivery of these audit entries delivered."""
    return {e["details"]["eventId"] for e in entries if e["status"] == "delivered"}


def delivery_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What the report keeps of the run's deliveries (audit entries from the import tasks and the notify task): each
    event counted once, delivered when any of its deliveries was."""
    delivered = delivered_event_ids(entries)
    events = {e["details"]["eventId"] for e in entries}
    errors = {e["details"]["error"] for e in entries if e["status"] != "delivered" and e["details"]["eventId"] not in delivered}
    return {
        "events": len(events),
        "delivered": len(delivered),
        "failed": len(events - delivered),
        "attempts": sum(e["details"]["attempts"] for e in entries),
        "errors": sorted(e for e in errors if e)[:10],
    }
