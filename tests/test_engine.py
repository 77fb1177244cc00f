"""The import engine against the sandbox: 400s isolate the records the server names, checkpoints make a second
run send nothing, and the outcome file accounts for every record of the group."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from upath import UPath

from cxone_provider.client import CXoneClient
from cxone_provider.retry import RetryPolicy
from include.cxone_import.engine import CheckpointStore, GroupImporter
from include.cxone_import.pipeline import GROUP_SCHEMA, batch_id
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_parquet, write_parquet

LIST = "engine-list"


def record(i: int, phone: str | None = None) -> dict:
    return {
        "contactId": f"c{i}",
        "phoneNumbers": [{"type": "mobile", "number": phone or f"+1415555{i:04d}"}],
        "customFields": {},
        "consentTimestamp": "2026-06-01T00:00:00Z",
        "optInStatus": "confirmed",
    }


@pytest.fixture
def layout(tmp_path):
    return RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")


def write_group(layout, records: list[dict], batch_size: int, *, listed: set[str] = frozenset()) -> None:
    """The group file chunk writes; ``listed``: contacts the list's state knew before the run."""
    rows = []
    for n, rec in enumerate(records):
        rows.append((n + 1, n // batch_size, rec["contactId"], json.dumps(rec)))
    batches = {}
    for _, b, _, record_json in rows:
        batches.setdefault(b, []).append(record_json)
    table = pa.table(
        {
            "row_number": [r[0] for r in rows],
            "batch_index": [r[1] for r in rows],
            "batch_id": [batch_id(LIST, batches[r[1]]) for r in rows],
            "contact_id": [r[2] for r in rows],
            "record_json": [r[3] for r in rows],
            "listed_before": [r[2] in listed for r in rows],
            "sent_unanswered": [False] * len(rows),
        },
        schema=GROUP_SCHEMA,
    )
    write_parquet(layout.group_file(0), table)


@pytest.fixture
def client(cxone_sandbox):
    with CXoneClient(cxone_sandbox.url, "sandbox-client", "sandbox-secret",
                     retry_policy=RetryPolicy(backoff_base_s=0, max_attempts=3)) as c:
        yield c


def test_a_400_fails_only_the_records_the_server_names(layout, client, cxone_sandbox):
    records = [record(i) for i in range(10)]
    records[3] = record(3, phone="12345")  # the server refuses this one
    write_group(layout, records, batch_size=10)

    summary = GroupImporter(client, LIST, layout, concurrency=2).run(0)

    assert (summary["imported"], summary["failed"]) == (9, 1)
    outcomes = read_parquet(layout.outcome_file(0)).set_index("row_number")
    assert outcomes.loc[4, "outcome"] == "failed"
    assert "INVALID_E164" in outcomes.loc[4, "detail"]
    assert sorted(r["contactId"] for r in cxone_sandbox.records(LIST)) == sorted(f"c{i}" for i in range(10) if i != 3)


def test_second_run_of_a_group_sends_nothing(layout, client, cxone_sandbox):
    write_group(layout, [record(i) for i in range(25)], batch_size=10)
    first = GroupImporter(client, LIST, layout).run(0)
    requests_before = cxone_sandbox.stats()["records_requests"]
    second = GroupImporter(client, LIST, layout).run(0)

    assert cxone_sandbox.stats()["records_requests"] == requests_before
    assert second["resumed_batches"] == second["batches"] == 3
    assert (first["imported"], second["imported"]) == (25, 25)
    assert len(cxone_sandbox.records(LIST)) == 25


def test_duplicates_in_warnings_mode_are_counted_per_record(layout, client, cxone_sandbox):
    cxone_sandbox.seed_records(LIST, [record(2), record(99, phone="+14155550005")])
    write_group(layout, [record(i) for i in range(8)], batch_size=8)

    summary = GroupImporter(client, LIST, layout).run(0)

    assert (summary["imported"], summary["duplicate"]) == (6, 2)
    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")
    assert set(outcomes[outcomes["outcome"] == "duplicate"].index) == {"c2", "c5"}


@pytest.mark.parametrize("names_duplicates", [True, False], ids=["409-names-them", "409-names-none"])
def test_an_atomic_409_costs_no_good_record(layout, client, cxone_sandbox, names_duplicates):
    cxone_sandbox.configure(duplicate_mode="conflict", conflict_names_duplicates=names_duplicates)
    cxone_sandbox.seed_records(LIST, [record(1), record(6)])
    write_group(layout, [record(i) for i in range(8)], batch_size=8)

    summary = GroupImporter(client, LIST, layout).run(0)

    assert (summary["imported"], summary["duplicate"], summary["failed"]) == (6, 2, 0)
    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")
    assert set(outcomes[outcomes["outcome"] == "duplicate"].index) == {"c1", "c6"}
    assert sorted(r["contactId"] for r in cxone_sandbox.records(LIST)) == sorted(f"c{i}" for i in range(8))
    # named: the batch, then the rest; unnamed: halves of 8, 4, 2 and 1 until each duplicate stands alone
    assert summary["requests"] == (2 if names_duplicates else 11)


@pytest.mark.parametrize("duplicate_mode", ["warnings", "conflict"])
def test_duplicates_after_an_unanswered_attempt_are_our_own_records(layout, client, cxone_sandbox, duplicate_mode):
    """An earlier attempt of the batch reached the server but its answer was lost (the in-flight marker is left):
    the server now reports those records as duplicates, and they count as imported, once."""
    cxone_sandbox.configure(duplicate_mode=duplicate_mode)
    records = [record(i) for i in range(6)]
    write_group(layout, records, batch_size=6)
    batch = batch_id(LIST, [json.dumps(r) for r in records])
    CheckpointStore(layout, [batch]).mark_inflight(batch)
    cxone_sandbox.seed_records(LIST, records[:4])  # what the lost attempt had created

    summary = GroupImporter(client, LIST, layout).run(0)

    assert (summary["imported"], summary["duplicate"], summary["failed"]) == (6, 0, 0)
    assert summary["batch_metrics"][0]["confirmed_on_retry"] == 4
    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")
    assert list(outcomes.loc[[f"c{i}" for i in range(4)], "detail"]) == ["confirmed_on_retry"] * 4
    assert len(cxone_sandbox.records(LIST)) == 6
    assert not list((layout.root / "inflight").iterdir())  # acknowledged: the marker is gone


def test_a_store_only_touches_its_own_batches(layout):
    """Import tasks of one run share the checkpoint folders; each store sees and tidies only its group's batches,
    and a marker removed by somebody else is not an error."""
    mine, theirs = CheckpointStore(layout, ["a1", "a2"]), CheckpointStore(layout, ["b1"])
    for store, batch in ((mine, "a1"), (mine, "a2"), (theirs, "b1")):
        store.mark_inflight(batch)
    mine.save("a1", {"metrics": {}, "outcomes": []})
    theirs.save("b1", {"metrics": {}, "outcomes": []})

    reopened = CheckpointStore(layout, ["a1", "a2"])
    assert reopened.was_inflight("a2") and reopened.load("a1") is not None
    assert reopened.load("b1") is None and not reopened.was_inflight("b1")
    (layout.root / "inflight" / "a1.json").unlink()  # gone already (a retried task tidied it)
    reopened.tidy()
    mine.tidy()
    assert sorted(p.name for p in (layout.root / "inflight").iterdir()) == ["a2.json", "b1.json"]
    with pytest.raises(ValueError):
        reopened.mark_inflight("b1")


def test_a_group_read_in_pieces_gives_the_same_batches(layout, monkeypatch):
    """The group file is decoded a few thousand rows at a time; a batch that spans two reads stays whole."""
    from include.cxone_import import engine

    write_group(layout, [record(i) for i in range(103)], batch_size=10)
    whole = list(engine._read_batches(layout.group_file(0)))
    monkeypatch.setattr(engine, "READ_ROWS", 7)  # every read ends inside a batch

    pieces = list(engine._read_batches(layout.group_file(0)))

    assert pieces == whole
    assert [len(members) for _, _, members in pieces] == [10] * 10 + [3]
    assert [b for b, _, _ in pieces] == list(range(11))


def test_the_listener_hears_each_sent_batch_once(layout, client):
    """Each batch this task sends is told to the listener with its audit entry; resumed batches are not."""
    write_group(layout, [record(i) for i in range(45)], batch_size=10)
    heard: list[tuple[str, str]] = []

    def listener(metrics, audit) -> None:
        heard.append((metrics.batch_id, audit["batchId"]))
        raise RuntimeError("a failing listener never fails the import")

    summary = GroupImporter(client, LIST, layout, concurrency=3).run(0, on_batch=listener)
    again = GroupImporter(client, LIST, layout).run(0, on_batch=listener)

    ids = sorted(m["batch_id"] for m in summary["batch_metrics"])
    assert sorted(b for b, _ in heard) == ids and all(b == a for b, a in heard)
    assert summary["imported"] == 45 and again["resumed_batches"] == 5 and len(heard) == 5


def test_outcomes_are_written_as_they_come_and_only_a_whole_file_is_kept(layout, client, monkeypatch):
    """The outcome file is written a few rows at a time under a .partial name, renamed when the group is done; a
    group that dies half-way leaves neither file (a retry and the report see "not finished")."""
    from include.cxone_import import engine

    monkeypatch.setattr(engine, "OUTCOME_FLUSH_ROWS", 7)
    write_group(layout, [record(i) for i in range(45)], batch_size=10)

    class Broken:
        def import_batch_json(self, contact_list_id, records_json):
            raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError, match="the process dies here"):
        GroupImporter(Broken(), LIST, layout).run(0)
    assert not layout.outcome_file(0).exists()
    assert [p.name for p in layout.outcome_file(0).parent.iterdir()] == []

    summary = GroupImporter(client, LIST, layout, concurrency=3).run(0)

    outcomes = read_parquet(layout.outcome_file(0))
    assert sorted(outcomes["row_number"]) == list(range(1, 46)) and set(outcomes["outcome"]) == {"imported"}
    assert summary["imported"] == 45
    assert [p.name for p in layout.outcome_file(0).parent.iterdir() if p.name.endswith(".partial")] == []


def stored(sandbox) -> list[str]:
    ids = [r["contactId"] for r in sandbox.records(LIST)]
    assert len(ids) == len(set(ids)), "a record was created twice"
    return ids


def test_a_200_with_errors_fails_exactly_the_records_it_names(layout, client, cxone_sandbox):
    """errors[] in a 200: those records end failed with CXone's reason (not retried: a refusal for their content),
    the others imported; nothing named is ever imported."""
    cxone_sandbox.configure(record_error_rate=0.3)
    write_group(layout, [record(i) for i in range(30)], batch_size=10)

    summary = GroupImporter(client, LIST, layout).run(0)

    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")
    on_server = set(stored(cxone_sandbox))
    failed = set(outcomes.index[outcomes["outcome"] == "failed"])
    assert failed and failed.isdisjoint(on_server) and failed | on_server == {f"c{i}" for i in range(30)}
    assert set(outcomes.index[outcomes["outcome"] == "imported"]) == on_server
    assert all("STORAGE_REJECTED" in d for d in outcomes.loc[sorted(failed), "detail"])
    assert summary["transient_failed_batches"] == 0 and summary["requests"] == 3
    assert GroupImporter(client, LIST, layout).run(0)["resumed_batches"] == 3, "checkpointed: not sent again"


def test_records_refused_for_now_are_sent_again_by_the_task_retry(layout, client, cxone_sandbox):
    cxone_sandbox.configure(record_error_rate=0.3, record_error_code="TEMPORARY_FAILURE")
    write_group(layout, [record(i) for i in range(30)], batch_size=10)

    first = GroupImporter(client, LIST, layout).run(0)
    created_first = set(stored(cxone_sandbox))
    cxone_sandbox.configure(record_error_rate=0.0)
    retry = GroupImporter(client, LIST, layout).run(0)  # what Airflow's retry of the task does

    assert first["transient_failed_batches"] > 0 and first["failed"] == 30 - len(created_first)
    assert first["imported"] == len(created_first), "what was created is imported, even in a batch to retry"
    assert (retry["imported"], retry["failed"], retry["transient_failed_batches"]) == (30, 0, 0)
    assert sorted(stored(cxone_sandbox)) == sorted(f"c{i}" for i in range(30))
    confirmed = sum(m["confirmed_on_retry"] for m in retry["batch_metrics"])
    assert 0 < confirmed <= len(created_first), "the retry's duplicates were this task's own records"


def test_an_answer_that_does_not_add_up_never_makes_a_record_imported(layout, client, cxone_sandbox):
    """3 sent, fewer counted created, nothing named: the batch proves nothing. It is sent again at once (as after a
    lost answer: its duplicates are the records the first attempt created); twice short, it fails transiently and
    the task retry resolves it."""
    cxone_sandbox.configure(miscount_rate=1.0)
    write_group(layout, [record(i) for i in range(9)], batch_size=3)

    short = GroupImporter(client, LIST, layout).run(0)

    assert (short["imported"], short["failed"], short["transient_failed_batches"]) == (0, 9, 3)
    assert short["requests"] == 6 and len(stored(cxone_sandbox)) == 9, "stored, but never said so: not imported"
    assert all(m["uncounted_answers"] == 2 for m in short["batch_metrics"])
    cxone_sandbox.configure(miscount_rate=0.0)

    resolved = GroupImporter(client, LIST, layout).run(0)

    assert (resolved["imported"], resolved["failed"]) == (9, 0)
    assert sum(m["confirmed_on_retry"] for m in resolved["batch_metrics"]) == 9
    assert len(stored(cxone_sandbox)) == 9


def test_a_short_answer_is_resolved_in_the_same_task(layout, client, cxone_sandbox):
    cxone_sandbox.configure(miscount_rate=0.5)
    write_group(layout, [record(i) for i in range(40)], batch_size=4)

    summary = GroupImporter(client, LIST, layout).run(0)

    doubted = [m for m in summary["batch_metrics"] if m["uncounted_answers"]]
    assert doubted, "some answers were short"
    outcomes = read_parquet(layout.outcome_file(0))
    imported = set(outcomes.loc[outcomes["outcome"] == "imported", "contact_id"])
    assert imported <= set(stored(cxone_sandbox)), "imported only what the server holds"
    assert summary["imported"] + summary["failed"] == 40


def test_a_contact_the_list_held_before_is_never_confirmed_by_a_lost_answer(layout, client, cxone_sandbox):
    """A batch whose earlier attempt may have reached the server: a duplicate of a contact the list's state knew
    before the run was not created by that attempt (the list held another version), so it stays a duplicate."""
    old = [record(i, phone=f"+1415666{i:04d}") for i in range(2)]  # what the list holds for c0, c1
    cxone_sandbox.seed_records(LIST, old)
    changed = [record(i) for i in range(6)]
    write_group(layout, changed, batch_size=6, listed={"c0", "c1"})
    batch = batch_id(LIST, [json.dumps(r) for r in changed])
    CheckpointStore(layout, [batch]).mark_inflight(batch)
    cxone_sandbox.seed_records(LIST, changed[2:4])  # what the lost attempt created

    summary = GroupImporter(client, LIST, layout).run(0)

    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")["outcome"]
    assert outcomes[["c0", "c1"]].tolist() == ["duplicate", "duplicate"]
    assert outcomes[["c2", "c3", "c4", "c5"]].tolist() == ["imported"] * 4
    assert summary["batch_metrics"][0]["confirmed_on_retry"] == 2


def test_a_resumed_batch_takes_this_runs_row_numbers(layout, client, cxone_sandbox):
    """The same records make the same batch id; a corrected file that moved them keeps its own row numbers."""
    records = [record(i) for i in range(10)]
    write_group(layout, records, batch_size=5)
    GroupImporter(client, LIST, layout).run(0)
    requests = cxone_sandbox.stats()["records_requests"]
    table = pa.Table.from_pandas(read_parquet(layout.group_file(0)), preserve_index=False)
    shifted = table.set_column(0, "row_number", pa.array([r + 100 for r in table["row_number"].to_pylist()]))
    write_parquet(layout.group_file(0), shifted.cast(GROUP_SCHEMA))

    again = GroupImporter(client, LIST, layout).run(0)

    assert cxone_sandbox.stats()["records_requests"] == requests and again["resumed_batches"] == 2
    assert sorted(read_parquet(layout.outcome_file(0))["row_number"]) == list(range(101, 111))
