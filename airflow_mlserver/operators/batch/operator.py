"""``MLServerBatchOperator``: score a data set against a published web service in asynchronous batch.

How a run goes:

1. The service is resolved (``service_version=None`` means the latest, resolved and logged once) and every
   input record is checked against its declared inputs before anything is sent.
2. The records are cut into chunks of ``chunk_size``; each chunk is one batch execution. At most
   ``max_active_executions`` run at once; each start is stored as an intent before it is sent and its id right
   after it answers, before any waiting (:mod:`~airflow_mlserver.operators.batch.starts`).
3. While executions run the task defers to :class:`~airflow_mlserver.triggers.batch.MLServerBatchTrigger`
   (or polls in the worker when ``deferrable=False``) until the FIRST of them finishes, so the pipeline never
   drains: it then starts the next chunk(s) at once, stages the result rows of each newly complete chunk as a
   part file next to the output (:mod:`~airflow_mlserver.operators.batch.parts`) while the others run, and
   waits again, until every chunk is complete; then up to ``rescore_failed_records`` rounds send the failed
   records again. What to do next is :mod:`~airflow_mlserver.operators.batch.planner`'s decision, and
   :mod:`~airflow_mlserver.operators.batch.driver` carries it out, the same whether the task defers or waits.
4. A final pass reads the parts in chunk order, puts each rescored record's latest outcome in place (rescore
   rounds come after every chunk is complete, so their few results are read then), and writes ``output_path``
   in input order; the task fails when more than ``max_failed_records`` records failed, and returns a small
   summary (and logs it as a sentence). Without ``output_path`` nothing is staged: the final pass reads the
   results from the server to count them.

Nothing is kept on the operator across a deferral: the executions, the staged chunks (``written``) and the rounds
live in the task-state store, the rows in the part files. Memory is bounded by a chunk or two, whatever the size.

The log lines are :mod:`~airflow_mlserver.executions.progress`'s; a mapped task's lines name its map index.

Crash safety (:mod:`~airflow_mlserver.operators.batch.state`): the task-state store survives retries and
worker crashes (XCom does not). Its key is the task instance's own ``(dag, run, task, map index)`` scope, never
the try number, so a retry finds the executions of the earlier try and reattaches to every running or complete
one; only a failed or canceled execution is started again. An execution that finished while nobody watched is
used without deferring. The deadline for ``timeout`` is stored with them, so it holds across retries and
triggerer restarts.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk import BaseOperator, conf

from airflow_mlserver.client.records import ExtraColumns, check_records
from airflow_mlserver.client.words import first_few, plural
from airflow_mlserver.exceptions import (
    MLServerBatchFailedError,
    MLServerBatchTimeoutError,
    MLServerConfigError,
)
from airflow_mlserver.executions.events import BatchEvent
from airflow_mlserver.executions.progress import map_prefix, scored_sentence
from airflow_mlserver.executions.waiting import Outcome
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import check_arguments, optional, records_file_format, seconds
from airflow_mlserver.operators.batch import planner
from airflow_mlserver.operators.batch.arguments import ARGUMENT_CHECKS, DEFAULT_UNREACHABLE_TIMEOUT
from airflow_mlserver.operators.batch.driver import BatchRun, Waiting
from airflow_mlserver.operators.batch.parts import StagedParts
from airflow_mlserver.operators.batch.results import check_failures, latest_outcomes, write_results
from airflow_mlserver.operators.batch.state import BatchState, Round
from airflow_mlserver.operators.batch.summary import BatchSummary
from airflow_mlserver.operators.links import MLServerBatchLink
from airflow_mlserver.tables import ResultsWriter, is_path_like, iter_frames, storage_path
from airflow_mlserver.triggers.batch import MLServerBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlserver.client.models import WebService

EXECUTIONS_XCOM_KEY = "execution_ids"


class MLServerBatchOperator(BaseOperator):
    """Score records against a Machine Learning Server web service in asynchronous batch.

    :param service_name: The published web service. (templated)
    :param service_version: Its version; None for the latest, resolved once and logged. (templated)
    :param records: The input records: a DataFrame, a list of dicts, a dict of columns, or a path/URI of a
        CSV, TSV, Parquet or JSON-lines file read through Airflow's object storage. (templated)
    :param records_format: ``csv``, ``tsv``, ``parquet`` or ``jsonl`` when the file's suffix does not tell.
    :param records_conn_id: Connection for reading a records URI (e.g. ``aws_default`` for ``s3://``). (templated)
    :param output_path: Where results go (a URI or ``ObjectStoragePath``); None to write nothing. (templated)
    :param output_format: ``parquet`` (default) or ``csv``.
    :param output_conn_id: Connection for writing ``output_path``. (templated)
    :param parallel_count: Records the server runs at a time in one execution (1 to 100, default 10).
    :param chunk_size: Records per batch execution (default: all in one); memory is bounded by a chunk.
    :param max_active_executions: Chunks running at once (default 1).
    :param extra_columns: What to do with input columns the service does not declare (an id, say); they are
        never sent. ``keep`` (default) keeps them in the results beside the inputs and outputs, ``ignore``
        leaves them out of the results too, ``error`` fails the task before anything is sent. ``drop``, the
        older name of ``keep``, still works and warns.
    :param max_failed_records: Failed records tolerated before the task fails (default 0), counted after the
        last round of rescoring.
    :param rescore_failed_records: Rounds of rescoring (default 0): once every chunk is complete, the records
        that failed, and only those, are sent again as new executions, at most ``chunk_size`` each, and so on
        for each round while some fail. The results file has each record's latest outcome and an ``attempts``
        column.
    :param poll_interval: Seconds between status polls (default 10).
    :param timeout: Longest time the batch may take (seconds or timedelta); the executions are then canceled
        and the task fails. Measured from the first start, across retries. None for no limit.
    :param unreachable_timeout: Longest time the server may stay unreadable during a wait (seconds or timedelta,
        default 30 minutes); the task then fails with the last error. ``timeout`` still wins when earlier.
    :param deferrable: Free the worker slot while the server works (default ``[operators] default_deferrable``).
    :param cancel_on_kill: Cancel the executions when a user kills the task (default True).
    :param return_results: Also return the result rows in the summary (small batches only, at most 1,000).
    :param mlserver_conn_id: The Machine Learning Server connection (default ``mlserver_default``). (templated)
    """

    template_fields: Sequence[str] = (
        "service_name",
        "service_version",
        "records",
        "output_path",
        "records_conn_id",
        "output_conn_id",
        "mlserver_conn_id",
    )
    operator_extra_links = (MLServerBatchLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        service_name: str,
        records: Any,
        service_version: str | None = None,
        records_format: str | None = None,
        records_conn_id: str | None = None,
        output_path: Any = None,
        output_format: str = "parquet",
        output_conn_id: str | None = None,
        parallel_count: int = 10,
        chunk_size: int | None = None,
        max_active_executions: int = 1,
        extra_columns: ExtraColumns = "keep",
        max_failed_records: int = 0,
        rescore_failed_records: int = 0,
        poll_interval: float = 10.0,
        timeout: float | timedelta | None = None,
        unreachable_timeout: float | timedelta = DEFAULT_UNREACHABLE_TIMEOUT,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cancel_on_kill: bool = True,
        return_results: bool = False,
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if extra_columns == "drop":
            warnings.warn(
                "extra_columns='drop' is deprecated: it keeps the columns the service does not declare in the results "
                "(it never sends them), which extra_columns='keep', the default, now says. Remove the argument, or "
                "pass extra_columns='ignore' to leave those columns out of the results.",
                AirflowProviderDeprecationWarning,
                stacklevel=2,
            )
            extra_columns = "keep"
        self.service_name = service_name
        self.service_version = service_version
        self.records = records
        self.records_format = records_format
        self.records_conn_id = records_conn_id
        self.output_path = output_path
        self.output_format = output_format
        self.output_conn_id = output_conn_id
        self.parallel_count = parallel_count
        self.chunk_size = chunk_size
        self.max_active_executions = max_active_executions
        self.extra_columns = extra_columns
        self.max_failed_records = max_failed_records
        self.rescore_failed_records = rescore_failed_records
        self.poll_interval = poll_interval
        self.batch_timeout = optional(seconds())("timeout", timeout)
        self.unreachable_timeout = seconds()("unreachable_timeout", unreachable_timeout)
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.return_results = return_results
        self.mlserver_conn_id = mlserver_conn_id
        self._check_arguments(rendered=False)

    def _check_arguments(self, rendered: bool) -> None:
        """Every argument checked (see :mod:`~airflow_mlserver.operators.arguments`); templates once rendered."""
        check_arguments(self, ARGUMENT_CHECKS, rendered)
        records_file_format(self.records, self.records_format, rendered)

    @cached_property
    def hook(self) -> MLServerHook:
        return MLServerHook(mlserver_conn_id=self.mlserver_conn_id)

    def _frames(self, chunk_size: int) -> Any:
        return iter_frames(self.records, chunk_size, self.records_format, self.records_conn_id)

    def _chunk_size(self) -> int:
        return self.chunk_size or 2**62

    def _parts(self, service: WebService) -> StagedParts:
        output = storage_path(self.output_path, self.output_conn_id) if self.output_path else None
        return StagedParts(output, service, keep_extra_columns=self.extra_columns != "ignore")

    @staticmethod
    def _map_index(context: Context) -> int | None:
        """The task instance's map index (-1 or None when the task is not mapped)."""
        index = getattr(context.get("ti"), "map_index", None)
        return index if isinstance(index, int) else None

    def _run(self, context: Context, service: WebService, state: BatchState) -> BatchRun:
        """The driver of this task instance's batch (see :mod:`~airflow_mlserver.operators.batch.driver`)."""
        return BatchRun(
            hook=self.hook,
            service=service,
            state=state,
            store=context.get("task_state_store"),
            config=planner.Config(
                max_active=self.max_active_executions,
                rescore_rounds=self.rescore_failed_records,
                part_size=self.chunk_size,
                stage=bool(self.output_path),
            ),
            frames=lambda: self._frames(self._chunk_size()),
            parts=self._parts(service),
            parallel_count=self.parallel_count,
            log=self.log,
            timeout=self.batch_timeout,
            prefix=map_prefix(self._map_index(context)),
            mapped=bool(map_prefix(self._map_index(context))),
        )

    def execute(self, context: Context) -> Any:
        self._check_arguments(rendered=True)
        state = BatchState.load(context.get("task_state_store"))
        if state is not None and state.service != self.service_name:
            state = None
        service = self.hook.get_service(self.service_name, state.version if state else self.service_version)
        if self.service_version is None and state is None:
            self.log.info("Latest version of web service '%s' is '%s'", service.name, service.version)
        sizes = self._validate(service)
        if state is None:
            now = time.time()
            state = BatchState(
                service=service.name,
                version=service.version,
                started=now,
                deadline=now + self.batch_timeout if self.batch_timeout else None,
                rounds=[Round.chunks(sizes)],
            )
        elif state.number_chunks(sizes):  # an earlier release's form: store it as this release's
            state.save(context.get("task_state_store"))
        run = self._run(context, service, state)
        run.log_earlier_try()
        run.settle()
        return self._advance(context, run)

    def _validate(self, service: WebService) -> list[int]:
        """Check every record against the service's inputs (chunk by chunk); answer each chunk's size."""
        sizes = []
        for frame in self._frames(self._chunk_size()):
            check_records(frame, service, self.extra_columns)
            sizes.append(len(frame))
        if not sizes:
            raise MLServerConfigError("The records are empty: a batch needs at least one record.")
        return sizes

    def _advance(self, context: Context, run: BatchRun) -> Any:
        """Drive the batch until every round is complete: defer (or wait in the worker) whenever the planner
        says to wait, then write the results."""
        while True:
            waiting = run.step()
            context["ti"].xcom_push(key=EXECUTIONS_XCOM_KEY, value=run.state.chunk_execution_ids())
            if waiting is None:
                return self._finish(run)
            if self.deferrable:
                self._defer(context, run, waiting)
            run.wait_in_worker(waiting, self.poll_interval, self.unreachable_timeout)  # the trigger's rules

    def _defer(self, context: Context, run: BatchRun, waiting: Waiting) -> None:
        """Free the worker slot until the first of ``waiting`` finishes (raises ``TaskDeferred``)."""
        self.defer(
            trigger=MLServerBatchTrigger(
                mlserver_conn_id=self.mlserver_conn_id,
                service_name=run.service.name,
                service_version=run.service.version,
                execution_ids=waiting.execution_ids,
                poll_interval=self.poll_interval,
                deadline=run.state.deadline,
                cancel_on_kill=self.cancel_on_kill,
                labels=waiting.labels,
                started=waiting.started,
                map_index=self._map_index(context),
                until=waiting.until,
                unreachable_timeout=self.unreachable_timeout,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger: fail on anything but ``complete``, else go on with the next chunks."""
        ended_wait = BatchEvent.from_payload(event)
        message = ended_wait.message
        if ended_wait.status is Outcome.TIMEOUT:
            hook = self.hook
            for execution_id in ended_wait.execution_ids:
                hook.cancel_batch(ended_wait.service_name, ended_wait.service_version, execution_id)
            raise MLServerBatchTimeoutError(
                f"{message}; canceled {first_few(ended_wait.execution_ids)}. Raise timeout, parallel_count or "
                "max_active_executions, or score fewer records per run."
            )
        if ended_wait.status in (Outcome.FAILED, Outcome.CANCELED):
            raise MLServerBatchFailedError(
                f"{message}. Look at the execution on the server; a retry of this task starts the failed chunk again."
            )
        if ended_wait.status is not Outcome.COMPLETE:
            raise MLServerBatchFailedError(f"Waiting for the batch failed: {message or event!r}")
        state = BatchState.load(context.get("task_state_store"))
        if state is None:
            raise MLServerBatchFailedError(
                "The task-state store holds no batch for this task: it was cleared while the task was deferred. "
                "Clear the task to score again."
            )
        state.note_seen(ended_wait.seen)  # when the trigger's polls saw the executions run and finish
        service = self.hook.get_service(state.service, state.version)
        if state.unnumbered:  # deferred by an earlier release: its chunks' records, from the input's chunking
            state.number_chunks([len(frame) for frame in self._frames(self._chunk_size())])
            state.save(context.get("task_state_store"))
        return self._advance(context, self._run(context, service, state))

    def _finish(self, run: BatchRun) -> dict[str, Any]:
        """Read every chunk's results in input order, write them, check failures, answer the summary."""
        service, state = run.service, run.state
        writer = None
        if self.output_path:
            path = storage_path(self.output_path, self.output_conn_id)
            writer = ResultsWriter(path, self.output_format, service)  # type: ignore[arg-type]
        rescored, attempts = latest_outcomes(self.hook, service, state)
        scored = write_results(
            self.hook,
            service,
            state,
            lambda: self._frames(self._chunk_size()),
            writer,
            run.parts,
            keep_rows=self.return_results,
            rescored=rescored,
            attempts=attempts if self.rescore_failed_records else None,
        )
        run.parts.remove(state)  # the output is in place: the staged parts are not needed any more
        output_uri = str(writer.path) if writer is not None else None
        summary = BatchSummary.of(state, scored.total, scored.failed, len(rescored), output_uri, time.time())
        if rescored:
            recovered = f"{sum(r.success for r in rescored.values()):,} succeeded on a later attempt"
            rounds_run, records = plural(state.rescore_rounds, "round"), plural(len(rescored), "record")
            self.log.info("%sRescored %s in %s: %s", run.prefix, records, rounds_run, recovered)
        check_failures(scored, state, self.max_failed_records, output_uri)
        self._lineage_service = (service.name, service.version)  # for the OpenLineage method, same process
        value = summary.to_xcom()
        self.log.info("%s", scored_sentence(value, run.prefix))
        if self.return_results:
            value["results"] = scored.rows
        return value

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the records as input data set, the results as output, the service as a job facet.

        Used only when the OpenLineage provider is installed; answers None otherwise.
        """
        try:
            from airflow_mlserver.lineage import batch_lineage  # needs the OpenLineage provider
        except ImportError:
            return None
        service = getattr(self, "_lineage_service", None) or (self.service_name, self.service_version or "")
        inputs = [self.records] if is_path_like(self.records) else []
        outputs = [self.output_path] if self.output_path else []
        return batch_lineage(self.hook.settings.base_url, service, inputs, outputs)

    def on_kill(self) -> None:
        """A user killed the running (non-deferred) task: cancel its executions if ``cancel_on_kill``."""
        if not self.cancel_on_kill:
            return
        from airflow.sdk import get_current_context

        try:
            context = get_current_context()
        except Exception:  # pragma: no cover - no context outside a task
            return
        state = BatchState.load(context.get("task_state_store"))
        if state is None:
            return
        for execution_id in state.execution_ids():
            try:
                self.hook.cancel_batch(state.service, state.version, execution_id)
            except Exception as exc:
                self.log.warning("Could not cancel batch execution %s: %s", execution_id, exc)


__all__ = ["MLServerBatchOperator"]
