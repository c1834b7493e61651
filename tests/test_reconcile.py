"""The reconciliation rule of a start whose answer was lost (``client/reconcile.py``), case by case with no
server; then on the real system, over HTTP to the local server, with and without idempotency keys: a start whose
request was dropped before the server saw it never adopts another client's batch of the same size."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from airflow_mlserver.client.errors import AmbiguousStartError
from airflow_mlserver.client.mlserver import MLServerClient
from airflow_mlserver.client.models import ServiceDefinition
from airflow_mlserver.client.protocol import AmbiguousSend
from airflow_mlserver.client.reconcile import (
    Adopt,
    Ambiguous,
    Candidate,
    NoneStarted,
    judge,
    outcome,
    sample_indexes,
)
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.server.process import LocalMLServer

TWICE = ServiceDefinition("y = x * 2", {"x": "integer"}, {"y": "integer"})
OURS = (outcome(True, {"y": 2}), outcome(True, {"y": 8}), outcome(False, {"y": None}))
THEIRS = (outcome(True, {"y": 3}), outcome(True, {"y": 9}), outcome(True, {"y": 1}))


@pytest.mark.parametrize(
    ("count", "indexes"),
    [(0, []), (1, [0]), (3, [0, 1, 2]), (4, [0, 2, 3]), (100_000, [0, 50_000, 99_999])],
)
def test_the_sample_spreads_from_the_first_record_to_the_last(count: int, indexes: list[int]) -> None:
    assert sample_indexes(count) == indexes


@pytest.mark.parametrize(
    ("candidates", "again", "verdict"),
    [
        ([], OURS, NoneStarted()),
        (
            [Candidate("b", THEIRS)],
            OURS,
            NoneStarted(),
        ),  # another client's batch of the same size: never taken
        ([Candidate("a", OURS)], OURS, Adopt("a")),
        ([Candidate("b", THEIRS), Candidate("a", OURS)], OURS, Adopt("a")),
        (
            [Candidate("a", OURS), Candidate("c", OURS)],
            OURS,
            Ambiguous(("a", "c"), "their results for the sampled records are the same as this start's"),
        ),
        (
            [Candidate("a", OURS)],
            THEIRS,  # the service answered the same records differently the second time
            Ambiguous(
                ("a",),
                "the service does not answer the same records the same way twice, so its results "
                "cannot show which execution is this start's",
            ),
        ),
        (
            [Candidate("b", THEIRS), Candidate("a", None)],
            OURS,
            Ambiguous(
                ("b", "a"), "a had not finished, so its results could not be compared; retry once it has"
            ),
        ),
    ],
)
def test_a_candidate_is_adopted_only_when_its_results_show_it_is_this_starts(
    candidates: list[Candidate], again: tuple[tuple[bool, object], ...], verdict: object
) -> None:
    assert judge(candidates, OURS, again) == verdict


def test_a_failed_records_outputs_do_not_count() -> None:
    assert outcome(False, {"y": 1}) == outcome(False, {"y": 2}) == (False, None)
    assert outcome(True, {"y": 1}) != outcome(True, {"y": 2})


def _client(server: LocalMLServer) -> MLServerClient:
    settings = ConnectionSettings(
        conn_id="reconcile", base_url=server.url, login="admin", password=server.password, timeout=5.0
    )
    return MLServerClient(settings)


@pytest.mark.parametrize("keys", ["honoured", "ignored"])
def test_a_dropped_start_never_adopts_another_clients_batch_of_the_same_size(
    tmp_path: Path, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client A's start is sent and dropped before the server sees it, while client B starts its own batch of
    the same size: A starts its own (once) and answers it, never B's."""
    extra = [] if keys == "honoured" else ["--ignore-idempotency-keys"]
    with LocalMLServer(tmp_path, workers=2, extra_args=extra) as server:
        a, b = _client(server), _client(server)
        a.publish_service("twice", "1", TWICE)
        theirs: list[str] = []
        send = a.calls.send_start
        dropped = threading.Event()

        def lost_then_sent(*args: object, **kwargs: object) -> object:
            if not dropped.is_set():  # the first send is lost before the server sees it; B starts meanwhile
                dropped.set()
                theirs.append(
                    b.start_batch("twice", "1", [{"x": 100}, {"x": 200}, {"x": 300}], parallel_count=1)
                )
                b.get_batch("twice", "1", theirs[0])
                raise AmbiguousSend("the connection was reset after sending")
            return send(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(a.calls, "send_start", lost_then_sent)
        ours = a.start_batch("twice", "1", [{"x": 1}, {"x": 2}, {"x": 3}], parallel_count=1)
        assert ours != theirs[0]
        assert sorted(a.list_batch_executions("twice", "1")) == sorted(
            [ours, theirs[0]]
        )  # A started one, once
        assert a.honours_idempotency_keys("twice", "1") is (keys == "honoured")
        status = a.get_batch("twice", "1", ours)
        while not status.is_finished:
            status = a.get_batch("twice", "1", ours)
        assert [r.outputs["y"] for r in a.iter_batch_results("twice", "1", ours)] == [2, 4, 6]


def test_a_start_whose_answer_was_lost_is_adopted_when_its_results_show_it(tmp_path: Path) -> None:
    """A server that ignores keys, a start that reached it and whose answer was dropped: the one new execution
    of that size is compared with the records, request-response, and adopted; nothing is started twice."""
    with LocalMLServer(tmp_path, workers=2, extra_args=["--ignore-idempotency-keys"]) as server:
        a = _client(server)
        a.publish_service("twice", "1", TWICE)
        other = a.start_batch(
            "twice", "1", [{"x": 5}, {"x": 6}], parallel_count=1
        )  # another batch, same size
        service = a.get_service("twice", "1")
        before = [other]
        # the start reached the server; its answer (the id) is what the rule must find without being told
        execution_id, _ = a.run(a.calls.send_start("twice", "1", [{"x": 1}, {"x": 2}], 1, "lost-answer"))
        found = a.find_started_batch(service, [{"x": 1}, {"x": 2}], before, (), 0.0, "the test's batch")
        assert found == execution_id
        a.start_batch(
            "twice", "1", [{"x": 1}, {"x": 2}], parallel_count=1
        )  # the same records again, on purpose
        with pytest.raises(
            AmbiguousStartError, match="their results for the sampled records are the same"
        ) as err:
            a.find_started_batch(service, [{"x": 1}, {"x": 2}], before, (), 0.0, "the test's batch")
        assert execution_id in err.value.candidates and len(err.value.candidates) == 2
