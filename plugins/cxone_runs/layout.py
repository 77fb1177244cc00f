"""Every file of one DAG run's folder, ``{base}/runs/{dag_id}/{run_id}/``, named in one place: the tasks write and
read them through :class:`RunLayout`, the report pages read the run's report and downloads through it. The names on
disk never change (runs already written, and the tools that read them, rely on them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxone_runs.segments import name_of, path_segment


def safe_segment(value: str) -> str:
    """A DAG id, run id or contact list id as one portable path segment, injectively (``segments.path_segment``):
    ``manual__2026-11-27T06:31:23+00:00`` -> ``manual__2026-11-27T06_31_23_00_00`` as before, ``a:b`` -> ``a~3Ab``."""
    return path_segment(value)


def list_files(directory: Any, pattern: str = "*") -> list[Any]:
    """The files of ``directory`` matching ``pattern``, sorted by name; none when the folder does not exist."""
    try:
        return sorted(directory.glob(pattern), key=lambda p: p.name)
    except FileNotFoundError:
        return []


def group_index_of(path: Any) -> int:
    """The group a per-group file belongs to (``group-00003.parquet``, ``outcomes-00003.json`` -> 3)."""
    return int(path.name.split(".", 1)[0].rsplit("-", 1)[1])


@dataclass(frozen=True)
class RunLayout:
    """The files of one DAG run: ``{base}/runs/{dag_id}/{run_id}/...`` (``root`` is an ObjectStoragePath / UPath)."""

    root: Any

    @classmethod
    def for_run(cls, base: Any, dag_id: str, run_id: str) -> RunLayout:
        return cls(base / "runs" / safe_segment(dag_id) / safe_segment(run_id))

    # -- between the tasks: extract -> validate -> chunk -> import ------------------------------------------------

    def extract_part(self, n: int) -> Any:
        return self.root / "extract" / f"part-{n:05d}.parquet"

    def extract_parts(self) -> list[Any]:
        return list_files(self.root / "extract", "part-*.parquet")

    def valid_part(self, n: int) -> Any:
        return self.root / "valid" / f"part-{n:05d}.parquet"

    def group_file(self, n: int) -> Any:
        return self.root / "groups" / f"group-{n:05d}.parquet"

    def group_files(self) -> list[Any]:
        return list_files(self.root / "groups", "group-*.parquet")

    @property
    def list_key(self) -> Any:
        """The contact list the chunk task resolved for the run (its tenant and id)."""
        return self.root / "list_key.json"

    @property
    def list_lease(self) -> Any:
        """This run's tenure of its contact list (when its lease was first taken)."""
        return self.root / "list_lease.json"

    @property
    def call_list(self) -> Any:
        """The calling list (``call_lists`` profile) and its CSV columns, found or created once per run."""
        return self.root / "call_list.json"

    # -- how the run used the list's state ------------------------------------------------------------------------

    @property
    def changes_decision(self) -> Any:
        """Row number, fingerprint and decision of each valid record the list's state knows."""
        return self.root / "changes.parquet"

    @property
    def changes_summary(self) -> Any:
        """How the run used the list's state (``changes.json``)."""
        return self.root / "changes.json"

    # -- the import: checkpoints, in-flight markers, uploads, outcomes -------------------------------------------

    @property
    def checkpoints_dir(self) -> Any:
        """One file per acknowledged batch (``{batch_id}.json``)."""
        return self.root / "checkpoints"

    @property
    def inflight_dir(self) -> Any:
        """One marker per batch sent and not yet acknowledged (``{batch_id}.json``)."""
        return self.root / "inflight"

    def _upload_dir(self, group_index: int) -> Any:
        return self.root / "uploads" / f"group-{group_index:05d}"

    def upload_state(self, group_index: int) -> Any:
        """A calling-list group's upload state (jobs submitted, rounds, what is left)."""
        return self._upload_dir(group_index) / "state.json"

    def upload_before(self, group_index: int) -> Any:
        """The group's contacts the calling list held before its first upload."""
        return self._upload_dir(group_index) / "before.parquet"

    def upload_round(self, group_index: int, recovery_round: int) -> Any:
        """The records a group uploads in one round (0: the first, then recovery rounds)."""
        return self._upload_dir(group_index) / f"round-{recovery_round:02d}.parquet"

    def upload_updates(self, group_index: int) -> Any:
        """The changed records the group's upload sends (their old version removed first)."""
        return self._upload_dir(group_index) / "updates.parquet"

    def upload_update_outcomes(self, group_index: int) -> Any:
        """What the upload's read-back said of the changed records."""
        return self._upload_dir(group_index) / "update-outcomes.parquet"

    def upload_sync_state(self, group_index: int) -> Any:
        """A calling-list group's removals and DNC entries: what was sent, what settled."""
        return self._upload_dir(group_index) / "sync.json"

    def upload_sync_before(self, group_index: int, round_ids: str) -> Any:
        """The group's contacts the calling list held before one round of removals."""
        return self._upload_dir(group_index) / f"sync-before-{round_ids}.parquet"

    @property
    def outcomes_dir(self) -> Any:
        """Each import group's outcomes and summary (created by the first import task that writes one)."""
        return self.root / "outcomes"

    def outcome_file(self, n: int) -> Any:
        """Row number, contact and outcome of each of the group's rows (``group-{n}.parquet``, as its group file)."""
        return self.outcomes_dir / f"group-{n:05d}.parquet"

    def outcome_files(self) -> list[Any]:
        return list_files(self.outcomes_dir, "group-*.parquet")

    def group_summary(self, n: int) -> Any:
        """An import group's summary (counts and batch metrics), beside its outcomes."""
        return self.outcomes_dir / f"group-{n:05d}.json"

    def group_summaries(self) -> list[Any]:
        return list_files(self.outcomes_dir, "group-*.json")

    # -- updates and removals (list sync) --------------------------------------------------------------------------

    @property
    def sync_plan(self) -> Any:
        return self.root / "sync" / "plan.json"

    @property
    def sync_removals(self) -> Any:
        """The removals the plan decided (contact, reason), before they are spread over the groups."""
        return self.root / "sync" / "removals.parquet"

    @property
    def removal_decision(self) -> Any:
        """Whether the run's mirror removals go (the approval step's answer)."""
        return self.root / "sync" / "removal_decision.json"

    def sync_ops(self, group_index: int) -> Any:
        """A group's update and removal requests."""
        return self.root / "sync" / f"ops-{group_index:05d}.parquet"

    def sync_ops_files(self) -> list[Any]:
        return list_files(self.root / "sync", "ops-*.parquet")

    def sync_outcomes(self, group_index: int) -> Any:
        """The outcome of each of a group's update and removal requests."""
        return self.root / "sync" / f"outcomes-{group_index:05d}.parquet"

    def sync_outcome_files(self) -> list[Any]:
        return list_files(self.root / "sync", "outcomes-*.parquet")

    def sync_summary(self, group_index: int) -> Any:
        """A group's update and removal request counts and metrics."""
        return self.root / "sync" / f"outcomes-{group_index:05d}.json"

    def sync_summaries(self) -> list[Any]:
        return list_files(self.root / "sync", "outcomes-*.json")

    # -- book-keeping of the tasks ---------------------------------------------------------------------------------

    def metrics_file(self, task_key: str) -> Any:
        """A task try's timing and memory (``{task}[-{map_index}]``)."""
        return self.root / "metrics" / f"{task_key}.json"

    def failure_file(self, task_key: str) -> Any:
        """The failure a task recorded (which task, rule, column, message)."""
        return self.root / "failures" / f"{task_key}.json"

    def failure_files(self) -> list[Any]:
        return list_files(self.root / "failures", "*.json")

    def audit_part(self, name: str) -> Any:
        """One part of the audit trail (``import-group-*``, ``webhook-group-*``, ``webhook-notify-try-*``, ...)."""
        return self.root / "audit" / f"{name}.jsonl"

    def audit_parts(self, prefix: str = "") -> list[Any]:
        """The audit parts whose name starts with ``prefix`` (all of them by default), sorted by name."""
        return list_files(self.root / "audit", f"{prefix}*.jsonl")

    # -- what the run leaves for people ---------------------------------------------------------------------------

    @property
    def rejects_csv(self) -> Any:
        return self.root / "rejects.csv"

    @property
    def rejects_parquet(self) -> Any:
        return self.root / "rejects.parquet"

    @property
    def batch_manifest(self) -> Any:
        return self.root / "batch_manifest.parquet"

    @property
    def batch_results(self) -> Any:
        return self.root / "batch_results.jsonl"

    @property
    def audit_log(self) -> Any:
        return self.root / "audit.jsonl"

    @property
    def dead_letter(self) -> Any:
        return self.root / "dead_letter.jsonl"

    @property
    def report(self) -> Any:
        return self.root / "report.json"

    @classmethod
    def runs_of(cls, base: Any, dag_id: str) -> list[RunLayout]:
        """The run folders of a DAG under ``base``, sorted by folder name."""
        return [cls(folder) for folder in list_files(base / "runs" / safe_segment(dag_id))]


def dag_ids_with_runs(base: Any) -> set[str]:
    """DAGs with run folders under ``base`` (``{base}/runs/{dag_id}/``; a folder whose name was shortened with a
    hash cannot be read back and is left out)."""
    return {dag_id for p in list_files(base / "runs") if p.is_dir() and (dag_id := name_of(p.name))}
