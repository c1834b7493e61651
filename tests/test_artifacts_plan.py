"""The artifacts operator's decisions as tables: data in, data out (no server, no store, no Airflow run).

Which executions are read and whether the path template keeps their records apart, where the manifest goes,
which records are copied (``indexes`` across the executions, rescored records from their latest attempt), what
starts next while others are copied, whether the destination holds an artifact already, which executions are
still waited for and the timeout's message, and whether the task fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.exceptions import ArtifactsConfigError, OperatorArgumentError
from airflow_mlserver.operators.artifacts.manifest import (
    STATUS_COPIED,
    STATUS_FAILED,
    STATUS_REFUSED,
    STATUS_SKIPPED,
    ArtifactEntry,
)
from airflow_mlserver.operators.artifacts.names import compile_file_filter, select_records
from airflow_mlserver.operators.artifacts.plan import (
    Listing,
    Plan,
    Skip,
    already_there,
    check_records_apart,
    executions_given,
    executions_text,
    late_message,
    manifest_rel,
    next_records,
    task_failure,
    unfinished,
)
from airflow_mlserver.operators.artifacts.records import Executions

SERVICE = {"service_name": "scorer", "service_version": "1.0"}


def _status(
    execution_id: str, total: int, state: str = "Complete", completed: int | None = None
) -> BatchStatus:
    done = total if completed is None else completed
    return BatchStatus(execution_id, "scorer", "1.0", state, total, done)


class _Log:
    """A task's logger, keeping what it was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, msg: str, /, *args: Any) -> None:
        self.lines.append(msg % args)

    def error(self, msg: str, /, *args: Any) -> None:
        self.lines.append(msg % args)


# --- which executions -------------------------------------------------------------------------------------------

SUMMARY = {
    "execution_ids": ["c0", "c1"],
    "executions": [
        {"execution_id": "c0", "round": 0, "records": "0-4"},
        {"execution_id": "c1", "round": 0, "records": "5-9"},
        {"execution_id": "r1", "round": 1, "records": "2,7"},
        {"execution_id": "r2", "round": 2, "records": "7"},
    ],
}


@pytest.mark.parametrize(
    ("execution_id", "execution_ids", "chunks", "rescores"),
    [
        ("e1", None, ["e1"], []),
        (None, ["c0", "c1"], ["c0", "c1"], []),
        (None, "['c0', 'c1']", ["c0", "c1"], []),  # what a template renders from a list
        (None, [["c0"], ["c1", "c2"]], ["c0", "c1", "c2"], []),  # a mapped task's execution_ids XCom
        (None, SUMMARY, ["c0", "c1"], ["r1", "r2"]),  # the batch operator's summary names its rescore rounds
    ],
)
def test_the_executions_read(
    execution_id: Any, execution_ids: Any, chunks: list[str], rescores: list[str]
) -> None:
    given = executions_given(execution_id, execution_ids)
    assert given.chunks == chunks
    assert [r.execution_id for r in given.rescores] == rescores
    assert given.ids == chunks + rescores


def test_execution_ids_in_no_known_form_are_refused() -> None:
    with pytest.raises(OperatorArgumentError, match="execution_ids"):
        executions_given(None, [])


@pytest.mark.parametrize(
    ("template", "ids", "apart"),
    [
        ("{execution_id}/{index}/{file_name}", ["e1"], True),
        ("{index}/{file_name}", ["e1"], True),  # one execution: its index tells records apart
        ("{index}/{file_name}", ["e1", "e2"], False),
        ("{execution_id}/{index}/{file_name}", ["e1", "e2"], True),
        ("{record}/{file_name}", ["e1", "e2", "e3"], True),
        ("{file_name}", ["e1", "e2"], True),  # not about {index}: a collision is Plan.all's to find
    ],
)
def test_a_template_keeps_the_records_of_several_executions_apart(
    template: str, ids: list[str], apart: bool
) -> None:
    if apart:
        check_records_apart(template, ids)
        return
    with pytest.raises(ArtifactsConfigError) as raised:
        check_records_apart(template, ids)
    assert str(raised.value) == (
        f"path_template '{template}' places record index {{index}} without {{execution_id}} or {{record}}, so "
        f"the records of the {len(ids)} executions would overwrite each other: use {{record}} (the record's "
        "number in the task, as in the results file)."
    )


@pytest.mark.parametrize(
    ("template", "execution_id", "rel"),
    [
        ("{execution_id}/manifest.json", "e1", "e1/manifest.json"),
        ("manifest.json", None, "manifest.json"),
        ("{service_name}/{service_version}/m.json", None, "scorer/1.0/m.json"),
        ("{service_name}-{execution_id}.json", "e1", "scorer-e1.json"),
    ],
)
def test_where_the_manifest_goes(template: str, execution_id: str | None, rel: str) -> None:
    assert manifest_rel(template, SERVICE, execution_id) == rel


# --- which records ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indexes", "located"),
    [
        (  # every record: 2 and 7 from their latest attempt (round 1 for 2; round 2 for 7, which round 1 had too)
            None,
            [
                ("c0", 0),
                ("c0", 1),
                ("r1", 0),
                ("c0", 3),
                ("c0", 4),
                ("c1", 0),
                ("c1", 1),
                ("r2", 0),
                ("c1", 3),
                ("c1", 4),
            ],
        ),
        ([], []),
        ([0, 4, 5, 9], [("c0", 0), ("c0", 4), ("c1", 0), ("c1", 4)]),
        ("1-2,7", [("c0", 1), ("r1", 0), ("r2", 0)]),  # 2 from round 1; 7 from round 2, its latest attempt
        (range(6, 8), [("c1", 1), ("r2", 0)]),
    ],
)
def test_the_records_copied_and_the_execution_each_comes_from(
    indexes: Any, located: list[tuple[str, int]]
) -> None:
    given = executions_given(None, SUMMARY)
    statuses = {e: _status(e, {"c0": 5, "c1": 5, "r1": 2, "r2": 1}[e]) for e in given.ids}
    executions = Executions.number(given, statuses)
    records = select_records(indexes, executions.total)
    assert [executions.locate(r) for r in records] == located
    assert executions.total == 10 and executions.rescored == 2


def test_indexes_past_the_records_are_refused() -> None:
    with pytest.raises(
        ArtifactsConfigError, match="indexes selects record 10, but the executions have 10 records"
    ):
        select_records([10], 10)


@pytest.mark.parametrize(
    ("totals", "rescored", "text"),
    [
        ({"e1": 3}, False, "Execution 'e1'"),
        ({"c0": 1000, "c1": 500}, False, "The 2 executions (1,500 records, 0 rescored)"),
        ({"c0": 5, "c1": 5, "r1": 2, "r2": 1}, True, "The 4 executions (10 records, 2 rescored)"),
    ],
)
def test_how_the_executions_are_named(totals: dict[str, int], rescored: bool, text: str) -> None:
    given = executions_given(None, SUMMARY) if rescored else executions_given(None, list(totals))
    executions = Executions.number(given, {e: _status(e, n) for e, n in totals.items()})
    assert executions_text(executions) == text


# --- the wait ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "left"),
    [
        ({"a": "Complete", "b": "Complete"}, []),
        ({"a": "Running", "b": "Complete"}, ["a"]),
        ({"a": "Failed", "b": "Pending"}, ["b"]),
        ({"a": "Canceled", "b": "Running", "c": "SomethingNew"}, ["b", "c"]),  # unknown: still running
    ],
)
def test_the_executions_still_waited_for(states: dict[str, str], left: list[str]) -> None:
    statuses = {e: _status(e, 10, state, 3) for e, state in states.items()}
    assert unfinished(list(states), statuses) == left


@pytest.mark.parametrize(
    ("late", "named"),
    [
        (1, "'e0' (Running, 3 of 10 records)"),
        (
            3,
            "'e0' (Running, 3 of 10 records), 'e1' (Running, 3 of 10 records) and 'e2' (Running, 3 of 10 records)",
        ),
        (
            5,
            "'e0' (Running, 3 of 10 records), 'e1' (Running, 3 of 10 records), 'e2' (Running, 3 of 10 records) "
            "and 2 more",
        ),
    ],
)
def test_the_message_when_the_wait_times_out(late: int, named: str) -> None:
    waiting = [f"e{i}" for i in range(late)]
    statuses = {e: _status(e, 10, "Running", 3) for e in waiting}
    assert late_message(waiting, statuses, 61.4, 60.0, "scorer/1.0") == (
        f"Not finished after 61 s (timeout is 60 s): batch execution{'s' if late > 1 else ''} {named} of "
        "scorer/1.0. Raise timeout, or "
        "set wait_for_completion=False to copy what exists so far."
    )


# --- what starts next -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "started", "running", "window", "failed", "starting"),
    [
        ([0, 1, 2, 3, 4], 0, 0, 2, False, [0, 1]),  # the first ones, up to the window
        ([0, 1, 2, 3, 4], 2, 1, 2, False, [2]),  # one finished: one more
        ([0, 1, 2, 3, 4], 2, 0, 2, False, [2, 3]),
        ([0, 1, 2, 3, 4], 4, 0, 8, False, [4]),  # the last one
        ([0, 1, 2, 3, 4], 5, 0, 8, False, []),  # all started
        ([0, 1, 2, 3, 4], 2, 0, 8, True, []),  # a listing failed: none more
        ([7, 8, 9], 0, 0, 8, False, [7, 8, 9]),  # fewer records than the window
        ([], 0, 0, 8, False, []),
    ],
)
def test_the_records_started_next(
    records: list[int], started: int, running: int, window: int, failed: bool, starting: list[int]
) -> None:
    assert list(next_records(records, started, running, window, failed)) == starting


@pytest.mark.parametrize(
    ("finishing", "fails_at", "started_in_all"),
    [
        ([1, 1, 1, 1, 1, 1, 1], None, 10),  # one finishes at a time: every record, a window of 4 at most
        ([4, 4, 2], None, 10),
        ([1, 1], 2, 6),  # the third to finish fails: nothing more starts; those running finish
    ],
)
def test_a_copy_never_runs_more_than_the_window_and_stops_after_a_failure(
    finishing: list[int], fails_at: int | None, started_in_all: int
) -> None:
    """Drive the rule as the copy loop does: start what it answers, then some finish."""
    records, window = list(range(10)), 4
    started, running, done, failed = 0, 0, 0, False
    rounds = iter(finishing)
    while True:
        starting = next_records(records, started, running, window, failed)
        started, running = started + len(starting), running + len(starting)
        assert running <= window
        if not running:
            break
        finished = min(next(rounds, running), running)
        if fails_at is not None and done < fails_at + 1 <= done + finished:
            failed = True
        running, done = running - finished, done + finished
    assert started == started_in_all


# --- what the destination holds already -------------------------------------------------------------------------


def _known(size: int | None, sha256: str | None = "abc") -> ArtifactEntry:
    return ArtifactEntry(3, 3, "a.txt", STATUS_COPIED, "e1", size, sha256, "file:///out/e1/3/a.txt")


@pytest.mark.parametrize(
    ("existing", "announced", "known", "skip"),
    [
        (None, 10, None, None),  # nothing there (or overwrite): copied
        (None, 10, _known(10), None),
        (10, 10, None, Skip(10, None)),  # there with the announced size: skipped, sha256 unknown
        (10, 10, _known(10), Skip(10, "abc")),  # ... carried over from the previous manifest
        (10, 10, _known(9), Skip(10, None)),  # the previous manifest knew another file
        (10, 11, _known(10), None),  # the server announces another size: copied again
        (10, None, _known(10), Skip(10, "abc")),  # unannounced: the previous manifest's size counts
        (10, None, _known(11), None),
        (10, None, None, None),  # unannounced and unknown: copied again
        (10, None, _known(None), None),
        (0, 0, None, Skip(0, None)),  # an empty file
    ],
)
def test_whether_the_destination_holds_an_artifact_already(
    existing: int | None, announced: int | None, known: ArtifactEntry | None, skip: Skip | None
) -> None:
    assert already_there(existing, announced, known) == skip


# --- whether the task fails -------------------------------------------------------------------------------------


def _entry(record: int, status: str, error: str | None = None) -> ArtifactEntry:
    return ArtifactEntry(record, record, f"{record}.txt", status, "e1", error=error)


@pytest.mark.parametrize(
    ("statuses", "fail_on_refused", "fails"),
    [
        ([], True, False),
        ([STATUS_COPIED, STATUS_SKIPPED], True, False),
        ([STATUS_COPIED, STATUS_FAILED], True, True),
        ([STATUS_COPIED, STATUS_FAILED], False, True),  # a failed copy always fails the task
        ([STATUS_REFUSED, STATUS_COPIED], True, True),
        ([STATUS_REFUSED, STATUS_COPIED], False, False),  # refused names allowed to pass
        ([STATUS_REFUSED, STATUS_FAILED], False, True),
    ],
)
def test_whether_the_task_fails(statuses: list[str], fail_on_refused: bool, fails: bool) -> None:
    entries = [
        _entry(r, s, "why" if s in (STATUS_FAILED, STATUS_REFUSED) else None) for r, s in enumerate(statuses)
    ]
    counts = {s: statuses.count(s) for s in (STATUS_COPIED, STATUS_SKIPPED, STATUS_REFUSED, STATUS_FAILED)}
    assert (task_failure(counts, entries, "file:///out/manifest.json", fail_on_refused) is not None) == fails


def test_the_failure_names_the_first_failed_or_refused_artifact() -> None:
    entries = [
        _entry(0, STATUS_COPIED),
        _entry(1, STATUS_REFUSED, "UnsafeArtifactNameError: refused"),
        _entry(2, STATUS_FAILED, "OSError: disk full"),
    ]
    counts = {STATUS_COPIED: 1, STATUS_SKIPPED: 0, STATUS_REFUSED: 1, STATUS_FAILED: 1}
    assert task_failure(counts, entries, "file:///out/manifest.json", True) == (
        "1 artifact failed to copy and 1 was refused (first: record 1 '1.txt': UnsafeArtifactNameError: "
        "refused). The manifest file:///out/manifest.json lists each one. Failed copies left nothing behind: run "
        "the task again and only they are copied. Refused names must be fixed in the service (or excluded with "
        "file_names, or allowed to pass with fail_on_refused=False)."
    )


# --- where each artifact goes (Plan) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "file_names", "paths", "refused"),
    [
        (["a.txt", "b.bin"], None, ["/out/7/a.txt", "/out/7/b.bin"], []),
        (
            ["a.txt", "b.bin", "a.txt"],
            None,
            ["/out/7/a.txt", "/out/7/b.bin"],
            [],
        ),  # listed twice: one artifact
        (["a.txt", "b.bin"], "*.txt", ["/out/7/a.txt"], []),
        (["a.txt", "../evil", "x/y"], None, ["/out/7/a.txt"], ["../evil", "x/y"]),
        ([None, 3, "a.txt"], None, ["/out/7/a.txt"], []),  # not a name: ignored
    ],
)
def test_where_a_records_artifacts_go(
    files: list[Any], file_names: Any, paths: list[str], refused: list[str]
) -> None:
    log = _Log()
    plan = Plan(
        "{record}/{file_name}", compile_file_filter(file_names), SERVICE, "/out", "manifest.json", False, log
    )
    planned, entries = plan.record(Listing(7, "e1", 2, files))
    assert [p.path for p in planned] == paths
    assert [(e.file_name, e.status, e.record, e.index) for e in entries] == [
        (n, STATUS_REFUSED, 7, 2) for n in refused
    ]
    assert len(log.lines) == len(refused)


@pytest.mark.parametrize(
    ("template", "manifest", "one_execution", "streams"),
    [
        ("{record}/{file_name}", "manifest.json", False, True),
        ("{execution_id}/{index}/{file_name}", "{execution_id}/manifest.json", True, True),
        ("{index}/{file_name}", "manifest.json", True, True),
        ("{file_name}", "manifest.json", False, False),  # records may collide: all listed first
        ("{record}{file_name}", "manifest.json", False, False),
        ("{record}/{file_name}", "3/manifest.json", False, False),  # an artifact may land on the manifest
    ],
)
def test_whether_records_are_copied_as_they_are_listed(
    template: str, manifest: str, one_execution: bool, streams: bool
) -> None:
    rel = manifest_rel(manifest, SERVICE, "e1" if one_execution else None)
    plan = Plan(template, compile_file_filter(None), SERVICE, "/out", rel, one_execution, _Log())
    assert plan.streams is streams


@pytest.mark.parametrize(
    ("template", "listings", "message"),
    [
        ("{record}/{file_name}", [Listing(0, "e", 0, ["a"]), Listing(1, "e", 1, ["a"])], None),
        ("{file_name}", [Listing(0, "e", 0, ["a"]), Listing(1, "e", 1, ["a"])], "to the same place ('a')"),
        ("{file_name}", [Listing(0, "e", 0, ["manifest.json"])], "would overwrite the manifest"),
    ],
)
def test_no_two_artifacts_go_to_one_place(
    template: str, listings: list[Listing], message: str | None
) -> None:
    plan = Plan(template, compile_file_filter(None), SERVICE, "/out", "manifest.json", False, _Log())
    if message is None:
        planned, refused = plan.all(listings)
        assert [p.rel for p in planned] == ["0/a", "1/a"] and refused == []
        return
    with pytest.raises(ArtifactsConfigError) as raised:
        plan.all(listings)
    assert message in str(raised.value)
