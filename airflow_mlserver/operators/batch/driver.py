"""The batch operator's driver: it reads the statuses, asks the planner what to do and does it with the hook.

:class:`BatchRun` is the same for a task that defers and one that waits in its worker: :meth:`BatchRun.step`
goes on until the planner says to wait (then it answers the :class:`Waiting` to defer on or to wait on in the
thread) or that every round is complete (then it answers None, and the operator writes the results). Every
decision is :func:`~airflow_mlserver.operators.batch.planner.plan`'s; here are only its effects and the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_mlserver.client.words import first_few, plural
from airflow_mlserver.exceptions import MLServerBatchFailedError, MLServerBatchTimeoutError
from airflow_mlserver.executions import timing
from airflow_mlserver.executions.outage import DEFAULT_UNREACHABLE_TIMEOUT
from airflow_mlserver.executions.polling import wait_for_executions
from airflow_mlserver.executions.progress import ProgressLog, chunk_label, duration
from airflow_mlserver.executions.timing import Seen
from airflow_mlserver.executions.waiting import Until, ended, ended_message
from airflow_mlserver.operators.batch import planner
from airflow_mlserver.operators.batch.frames import part_frames
from airflow_mlserver.operators.batch.starts import Clock, settle_intent, start_execution
from airflow_mlserver.operators.batch.state import BatchState, Round, StateStore

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import BatchStatus, WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.batch.parts import StagedParts


class Log(Protocol):
    """The task's logger (``info`` and ``warning`` with %-style arguments)."""

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Waiting:
    """What to wait on: the executions of the current round that run, until the first has finished.

    :param labels: How the log names each (``chunk 2 of 3``), by execution id.
    :param started: When each was started (Unix timestamp), by execution id.
    """

    execution_ids: list[str]
    labels: dict[str, str]
    started: dict[str, float]
    until: Until


@dataclass
class BatchRun:
    """The batch of one task instance, driven from its stored state.

    :param frames: Opens the input records, chunk by chunk (the chunks of round 0), in input order.
    :param parts: The staging of complete chunks next to the output.
    :param timeout: The task's ``timeout`` in seconds (named in the timeout's error), None for none.
    :param prefix: The start of each log line (a mapped task's map index).
    :param mapped: Whether the task instance is mapped (its chunks are "of this task's records").
    """

    hook: MLServerHook
    service: WebService
    state: BatchState
    store: StateStore | None
    config: planner.Config
    frames: Callable[[], Iterator[pd.DataFrame]]
    parts: StagedParts
    parallel_count: int
    log: Log
    timeout: float | None = None
    prefix: str = ""
    mapped: bool = False
    clock: Clock = field(default_factory=Clock)

    def label(self, number: int, part: int) -> str:
        """A part's name in the log: ``chunk 2 of 3``, ``rescore round 1, part 1 of 2`` or ``rescore round 2``."""
        parts = len(self.state.rounds[number].parts)
        if number == 0:
            return chunk_label(part, parts, self.mapped)
        return f"rescore round {number}" + (f", part {part + 1} of {parts}" if parts > 1 else "")

    def log_earlier_try(self) -> None:
        """Name the executions an earlier try started, if any."""
        found = [
            f"{self.label(n, p)}: {e}"
            for n, r in enumerate(self.state.rounds)
            for p, e in sorted(r.executions.items())
        ]
        if found:
            ago = duration(self.clock.now() - self.state.started)
            self.log.info(
                "%sFound the executions of an earlier try (started %s ago): %s",
                self.prefix,
                ago,
                first_few(found, shown=1),  # a line of a readable length, however many chunks
            )

    def settle(self) -> None:
        """Settle an earlier try's unfinished start, if it left one (see :mod:`.starts`)."""
        intent = self.state.intent
        if intent is None:
            return
        parts = self.state.rounds[intent.round].parts if intent.round < len(self.state.rounds) else []
        frame = None
        if intent.part < len(parts) and parts[intent.part].execution_id is None:
            wanted = {intent.part: parts[intent.part].numbers()}
            frame = next((f for _, f in part_frames(self.frames(), wanted)), None)
        if frame is None:  # nothing to settle: the part is gone or has its execution
            self.state.intent = None
            self.state.save(self.store)
            return
        label = self.label(intent.round, intent.part)
        settle_intent(
            self.hook, self.service, self.state, self.store, frame, self.parallel_count, label, self.prefix, self.log,
            self.clock,
        )  # fmt: skip

    def step(self) -> Waiting | None:
        """Carry out the planner's actions until it says to wait (answered) or to finish (None)."""
        while True:
            statuses = self._read()
            actions = planner.plan(self.state, statuses, self.config, self.clock.now())
            if isinstance(actions[-1], planner.ReadFailures):
                failed = self._failed(statuses)
                actions = planner.plan(self.state, statuses, self.config, self.clock.now(), failed)
            self._act(actions, statuses)
            last = actions[-1]
            if isinstance(last, planner.Wait):
                return self._waiting(last)
            if isinstance(last, planner.Finish):
                return None
            if isinstance(last, planner.AddRound):
                self._add_round(last)
            # Look, AddRound: read the statuses again and plan anew

    def wait_in_worker(
        self, waiting: Waiting, poll_interval: float, unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT
    ) -> None:
        """Wait in this thread by the trigger's rules (until the first finished; an outage waited out for up to
        ``unreachable_timeout`` seconds); fail as its event would."""
        name, version = self.service.name, self.service.version
        seen: dict[str, Seen] = {}
        polled = wait_for_executions(
            self.hook,
            name,
            version,
            waiting.execution_ids,
            poll_interval,
            self.state.deadline,
            ProgressLog(self.log, waiting.labels, waiting.started, self.prefix),
            until=waiting.until,
            unreachable_timeout=unreachable_timeout,
            log=self.log,
            prefix=self.prefix,
            seen=seen,
        )
        self.state.note_seen(seen)
        for status in polled:
            if ended(status):  # as the trigger's failed or canceled event
                raise MLServerBatchFailedError(
                    f"{ended_message(status.execution_id, name, version, status)}. Look at "
                    "the execution on the server; a retry of this task starts the failed chunk again."
                )

    def _read(self) -> dict[int, BatchStatus]:
        """The status of every started part of the current round."""
        name, version = self.service.name, self.service.version
        executions = self.state.rounds[-1].executions
        statuses = {part: self.hook.get_batch(name, version, eid) for part, eid in executions.items()}
        self.state.note_seen(timing.observed(statuses.values(), self.clock.now()))
        return statuses

    def _act(self, actions: Sequence[planner.Action], statuses: Mapping[int, BatchStatus]) -> None:
        """Carry out the effects of one step's actions before its last (restarts, a timeout, starts, stages)."""
        number = len(self.state.rounds) - 1
        starts = [a.part for a in actions if isinstance(a, planner.Start)]
        stages = [a.part for a in actions if isinstance(a, planner.Stage)]
        for action in actions:
            if isinstance(action, planner.Restart):
                self._restart(number, action)
            elif isinstance(action, planner.Timeout):
                self._time_out(action, statuses)
        if starts or stages:
            self._start_and_stage(number, starts, stages)

    def _restart(self, number: int, action: planner.Restart) -> None:
        self.log.warning(
            "%sExecution %s of %s ended %s: starting it again",
            self.prefix,
            action.execution_id,
            self.label(number, action.part),
            action.state,
        )
        part = self.state.rounds[number].parts[action.part]
        part.execution_id, part.started, part.seen = None, None, Seen()

    def _time_out(self, action: planner.Timeout, statuses: Mapping[int, BatchStatus]) -> None:
        for execution_id in action.cancel:
            self.hook.cancel_batch(self.service.name, self.service.version, execution_id)
        raise MLServerBatchTimeoutError(
            f"The batch on web service '{self.service.name}' version '{self.service.version}' did not finish "
            f"within its timeout of {self.timeout or 0:g} s ({plural(action.done, 'record')} done); "
            f"canceled {first_few(action.cancel) or 'nothing (no execution was running)'}. "
            "Raise timeout, parallel_count or max_active_executions, or score fewer records per run."
        )

    def _start_and_stage(self, number: int, starts: Sequence[int], stages: Sequence[int]) -> None:
        """Start ``starts`` as the pass over the input reaches them; then stage ``stages`` (chunks)."""
        round_ = self.state.rounds[number]
        wanted = {p: round_.parts[p].numbers() for p in sorted({*starts, *stages})}
        staged = []
        for part, frame in part_frames(self.frames(), wanted):
            if part in stages:
                staged.append((part, frame))
                continue
            execution_id = start_execution(
                self.hook,
                self.service,
                self.state,
                self.store,
                number,
                part,
                frame,
                self.parallel_count,
                self.clock,
            )  # its id stored before any waiting: a crash from here on reattaches
            self.log.info(
                "%sStarted batch execution %s for %s (%s)",
                self.prefix,
                execution_id,
                self.label(number, part),
                plural(len(frame), "record"),
            )
        for part, frame in staged:
            rows = self.parts.stage(self.hook, self.state, self.store, part, frame)
            self.log.info(
                "%sStaged the results of %s (%s)", self.prefix, self.label(0, part), plural(rows, "record")
            )

    def _failed(self, statuses: Mapping[int, BatchStatus]) -> list[int]:
        """The record numbers that failed in the complete current round, ascending; only the executions whose
        status counts failures (or does not say) have their results read."""
        failed: list[int] = []
        for part, stored in enumerate(self.state.rounds[-1].parts):
            if stored.execution_id is None or statuses[part].failed == 0:
                continue
            results = self.hook.iter_batch_results(
                self.service.name, self.service.version, stored.execution_id
            )
            failed.extend(n for n, r in zip(stored.numbers(), results, strict=True) if not r.success)
        return sorted(failed)

    def _add_round(self, action: planner.AddRound) -> None:
        self.state.rounds.append(Round.from_stored({"parts": [{"records": r} for r in action.parts]}))
        self.state.save(self.store)  # the round's records before any of its starts
        self.log.info(
            "%sRescoring %s that failed (round %d of %d, %s)",
            self.prefix,
            plural(action.records, "record"),
            self.state.rescore_rounds,
            self.config.rescore_rounds,
            plural(len(action.parts), "execution"),
        )

    def _waiting(self, wait: planner.Wait) -> Waiting:
        number = len(self.state.rounds) - 1
        parts = self.state.rounds[number].parts
        ids = [parts[p].execution_id or "" for p in wait.parts]
        return Waiting(
            execution_ids=ids,
            labels={parts[p].execution_id or "": self.label(number, p) for p in wait.parts},
            started={parts[p].execution_id or "": parts[p].started or self.state.started for p in wait.parts},
            until=wait.until,
        )
