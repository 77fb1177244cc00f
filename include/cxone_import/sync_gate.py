"""The bulk-removal guard of a ``mirror`` run: plain Python, no Airflow.

``chunk`` plans the run's removals (``sync/plan.json``). When ``mirror`` would remove a larger share of the records
the list's state holds than ``max_removal_share``, the run stops before any mirror removal at a human approval
(``operators.RemovalApprovalOperator``): approved, the removals go; rejected or not answered in time, they are held
(``removal_held``). Removals for withdrawn or expired consent are an obligation and never wait for anyone.

The decision is written once to ``sync/removal_decision.json``; the import tasks read it before they remove.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_json, write_json
from include.cxone_import.sync import (
    CONSENT_EXPIRED,
    CONSENT_WITHDRAWN,
    MIRROR_ABSENT,
    SyncPlan,
    read_plan,
)

__all__ = ["APPROVED", "HELD", "RemovalDecision", "approval_body", "decide_without_asking", "needs_approval",
           "read_decision", "read_plan", "record_decision"]

APPROVED, HELD = "approved", "held"
REASON_TEXT = {
    CONSENT_WITHDRAWN: "consent withdrawn (removed whatever the answer: an obligation)",
    CONSENT_EXPIRED: "consent older than max_consent_age_days (removed whatever the answer)",
    MIRROR_ABSENT: "no longer in tonight's export (mirror; this approval decides)",
}


@dataclass(frozen=True)
class RemovalDecision:
    """Whether the run's mirror removals go (``sync/removal_decision.json``)."""

    mirror_removals: str  # approved | held
    why: str
    decided_by: str | None = None
    decided_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_decision(layout: RunLayout) -> RemovalDecision | None:
    path = layout.removal_decision
    return RemovalDecision(**read_json(path)) if path.exists() else None


def mirror_removals(plan: SyncPlan) -> int:
    return int(plan["removals"].get(MIRROR_ABSENT, 0))


def needs_approval(plan: SyncPlan | None, max_removal_share: float) -> bool:
    """A mirror run that would remove more than ``max_removal_share`` of the records the list's state holds."""
    if plan is None or plan["mode"] != "mirror" or not mirror_removals(plan):
        return False
    return plan["mirror_share"] > max_removal_share


def decide_without_asking(layout: RunLayout, plan: SyncPlan | None, max_removal_share: float) -> RemovalDecision | None:
    """Write the decision when nobody needs to be asked (no mirror removal, or a share within the bound) and return
    it; None when a human must decide. A gate that runs again (a cleared run) asks again: its answer replaces the
    earlier one."""
    if needs_approval(plan, max_removal_share):
        return None
    if plan is None or not mirror_removals(plan):
        why = "no mirror removal planned"
    else:
        why = (f"mirror removes {plan['mirror_share']:.1%} of the list's records, within max_removal_share "
               f"{max_removal_share:.1%}")
    return record_decision(layout, APPROVED, why)


def record_decision(layout: RunLayout, outcome: str, why: str, decided_by: str | None = None) -> RemovalDecision:
    decision = RemovalDecision(outcome, why, decided_by, datetime.now(timezone.utc).isoformat())
    write_json(layout.removal_decision, decision.to_dict())
    return decision


def approval_body(plan: SyncPlan, max_removal_share: float, timeout_hours: float) -> str:
    """What the approver reads (Markdown): the counts per reason and masked samples, and what each answer does."""
    lines = [
        f"This `mirror` run would remove **{mirror_removals(plan):,}** records that are no longer in tonight's export: "
        f"**{plan['mirror_share']:.1%}** of the {plan['state_records']:,} records the list's state holds, above "
        f"`max_removal_share` ({max_removal_share:.1%}).",
        "",
        "| reason | records | samples (masked) |",
        "|---|---|---|",
    ]
    for reason, count in sorted(plan["removals"].items()):
        samples = ", ".join(plan["samples"].get(reason, [])) or "-"
        lines.append(f"| {REASON_TEXT.get(reason, reason)} | {count:,} | {samples} |")
    lines += [
        "",
        f"Creates: {plan['creates']:,}. Updates: {plan['updates']:,}.",
        "",
        "**Approve**: the mirror removals go. **Reject**, or no answer within "
        f"{timeout_hours:g} h: they are held (outcome `removal_held`, named in the report and the CRM summary); "
        "creates, updates and consent removals go either way.",
    ]
    return "\n".join(lines)
