"""
### CXone outbound contact list import

Reads a CRM export (CSV or JSON Lines), validates every record against the contact schema (E.164 phones,
consent window, opt-in status, unique contactId), imports the valid records into a NICE CXone contact list in
batches of at most 100, notifies the CRM webhook and writes a reconciled run report. With a connection whose
`api_profile` is `call_lists` the same tasks import into a calling list instead: CSV uploads, their jobs awaited on
the triggerer (no worker slot held), outcomes read back from the list.

Files of each run live under `{storage base}/runs/cxone_contact_import/{run_id}/`: `rejects.csv`,
`audit.jsonl`, `batch_results.jsonl`, `dead_letter.jsonl`, `report.json`. See the README for the guarantees a run
gives and what to do after a failed run.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import AssetAlias, Param, dag, task

from cxone_provider.notifiers.run_failed import CrmRunFailedNotifier

from include.cxone_dag import settings
from include.cxone_dag.callbacks import failure_event
from include.cxone_dag.operators import ContactImportOperator, RemovalApprovalOperator

# Parsing stays light: the task bodies (pandas, pyarrow, pandera) are imported inside the tasks, when they run.
RETRY_DELAY = settings.retry_delay()


@dag(
    dag_id=settings.DAG_ID,
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # runs for different contact lists go on at the same time: one tenant budget is shared by all of them, and
    # each list is held by one run at a time (a lease taken by the import tasks; see README, "Throughput")
    doc_md=__doc__,
    on_failure_callback=CrmRunFailedNotifier(build_event=failure_event, http_conn_id=settings.WEBHOOK_CONN_ID),
    tags=["cxone", "outbound", "contacts"],
    default_args={"retries": 2, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True},
    params={
        "source_uri": Param(
            None,
            type=["null", "string"],
            pattern=r"^([a-z][a-z0-9+.-]*://\S+|/\S+)$",
            title="Source URI",
            description="CRM export to import (file://, s3://, ... or an absolute path; .csv or .jsonl), from a "
            "place the cxone_source_allowed_prefixes Variable allows (default: local files and the source base's "
            "bucket). Empty: the run day's file from the cxone_source_base Variable (contacts_{ds}.csv).",
        ),
        "contact_list_id": Param(
            None,
            type=["null", "string"],
            pattern=r"^[A-Za-z0-9_-]{1,64}$",
            title="Contact list id",
            description="Target CXone contact list. Empty: the cxone_contact_list_id Variable.",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Validate and chunk; send nothing."),
        "max_consent_age_days": Param(
            1825, type="integer", minimum=1, maximum=36500, title="Max consent age (days)",
            description="Reject records whose consent is older than this (TCPA/GDPR window); under upsert and "
            "mirror a contact on the list whose consent is older is removed (consent_expired).",
        ),
        "sync_mode": Param(
            None, type=["null", "string"], enum=[None, "append", "upsert", "mirror"], title="Sync mode",
            description="append: create only. upsert: create new records, update changed ones, remove withdrawn and "
            "expired consent. mirror: upsert, and remove the records this project put on the list that the export no "
            "longer holds. Empty: the cxone_sync_mode Variable, else upsert.",
        ),
        "max_removal_share": Param(
            0.05, type="number", minimum=0, maximum=1, title="Max removal share",
            description="mirror: removals of absent contacts above this share of the list's state wait for approval "
            "(sync/removal_decision.json); withdrawn and expired consent is never held.",
        ),
        "approval_timeout_hours": Param(
            24, type="number", minimum=0, title="Approval timeout (hours)",
            description="How long a bulk mirror removal waits for approval before it is held (removal_held).",
        ),
        "batch_size": Param(
            100, type="integer", minimum=1, maximum=100, title="Batch size",
            description="Records per API request (CXone accepts at most 100).",
        ),
        "max_reject_share": Param(
            0.25, type="number", minimum=0, maximum=1, title="Max reject share",
            description="Fail the run (after writing rejects and report) when more than this share of rows is rejected.",
        ),
        "redrive_run_id": Param(
            None, type=["null", "string"], title="Redrive run id",
            description="Import exactly the dead-letter records of this earlier run instead of a source file.",
        ),
        "full_resync": Param(
            False, type="boolean", title="Full resync",
            description="Send every valid record, ignoring what the list already acknowledged (its state is still "
            "updated). Default: only new and changed records are sent, the others end as unchanged.",
        ),
        "create_list_if_missing": Param(
            False, type="boolean", title="Create list if missing",
            description="call_lists profile: create the calling list (named contact_list_id) when the tenant has "
            "none with that id or name.",
        ),
        "list_expiration_days": Param(
            None, type=["null", "integer"], minimum=1, maximum=30, title="Record expiration (days)",
            description="call_lists profile: the uploaded records leave the calling list this many days after their "
            "upload (NICE keeps at most 30 days of inventory). Empty: the connection's list_expiration_days, else 30.",
        ),
        "default_phone_region": Param(
            None, type=["null", "string"], pattern=r"^[A-Za-z]{2}$", title="Default phone region",
            description="Two-letter region (e.g. US, GB, DE) for phone numbers written without +: parsed for that "
            "region and sent in E.164. Empty: a number without + is rejected.",
        ),
    },
)
def cxone_contact_import():
    @task
    def extract(params=None, **context):
        from include.cxone_import import run_bookkeeping, tasks

        with run_bookkeeping.measured(context, "extract"):
            return tasks.extract(params, context)

    @task
    def validate(extracted: dict, params=None, **context):
        from include.cxone_import import run_bookkeeping, tasks

        with run_bookkeeping.measured(context, "validate"):
            return tasks.validate(extracted, params, context)

    @task
    def chunk(validated: dict, params=None, **context):
        from include.cxone_import import run_bookkeeping, tasks

        with run_bookkeeping.measured(context, "chunk"):
            return tasks.chunk(validated, params, context)

    @task(trigger_rule="all_done", retries=0)
    def notify_webhook(validated: dict, params=None, **context):
        from include.cxone_import import run_bookkeeping, tasks

        with run_bookkeeping.measured(context, "notify_webhook"):
            return tasks.notify(validated, params, context)

    # The list's asset event comes from here, once per run and only when it reconciled: a downstream DAG never sees
    # a half-imported list, and parallel import tasks never race to create the alias's asset row (PostgreSQL).
    @task(trigger_rule="all_done", retries=0, outlets=[AssetAlias(settings.CONTACT_LIST_ASSET_ALIAS)])
    def report(extracted: dict, validated: dict, groups: list, webhook: dict | None, params=None, **context):
        from include.cxone_import import list_lease, run_bookkeeping, tasks

        try:
            with run_bookkeeping.measured(context, "report"):
                return tasks.report(extracted, validated, groups, webhook, params, context)
        finally:
            list_lease.release_contact_list(params, context)

    extracted = extract()
    validated = validate(extracted)
    groups = chunk(validated)
    # one task per group with the connection's api_profile: records batches, or calling-list uploads whose jobs it
    # waits for deferred on the triggerer, holding no worker or pool slot meanwhile
    imported = ContactImportOperator.partial(
        task_id="import_batches",
        pool="cxone_api",  # bounds the worker slots import tasks hold; the request budget does not depend on it
        retries=3,
        map_index_template="{{ group_label }}",
    ).expand(group=groups)
    # a mirror run that would remove more than max_removal_share of the list waits here for a human (Required
    # Actions); every other run passes at once
    approval = RemovalApprovalOperator(task_id="approve_removals", retries=0)
    groups >> approval >> imported
    notified = notify_webhook(validated)
    imported >> notified
    report(extracted, validated, groups, notified)


cxone_contact_import()
