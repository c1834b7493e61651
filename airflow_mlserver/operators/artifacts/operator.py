"""Copy the artifacts of batch executions' records from the Machine Learning Server into object storage.

Each file streams from the HTTP answer to the destination in fixed-size chunks, so memory stays bounded
(a few MiB per transfer) whatever the file size. A destination is never left half-written, and what it holds
is always checked against the bytes read (see :mod:`~airflow_mlserver.operators.artifacts.writes`). This module
is the Airflow-facing class (its arguments, ``execute``, its templated fields); the other concerns live beside
it: the argument checks and defaults in :mod:`~airflow_mlserver.operators.artifacts.arguments`, the operator's
decisions (no I/O) in :mod:`~airflow_mlserver.operators.artifacts.plan`, the wait for the executions in
:mod:`~airflow_mlserver.operators.artifacts.wait`, the copy loop in
:mod:`~airflow_mlserver.operators.artifacts.copies`, the executions and their record numbers in
:mod:`~airflow_mlserver.operators.artifacts.records`, names, paths and selections in
:mod:`~airflow_mlserver.operators.artifacts.names`, the destination in
:mod:`~airflow_mlserver.operators.artifacts.destination` and the manifest in
:mod:`~airflow_mlserver.operators.artifacts.manifest`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_mlserver.client.words import count, first_few, plural
from airflow_mlserver.exceptions import ArtifactTransferError
from airflow_mlserver.executions.outage import DEFAULT_UNREACHABLE_TIMEOUT
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import Check, check_arguments, flag
from airflow_mlserver.operators.artifacts.arguments import (
    DEFAULT_MANIFEST_TEMPLATE,
    DEFAULT_PATH_TEMPLATE,
    MAX_CHUNK_SIZE,
    MAX_CONCURRENCY,
    TASK_MANIFEST_TEMPLATE,
    TASK_PATH_TEMPLATE,
    argument_checks,
    check_one_source,
    default_templates,
    outlets_with_dest,
)
from airflow_mlserver.operators.artifacts.copies import copy_records
from airflow_mlserver.operators.artifacts.destination import Destination, credentials_check
from airflow_mlserver.operators.artifacts.manifest import (
    STATUS_COPIED,
    STATUS_FAILED,
    STATUS_REFUSED,
    STATUS_SKIPPED,
    Manifest,
    read_previous,
)
from airflow_mlserver.operators.artifacts.names import compile_file_filter, select_records
from airflow_mlserver.operators.artifacts.plan import (
    Plan,
    check_records_apart,
    executions_given,
    executions_text,
    manifest_rel,
    task_failure,
)
from airflow_mlserver.operators.artifacts.records import Executions
from airflow_mlserver.operators.artifacts.transfers import Transfers
from airflow_mlserver.operators.artifacts.wait import statuses_once_finished
from airflow_mlserver.operators.artifacts.writes import DEFAULT_CHUNK_SIZE
from airflow_mlserver.operators.links import MLServerBatchLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class MLServerArtifactsToObjectStorageOperator(BaseOperator):
    """Copy the artifacts (files) of batch executions' records into object storage.

    Give one execution (``execution_id``), or every execution of a batch task (``execution_ids``, typically
    ``score.output``, the batch operator's summary; also from a mapped batch task). Records are numbered as the
    batch task's results file numbers them: across the chunks' executions in order (for a mapped task, map
    index order), each execution's records after those of the earlier ones; a record that a rescore round
    scored again has its latest attempt's artifacts, as the results file has its latest outcome. ``indexes``
    selects such numbers, and ``path_template`` places each artifact with ``{record}`` (that number),
    ``{execution_id}`` and ``{index}`` (the record's execution and its index there), ``{file_name}``,
    ``{service_name}``, ``{service_version}``.

    Every artifact of the selected records streams from the server to ``dest / path_template`` in chunks,
    with up to ``max_concurrency`` transfers at a time. A destination is never left half-written (temporary
    name and rename on local file systems; aborted upload on S3, GCS and Azure Blob; size check and delete
    elsewhere), and the bytes written are checked against the bytes read. One JSON manifest (the executions
    with their first record and record count; the record number, execution, index, file name, bytes, sha256,
    destination URI and status of each artifact; the records that produced none) is written next to the
    files; the task returns a small summary (counts, bytes, execution ids, manifest URI) as XCom.

    A rerun copies nothing twice: by default an artifact whose destination exists with the size the
    server announces is skipped (its sha256 is carried over from the previous manifest). Artifact names
    that could escape ``dest`` (a path separator, ``..``, an absolute path, control characters) are
    refused, counted and never written; by default the task then fails after copying everything else.

    Every argument is checked where it is written (a templated one right after it renders, before anything
    is sent): a bad one raises :class:`~airflow_mlserver.exceptions.OperatorArgumentError`. Credentials of the
    destination come only from its Airflow connection (``dest_conn_id``, or a ``protocol://conn_id@bucket/key``
    URI); a ``dest`` that carries a password is refused at construction, even in a template's text, so it
    never reaches the serialized DAG.

    :param service_name: Name of the web service. (templated)
    :param service_version: Version of the web service. (templated)
    :param execution_id: One batch execution id. Give it or ``execution_ids``. (templated)
    :param execution_ids: Every execution of a batch task: the batch operator's summary (``score.output``; from a
        mapped batch task, one per map index, taken in map index order), which names its rescore rounds too; or
        its ``execution_ids`` XCom (``score.output["execution_ids"]``, a list per map index for a mapped task),
        or a list of ids, the chunks in record order. (templated)
    :param dest: Where the files go: an ``ObjectStoragePath`` or a URI such as ``file:///data/out``,
        ``s3://bucket/prefix``, ``gs://...`` or ``abfs://...`` (any store Airflow's object storage
        supports). (templated)
    :param indexes: Records to copy, numbered from 0 across the executions as in the results file: ``None``
        for all, a list or range, or text such as ``"0-9,15"`` (a range low to high). An empty list copies
        nothing. (templated)
    :param file_names: Artifact names or globs (``"*.csv"``) to copy; ``None`` for all. (templated)
    :param path_template: Destination path below ``dest``, with ``{file_name}`` and the placeholders above;
        default ``{execution_id}/{index}/{file_name}`` with ``execution_id``, ``{record}/{file_name}`` with
        ``execution_ids``. (templated)
    :param manifest_template: Path of the JSON manifest below ``dest``; ``{service_name}``,
        ``{service_version}``, and ``{execution_id}`` with ``execution_id`` only; default
        ``{execution_id}/manifest.json`` with ``execution_id``, ``manifest.json`` with ``execution_ids``.
        (templated)
    :param max_concurrency: Transfers (and artifact listings) run in parallel threads, 1 to 64.
    :param overwrite: Copy every artifact again, even when its destination exists with the same size.
    :param wait_for_completion: Wait for the executions to finish before copying; when ``False``, copy the
        artifacts of the records finished so far.
    :param poll_interval: Seconds (or a timedelta) between two status polls while waiting.
    :param timeout: Longest wait for the executions, in seconds or a timedelta (``None``: no limit besides the
        task's).
    :param unreachable_timeout: Longest time (seconds or a timedelta, default 30 minutes) the server may stay
        unreadable while the task waits for the executions (refused connections, unknown host, timeouts, server
        errors after the connection's retries): the wait goes on, says so once a minute, then fails with the last
        error. ``timeout`` still ends the wait when it comes first.
    :param fail_on_refused: Fail the task (after copying the rest) when an artifact name was refused.
    :param transfer_retries: Further attempts of a transfer that broke off (each starts over), 0 to 100.
    :param chunk_size: Bytes moved per read and write, 4 KiB to 64 MiB.
    :param dest_as_outlet: Declare ``dest`` as an :class:`~airflow.sdk.Asset` outlet of the task (``dest``
        must then not be a Jinja template; otherwise pass ``outlets`` yourself).
    :param mlserver_conn_id: The Machine Learning Server connection. (templated)
    :param dest_conn_id: The Airflow connection of the destination store (``aws_default`` style);
        overrides one given in ``dest``. (templated)
    """

    template_fields: Sequence[str] = (
        "service_name",
        "service_version",
        "execution_id",
        "execution_ids",
        "dest",
        "indexes",
        "file_names",
        "path_template",
        "manifest_template",
        "mlserver_conn_id",
        "dest_conn_id",
    )
    operator_extra_links = (MLServerBatchLink(),)
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        service_name: str,
        service_version: str,
        dest: str | ObjectStoragePath,
        execution_id: str | None = None,
        execution_ids: Any = None,
        indexes: Any = None,
        file_names: str | Sequence[str] | None = None,
        path_template: str | None = None,
        manifest_template: str | None = None,
        max_concurrency: int = 4,
        overwrite: bool = False,
        wait_for_completion: bool = True,
        poll_interval: float = 10.0,
        timeout: float | None = None,
        unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT,
        fail_on_refused: bool = True,
        transfer_retries: int = 2,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dest_as_outlet: bool = False,
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        dest_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        credentials_check("dest", dest)  # even in a template's text: never into the serialized DAG
        if flag()("dest_as_outlet", dest_as_outlet):
            kwargs["outlets"] = outlets_with_dest(dest, dest_conn_id, kwargs.pop("outlets", None))
        super().__init__(**kwargs)
        check_one_source(execution_id, execution_ids)
        self.service_name = service_name
        self.service_version = service_version
        self.execution_id = execution_id
        self.execution_ids = execution_ids
        self.dest = dest
        self.indexes = indexes
        self.file_names = file_names
        default_path, default_manifest = default_templates(execution_ids is None)
        self.path_template = default_path if path_template is None else path_template
        self.manifest_template = default_manifest if manifest_template is None else manifest_template
        self.max_concurrency = max_concurrency
        self.overwrite = overwrite
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.unreachable_timeout = unreachable_timeout
        self.fail_on_refused = fail_on_refused
        self.transfer_retries = transfer_retries
        self.chunk_size = chunk_size
        self.mlserver_conn_id = mlserver_conn_id
        self.dest_conn_id = dest_conn_id
        check_arguments(self, self._checks())  # a template or an XComArg: right after it renders

    def _checks(self) -> dict[str, Check]:
        """Each argument's check; the manifest may name the execution only when there is one."""
        return argument_checks(self.execution_ids is None)

    # -- execute ------------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        check_arguments(self, self._checks(), rendered=True)  # before anything is sent or awaited
        name, version = str(self.service_name), str(self.service_version)
        transfers = Transfers(
            str(self.mlserver_conn_id), name, version, self.chunk_size, self.transfer_retries, self.log
        )
        try:
            return self._execute(context, transfers)
        finally:
            transfers.close()

    def _execute(self, context: Context, transfers: Transfers) -> dict[str, Any]:
        name, version = transfers.name, transfers.version
        given = executions_given(self.execution_id, self.execution_ids)
        ids = given.ids
        check_records_apart(self.path_template, ids)
        dest = Destination.open(self.dest, self.dest_conn_id)
        accept = compile_file_filter(self.file_names)
        service = {"service_name": name, "service_version": version}
        one = ids[0] if self.execution_ids is None else None  # the manifest may name the one execution
        manifest_at = manifest_rel(self.manifest_template, service, one)
        plan = Plan(self.path_template, accept, service, dest.root, manifest_at, len(ids) == 1, self.log)

        statuses = statuses_once_finished(
            transfers.hook(), name, version, ids,
            wait_for_completion=self.wait_for_completion, poll_interval=self.poll_interval,
            timeout=self.timeout, unreachable_timeout=self.unreachable_timeout, log=self.log,
        )  # fmt: skip
        executions = Executions.number(given, dict(zip(ids, statuses, strict=True)))
        records = select_records(self.indexes, executions.total)
        self.log.info(
            "%s of %s/%s: %s (%s of %s done); copying the artifacts of %s to %s",
            executions_text(executions), name, version, executions.state,
            count(sum(s.completed for s in executions.statuses)), plural(executions.total, "record"),
            plural(len(records), "record"), dest.uri,
        )  # fmt: skip

        existing = (
            {}
            if self.overwrite
            else dest.existing_sizes(self.path_template, [{**service, "execution_id": e} for e in ids])
        )
        previous = read_previous(dest.fs, plan.manifest_path)
        copied = copy_records(
            transfers, plan, dest, executions, records, existing, previous, self.max_concurrency
        )
        if copied.failure is not None and not copied.entries:
            raise copied.failure  # nothing was written
        manifest = Manifest(
            service_name=name,
            service_version=version,
            executions=executions,
            destination=dest.uri,
            path_template=self.path_template,
            records=records,
            all_records=self.indexes is None,
            records_without_artifacts=sorted(
                listing.record for listing in copied.listings if not listing.files
            ),
            entries=copied.entries,
            uri=dest.uri_of(plan.manifest_path),
        )
        manifest.write(dest.fs, dest.mode, plan.manifest_path)
        if copied.failure is not None:
            self.log.error("Listing artifacts failed: %s", copied.failure)
            self.log.error(
                "The manifest %s lists the %s handled before it, with their sha256: run the task again, nothing "
                "is copied twice", manifest.uri, plural(len(copied.entries), "artifact"),
            )  # fmt: skip
            raise copied.failure
        return self._report(context, manifest)

    def _report(self, context: Context, manifest: Manifest) -> dict[str, Any]:
        """Log what was done; fail on failed (or refused) artifacts, else answer the summary."""
        summary = manifest.summary()
        counts, no_artifacts = manifest.counts(), manifest.records_without_artifacts
        if no_artifacts:
            self.log.info(
                "%s produced no artifacts%s: %s",
                plural(len(no_artifacts), "record"),
                "" if manifest.executions.finished else " so far (an execution is still running)",
                first_few((f"{n:,}" for n in no_artifacts), shown=5),
            )
        self.log.info(
            "Artifacts: %s copied (%s), %s skipped (already there), %s refused, %s failed; manifest %s",
            count(counts[STATUS_COPIED]), plural(summary["bytes_copied"], "byte"), count(counts[STATUS_SKIPPED]),
            count(counts[STATUS_REFUSED]), count(counts[STATUS_FAILED]), manifest.uri,
        )  # fmt: skip
        failure = task_failure(counts, manifest.entries, manifest.uri, self.fail_on_refused)
        if failure is not None:
            ti = context.get("ti") if hasattr(context, "get") else None
            if ti is not None:
                with contextlib.suppress(Exception):
                    ti.xcom_push(key="summary", value=summary)
            raise ArtifactTransferError(failure, summary)
        return summary


__all__ = [
    "DEFAULT_MANIFEST_TEMPLATE",
    "DEFAULT_PATH_TEMPLATE",
    "MAX_CHUNK_SIZE",
    "MAX_CONCURRENCY",
    "TASK_MANIFEST_TEMPLATE",
    "TASK_PATH_TEMPLATE",
    "MLServerArtifactsToObjectStorageOperator",
]
