"""What one task hands the next, named once: the run's params, the XCom payloads of ``extract``, ``validate``, ``chunk`` and
``import_batches``, the group summary each import step writes beside its outcomes, a task's failure record and a batch's audit
entry.
Plain ``TypedDict``s: XCom, JSON files and the report read them as the dicts they are at run time; the builders
are ``engine.group_summary`` and ``engine.audit_entry``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class RunParams(TypedDict, total=False):
    """The run's params as the DAG's trigger form declares them (``dags/cxone_contact_import.py``)."""

    source_uri: str | None
    contact_list_id: str | None
    dry_run: bool
    max_consent_age_days: int
    sync_mode: str | None
    max_removal_share: float
    approval_timeout_hours: float
    batch_size: int
    max_reject_share: float
    redrive_run_id: str | None
    full_resync: bool
    create_list_if_missing: bool
    list_expiration_days: int | None
    default_phone_region: str | None


class RunInfo(TypedDict):
    """The run as its report and events name it (``task_config.run_info``)."""

    dag_id: str
    run_id: str
    contact_list_id: str | None
    logical_date: str
    dry_run: NotRequired[bool]
    redrive_run_id: NotRequired[str | None]
    full_resync: NotRequired[bool]
    sync_mode: NotRequired[str]


class ExtractResult(TypedDict):
    """What ``pipeline.extract`` read (the source shown with its credentials masked)."""

    source_uri: str
    parts: int
    input_rows: int


class ExtractedRun(ExtractResult):
    """``extract``'s XCom: the extraction, the run and its folder."""

    run: RunInfo
    run_root: str


class ValidateResult(TypedDict):
    """``validate``'s XCom: counts, the rejects file and timings."""

    input_rows: int
    valid_rows: int
    rejected_rows: int
    reject_entries: int
    normalised: dict[str, int]
    rejects_by_rule: dict[str, int]
    rejects_csv: str
    parts: int
    validation_seconds: float
    schema_seconds: float
    validation_cpu_seconds: float
    schema_cpu_seconds: float


class ImportGroup(TypedDict):
    """One item of ``chunk``'s XCom: an import group as planned (the mapped import task's ``group``)."""

    group_index: int
    path: str
    records: int
    batches: NotRequired[int]
    groups_total: NotRequired[int]
    updates: NotRequired[int]  # sync: the group's share of the plan's updates and removals
    removals: NotRequired[int]


class GroupSummary(TypedDict):
    """What one group came to (``outcomes/group-*.json``; ``import_batches``' XCom with compact batch metrics).

    ``not_sent`` and ``stopped``: the records profile (a group stopped by a configuration error or a lost lease);
    ``jobs`` and ``recovery_rounds``: the call_lists profile's upload jobs; ``sync``: the group's updates and
    removals."""

    group_index: int
    records: int
    batches: int
    imported: int
    duplicate: int
    failed: int
    transient_failed_batches: int
    resumed_batches: int
    requests: int
    rate_limited: int
    seconds: float
    batch_metrics: list[dict[str, Any]]
    not_sent: NotRequired[int]
    stopped: NotRequired[dict[str, str] | None]
    jobs: NotRequired[dict[str, str]]
    recovery_rounds: NotRequired[int]
    sync: NotRequired[dict[str, Any]]


class FailureRecord(TypedDict):
    """Why a task of the run failed (``failures/{task}.json``): read by the report and the failed run's CRM event.
    The rule and column when the error names them; the message names rows and rules, never record content."""

    task: str
    try_number: int | None
    error: str
    rule: str | None
    column: str | None
    source: str | None
    message: str
    at: str


class AuditEntry(TypedDict):
    """A batch's (or an uploaded file's) line in the run's audit log, also the ``auditTrailer`` of its CRM event."""

    auditId: str  # noqa: N815 - the audit log's and the CRM's field names
    timestamp: str
    kind: str  # batch (records API) or upload (a calling-list file)
    batchId: str  # noqa: N815
    batchIndex: int  # noqa: N815
    recordCount: int  # noqa: N815
    status: str
    latencyMs: float  # noqa: N815
    details: dict[str, Any]
