"""What Airflow's metadata database holds of one task instance that the batch view needs: whether it exists,
what kind of task it is (from the operator class Airflow stored for it), its state, and what it stored (its
crash-safe batch state, its XComs, its rendered template fields).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_mlserver.operators.batch.state import STATE_KEY, BatchState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class TaskInstanceRef:
    """Which task instance: as the UI names it in the view's URL."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


class TaskKind(StrEnum):
    """What the view shows for a task: this provider's three kinds of task, or none of them."""

    BATCH = "batch"
    ARTIFACTS = "artifacts"
    SENSOR = "sensor"
    PUBLISH = "publish"
    DELETE = "delete"
    OTHER = "other"

    @property
    def scores(self) -> bool:
        """A kind of task that has batch executions to show (publishing and deleting have none)."""
        return self in (TaskKind.BATCH, TaskKind.ARTIFACTS, TaskKind.SENSOR)


#: The kind of each of this provider's operator classes, by the class name Airflow stores for a task instance.
OPERATOR_KINDS = {
    "MLServerBatchOperator": TaskKind.BATCH,
    "MLServerArtifactsToObjectStorageOperator": TaskKind.ARTIFACTS,
    "MLServerBatchSensor": TaskKind.SENSOR,
    "MLServerPublishServiceOperator": TaskKind.PUBLISH,
    "MLServerDeleteServiceOperator": TaskKind.DELETE,
}
#: Task instance states that are final: the view stops refreshing itself (it refreshes until one of them, also
#: while the task waits to be scheduled or to be retried, so that a tab opened early follows the task).
FINAL_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class TaskInstanceNotFound(LookupError):
    """The DAG, the run, the task or its map index does not exist; the message says which."""


@dataclass(frozen=True)
class TaskInstanceFound:
    """The task instance as Airflow keeps it.

    :param operator: The operator class name Airflow stored for it (a user's subclass keeps its own name).
    :param state: Its state (None: not scheduled yet).
    :param shown_as: How Airflow's UI names the operator (``@task`` for a TaskFlow function).
    """

    operator: str
    state: str | None
    shown_as: str = ""

    @property
    def live(self) -> bool:
        """Not ended yet: the view refreshes itself."""
        return self.state not in FINAL_STATES

    @property
    def started(self) -> bool:
        return self.state not in (None, "none", "scheduled", "queued")


def find_task_instance(ref: TaskInstanceRef, session: Session) -> TaskInstanceFound:
    """The task instance, or :class:`TaskInstanceNotFound` naming the first part of ``ref`` that is missing."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import func, select

    row = session.execute(
        select(TaskInstance.operator, TaskInstance.custom_operator_name, TaskInstance.state).where(
            TaskInstance.dag_id == ref.dag_id,
            TaskInstance.run_id == ref.run_id,
            TaskInstance.task_id == ref.task_id,
            TaskInstance.map_index == ref.map_index,
        )
    ).first()
    if row is not None:
        operator = str(row.operator or "")
        return TaskInstanceFound(operator, _state(row.state), str(row.custom_operator_name or operator))
    if session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == ref.dag_id)) is None:
        raise TaskInstanceNotFound(f"There is no DAG '{ref.dag_id}'.")
    run = select(DagRun.id).where(DagRun.dag_id == ref.dag_id, DagRun.run_id == ref.run_id)
    if session.scalar(run) is None:
        raise TaskInstanceNotFound(f"DAG '{ref.dag_id}' has no run '{ref.run_id}'.")
    indexes = session.scalar(
        select(func.count()).where(
            TaskInstance.dag_id == ref.dag_id,
            TaskInstance.run_id == ref.run_id,
            TaskInstance.task_id == ref.task_id,
        )
    )
    if not indexes:
        raise TaskInstanceNotFound(f"Run '{ref.run_id}' of DAG '{ref.dag_id}' has no task '{ref.task_id}'.")
    if ref.map_index < 0:
        raise TaskInstanceNotFound(f"Task '{ref.task_id}' is mapped: open one of its mapped task instances.")
    raise TaskInstanceNotFound(
        f"Task '{ref.task_id}' has no map index {ref.map_index} in run '{ref.run_id}'."
    )


def _state(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


@dataclass(frozen=True)
class AirflowRecords:
    """What Airflow keeps of a task instance that the view needs.

    :param state: The batch operator's crash-safe state (task-state store), if it stored one.
    :param summary: The task's return value (XCom), once it finished.
    :param execution_ids: The execution ids pushed before deferring (XCom ``execution_ids``).
    :param rendered: The rendered template fields (service, conn ids, paths).
    :param run_summaries: Return values of the other task instances of the run, by task id and map index
        (for artifact manifests).
    :param returned: The task's return value as it is (a delete task returns a list).
    """

    state: BatchState | None
    summary: dict[str, Any] | None
    execution_ids: list[str]
    rendered: dict[str, Any]
    run_summaries: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    returned: Any = None


def read_airflow_records(ref: TaskInstanceRef, session: Session) -> AirflowRecords:
    """Read the task instance's state, XComs and rendered fields from Airflow's metadata database."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.task_state_store import TaskStateStoreModel
    from sqlalchemy import select

    stored = session.scalar(
        select(TaskStateStoreModel.value).where(
            TaskStateStoreModel.dag_id == ref.dag_id,
            TaskStateStoreModel.run_id == ref.run_id,
            TaskStateStoreModel.task_id == ref.task_id,
            TaskStateStoreModel.map_index == ref.map_index,
            TaskStateStoreModel.key == STATE_KEY,
        )
    )
    state = None
    if stored:
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            value = json.loads(stored)
            state = BatchState.from_stored(value) if isinstance(value, dict) and value else None
    xcoms = _run_xcoms(ref, session)
    own = (ref.task_id, ref.map_index)
    summary = xcoms.get((*own, "return_value"))
    ids = xcoms.get((*own, "execution_ids"))
    rendered = session.scalar(
        select(RenderedTaskInstanceFields.rendered_fields).where(
            RenderedTaskInstanceFields.dag_id == ref.dag_id,
            RenderedTaskInstanceFields.run_id == ref.run_id,
            RenderedTaskInstanceFields.task_id == ref.task_id,
            RenderedTaskInstanceFields.map_index == ref.map_index,
        )
    )
    return AirflowRecords(
        state=state,
        summary=summary if isinstance(summary, dict) else None,
        execution_ids=[str(i) for i in ids] if isinstance(ids, list) else [],
        rendered=rendered if isinstance(rendered, dict) else {},
        run_summaries={
            (task_id, map_index): value
            for (task_id, map_index, key), value in xcoms.items()
            if key == "return_value" and isinstance(value, dict) and (task_id, map_index) != own
        },
        returned=summary,
    )


def _run_xcoms(ref: TaskInstanceRef, session: Session) -> dict[tuple[str, int, str], Any]:
    """The run's return values and pushed execution ids, by task id, map index and key."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    xcoms: dict[tuple[str, int, str], Any] = {}
    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == ref.dag_id,
            XComModel.run_id == ref.run_id,
            XComModel.key.in_(("return_value", "execution_ids")),
        )
    )
    for row in rows:
        with contextlib.suppress(Exception):  # a value another task wrote that does not decode: not ours
            xcoms[(row.task_id, row.map_index, row.key)] = XComModel.deserialize_value(row)
    return xcoms
