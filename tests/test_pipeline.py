"""Chunking: batch ids, group planning (list size, executor, map-length cap), batches never split across parts.
The shared budget's limits are tested in test_ratelimit.py."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from upath import UPath

from include.cxone_import import pipeline
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import write_parquet


@pytest.mark.parametrize(
    ("valid_rows", "batch_size", "parallelism", "max_map", "expected"),
    [
        pytest.param(0, 100, 4, 1024, (0, 0, 0), id="empty"),
        pytest.param(250, 100, 32, 1024, (3, 1, 3), id="small-list-one-task"),
        pytest.param(20_000, 100, 32, 1024, (200, 1, 200), id="20k-one-task"),
        pytest.param(200_000, 100, 32, 1024, (2_000, 4, 500), id="200k-spread-over-4"),
        pytest.param(1_000_000, 100, 32, 1024, (10_000, 20, 500), id="1M-spread-over-20"),
        pytest.param(1_000_000, 100, 4, 1024, (10_000, 4, 2500), id="1M-one-group-per-pool-slot"),
        pytest.param(1_000_000, 100, 1, 1024, (10_000, 4, 2500), id="1M-one-slot"),
        pytest.param(2_000_000, 100, 4, 1024, (20_000, 8, 2500), id="2M-by-group-size"),
        pytest.param(10_000_000, 10, 4, 1024, (1_000_000, 400, 2500), id="capped-by-group-size"),
        pytest.param(50_000_000, 10, 4, 1024, (5_000_000, 1024, 4883), id="capped-by-max-map-length"),
    ],
)
def test_group_plan(valid_rows, batch_size, parallelism, max_map, expected):
    plan = pipeline.GroupPlan.plan(valid_rows, batch_size, parallelism, max_map)
    assert (plan.batches, plan.groups, plan.batches_per_group) == expected
    assert plan.groups <= max_map
    assert plan.groups * plan.batches_per_group >= plan.batches


@pytest.mark.parametrize("batch_size", [0, 101])
def test_batch_size_limits(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.GroupPlan.plan(10, batch_size, 1, 1024)


def test_batch_id_covers_the_records_as_sent_and_their_list():
    records = ['{"contactId":"a","v":1}', '{"contactId":"b","v":1}', '{"contactId":"c","v":1}']
    assert pipeline.batch_id("L1", records) == pipeline.batch_id("L1", list(records))
    assert pipeline.batch_id("L1", records) != pipeline.batch_id("L2", records)
    assert pipeline.batch_id("L1", records) != pipeline.batch_id("L1", records[:2])
    corrected = [*records[:2], '{"contactId":"c","v":2}']  # the same contacts, one record's content corrected
    assert pipeline.batch_id("L1", records) != pipeline.batch_id("L1", corrected)


def test_a_batch_spanning_two_parts_stays_whole(tmp_path):
    layout = RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")
    sizes = [7, 5, 9]
    row = 1
    for n, size in enumerate(sizes):
        frame = pd.DataFrame(
            {
                "row_number": range(row, row + size),
                "contact_id": [f"c{i}" for i in range(row, row + size)],
                "phone_mobile": [f"+1415555{i:04d}" for i in range(row, row + size)],
                "consent_timestamp": "2026-06-01T00:00:00Z",
                "opt_in_status": "pending",
            }
        )
        write_parquet(layout.valid_part(n), frame)
        row += size
    groups = pipeline.chunk(layout, parts=3, valid_rows=sum(sizes), batch_scope="L", batch_size=4,
                            parallelism=2, max_map_length=1024)
    tables = [pq.read_table(layout.group_file(g["group_index"]).path).to_pandas() for g in groups]
    rows = pd.concat(tables, ignore_index=True)
    assert list(rows["row_number"]) == list(range(1, 22))
    per_batch = rows.groupby("batch_index").agg(ids=("batch_id", "nunique"), n=("row_number", "size"))
    assert (per_batch["ids"] == 1).all(), "one id per batch"
    assert list(per_batch["n"]) == [4, 4, 4, 4, 4, 1]
    for _, batch in rows.groupby("batch_index"):
        assert batch["batch_id"].iloc[0] == pipeline.batch_id("L", list(batch["record_json"]))
    assert sum(g["records"] for g in groups) == 21 and sum(g["batches"] for g in groups) == 6


def test_parallel_groups_follow_the_variable(monkeypatch):
    """The group plan counts on as many import tasks side by side as the Variable says (the pool's slots)."""
    from include.cxone_import import task_config

    monkeypatch.delenv("AIRFLOW_VAR_CXONE_IMPORT_PARALLEL_GROUPS", raising=False)
    assert task_config.parallel_groups() == task_config.DEFAULT_PARALLEL_GROUPS == 4
    monkeypatch.setenv("AIRFLOW_VAR_CXONE_IMPORT_PARALLEL_GROUPS", "6")
    assert task_config.parallel_groups() == 6
    for wrong in ("0", "four"):
        monkeypatch.setenv("AIRFLOW_VAR_CXONE_IMPORT_PARALLEL_GROUPS", wrong)
        with pytest.raises(ValueError, match="cxone_import_parallel_groups must be a whole number"):
            task_config.parallel_groups()


def _reference_chunk(layout, groups, contact_list_id):
    """What chunk wrote before it was streamed in slices: the rows of the group files in order, one id per batch
    from ``batch_id`` over the batch's contact ids, and the manifest from a pandas groupby of those rows."""
    rows = pd.concat([pq.read_table(layout.group_file(g["group_index"]).path).to_pandas().assign(group_index=g["group_index"])
                      for g in groups], ignore_index=True)
    for _, batch in rows.groupby("batch_index"):
        assert set(batch["batch_id"]) == {pipeline.batch_id(contact_list_id, list(batch["record_json"]))}
    return rows.groupby("batch_index", sort=True).agg(
        batch_id=("batch_id", "first"), group_index=("group_index", "first"), records=("row_number", "size"),
        first_row=("row_number", "min"), last_row=("row_number", "max"),
    ).reset_index()


@pytest.mark.parametrize("slice_rows", [3, 8, 50_000])
def test_chunk_in_slices_writes_what_the_whole_part_did(tmp_path, monkeypatch, slice_rows):
    """Tiny parts (smaller than a batch), a part emptied by the rows left out, non-ASCII contact ids: the group
    files, the batch ids and the manifest are those of the reference, whatever the slice size."""
    import numpy as np

    monkeypatch.setattr(pipeline, "CHUNK_SLICE_ROWS", slice_rows)
    layout = RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")
    sizes = [2, 1, 13, 4, 0, 9, 30]
    row = 1
    for n, size in enumerate(sizes):
        numbers = list(range(row, row + size))
        write_parquet(layout.valid_part(n), pd.DataFrame({
            "row_number": pd.Series(numbers, dtype="int64"),
            "contact_id": pd.Series([f"c{i}-Zoë-東京" for i in numbers], dtype="str"),
            "phone_mobile": pd.Series([f"+1415555{i:04d}" for i in numbers], dtype="str"),
            "cf_tier": pd.Series([None if i % 3 else "gold" for i in numbers], dtype="str"),
            "consent_timestamp": pd.Series(["2026-06-01T00:00:00Z"] * size, dtype="str"),
            "opt_in_status": pd.Series(["pending"] * size, dtype="str"),
        }))
        row += size
    unchanged = np.array([17, 18, 19, 20, 40, 41], dtype=np.int64)  # part 3 entirely
    valid = sum(sizes)
    listed = np.array([3, 25, 59], dtype=np.int64)
    groups = pipeline.chunk(layout, parts=len(sizes), valid_rows=valid, batch_scope="L", batch_size=4,
                            parallelism=3, max_map_length=1024, left_out_rows=unchanged, listed_rows=listed)
    manifest = pd.read_parquet(layout.batch_manifest.path)
    expected = _reference_chunk(layout, groups, "L")
    pd.testing.assert_frame_equal(manifest, expected, check_dtype=False)
    assert list(manifest.dtypes.astype(str)) == ["int64", "str", "int64", "int64", "int64", "int64"]
    sent = pd.concat([pq.read_table(layout.group_file(g["group_index"]).path).to_pandas() for g in groups])
    assert list(sent["row_number"]) == [r for r in range(1, valid + 1) if r not in set(unchanged)]
    assert sorted(sent.loc[sent["listed_before"], "row_number"]) == listed.tolist()
    assert pq.read_schema(layout.group_file(0).path).remove_metadata().equals(pipeline.GROUP_SCHEMA)
    assert [g["batches"] for g in groups] == manifest.groupby("group_index").size().tolist()
