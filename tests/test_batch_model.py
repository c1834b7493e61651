"""The batch operator's driver against an in-memory model of the server, with crashes anywhere: seeded random
runs (chunk counts, parallel starts, failing records, failing executions, deferrals, a crash after any call to
the server or the store) must reach the same results as a run with no fault, with every part of every round
started once. No socket, no Airflow run: the test drives :class:`~airflow_mlserver.operators.batch.driver.BatchRun`,
the same driver the operator runs, and the final pass the operator runs.

A crash is a :class:`Crash` raised by the model at one call: before the server sees a start (the start is lost)
or after it acted and before the answer comes back (the start is done, its id unknown), or inside a write to the
task-state store (before or after it is written). After a crash the next try builds everything again from the
store, as a retry of the task does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_mlserver.client.models import (
    BatchStatus,
    ParameterDefinition,
    RecordResult,
    ResultsPage,
    WebService,
)
from airflow_mlserver.client.reconcile import Adopt, Ambiguous, Candidate, judge, outcome, sample_indexes
from airflow_mlserver.exceptions import MLServerBatchFailedError
from airflow_mlserver.executions.waiting import ended
from airflow_mlserver.operators.batch import planner
from airflow_mlserver.operators.batch.driver import BatchRun, Waiting
from airflow_mlserver.operators.batch.parts import StagedParts
from airflow_mlserver.operators.batch.results import latest_outcomes, write_results
from airflow_mlserver.operators.batch.starts import Clock
from airflow_mlserver.operators.batch.state import BatchState, Round
from airflow_mlserver.tables import ResultsWriter, iter_frames, storage_path

SERVICE = WebService(
    "model",
    "1",
    inputs=(ParameterDefinition("x", "numeric"),),
    outputs=(ParameterDefinition("y", "numeric"),),
)
ALWAYS = 99  # a record that fails in every attempt


def _outcome(model: Model, x: float, attempt: int) -> tuple[bool, Any]:
    result = (
        {"success": False}
        if model._fails(x, attempt)
        else {"success": True, "outputParameters": {"y": 2 * x}}
    )
    return outcome(result["success"], result.get("outputParameters"))


class Crash(BaseException):
    """The worker died here."""


@dataclass
class Execution:
    records: list[float]
    attempt: dict[float, int]
    ends_at: float
    fails: bool
    canceled: bool = False


@dataclass
class Model:
    """The server's side (executions, virtual time) and the faults: which call crashes, and how."""

    rng: random.Random
    fail_attempts: dict[float, int]
    crash_at: int | None = None
    now: float = 1_780_000_000.0
    calls: int = 0
    executions: dict[str, Execution] = field(default_factory=dict)
    keyed: bool = True
    keys: dict[str, str] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)

    def tick(self, where: str) -> None:
        """Count a call; crash at the chosen one."""
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(where)

    def status(self, eid: str) -> BatchStatus:
        e = self.executions[eid]
        state = (
            "Canceled"
            if e.canceled
            else "Running"
            if self.now < e.ends_at
            else "Failed"
            if e.fails
            else "Complete"
        )
        done = len(e.records) if state in ("Complete", "Failed") else 0
        failed = sum(1 for x in e.records if self._fails(x, e.attempt[x])) if state == "Complete" else 0
        return BatchStatus(eid, SERVICE.name, SERVICE.version, state, len(e.records), done, failed)

    def _fails(self, x: float, attempt: int) -> bool:
        return attempt <= self.fail_attempts.get(x, 0)

    def result(self, eid: str, i: int) -> dict[str, Any]:
        e = self.executions[eid]
        x = e.records[i]
        if self._fails(x, e.attempt[x]):
            return {
                "success": False,
                "errorMessage": f"ValueError: record {x} failed",
                "outputParameters": {},
            }
        return {"success": True, "errorMessage": "", "outputParameters": {"y": 2 * x}}


@dataclass
class Hook:
    """What the driver and the final pass ask of ``MLServerHook``, answered by the model."""

    model: Model

    @dataclass(frozen=True)
    class _Settings:
        timeout: float = 60.0

    settings = _Settings()

    def list_batch_executions(self, name: str, version: str) -> list[str]:
        self.model.tick("list")
        return list(self.model.executions)

    def honours_idempotency_keys(self, name: str, version: str) -> bool:
        return self.model.keyed

    def start_batch(
        self,
        name: str,
        version: str,
        records: pd.DataFrame,
        parallel_count: int,
        idempotency_key: str | None = None,
        **_: Any,
    ) -> str:
        return self._start(records, idempotency_key)[0]

    def resend_start(
        self, service: WebService, records: pd.DataFrame, parallel_count: int, key: str
    ) -> tuple[str, bool]:
        assert self.model.keyed
        return self._start(records, key)

    def _start(self, records: pd.DataFrame, key: str | None) -> tuple[str, bool]:
        m = self.model
        m.tick("start, before the server saw it")
        if m.keyed and key in m.keys:
            return m.keys[key], True  # the server answers the execution that key's first send created
        xs = [float(x) for x in records["x"]]
        scored = [e for e in m.executions.values() if not e.fails and not e.canceled]
        attempt = {x: 1 + sum(x in e.records for e in scored) for x in xs}  # the round the record is in, + 1
        eid = f"e{len(m.executions)}"
        fails = m.rng.random() < 0.08
        m.executions[eid] = Execution(xs, attempt, m.now + m.rng.uniform(1, 20), fails)
        if m.keyed and key is not None:
            m.keys[key] = eid
        m.tick("start, after the server started it")
        return eid, False

    def find_started_batch(
        self,
        service: WebService,
        records: pd.DataFrame,
        before: list[str],
        exclude: list[str],
        look_until: float,
        label: str,
    ) -> str | None:
        """The client's rule (:func:`~airflow_mlserver.client.reconcile.judge`) on the model's executions; the
        model's service answers a record as in its round (the label's), as the rounds number its attempts."""
        m = self.model
        m.tick("find")
        xs = [float(x) for x in records["x"]]
        m.now = max(m.now, look_until)  # the earlier try's start could still arrive until then
        candidates = []
        for eid, e in m.executions.items():
            if eid in before or eid in exclude or len(e.records) != len(xs) or ended(m.status(eid)):
                continue
            m.now = max(m.now, e.ends_at)  # waited for it to finish
            if not ended(m.status(eid)):
                candidates.append(eid)
        found = re.match(r"rescore round (\d+)", label)
        attempt = 1 + (int(found.group(1)) if found else 0)
        samples = sample_indexes(len(xs))
        expected = [_outcome(m, xs[i], attempt) for i in samples]
        judged = [Candidate(e, tuple(_outcome(m, xs[i], m.executions[e].attempt[xs[i]]) for i in samples)) if
                  m.executions[e].records == xs else Candidate(e, tuple((False, None) for _ in samples))
                  for e in candidates]  # fmt: skip
        verdict = judge(judged, expected, expected)
        if isinstance(verdict, Ambiguous):
            raise AssertionError(f"the model's own executions were ambiguous: {verdict}")
        return verdict.execution_id if isinstance(verdict, Adopt) else None

    def get_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        self.model.tick("status")
        return self.model.status(execution_id)

    def cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        self.model.executions[execution_id].canceled = True
        return self.model.status(execution_id)

    def iter_batch_results(self, name: str, version: str, execution_id: str) -> Iterator[RecordResult]:
        self.model.tick("results")
        e = self.model.executions[execution_id]
        return (RecordResult.from_api(self.model.result(execution_id, i), i) for i in range(len(e.records)))

    def iter_batch_result_pages(self, name: str, version: str, execution_id: str) -> Iterator[ResultsPage]:
        self.model.tick("result pages")
        e = self.model.executions[execution_id]
        yield ResultsPage([self.model.result(execution_id, i) for i in range(len(e.records))], 0)


@dataclass
class Store:
    """The task-state store: it survives the crash; a write may crash before or after it is done."""

    model: Model

    def get(self, key: str, default: Any = None, /) -> Any:
        return self.model.store.get(key, default)

    def set(self, key: str, value: Any, /, *, retention: Any = None) -> None:
        before = self.model.rng.random() < 0.5
        if before:
            self.model.tick("store, before the write")
        self.model.store[key] = value
        if not before:
            self.model.tick("store, after the write")


def _try(model: Model, records: pd.DataFrame, config: planner.Config, out: Path) -> dict[str, Any]:
    """One try of the task: from the store (or new), until the batch finishes; raises on a crash or a failure."""
    hook, store = Hook(model), Store(model)

    def frames() -> Iterator[pd.DataFrame]:
        return iter_frames(records, config.part_size or len(records))

    state = BatchState.load(store)
    if state is None:
        sizes = [len(f) for f in frames()]
        state = BatchState(SERVICE.name, SERVICE.version, model.now, None, [Round.chunks(sizes)])
    parts = StagedParts(storage_path(out), SERVICE, keep_extra_columns=True)
    clock = Clock(now=lambda: model.now)
    run = BatchRun(hook, SERVICE, state, store, config, frames, parts, 10, _Quiet(), clock=clock)  # type: ignore[arg-type]
    run.settle()
    while True:
        waiting = run.step()
        if waiting is None:
            return _finish(hook, run, frames, out)
        _wait(model, waiting)
        if model.rng.random() < 0.5:  # deferred: the resume builds the run again from the store
            state = BatchState.load(store)
            assert state is not None
            run = BatchRun(hook, SERVICE, state, store, config, frames, parts, 10, _Quiet(), clock=clock)  # type: ignore[arg-type]


def _wait(model: Model, waiting: Waiting) -> None:
    """Let time pass until the first watched execution finishes; an ended one fails the try, as the trigger's
    failed event does."""
    first = min(model.executions[e].ends_at for e in waiting.execution_ids)
    model.now = max(model.now, first) + 0.5
    for eid in waiting.execution_ids:
        if ended(model.status(eid)):
            raise MLServerBatchFailedError(f"execution {eid} ended")


def _finish(hook: Hook, run: BatchRun, frames: Any, out: Path) -> dict[str, Any]:
    rescored, attempts = latest_outcomes(hook, SERVICE, run.state)  # type: ignore[arg-type]
    writer = ResultsWriter(storage_path(out), "parquet", SERVICE)
    scored = write_results(
        hook,
        SERVICE,
        run.state,
        frames,
        writer,
        run.parts,
        False,
        rescored,
        attempts,  # type: ignore[arg-type]
    )
    run.parts.remove(run.state)
    return {"total": scored.total, "failed": scored.failed, "state": run.state}


class _Quiet:
    def info(self, msg: str, *args: Any) -> None: ...

    def warning(self, msg: str, *args: Any) -> None: ...


def _scenario(seed: int) -> tuple[pd.DataFrame, planner.Config, dict[float, int]]:
    rng = random.Random(seed)
    count = rng.randint(1, 40)
    records = pd.DataFrame({"x": [float(i) for i in range(count)], "name": [f"r{i}" for i in range(count)]})
    config = planner.Config(
        max_active=rng.randint(1, 4),
        rescore_rounds=rng.randint(0, 3),
        part_size=rng.choice([None, 1, 3, 7, 16]),
        stage=True,
    )
    fail_attempts = {float(i): rng.choice([1, 1, 2, ALWAYS]) for i in range(count) if rng.random() < 0.2}
    return records, config, fail_attempts


def _run_to_the_end(
    seed: int, crash_at: int | None, out: Path, keyed: bool = True
) -> tuple[Model, dict[str, Any]]:
    """Tries of the task until one finishes (a crash or a failed execution ends a try; at most 30 tries)."""
    records, config, fail_attempts = _scenario(seed)
    model = Model(random.Random(seed * 7919 + (crash_at or 0)), fail_attempts, crash_at, keyed=keyed)
    for _ in range(30):
        try:
            return model, _try(model, records, config, out)
        except (Crash, MLServerBatchFailedError):
            continue  # the next try: the call count goes on, so the crash happens once
    raise AssertionError(f"seed {seed}: no try finished in 30")


def _check(seed: int, model: Model, finished: dict[str, Any], out: Path) -> None:
    records, config, fail_attempts = _scenario(seed)
    state: BatchState = finished["state"]
    # every part of every round was started once: one execution that did not end per part, and no other
    live = [e for e in model.executions if not ended(model.status(e))]
    assert sorted(live) == sorted(state.execution_ids()), (
        f"seed {seed}: executions {live} for parts {state.execution_ids()}"
    )
    for round_ in state.rounds:
        for part in round_.parts:
            assert part.execution_id is not None
            assert model.executions[part.execution_id].records == [float(n) for n in part.numbers()], (
                f"seed {seed}"
            )
    # the same results as a run with no fault: each record's latest outcome, in input order
    results = pd.read_parquet(out)
    assert results["record"].tolist() == list(range(len(records)))
    rounds = len(state.rounds)
    expected_failed = [float(x) for x in records["x"] if fail_attempts.get(float(x), 0) >= rounds]
    assert sorted(results.loc[~results["success"], "x"].tolist()) == expected_failed, f"seed {seed}"
    ok = results[results["success"]]
    assert (ok["y"] == 2 * ok["x"]).all()
    assert finished["failed"] == len(expected_failed) and finished["total"] == len(records)
    # a round is planned exactly while records still fail and rounds are left
    still_failing = [x for x, n in fail_attempts.items() if n >= 1]
    assert (
        rounds == 1 + min(config.rescore_rounds, max(fail_attempts.values(), default=0)) or not still_failing
    )


@pytest.mark.parametrize("keyed", [True, False], ids=["keys honoured", "keys ignored"])
@pytest.mark.parametrize("seed", range(12))
def test_random_batches_reach_the_same_results_with_each_part_started_once(
    seed: int, keyed: bool, tmp_path: Path
) -> None:
    """With a server that honours idempotency keys (the local one) and one that ignores them (a real one)."""
    model, finished = _run_to_the_end(seed, None, tmp_path / "out.parquet", keyed)
    _check(seed, model, finished, tmp_path / "out.parquet")
    calls = model.calls
    rng = random.Random(seed)
    for crash_at in sorted(rng.sample(range(1, calls + 1), min(calls, 8))):  # a crash after any call
        out = tmp_path / f"crash-{crash_at}.parquet"
        crashed, result = _run_to_the_end(seed, crash_at, out, keyed)
        _check(seed, crashed, result, out)


def test_the_model_sees_a_part_started_twice() -> None:
    """The check itself: a second live execution of a part is caught."""
    model = Model(random.Random(1), {}, None)
    model.executions["e0"] = Execution([0.0], {0.0: 1}, model.now, False)
    model.executions["e1"] = Execution([0.0], {0.0: 1}, model.now, False)
    state = BatchState("model", "1", model.now, None, [Round.chunks([1])])
    state.rounds[0].parts[0].execution_id = "e1"
    with pytest.raises(AssertionError, match="executions"):
        _check(3, model, {"state": state, "failed": 0, "total": 1}, Path("/nonexistent"))
