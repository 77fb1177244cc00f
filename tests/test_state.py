"""The per-list change-detection state on its own: keys, deltas, folding, comparing bucket by bucket, damaged files,
the format-1 migration."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from upath import UPath

from include.cxone_import.state import Acknowledgements, ContactListState, contact_keys, fingerprints, list_key
from include.cxone_import.storage import RunLayout, read_parquet, write_parquet
from tests.conftest import fold_killed_while_writing_current

ROWS = np.arange(1, 5, dtype=np.int64)
IDS = ["c-1", "c-2", "c-3", "c-4"]
KEY = list_key("list-1", base_url="https://api.example.test", client_id="client-a")


@pytest.fixture
def base(tmp_path):
    return UPath(f"file://{tmp_path}")


@pytest.fixture
def state(base):
    return ContactListState(base, "dag", KEY, buckets=4)


def records(*versions: str) -> np.ndarray:
    return fingerprints([f'{{"contactId":"{cid}","v":"{v}"}}' for cid, v in zip(IDS, versions, strict=True)])


def told(versions: tuple[str, ...], outcomes: list[str]) -> Acknowledgements:
    """What CXone answered for IDS sent in these versions (outcomes in IDS order; '' = not sent)."""
    sent = [i for i, o in enumerate(outcomes) if o]
    keys, fps = contact_keys(IDS)[sent], records(*versions)[sent]
    return Acknowledgements(keys, fps, np.array([outcomes[i] == "imported" for i in sent]))


def files(state) -> set[str]:
    root = UPath(str(state.root))
    return {str(p.relative_to(root)).split("/")[0] for p in root.rglob("*") if p.is_file()}


def test_a_list_key_names_the_tenant_and_the_resolved_list():
    same = list_key("list-1", base_url="HTTPS://api.example.test/", client_id="client-a")
    other_host = list_key("list-1", base_url="https://api-eu.example.test", client_id="client-a")
    other_client = list_key("list-1", base_url="https://api.example.test", client_id="client-b")
    calling = list_key("4711", tenant_id="11eb-tenant")

    assert same.lease_name == KEY.lease_name and same.batch_scope == KEY.batch_scope
    assert len({KEY.lease_name, other_host.lease_name, other_client.lease_name}) == 3
    assert calling.lease_name.endswith(":4711") and calling.label == "tenant 11eb-tenant"
    assert KEY.label == "api.example.test, client id client-a"
    with pytest.raises(ValueError):
        list_key("4711", base_url="https://x", client_id="c", tenant_id="t")


def test_only_content_cxone_acknowledged_is_unchanged(state):
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported", "imported", "imported", ""]))

    found = state.compare(ROWS, contact_keys(IDS), records("a", "b", "a", "a"), fold=True)

    assert found.unchanged_rows.tolist() == [1, 3]  # c-2 changed, c-4 never acknowledged
    assert found.listed_rows.tolist() == [2] and found.unconfirmed_rows.tolist() == []
    assert found.state_contacts == 3 and found.folded_deltas == 1


def test_a_duplicate_answer_never_makes_a_record_unchanged(state):
    """Night 1 creates version a; night 2 sends b and is answered duplicate (CXone keeps a). b is never
    unchanged; sent again as it is, it would change nothing (left out, ends duplicate); a is still unchanged."""
    keys = contact_keys(IDS)
    state.write_delta("night-1", 0, told(("a", "a", "a", "a"), ["imported"] * 4))
    state.write_delta("night-2", 0, told(("b", "b", "a", "a"), ["duplicate", "duplicate", "", ""]))

    night_3 = state.compare(ROWS, keys, records("b", "c", "a", "a"), fold=True)
    reverted = state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)

    assert night_3.unchanged_rows.tolist() == [3, 4]
    assert night_3.unconfirmed_rows.tolist() == [1], "b was answered duplicate: not unchanged, not worth resending"
    assert night_3.listed_rows.tolist() == [2], "c is new content: sent"
    assert reverted.unchanged_rows.tolist() == [1, 2, 3, 4], "CXone still holds what it acknowledged"


def test_a_contact_found_on_the_list_is_present_not_ours(state, base):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["duplicate", "imported", "", ""]))
    state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)
    generation = json.loads((state.root / "CURRENT.json").read_text())["generation"]
    table = pd.concat([read_parquet(p) for p in (state.root / "base" / generation).glob("*.parquet")])
    by_key = table.set_index("key")

    assert by_key.loc[keys[0], "origin"] == 0 and by_key.loc[keys[0], "acknowledged"] == 0
    assert by_key.loc[keys[1], "origin"] == 1 and by_key.loc[keys[1], "acknowledged"] == records(*"aaaa")[1]


def test_the_later_acknowledgement_wins_and_folding_is_repeatable(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported"] * 4))
    state.write_delta("run-2", 0, told(("b", "b", "a", "a"), ["imported", "imported", "", ""]))
    now = records("b", "a", "a", "a")

    first = state.compare(ROWS, keys, now, fold=True)
    again = state.compare(ROWS, keys, now, fold=True)

    assert first.unchanged_rows.tolist() == again.unchanged_rows.tolist() == [1, 3, 4]
    assert again.folded_deltas == 0, "the deltas were folded into the base and removed"
    assert files(state) == {"CURRENT.json", "base"}


def test_a_dry_compare_writes_nothing(state):
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported"] * 4))
    before = sorted(p.path for p in UPath(str(state.root)).rglob("*") if p.is_file())

    found = state.compare(ROWS, contact_keys(IDS), records("a", "a", "a", "a"), fold=False)

    assert found.unchanged_rows.tolist() == [1, 2, 3, 4]
    assert sorted(p.path for p in UPath(str(state.root)).rglob("*") if p.is_file()) == before


def test_a_half_written_delta_is_reported_and_set_aside(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported", "imported", "", ""]))
    broken = state.root / "deltas" / "99999999999999999999-run-2-g00000-deadbeef.parquet"
    broken.write_bytes(b"PAR1 cut short")

    found = state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)

    assert found.unchanged_rows.tolist() == [1, 2], "what it held is sent again"
    assert [u.split(":")[0] for u in found.unreadable] == ["deltas/99999999999999999999-run-2-g00000-deadbeef.parquet"]
    assert not broken.exists() and len(list((state.root / "unreadable").iterdir())) == 1
    assert state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True).unreadable == ()


def test_an_unreadable_current_file_sends_everything_and_is_replaced(state):
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported"] * 4))
    state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)
    current = state.root / "CURRENT.json"
    current.write_text(current.read_text()[:20])  # what an in-place write killed half-way left behind

    found = state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)

    assert found.unchanged_rows.tolist() == [] and [u.split(":")[0] for u in found.unreadable] == ["CURRENT.json"]
    assert json.loads(current.read_text())["contacts"] == 0, "a readable, empty state replaces it"
    state.write_delta("run-2", 0, told(("a", "a", "a", "a"), ["duplicate"] * 4))
    assert state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True).unreadable == ()


def test_a_kill_in_the_middle_of_writing_the_state_leaves_it_readable(state, base):
    """A fold killed while it writes CURRENT.json: the old CURRENT.json is whole, the deltas are still there, and
    the next comparison sees what the state held plus what the killed fold was folding."""
    keys = contact_keys(IDS)
    state.write_delta("run-1", 0, told(("a", "a", "a", "a"), ["imported"] * 4))
    state.compare(ROWS, keys, records("a", "a", "a", "a"), fold=True)
    ids = [f"c-{n}" for n in range(1, 2001)]  # acknowledges c-1 .. c-4 again, changed
    state.write_delta("run-2", 0, Acknowledgements(contact_keys(ids), fingerprints(ids), np.ones(2000, bool)))

    fold_killed_while_writing_current(str(base), "dag", KEY, buckets=4)

    assert json.loads((state.root / "CURRENT.json").read_text())["contacts"] == 4, "the old CURRENT.json, whole"
    found = state.compare(np.arange(1, 2001), contact_keys(ids), fingerprints(ids), fold=True)
    assert found.unreadable == () and found.folded_deltas == 1
    assert found.state_contacts == 2000 and len(found.unchanged_rows) == 2000


def test_each_bucket_holds_only_its_keys(state):
    ids = [f"c-{n}" for n in range(1000)]
    fps = fingerprints([f"r-{n}" for n in range(1000)])
    state.write_delta("run-1", 0, Acknowledgements(contact_keys(ids), fps, np.ones(1000, bool)))
    state.compare(np.arange(1000), contact_keys(ids), fps, fold=True)
    generation = json.loads((state.root / "CURRENT.json").read_text())["generation"]

    sizes = []
    for bucket in range(4):
        table = read_parquet(state.root / "base" / generation / f"bucket-{bucket:03d}.parquet")
        assert (table["key"].to_numpy(dtype=np.uint64) % np.uint64(4) == bucket).all()
        assert np.all(np.diff(table["key"].to_numpy(dtype=np.uint64)) > 0), "sorted, one entry per contact"
        sizes.append(len(table))
    assert sum(sizes) == 1000 and min(sizes) > 150


def _legacy_state(base, list_id: str, ids: list[str], versions: list[str]) -> None:
    """A state as format 1 wrote it: keyed by the list id alone, (key, fingerprint) of imported and duplicates."""
    root = base / "state" / "dag" / list_id
    keys = contact_keys(ids)
    fps = fingerprints([f'{{"contactId":"{c}","v":"{v}"}}' for c, v in zip(ids, versions, strict=True)])
    (root / "base" / "gen-1").mkdir(parents=True)
    with (root / "base" / "gen-1" / "bucket-000.parquet").open("wb") as handle:
        pq.write_table(pa.table({"key": pa.array(keys, pa.uint64()), "fingerprint": pa.array(fps, pa.uint64())}), handle)
    (root / "CURRENT.json").write_text(json.dumps({"generation": "gen-1", "buckets": 1, "contacts": len(ids),
                                                   "fingerprint": "siphash24-64:record_json/v1"}))


def _retained_run(base, list_id: str, outcomes: dict[str, str]) -> None:
    layout = RunLayout.for_run(base, "dag", "scheduled__old")
    layout.root.mkdir(parents=True)
    layout.report.write_text(json.dumps({"run": {"contact_list_id": list_id, "dry_run": False}}))
    write_parquet(layout.outcome_file(0), pd.DataFrame({"row_number": range(1, len(outcomes) + 1),
                                                        "contact_id": list(outcomes), "outcome": list(outcomes.values())}))


def test_a_format_1_state_is_adopted_once_its_duplicates_kept_apart(base, state):
    """The state an earlier version kept under the list id is adopted by the first tenant that compares the list:
    contacts a run folder still shows answered duplicate are present with their content not confirmed; another
    tenant with the same list id starts empty."""
    _legacy_state(base, "list-1", IDS, ["a", "b", "a", "a"])
    _retained_run(base, "list-1", {"c-1": "imported", "c-2": "duplicate", "c-3": "imported"})
    keys = contact_keys(IDS)

    found = state.compare(ROWS, keys, records("a", "b", "a", "a"), fold=True)

    assert found.migrated is not None and found.migrated["contacts"] == 4
    assert (found.migrated["present_unconfirmed"], found.migrated["created_here"]) == (1, 2)
    assert found.unchanged_rows.tolist() == [1, 3, 4], "c-4: no run folder left to check, taken as acknowledged"
    assert found.unconfirmed_rows.tolist() == [2]
    assert json.loads((base / "state" / "dag" / "list-1" / "MIGRATED.json").read_text())["to"]["list_id"] == "list-1"

    other_tenant = ContactListState(base, "dag", list_key("list-1", base_url="https://other.test", client_id="x"))
    assert other_tenant.is_empty(), "adopted once: another tenant's list with the same id starts empty"
