"""CRM webhook events: one per batch in the specification's shape, a run summary, and a run failure.

Plain functions building the events and summarising their deliveries; the provider delivers them
(:mod:`cxone_provider.crm_webhook`: signed, keyed, retried). A failed delivery is recorded, never raised: the
import does not depend on the CRM being up.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from cxone_provider.crm_webhook import Delivery

BATCH_EVENT = "cxone_contact_import_batch_complete"
SUMMARY_EVENT = "cxone_contact_import_run_complete"
FAILURE_EVENT = "cxone_contact_import_run_failed"


def batch_events(batch_metrics: list[dict[str, Any]], audit_by_batch: dict[str, dict[str, Any]], run_key: str) -> list[dict[str, Any]]:
    """Per-batch events in batch order with running totals, like the specification's syncCRM."""
    events = []
    processed = success = failure = 0
    latency_total = 0.0
    for n, m in enumerate(sorted(batch_metrics, key=lambda m: m["batch_index"]), start=1):
        processed += m["records"]
        success += m["imported"] + m["duplicates"]
        failure += m["failed"]
        latency_total += m["latency_ms"]
        events.append(
            {
                "eventId": f"{run_key}:batch:{m['batch_id']}",
                "event": BATCH_EVENT,
                "timestamp": datetime.now(timezone.utc).isoformat(),
                "metrics": {
                    "totalProcessed": processed,
                    "successCount": success,
                    "failureCount": failure,
                    "successRatePercent": round(100.0 * success / processed, 2) if processed else 0.0,
                    "averageLatencyMs": round(latency_total / n, 2),
                    "batch": {k: m[k] for k in ("batch_id", "batch_index", "records", "imported", "duplicates", "failed", "latency_ms", "attempts")},
                },
                "auditTrailer": audit_by_batch.get(m["batch_id"], {}),
            }
        )
    return events


def summary_event(run_key: str, numbers: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    return {
        "eventId": f"{run_key}:summary",
        "event": SUMMARY_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "run": run,
        "metrics": {
            "totalProcessed": numbers["input"],
            "successCount": numbers["imported"] + numbers["duplicates"] + numbers.get("unchanged", 0),
            "failureCount": numbers["failed"] + numbers["rejected"],
            "rejectedCount": numbers["rejected"],
            "importedCount": numbers["imported"],
            "duplicateCount": numbers["duplicates"],
            "unchangedCount": numbers.get("unchanged", 0),
            "failedCount": numbers["failed"],
            "successRatePercent": numbers["success_rate_percent"],
            "averageLatencyMs": numbers["average_batch_latency_ms"],
            "p95LatencyMs": numbers["p95_batch_latency_ms"],
        },
        "auditTrailer": {"auditId": str(uuid.uuid4()), "timestamp": datetime.now(timezone.utc).isoformat(), "status": "run_complete"},
    }


def run_failed_event(run: dict[str, Any], reason: str, failed_task: str | None, problems: list[str], report: str) -> dict[str, Any]:
    """The event a failed run sends (DAG ``on_failure_callback``): why, where, and the report's problems."""
    return {
        "eventId": f"{run['run_id']}:failed",
        "event": FAILURE_EVENT,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "run": run,
        "reason": reason,
        "failedTask": failed_task,
        "problems": problems,
        "report": report,
        "auditTrailer": {"auditId": str(uuid.uuid4()), "status": "run_failed"},
    }


def delivery_summary(deliveries: list[Delivery]) -> dict[str, Any]:
    """What the report and the audit log keep of the webhook deliveries."""
    failed = [d for d in deliveries if not d.ok]
    now = datetime.now(timezone.utc).isoformat()
    return {
        "events": len(deliveries),
        "delivered": len(deliveries) - len(failed),
        "failed": len(failed),
        "attempts": sum(d.attempts for d in deliveries),
        "errors": sorted({d.error for d in failed if d.error})[:10],
        "audit": [
            {
                "auditId": str(uuid.uuid4()),
                "timestamp": now,
                "kind": "webhook",
                "status": "delivered" if d.ok else "delivery_failed",
                "latencyMs": None,
                "details": {"eventId": d.event_id, "event": d.event, "statusCode": d.status_code, "attempts": d.attempts, "error": d.error},
            }
            for d in deliveries
        ],
    }
