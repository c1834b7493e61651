"""Batch records run in groups: what grouping must not break, over real HTTP.

A group is sized to about ``GROUP_SECONDS`` of work, starting at one record and doubling: with fast records,
the records from 31 to 62 (input order, ``parallelCount`` 1) share one group, so the record 40 of the tests
below is in the middle of a group.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest

from airflow_mlserver.server.process import LocalMLServer
from airflow_mlserver.server.runner import GROUP_SECONDS
from tests.helpers import Api, wait_for

MIDDLE = 40


def _logging_code(log: Path, sleep: float) -> str:
    """A service that notes each record's x and start time in ``log``, then sleeps ``sleep`` seconds."""
    return (
        "import time\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{x} {time.time()}\\n')\n"
        f"time.sleep({sleep})\n"
        "y = x\n"
    )


def _runs(log: Path) -> list[tuple[int, float]]:
    return [(int(x), float(t)) for x, t in (line.split() for line in log.read_text().splitlines())]


def test_error_record_in_the_middle_of_a_group_fails_alone(api: Api) -> None:
    code = f"if x == {MIDDLE}:\n    raise RuntimeError('bad record')\ny = x * 3"
    api.publish("grouped_error", "v1", code, {"x": "integer"}, {"y": "integer"})
    results = api.wait(
        "grouped_error", "v1", api.start_batch("grouped_error", "v1", [{"x": i} for i in range(80)], 1)
    )
    assert results["state"] == "Complete"
    assert (results["completedItemCount"], results["failedItemCount"]) == (80, 1)
    for i, result in enumerate(results["batchExecutionResults"]):
        assert result["success"] is (i != MIDDLE), result
        if i == MIDDLE:
            assert result["errorMessage"].startswith("RuntimeError: bad record")
        else:
            assert result["outputParameters"] == {"y": 3 * i}


def test_cancel_stops_between_records_of_a_group(api: Api, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    record_seconds = 0.004  # about a dozen records per group
    api.publish(
        "grouped_cancel", "v1", _logging_code(log, record_seconds), {"x": "integer"}, {"y": "integer"}
    )
    execution_id = api.start_batch("grouped_cancel", "v1", [{"x": i} for i in range(3000)], 10)
    deadline = time.monotonic() + 60
    while api.status("grouped_cancel", "v1", execution_id)["completedItemCount"] < 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = api.delete(f"/api/grouped_cancel/v1/batch/{execution_id}")
    canceled_at = time.time()
    assert answer.json()["state"] == "Canceled"
    # the groups in flight at the cancel have stopped and are committed, and no lane took another group
    wait_for("the workers to be idle", api.workers_idle, timeout=30, interval=0.05)
    first = api.status("grouped_cancel", "v1", execution_id, partial=True)
    final = api.status("grouped_cancel", "v1", execution_id, partial=True)
    assert final["completedItemCount"] == first["completedItemCount"] < 3000
    runs = _runs(log)
    # every record that ran was committed with its result, and no other record has one
    assert sorted(x for x, _ in runs) == sorted(
        r["outputParameters"]["y"] for r in final["batchExecutionResults"]
    )
    assert len(runs) == final["completedItemCount"] == len({x for x, _ in runs})
    # after the cancel, each of the two workers starts at most what fits in one group
    per_group = int(GROUP_SECONDS / record_seconds) + 1
    late = [x for x, started in runs if started > canceled_at]
    assert len(late) <= 2 * per_group, late


def test_timeout_inside_a_group_fails_that_record_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    with LocalMLServer(
        tmp_path_factory.mktemp("grouped_timeout"), workers=1, extra_args=["--execution-timeout", "1"]
    ) as server:
        api = Api(server)
        code = f"import time\nif x == {MIDDLE}:\n    time.sleep(30)\ny = x + 1"
        api.publish("hang_once", "v1", code, {"x": "integer"}, {"y": "integer"})
        started = time.monotonic()
        results = api.wait(
            "hang_once", "v1", api.start_batch("hang_once", "v1", [{"x": i} for i in range(80)], 1)
        )
        assert time.monotonic() - started < 20  # the hung record was cut at the timeout, not left to sleep
        assert results["state"] == "Complete"
        assert (results["completedItemCount"], results["failedItemCount"]) == (80, 1)
        for i, result in enumerate(results["batchExecutionResults"]):
            if i == MIDDLE:
                assert result["success"] is False
                assert (
                    result["errorMessage"]
                    == "the execution ran longer than the server's execution timeout (1 s)"
                )
            else:
                assert result["success"] is True, result
                assert result["outputParameters"] == {"y": i + 1}
        assert api.get("/status").json()["components"]["computeNodes"]["details"] == {
            "alive": 1,
            "expected": 1,
        }


def test_partial_results_show_committed_records_only_across_a_crash(tmp_path: Path) -> None:
    """What a client saw before a crash is never run again: it was committed. Each record ends with one result."""
    log = tmp_path / "ran.log"
    server = LocalMLServer(tmp_path / "data", workers=2)
    with server:
        api = Api(server)
        api.publish("crashable", "v1", _logging_code(log, 0.002), {"x": "integer"}, {"y": "integer"})
        execution_id = api.start_batch("crashable", "v1", [{"x": i} for i in range(3000)], parallel=10)
        deadline = time.monotonic() + 60
        seen: dict[int, dict[str, object]] = {}
        while len(seen) < 800:
            assert time.monotonic() < deadline
            partial = api.status("crashable", "v1", execution_id, partial=True)
            assert partial["completedItemCount"] <= len(partial["batchExecutionResults"])
            seen = {r["outputParameters"]["y"]: r for r in partial["batchExecutionResults"]}
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        assert len(seen) < 3000, "the batch must be stopped mid-way"
        server.start()
        results = Api(server).wait("crashable", "v1", execution_id, timeout=120)
    assert results["state"] == "Complete"
    assert [r["outputParameters"]["y"] for r in results["batchExecutionResults"]] == list(range(3000))
    runs = collections.Counter(x for x, _ in _runs(log))
    assert set(runs) == set(range(3000))
    assert [x for x in seen if runs[x] != 1] == []


def test_each_record_starts_in_an_empty_folder(api: Api) -> None:
    """Records share their worker's scratch folder: what one leaves, removes or changes never reaches the next."""
    code = (
        "import os, shutil\n"
        "found = ','.join(sorted(os.listdir('.')))\n"
        "with open('left.txt', 'w') as f:\n"
        "    f.write('x')\n"
        "os.mkdir('sub')\n"
        "if x % 3 == 1:\n"
        "    shutil.rmtree(os.getcwd())\n"
        "if x % 3 == 2:\n"
        "    os.chdir('/')\n"
    )
    api.publish("clean_folder", "v1", code, {"x": "integer"}, {"found": "character"})
    results = api.wait(
        "clean_folder", "v1", api.start_batch("clean_folder", "v1", [{"x": i} for i in range(60)], 2)
    )
    assert results["completedItemCount"] == 60
    assert [r["outputParameters"] for r in results["batchExecutionResults"]] == [{"found": ""}] * 60
    changed = [r["changedFiles"] for r in results["batchExecutionResults"]]
    assert changed == [[] if i % 3 == 1 else ["left.txt"] for i in range(60)]
