"""What a person reads about batch executions: durations, pending executions, progress and the final count.

One wording for every place that waits on executions (the trigger on the triggerer, the in-worker waits of
both operators) and for the batch operator's start and final lines:

* a **pending** execution (the server has not started it) says so, and how long it has waited, counted from
  when it was started where the caller knows (the batch operator stores each start), else from when the
  watching began; it never shows as ``0.0 records/s, ETA unknown``;
* a **running** batch says how many records are done, the rate and the time left, or that no record has
  finished yet;
* a **mapped** task instance starts each line with its map index, and names its chunks as chunks of its own
  records (``map index 3: ... this task's chunk 1 of 2``);
* all of it once a minute (:data:`PROGRESS_INTERVAL`), never on every poll.

It lives in :mod:`airflow_mlserver.executions`, which the operators, the sensor and the trigger all import.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from airflow_mlserver.client.words import count, plural
from airflow_mlserver.executions.waiting import pending

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: Seconds between two progress lines of one wait.
PROGRESS_INTERVAL = 60.0


class InfoLog(Protocol):
    """Where progress lines go: a ``logging.Logger``, or the structlog-style logger of an Airflow task."""

    def info(self, msg: str, /, *args: Any) -> Any: ...


def duration(seconds: float) -> str:
    """A duration as people write it: ``0.4s`` (tenths under 10 s), ``42s``, ``3m12s``, ``1h02m``."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def rate(records: float, seconds: float) -> str:
    """``205.8 records/s``; two significant digits below one a second (``0.044 records/s``)."""
    per_second = records / seconds
    return f"{per_second:,.1f} records/s" if per_second >= 1 else f"{per_second:.2g} records/s"


def map_prefix(map_index: int | None) -> str:
    """``map index 3: `` for a mapped task instance (index 0 or more), else nothing: the start of its lines."""
    return f"map index {map_index}: " if map_index is not None and map_index >= 0 else ""


def chunk_label(index: int, chunks: int, mapped: bool) -> str:
    """``chunk 2 of 3`` for chunk ``index`` (0-based), ``the only chunk`` for one; a mapped task's chunks cut its
    own records, and say so: ``this task's chunk 2 of 3``, ``this task's only chunk``."""
    whose = "this task's " if mapped else "the "
    if chunks == 1:
        return f"{whose}only chunk"
    return f"{whose if mapped else ''}chunk {index + 1} of {chunks}"


def scored_sentence(summary: Mapping[str, Any], prefix: str = "") -> str:
    """The batch operator's last line, from its summary: counts, duration, rate and where the results are.

    ``Scored 50,000 records with web service 'TxService' version '1.0' in 4m03s (205.8 records/s): 49,990
    succeeded, 10 failed; results in s3://bucket/scores.parquet``.
    """
    total, seconds = int(summary["total"]), float(summary["duration_seconds"])
    speed = rate(total, seconds) if seconds > 0 else "no measurable time"
    output = summary.get("output_uri")
    where = f"results in {output}" if output else "no results file (no output_path)"
    return (
        f"{prefix}Scored {plural(total, 'record')} with web service '{summary['service_name']}' version "
        f"'{summary['service_version']}' in {duration(seconds)} ({speed}): {summary['succeeded']:,} succeeded, "
        f"{summary['failed']:,} failed; {where}"
    )


def status_line(status: BatchStatus) -> str:
    """One execution's state and counts, for a check that runs once (a sensor's poke)."""
    done = f"{count(status.completed)}/{plural(status.total, 'record')}"
    if pending(status):
        return f"Batch execution {status.execution_id} is {status.state}: the server has not started it yet ({done})"
    percent = 100.0 * status.completed / status.total if status.total else 0.0
    return f"Batch execution {status.execution_id} is {status.state}: {done} done ({percent:.1f}%)"


class ProgressLog:
    """The progress lines of one wait on executions, logged at most once a minute.

    Call it with each round of statuses (it fits :func:`~airflow_mlserver.executions.waiting.wait_for_executions`'s
    ``on_poll``); most rounds log nothing. A due round logs one line per pending execution and one line for
    the records of the rest; an execution that was logged as pending logs once when it starts running.

    :param log: Where the lines go.
    :param labels: How to name each execution id in a line (e.g. ``chunk 2 of 3``); unnamed ones get none.
    :param started: When each execution id was started (Unix timestamps), so that a pending one can say how
        long it has waited; for the others, the first round that saw them counts.
    :param prefix: The start of every line (:func:`map_prefix`).
    :param interval: Seconds between two progress lines.
    """

    def __init__(
        self,
        log: InfoLog,
        labels: Mapping[str, str] | None = None,
        started: Mapping[str, float] | None = None,
        prefix: str = "",
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.log = log
        self.labels = dict(labels or {})
        self.started = dict(started or {})
        self.prefix = prefix
        self.interval = interval
        self._last_line: float | None = None
        self._said_pending: set[str] = set()
        # (when, records done) at the first round where something ran: where the rate is counted from
        self._base: tuple[float, int] | None = None

    def __call__(self, statuses: Sequence[BatchStatus]) -> None:
        for line in self.lines(statuses):
            self.log.info("%s", line)

    def _name(self, execution_id: str) -> str:
        label = self.labels.get(execution_id)
        return f"Batch execution {execution_id}" + (f" ({label})" if label else "")

    def lines(self, statuses: Sequence[BatchStatus], now: float | None = None) -> list[str]:
        """The lines this round of statuses calls for (none on most rounds)."""
        now = time.time() if now is None else now
        for status in statuses:
            self.started.setdefault(status.execution_id, now)
        waiting = [s for s in statuses if pending(s)]
        running = [s for s in statuses if not pending(s)]
        done = sum(s.completed for s in statuses)
        if running and self._base is None:
            self._base = (now, done)
        lines = [
            f"{self.prefix}{self._name(s.execution_id)} is {s.state} after waiting "
            f"{duration(now - self.started[s.execution_id])} for the server to start it"
            for s in running
            if s.execution_id in self._said_pending
        ]
        self._said_pending -= {s.execution_id for s in running}
        if self._last_line is not None and now - self._last_line < self.interval:
            return lines
        self._last_line = now
        for status in waiting:
            self._said_pending.add(status.execution_id)
            lines.append(
                f"{self.prefix}{self._name(status.execution_id)} is {status.state}: waiting "
                f"{duration(now - self.started[status.execution_id])} for the server to start it"
            )
        if running:
            lines.append(self._progress(running, statuses, done, now))
        return lines

    def _progress(
        self, running: Sequence[BatchStatus], statuses: Sequence[BatchStatus], done: int, now: float
    ) -> str:
        """``Batch progress (chunk 2 of 3): 1,234/50,000 records (2.5%), 20.5 records/s, ETA 39m40s``."""
        total = sum(s.total for s in statuses)
        percent = 100.0 * done / total if total else 0.0
        active = [s for s in running if not s.is_finished]
        labels = [self.labels[s.execution_id] for s in active if s.execution_id in self.labels]
        which = f" ({labels[0]})" if len(active) == 1 and labels else ""
        if len(active) > 1:
            which = f" ({plural(len(active), 'execution')} running)"
        line = f"{self.prefix}Batch progress{which}: {count(done)}/{plural(total, 'record')} ({percent:.1f}%)"
        since, base_done = self._base or (now, done)
        elapsed, gained = now - since, done - base_done
        if gained > 0 and elapsed > 0:
            return f"{line}, {rate(gained, elapsed)}, ETA {duration((total - done) * elapsed / gained)}"
        if elapsed >= 1:
            return f"{line}; no record finished in the last {duration(elapsed)}"
        return line if done else f"{line}; no record finished yet"


__all__ = [
    "PROGRESS_INTERVAL",
    "InfoLog",
    "ProgressLog",
    "chunk_label",
    "duration",
    "map_prefix",
    "rate",
    "scored_sentence",
    "status_line",
]
