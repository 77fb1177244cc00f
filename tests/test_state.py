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
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_parquet, write_parquet
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


# -- a killed task's updates and removals; ids/ compacted --------------------------------------------------------


def _snapshot_of(state, ids: list[str]) -> dict[str, tuple[int, int]]:
    """(acknowledged, origin) of each contact as the state holds it."""
    snapshot = state.snapshot()
    position = {int(k): i for i, k in enumerate(snapshot["key"])}
    return {cid: (int(snapshot["acknowledged"][position[int(k)]]), int(snapshot["origin"][position[int(k)]]))
            for cid, k in zip(ids, contact_keys(ids), strict=True)}


def test_a_killed_tasks_updates_and_removals_reach_the_state_from_their_checkpoints(state, base):
    """An import task killed while sending its group's updates and removals, never retried: the next fold reads
    their checkpoints, so the state holds the updated content and knows the removed contacts are gone; what was in
    flight or held tells it nothing."""
    from include.cxone_import.engine import CheckpointStore
    from include.cxone_import.state import REMOVED
    from include.cxone_import.sync import OPS_SCHEMA

    ids = ["u-1", "r-1", "r-2", "r-3", "h-1", "u-2"]
    before = [f'{{"contactId":"{c}","v":1}}' for c in ids]
    state.write_delta("night-1", 0, Acknowledgements.of(ids, before, ["imported"] * len(ids)))
    state.compare(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64), fold=True)
    layout = RunLayout.for_run(base, "dag", "night-2")
    state.register_run("night-2", [0], logical_date=2)
    new_u1 = '{"contactId":"u-1","v":2}'
    ops = pa.table({"op_id": [f"op-{c}" for c in ids], "action": ["update", "remove", "remove", "remove", "remove", "update"],
                    "row_number": list(range(1, 7)), "contact_id": ids,
                    "record_json": [new_u1, "", "", "", "", '{"contactId":"u-2","v":2}'],
                    "reason": ["", "consent_withdrawn", "consent_expired", "mirror_absent", "mirror_absent", ""]},
                   schema=OPS_SCHEMA)
    layout.sync_ops(0).parent.mkdir(parents=True, exist_ok=True)
    write_parquet(layout.sync_ops(0), ops)
    store = CheckpointStore(layout, [f"op-{c}" for c in ids])
    for op, outcome in (("op-u-1", "updated"), ("op-r-1", "removed"), ("op-r-2", "not_on_list"),
                        ("op-h-1", "removal_held")):
        store.save(op, {"outcome": outcome, "detail": "", "at": "2026-12-01T00:00:00+00:00", "attempts": 1})
    store.mark_inflight("op-r-3")  # sent, killed before the answer was read
    store.mark_inflight("op-u-2")

    found = state.compare(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64), fold=True,
                          skip_run_id="night-3")

    assert found.recovered_groups == 1
    held = _snapshot_of(state, ids)
    assert held["u-1"] == (int(fingerprints([new_u1])[0]), 1), "the update's content, not the old one"
    assert held["r-1"][0] == held["r-2"][0] == REMOVED, "removed (or found gone): never claimed on the list"
    for unknown in ("r-3", "u-2", "h-1"):  # in flight or held: as before (the next run sends them again)
        assert held[unknown] == (int(fingerprints([before[ids.index(unknown)]])[0]), 1)
    assert not list_files_of(state, "runs"), "the run is recovered once"


def list_files_of(state, folder: str) -> list[str]:
    root = UPath(str(state.root)) / folder
    return sorted(p.name for p in root.glob("*")) if root.exists() else []


def _night(state, night: int, ids: list[str], outcomes: list[str]) -> None:
    state.write_delta(f"night-{night}", 0, Acknowledgements.of(ids, [f'{{"contactId":"{c}","n":{night}}}' for c in ids],
                                                               outcomes))
    state.compare(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64), fold=True)


def test_ids_files_are_compacted_to_the_contacts_on_the_list(state):
    """Night after night ids/ stays one file of the contacts this project has on the list."""
    for night in range(1, 8):  # 100 new contacts a night, 10 of the night before's removed
        new = [f"c-{night}-{n}" for n in range(100)]
        gone = [f"c-{night - 1}-{n}" for n in range(10)] if night > 1 else []
        _night(state, night, new + gone, ["imported"] * 100 + ["removed"] * len(gone))
        assert len(list_files_of(state, "ids")) == 1
    on_list = [f"c-{night}-{n}" for night in range(1, 8) for n in range(10 if night == 7 else 10, 100)] + \
        [f"c-7-{n}" for n in range(10)]
    found = state.contact_ids_of(contact_keys(on_list + ["c-1-0", "c-3-5"]))
    assert sorted(found.values()) == sorted(on_list), "every contact on the list, none removed"
    table = pq.read_table(str(UPath(str(state.root)) / "ids" / list_files_of(state, "ids")[0]))
    assert table.num_rows == len(on_list)


def test_ids_of_a_delta_not_folded_yet_are_left_alone(state):
    _night(state, 1, ["a", "b"], ["imported", "imported"])
    state.write_delta("night-2", 0, Acknowledgements.of(["c"], ['{"contactId":"c"}'], ["imported"]))  # not folded
    assert state.compact_ids(contact_keys(["a", "b"])) == 2
    assert sorted(state.contact_ids_of(contact_keys(["a", "b", "c"])).values()) == ["a", "b", "c"]
    assert len(list_files_of(state, "ids")) == 2


COMPACTION_KILLED = """
import json, os, signal, sys
import numpy as np
from upath import UPath
from include.cxone_import import state as state_module
from include.cxone_import.state import ContactListState, ListKey, contact_keys

real_remove = state_module._remove
def remove_then_die(path):
    if "/ids/" in str(path):
        real_remove(path)
        os.kill(os.getpid(), signal.SIGKILL)  # the compacted file is written, one old file removed, the rest left
    real_remove(path)

state_module._remove = remove_then_die
state = ContactListState(UPath(sys.argv[1]), "dag", ListKey.from_dict(json.loads(sys.argv[2])), buckets=4)
state.compact_ids(contact_keys(json.loads(sys.argv[3])))
"""


def test_a_kill_in_the_middle_of_compacting_ids_loses_no_contact_id(state, base, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    on_list = []
    for night in range(1, 4):
        ids = [f"k-{night}-{n}" for n in range(20)]
        on_list += ids
        state.write_delta(f"night-{night}", 0, Acknowledgements.of(ids, ids, ["imported"] * 20))
    state.compare(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64), fold=True)  # compacts
    for night in range(4, 6):  # two more nights folded without compaction, then a compaction killed half-way
        ids = [f"k-{night}-{n}" for n in range(20)]
        on_list += ids
        state.write_delta(f"night-{night}", 0, Acknowledgements.of(ids, ids, ["imported"] * 20))
    ours = on_list[5:]  # k-1-0 .. k-1-4 removed since
    from unittest import mock
    with mock.patch.object(ContactListState, "compact_ids"):
        state.compare(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64), fold=True)
    assert len(list_files_of(state, "ids")) == 3
    child = subprocess.run([sys.executable, "-c", COMPACTION_KILLED, str(base), json.dumps(KEY.to_dict()),
                            json.dumps(ours)], cwd=ROOT, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    left = list_files_of(state, "ids")
    assert len(left) == 3 and sum(name.startswith("compact-") for name in left) == 2, left  # new whole, one old gone
    assert sorted(state.contact_ids_of(contact_keys(on_list)).values()) == sorted(on_list), "no contactId lost"
    assert state.compact_ids(contact_keys(ours)) == len(ours)  # the next compaction finishes the job
    assert len(list_files_of(state, "ids")) == 1
    assert sorted(state.contact_ids_of(contact_keys(on_list)).values()) == sorted(ours)
