"""Where each listed artifact of the artifacts operator goes, and the rule that no two go to one place.

A :class:`Plan` turns a record's artifact names into destination paths below ``dest``: it skips names that
``file_names`` does not select, refuses unsafe names (an entry with status ``refused``, nothing written), and
fails the task (:class:`~airflow_mlserver.exceptions.ArtifactsConfigError`) when two artifacts, or one and the
manifest, would land on one path. When the path template provably keeps artifacts apart and away from the
manifest (:attr:`Plan.streams`), each record is copied as soon as it is listed; otherwise every record is
listed and checked before the first copy, so a collision fails before anything is written.

The operator's other decisions are here too, each a function of data answering data (no hook, no store, no
Airflow), so that the operator and its helpers only carry them out: which executions are read
(:func:`executions_given`, :func:`check_records_apart`), where the manifest goes (:func:`manifest_rel`), which
records start next while others are copied (:func:`next_records`), whether the destination holds an artifact
already (:func:`already_there`), which executions are still waited for and the message when the wait times out
(:func:`unfinished`, :func:`late_message`), and whether the task fails (:func:`task_failure`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.words import count, first_few, noun, plural
from airflow_mlserver.exceptions import ArtifactsConfigError, UnsafeArtifactNameError
from airflow_mlserver.operators.artifacts.manifest import (
    STATUS_FAILED,
    STATUS_REFUSED,
    ArtifactEntry,
)
from airflow_mlserver.operators.artifacts.names import (
    check_artifact_name,
    distinguishes_executions,
    may_render_to,
    places_apart,
    render_relative_path,
)
from airflow_mlserver.operators.artifacts.records import Given, read_executions

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus
    from airflow_mlserver.operators.artifacts.records import Executions


class WarningLog(Protocol):
    """What a :class:`Plan` (and a :class:`~airflow_mlserver.operators.artifacts.transfers.Transfers`) logs to
    (a task's logger)."""

    def warning(self, msg: str, /, *args: Any) -> Any: ...

    def error(self, msg: str, /, *args: Any) -> Any: ...


@dataclass
class Listing:
    """The artifact names of one record: its number in the task, its execution and its index there."""

    record: int
    execution_id: str
    index: int
    files: list[Any]


@dataclass
class Planned:
    """An artifact to copy: its record, its name, and its path below ``dest`` and in the store."""

    record: int
    execution_id: str
    index: int
    file_name: str
    rel: str = ""
    path: str = ""


class Plan:
    """Destination paths for the artifacts of one run of the operator.

    :param template: The path template below ``dest`` (checked where the task was written).
    :param accept: Whether an artifact name is selected (``file_names``).
    :param service: ``service_name`` and ``service_version``, for the template.
    :param root: The destination's folder in its store.
    :param manifest_rel: The manifest's path below ``dest``.
    :param one_execution: Whether one execution is copied (``{index}`` alone then tells records apart).
    :param log: Where a refused name is told.
    """

    def __init__(
        self,
        template: str,
        accept: Callable[[str], bool],
        service: dict[str, str],
        root: str,
        manifest_rel: str,
        one_execution: bool,
        log: WarningLog,
    ) -> None:
        self.template, self.accept, self.service, self.log = template, accept, service, log
        self.root = root
        self.manifest_path = f"{root}/{manifest_rel}"
        #: Whether each record may be copied as soon as it is listed (no collision is possible).
        self.streams = places_apart(template, one_execution) and not may_render_to(template, manifest_rel)

    def record(self, listing: Listing) -> tuple[list[Planned], list[ArtifactEntry]]:
        """The artifacts of one record to copy, and the entries of those refused for their names."""
        planned: list[Planned] = []
        refused: list[ArtifactEntry] = []
        for file_name in dict.fromkeys(listing.files):  # a name listed twice is one artifact
            if not isinstance(file_name, str) or not self.accept(file_name):
                continue
            item = Planned(listing.record, listing.execution_id, listing.index, file_name)
            try:
                check_artifact_name(file_name, f"Artifact name of record {item.record}")
                item.rel = render_relative_path(
                    self.template, execution_id=item.execution_id, index=item.index,
                    record=item.record, file_name=file_name, **self.service,
                )  # fmt: skip
            except UnsafeArtifactNameError as exc:
                self.log.error("%s", exc)
                refused.append(
                    ArtifactEntry(
                        item.record, item.index, file_name, STATUS_REFUSED, item.execution_id, error=str(exc)
                    )
                )
                continue
            item.path = f"{self.root}/{item.rel}"
            planned.append(item)
        return planned, refused

    def all(self, listings: Iterable[Listing]) -> tuple[list[Planned], list[ArtifactEntry]]:
        """:meth:`record` for every listing, failing when two artifacts or one and the manifest share a path."""
        planned: list[Planned] = []
        refused: list[ArtifactEntry] = []
        seen: dict[str, Planned] = {}
        for listing in listings:
            items, refusals = self.record(listing)
            refused.extend(refusals)
            for item in items:
                self._check_apart(item, seen.get(item.path))
                seen[item.path] = item
            planned.extend(items)
        return planned, refused

    def _check_apart(self, item: Planned, other: Planned | None) -> None:
        if item.path == self.manifest_path:
            raise ArtifactsConfigError(
                f"Artifact '{item.file_name}' of record {item.record} would overwrite the manifest at "
                f"{item.rel!r}: change path_template or manifest_template."
            )
        if other is not None:
            raise ArtifactsConfigError(
                f"path_template {quoted(self.template)} sends artifact '{item.file_name}' of record "
                f"{item.record} and '{other.file_name}' of record {other.record} to the same place "
                f"({item.rel!r}): include {{record}} (or {{index}}) and {{file_name}}."
            )


# -- the run's decisions ----------------------------------------------------------------------------------------


def executions_given(execution_id: str | None, execution_ids: Any) -> Given:
    """The executions to read: the one ``execution_id``, or every one ``execution_ids`` names (in any form)."""
    return Given([str(execution_id)]) if execution_ids is None else read_executions(execution_ids)


def check_records_apart(path_template: str, ids: Sequence[str]) -> None:
    """Refuse a path template that would send the records of several executions to one place."""
    if len(ids) > 1 and not distinguishes_executions(path_template):
        raise ArtifactsConfigError(
            f"path_template {quoted(path_template)} places record index {{index}} without "
            f"{{execution_id}} or {{record}}, so the records of the {plural(len(ids), 'execution')} would overwrite "
            "each other: use {record} (the record's number in the task, as in the results file)."
        )


def manifest_rel(template: str, service: Mapping[str, str], execution_id: str | None) -> str:
    """The manifest's path below ``dest``: ``template`` with the service, and ``execution_id`` when there is one
    execution (None with ``execution_ids``)."""
    fields = {**service, "execution_id": execution_id} if execution_id is not None else service
    return render_relative_path(template, **fields)


def executions_text(executions: Executions) -> str:
    """The executions copied from, as the log line that starts the copy names them."""
    executions_count = len(executions.statuses)
    if executions_count == 1:
        return f"Execution '{executions.ids[0]}'"
    records = plural(executions.total, "record")
    return f"The {plural(executions_count, 'execution')} ({records}, {count(executions.rescored)} rescored)"


def unfinished(waiting: Sequence[str], statuses: Mapping[str, BatchStatus]) -> list[str]:
    """The executions of ``waiting`` still to wait for: those whose last status is not finished."""
    return [e for e in waiting if not statuses[e].is_finished]


def late_message(
    waiting: Sequence[str],
    statuses: Mapping[str, BatchStatus],
    waited: float,
    timeout: float,
    service: str,
) -> str:
    """The message of the timeout when ``waiting`` have not finished after ``waited`` seconds (three named)."""
    late = [
        f"'{e}' ({statuses[e].state}, {count(statuses[e].completed)} of {plural(statuses[e].total, 'record')})"
        for e in waiting
    ]
    return (
        f"Not finished after {waited:.0f} s (timeout is {timeout:g} s): batch "
        f"{noun(len(late), 'execution')} {first_few(late)} of {service}. Raise timeout, or set "
        "wait_for_completion=False to copy what exists so far."
    )


def next_records(
    records: Sequence[int], started: int, running: int, window: int, failed: bool
) -> Sequence[int]:
    """The records to list and copy now, when ``started`` of ``records`` were started and ``running`` still run.

    Up to ``window`` records run at a time (a few ahead of the transfers, so that a listing never waits for
    a thread); none starts once a listing failed (those running finish).
    """
    if failed:
        return []
    return records[started : started + max(window - running, 0)]


@dataclass(frozen=True)
class Skip:
    """An artifact that the destination holds already: its size, and its SHA-256 when the previous manifest knew it."""

    bytes: int
    sha256: str | None


def already_there(
    existing_size: int | None, announced: int | None, known: ArtifactEntry | None
) -> Skip | None:
    """Whether an artifact is skipped: its destination holds ``existing_size`` bytes (None: no file there, or
    ``overwrite``), the size the server ``announced`` (or, unannounced, the size the previous manifest's entry
    ``known`` gives); that entry's SHA-256 is carried over when its size is the one there.
    """
    if existing_size is None:
        return None
    known_size = known.bytes if known is not None else None
    size = announced if announced is not None else known_size
    if size != existing_size:
        return None
    return Skip(existing_size, known.sha256 if known is not None and known_size == existing_size else None)


def task_failure(
    counts: Mapping[str, int], entries: Sequence[ArtifactEntry], manifest_uri: str, fail_on_refused: bool
) -> str | None:
    """Why the task fails once the manifest is written (an artifact failed, or one was refused and
    ``fail_on_refused``), naming the first such entry; None when it succeeds."""
    if not (counts[STATUS_FAILED] or (counts[STATUS_REFUSED] and fail_on_refused)):
        return None
    first = next(e for e in entries if e.status in (STATUS_FAILED, STATUS_REFUSED))
    return (
        f"{plural(counts[STATUS_FAILED], 'artifact')} failed to copy and {count(counts[STATUS_REFUSED])} "
        f"{'was' if counts[STATUS_REFUSED] == 1 else 'were'} refused "
        f"(first: record {first.record} '{first.file_name}': {first.error}). The manifest {manifest_uri} "
        "lists each one. Failed copies left nothing behind: run the task again and only they are copied. "
        "Refused names must be fixed in the service (or excluded with file_names, or allowed to pass "
        "with fail_on_refused=False)."
    )
