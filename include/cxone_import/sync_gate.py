"""The bulk-removal guard of a ``mirror`` run: plain Python, no Airflow.

``chunk`` plans the run's removals (``sync/plan.json``). When ``mirror`` would remove a larger share of the records
the list's state holds than ``max_removal_share``, the run stops before any mirror removal at a human approval
(``operators.RemovalApprovalOperator``): approved, the removals go; rejected or not answered in time, they are held
(``removal_held``). Removals for withdrawn or expired consent are an obligation and never wait for anyone.

The decision is written once to ``sync/removal_decision.json``; the import tasks read it before they remove.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from include.cxone_import.storage import RunLayout, read_json, write_json

MIRROR_ABSENT = "mirror_absent"
CONSENT_REASONS = ("consent_withdrawn", "consent_expired")
APPROVED, HELD = "approved", "held"
REASON_TEXT = {
    "consent_withdrawn": "consent withdrawn (removed whatever the answer: an obligation)",
    "consent_expired": "consent older than max_consent_age_days (removed whatever the answer)",
    MIRROR_ABSENT: "no longer in tonight's export (mirror; this approval decides)",
}


@dataclass(frozen=True)
class SyncPlan:
    """What ``chunk`` planned for the list (``sync/plan.json``; also chunk's XCom under ``sync``)."""

    mode: str
    creates: int = 0
    updates: int = 0
    removals: dict[str, int] = field(default_factory=dict)  # reason -> records
    state_records: int = 0  # records the list's state holds before this run
    mirror_share: float = 0.0  # mirror removals / state_records
    samples: dict[str, list[str]] = field(default_factory=dict)  # reason -> masked contact ids (at most 5)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> SyncPlan:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in value.items() if k in known})

    @property
    def mirror_removals(self) -> int:
        return int(self.removals.get(MIRROR_ABSENT, 0))


@dataclass(frozen=True)
class RemovalDecision:
    """Whether the run's mirror removals go (``sync/removal_decision.json``)."""

    mirror_removals: str  # approved | held
    why: str
    decided_by: str | None = None
    decided_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_file(layout: RunLayout) -> Any:
    return layout.root / "sync" / "plan.json"


def decision_file(layout: RunLayout) -> Any:
    return layout.root / "sync" / "removal_decision.json"


def read_plan(layout: RunLayout) -> SyncPlan | None:
    """The run's plan; None when ``chunk`` planned no sync (an append run, a dry run, nothing valid)."""
    path = plan_file(layout)
    return SyncPlan.from_dict(read_json(path)) if path.exists() else None


def read_decision(layout: RunLayout) -> RemovalDecision | None:
    path = decision_file(layout)
    return RemovalDecision(**read_json(path)) if path.exists() else None


def needs_approval(plan: SyncPlan | None, max_removal_share: float) -> bool:
    """A mirror run that would remove more than ``max_removal_share`` of the records the list's state holds."""
    return bool(plan and plan.mode == "mirror" and plan.mirror_removals and plan.mirror_share > max_removal_share)


def decide_without_asking(layout: RunLayout, plan: SyncPlan | None, max_removal_share: float) -> RemovalDecision | None:
    """Write the decision when nobody needs to be asked (no mirror removal, or a share within the bound) and return
    it; None when a human must decide. A decision already written (a retried task) stands."""
    earlier = read_decision(layout)
    if earlier is not None:
        return earlier
    if needs_approval(plan, max_removal_share):
        return None
    if plan is None or not plan.mirror_removals:
        why = "no mirror removal planned"
    else:
        why = f"mirror removes {plan.mirror_share:.1%} of the list's records, within max_removal_share {max_removal_share:.1%}"
    return record_decision(layout, APPROVED, why)


def record_decision(layout: RunLayout, outcome: str, why: str, decided_by: str | None = None) -> RemovalDecision:
    decision = RemovalDecision(outcome, why, decided_by, datetime.now(timezone.utc).isoformat())
    write_json(decision_file(layout), decision.to_dict())
    return decision


def approval_body(plan: SyncPlan, max_removal_share: float, timeout_hours: float) -> str:
    """What the approver reads (Markdown): the counts per reason and masked samples, and what each answer does."""
    lines = [
        f"This `mirror` run would remove **{plan.mirror_removals:,}** records that are no longer in tonight's export: "
        f"**{plan.mirror_share:.1%}** of the {plan.state_records:,} records the list's state holds, above "
        f"`max_removal_share` ({max_removal_share:.1%}).",
        "",
        "| reason | records | samples (masked) |",
        "|---|---|---|",
    ]
    for reason, count in sorted(plan.removals.items()):
        samples = ", ".join(plan.samples.get(reason, [])) or "-"
        lines.append(f"| {REASON_TEXT.get(reason, reason)} | {count:,} | {samples} |")
    lines += [
        "",
        f"Creates: {plan.creates:,}. Updates: {plan.updates:,}.",
        "",
        "**Approve**: the mirror removals go. **Reject**, or no answer within "
        f"{timeout_hours:g} h: they are held (outcome `removal_held`, named in the report and the CRM summary); "
        "creates, updates and consent removals go either way.",
    ]
    return "\n".join(lines)
