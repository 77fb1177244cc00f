"""The per-list change-detection state on its own: deltas, folding, comparing bucket by bucket."""

from __future__ import annotations

import numpy as np
import pytest
from upath import UPath

from include.cxone_import.state import ContactListState, contact_keys, fingerprints

ROWS = np.arange(1, 5, dtype=np.int64)
IDS = ["c-1", "c-2", "c-3", "c-4"]


@pytest.fixture
def state(tmp_path):
    return ContactListState(UPath(f"file://{tmp_path}"), "dag", "list-1", buckets=4)


def records(*versions: str) -> np.ndarray:
    return fingerprints([f'{{"contactId":"{cid}","v":"{v}"}}' for cid, v in zip(IDS, versions, strict=True)])


def files(state) -> set[str]:
    root = UPath(str(state.root))
    return {str(p.relative_to(root)).split("/")[0] for p in root.rglob("*") if p.is_file()}


def test_only_records_acknowledged_as_they_are_now_are_unchanged(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, keys[:3], records("a", "a", "a", "a")[:3])  # c-4 never acknowledged

    found = state.compare(ROWS, keys, records("a", "b", "a", "a"), fold=True)

    assert found.unchanged_rows.tolist() == [1, 3]  # c-2 changed, c-4 new
    assert found.state_contacts == 3 and found.folded_deltas == 1


def test_the_later_acknowledgement_wins_and_folding_is_repeatable(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, keys, records("a", "a", "a", "a"))
    state.write_delta("run-2", 0, keys[:2], records("b", "b", "a", "a")[:2])
    now = records("b", "a", "a", "a")

    first = state.compare(ROWS, keys, now, fold=True)
    again = state.compare(ROWS, keys, now, fold=True)

    assert first.unchanged_rows.tolist() == again.unchanged_rows.tolist() == [1, 3, 4]
    assert again.folded_deltas == 0, "the deltas were folded into the base and removed"
    assert files(state) == {"CURRENT.json", "base"}


def test_a_dry_compare_writes_nothing(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, keys, records("a", "a", "a", "a"))
    before = sorted(p.path for p in UPath(str(state.root)).rglob("*") if p.is_file())

    found = state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=False)

    assert found.unchanged_rows.tolist() == [1, 2, 3, 4]
    assert sorted(p.path for p in UPath(str(state.root)).rglob("*") if p.is_file()) == before


def test_a_half_written_delta_is_skipped_not_folded(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, keys, records("a", "a", "a", "a"))
    broken = state.root / "deltas" / "99999999999999999999-run-2-g00000-deadbeef.parquet"
    broken.write_bytes(b"PAR1 cut short")

    found = state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)

    assert found.unchanged_rows.tolist() == [1, 2, 3, 4]
    assert broken.exists(), "left for a person to look at; it never makes a record unchanged"


def test_each_bucket_holds_only_its_keys(state):
    keys = contact_keys([f"c-{n}" for n in range(1000)])
    fps = fingerprints([f"r-{n}" for n in range(1000)])
    state.write_delta("run-1", 0, keys, fps)
    state.compare(np.arange(1000), keys, fps, fold=True)
    import json

    generation = json.loads((state.root / "CURRENT.json").read_text())["generation"]
    from include.cxone_import.storage import read_parquet

    sizes = []
    for bucket in range(4):
        table = read_parquet(state.root / "base" / generation / f"bucket-{bucket:03d}.parquet")
        assert (table["key"].to_numpy(dtype=np.uint64) % np.uint64(4) == bucket).all()
        assert np.all(np.diff(table["key"].to_numpy(dtype=np.uint64)) > 0), "sorted, one entry per contact"
        sizes.append(len(table))
    assert sum(sizes) == 1000 and min(sizes) > 150
