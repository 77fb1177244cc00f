"""CRM webhook events: one per batch in the specification's shape, a run summary, and a run failure.

Plain functions building the events and summarising their deliveries; the provider delivers them
(:mod:`cxone_provider.crm_webhook`: signed, keyed, retried). A failed delivery is recorded, never raised: the
import does not depend on the CRM being up.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from cxone_provider.crm_webhook import Delivery, WebhookSender

BATCH_EVENT = "cxone_contact_import_batch_complete"
SUMMARY_EVENT = "cxone_contact_import_run_complete"
FAILURE_EVENT = "cxone_contact_import_run_failed"


def batch_event_id(run_key: str, batch_id: str) -> str:
    """A batch event's id, also its ``Idempotency-Key``: the same for every delivery of it."""
    return f"{run_key}:batch:{batch_id}"


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
