"""The night-2 arithmetic and the arguments of ``tools.bench_nightly`` (the benchmark itself is not a test)."""

from __future__ import annotations

import pytest

from cxone_provider.connection_form import DEFAULT_MAX_CONCURRENCY
from tools.bench_nightly import DAGTEST_CONCURRENCY, expected_requests, import_phases, parse_args, threads

ISSUE_22_ARGS = ["--rows", "200000", "--rpm", "1000", "--latency-ms", "100", "--new", "0", "--changed", "0.01",
                 "--withdrawn", "0.005", "--sync-mode", "upsert", "--nights", "2"]


@pytest.mark.parametrize(
    ("n_new", "n_changed", "n_withdrawn", "expected"),
    [
        pytest.param(0, 1_960, 980, 2_940, id="issue-22-night-2"),
        pytest.param(1_960, 0, 0, 20, id="new-only-in-batches-of-100"),
        pytest.param(1, 0, 0, 1, id="one-new-record-is-one-request"),
        pytest.param(101, 5, 3, 2 + 5 + 3, id="partial-batch-rounds-up"),
        pytest.param(0, 0, 0, 0, id="nothing-to-send"),
    ],
)
def test_expected_requests_are_new_batches_plus_one_per_update_and_removal(n_new, n_changed, n_withdrawn, expected):
    assert expected_requests(n_new, n_changed, n_withdrawn) == expected


def test_dagtest_stays_the_default_mode():
    args = parse_args(ISSUE_22_ARGS)

    assert args.mode == "dagtest"
    assert threads(args) == DAGTEST_CONCURRENCY


def test_local_mode_uses_the_connections_default_threads():
    args = parse_args(["--mode", "local", *ISSUE_22_ARGS])

    assert (args.mode, args.rpm, args.sync_mode, args.nights) == ("local", 1000, "upsert", 2)
    assert threads(args) == DEFAULT_MAX_CONCURRENCY


def test_explicit_threads_win_in_either_mode():
    assert threads(parse_args(["--mode", "local", "--concurrency", "4"])) == 4
    assert threads(parse_args(["--concurrency", "4"])) == 4


def test_unknown_mode_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--mode", "celery"])


def test_import_phases_split_start_up_from_sending():
    windows = [
        {"task_id": "chunk", "map_index": -1, "start": 90.0, "end": 100.0},
        {"task_id": "import_batches", "map_index": 0, "start": 104.0, "end": 130.0},
        {"task_id": "import_batches", "map_index": 1, "start": 105.0, "end": 128.0},
    ]
    metrics = [{"task": "import_batches", "map_index": 0, "seconds": 20.0},
               {"task": "import_batches", "map_index": 1, "seconds": 15.0}]

    phases = import_phases(windows, metrics, arrivals=[112.0, 120.0, 127.0])

    assert phases["import_phase_s"] == 26.0
    assert phases["chunk_end_to_first_import_s"] == 4.0
    assert [t["start_up_s"] for t in phases["import_tasks"]] == [6.0, 8.0]
    assert (phases["first_request_after_s"], phases["last_request_to_end_s"]) == (8.0, 3.0)
