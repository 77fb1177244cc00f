"""CRM webhook events: one per batch in the specification's shape, plus a run summary.

Delivery is bounded (retries with backoff), each event carries an idempotency key, and the body is signed with
HMAC-SHA256 (``X-Signature: sha256=<hex>``) when a secret is configured. A failed delivery is recorded, never
raised: the import does not depend on the CRM being up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests

log = logging.getLogger(__name__)

BATCH_EVENT = "cxone_contact_import_batch_complete"
SUMMARY_EVENT = "cxone_contact_import_run_complete"
FAILURE_EVENT = "cxone_contact_import_run_failed"


@dataclass(frozen=True)
class WebhookTarget:
    """Where and how to deliver: URL, optional signing secret, timeout, TLS verification and retry bounds."""

    url: str
    secret: str | None = None
    timeout_s: float = 5.0
    verify: bool = True
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    concurrency: int = 8


@dataclass(frozen=True)
class Delivery:
    event_id: str
    event: str
    ok: bool
    status_code: int | None
    attempts: int
    error: str | None


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


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


class WebhookSender:
    """Posts events with bounded retries; thread-safe (one session, its pool sized to the concurrency)."""

    def __init__(self, target: WebhookTarget, session: requests.Session | None = None, sleep=time.sleep) -> None:
        self.target = target
        self._sleep = sleep
        self._session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(target.concurrency, 1))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def send(self, event: dict[str, Any]) -> Delivery:
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": event["eventId"]}
        if self.target.secret:
            headers["X-Signature"] = sign(body, self.target.secret)
        error: str | None = None
        status: int | None = None
        for attempt in range(1, self.target.max_attempts + 1):
            try:
                response = self._session.post(
                    self.target.url, data=body, headers=headers, timeout=self.target.timeout_s, verify=self.target.verify
                )
                status = response.status_code
                if status < 300:
                    return Delivery(event["eventId"], event["event"], True, status, attempt, None)
                error = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 425, 429):
                    break
            except requests.RequestException as exc:
                error = type(exc).__name__
            if attempt < self.target.max_attempts:
                self._sleep(random.uniform(0, self.target.backoff_base_s * 2 ** (attempt - 1)))
        log.warning("webhook event %s not delivered after %d attempts: %s", event["eventId"], attempt, error)
        return Delivery(event["eventId"], event["event"], False, status, attempt, error)

    def send_all(self, events: list[dict[str, Any]]) -> list[Delivery]:
        if not events:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.target.concurrency)) as pool:
            return list(pool.map(self.send, events))


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
