"""Copy the artifacts of batch executions' records from the Machine Learning Server into object storage.

Each file streams from the HTTP answer to the destination in fixed-size chunks, so memory stays bounded
(a few MiB per transfer) whatever the file size. A destination is never left half-written, and what it holds
is always checked against the bytes read (see :mod:`~airflow_mlserver.operators.artifacts.writes`). The other
concerns live beside this module: the executions and their record numbers in
:mod:`~airflow_mlserver.operators.artifacts.records`, names, paths and selections in
:mod:`~airflow_mlserver.operators.artifacts.names`, the destination in
:mod:`~airflow_mlserver.operators.artifacts.destination`, the manifest in
:mod:`~airflow_mlserver.operators.artifacts.manifest`, the argument checks in
:mod:`~airflow_mlserver.operators.arguments`, and the wait for the executions in
:mod:`~airflow_mlserver.executions.waiting`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath, XComArg

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.exceptions import (
    ArtifactsConfigError,
    ArtifactTransferError,
    ExecutionWaitTimeoutError,
    OperatorArgumentError,
)
from airflow_mlserver.executions.polling import wait_for_executions
from airflow_mlserver.executions.progress import ProgressLog, chunk_label
from airflow_mlserver.executions.waiting import deadline_passed
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import (
    Check,
    check_arguments,
    flag,
    has_template,
    optional,
    seconds,
    segment,
    text,
    whole_number,
)
from airflow_mlserver.operators.artifacts.destination import (
    Destination,
    credentials_check,
    dest_check,
    destination_path,
    destination_uri,
)
from airflow_mlserver.operators.artifacts.manifest import (
    STATUS_COPIED,
    STATUS_FAILED,
    STATUS_REFUSED,
    STATUS_SKIPPED,
    ArtifactEntry,
    Manifest,
    read_previous,
)
from airflow_mlserver.operators.artifacts.names import (
    compile_file_filter,
    distinguishes_executions,
    file_names_check,
    indexes_check,
    manifest_template_check,
    path_template_check,
    render_relative_path,
    select_records,
)
from airflow_mlserver.operators.artifacts.plan import Plan
from airflow_mlserver.operators.artifacts.records import (
    Executions,
    Given,
    execution_ids_check,
    read_executions,
)
from airflow_mlserver.operators.artifacts.transfers import Listing, Planned, Transfers
from airflow_mlserver.operators.artifacts.writes import DEFAULT_CHUNK_SIZE
from airflow_mlserver.operators.links import MLServerBatchLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlserver.client.models import BatchStatus

#: Where artifacts and the manifest go by default when one execution (``execution_id``) is copied.
DEFAULT_PATH_TEMPLATE = "{execution_id}/{index}/{file_name}"
DEFAULT_MANIFEST_TEMPLATE = "{execution_id}/manifest.json"
#: ... and when a batch task's executions (``execution_ids``) are: by record number, as in the results file.
TASK_PATH_TEMPLATE = "{record}/{file_name}"
TASK_MANIFEST_TEMPLATE = "manifest.json"
#: The most transfers at a time (each a thread with its own connection and two ``chunk_size`` buffers).
MAX_CONCURRENCY = 64
#: The largest ``chunk_size``: two buffers of it per transfer stay in memory.
MAX_CHUNK_SIZE = 64 * 1024 * 1024

_CONN_ID = "an Airflow connection id"
_ARGUMENT_CHECKS: dict[str, Check] = {
    "service_name": segment("the name of a published web service"),
    "service_version": segment("the web service's version, e.g. '1.0'"),
    "execution_id": optional(segment("a batch execution id, e.g. one of the batch operator's execution_ids")),
    "execution_ids": optional(execution_ids_check),
    "dest": dest_check,
    "indexes": indexes_check,
    "file_names": file_names_check,
    "path_template": path_template_check,
    "max_concurrency": whole_number(1, MAX_CONCURRENCY, "transfers at a time"),
    "overwrite": flag(),
    "wait_for_completion": flag(),
    "poll_interval": seconds(),
    "timeout": optional(seconds()),
    "fail_on_refused": flag(),
    "transfer_retries": whole_number(0, 100, "further attempts of a broken transfer"),
    "chunk_size": whole_number(4096, MAX_CHUNK_SIZE, "bytes per read and write"),
    "mlserver_conn_id": text(_CONN_ID),
    "dest_conn_id": optional(text(_CONN_ID)),
}


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
            if has_template(dest):
                raise OperatorArgumentError(
                    "dest",
                    dest,
                    "give a fixed dest with dest_as_outlet=True, or pass outlets=[Asset(...)] yourself",
                )
            dest_check("dest", dest)
            outlets = list(kwargs.pop("outlets", None) or [])
            outlets.append(Asset(destination_uri(destination_path(dest, dest_conn_id))))
            kwargs["outlets"] = outlets
        super().__init__(**kwargs)
        if (execution_id is None) == (execution_ids is None):
            raise OperatorArgumentError(
                "execution_ids" if execution_ids is not None else "execution_id",
                execution_ids if execution_ids is not None else execution_id,
                "give execution_id (one execution) or execution_ids (a batch task's executions, e.g. "
                "score.output['execution_ids']), exactly one of the two",
            )
        self.service_name = service_name
        self.service_version = service_version
        self.execution_id = execution_id
        self.execution_ids = execution_ids
        self.dest = dest
        self.indexes = indexes
        self.file_names = file_names
        one = execution_ids is None
        default_path, default_manifest = (
            (DEFAULT_PATH_TEMPLATE, DEFAULT_MANIFEST_TEMPLATE)
            if one
            else (TASK_PATH_TEMPLATE, TASK_MANIFEST_TEMPLATE)
        )
        self.path_template = default_path if path_template is None else path_template
        self.manifest_template = default_manifest if manifest_template is None else manifest_template
        self.max_concurrency = max_concurrency
        self.overwrite = overwrite
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.fail_on_refused = fail_on_refused
        self.transfer_retries = transfer_retries
        self.chunk_size = chunk_size
        self.mlserver_conn_id = mlserver_conn_id
        self.dest_conn_id = dest_conn_id
        # an XComArg resolves at run time, as a template renders: both are checked right after rendering
        checks = self._checks()
        check_arguments(self, {k: c for k, c in checks.items() if not isinstance(getattr(self, k), XComArg)})

    def _checks(self) -> dict[str, Check]:
        """Each argument's check; the manifest may name the execution only when there is one."""
        return {**_ARGUMENT_CHECKS, "manifest_template": manifest_template_check(self.execution_ids is None)}

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
        given = (
            Given([str(self.execution_id)])
            if self.execution_ids is None
            else read_executions(self.execution_ids)
        )
        ids = given.ids
        if len(ids) > 1 and not distinguishes_executions(self.path_template):
            raise ArtifactsConfigError(
                f"path_template {quoted(self.path_template)} places record index {{index}} without "
                f"{{execution_id}} or {{record}}, so the records of the {len(ids)} executions would overwrite each "
                "other: use {record} (the record's number in the task, as in the results file)."
            )
        dest = Destination.open(self.dest, self.dest_conn_id)
        accept = compile_file_filter(self.file_names)
        service = {"service_name": name, "service_version": version}
        manifest_fields = {**service, "execution_id": ids[0]} if self.execution_ids is None else service
        manifest_rel = render_relative_path(self.manifest_template, **manifest_fields)
        plan = Plan(self.path_template, accept, service, dest.root, manifest_rel, len(ids) == 1, self.log)

        statuses = self._wait(transfers.hook(), name, version, ids)
        executions = Executions.number(given, dict(zip(ids, statuses, strict=True)))
        records = select_records(self.indexes, executions.total)
        what = (
            f"Execution '{ids[0]}'"
            if len(ids) == 1
            else f"The {len(ids)} executions ({executions.total:,} records, {executions.rescored:,} rescored)"
        )
        self.log.info(
            "%s of %s/%s: %s (%d of %d records done); copying the artifacts of %d records to %s",
            what, name, version, executions.state, sum(s.completed for s in executions.statuses),
            executions.total, len(records), dest.uri,
        )  # fmt: skip

        existing = (
            {}
            if self.overwrite
            else dest.existing_sizes(self.path_template, [{**service, "execution_id": e} for e in ids])
        )
        previous = read_previous(dest.fs, plan.manifest_path)

        def list_record(record: int) -> Listing:
            return transfers.listing(executions, record)

        def copy(item: Planned) -> ArtifactEntry:
            return transfers.copy(dest, item, existing.get(item.path), previous)

        failure: Exception | None = None
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="mlserver-artifacts") as pool:
            if plan.streams:
                listings, entries, failure = self._copy_as_listed(pool, records, list_record, plan, copy)
            else:  # every record listed and checked first: a collision fails before the first copy
                listings = list(pool.map(list_record, records))
                planned, entries = plan.all(listings)
                entries.extend(pool.map(copy, planned))

        entries.sort(key=lambda e: (e.record, e.file_name))
        if failure is not None and not entries:
            raise failure  # nothing was written
        manifest = Manifest(
            service_name=name,
            service_version=version,
            executions=executions,
            destination=dest.uri,
            path_template=self.path_template,
            records=records,
            all_records=self.indexes is None,
            records_without_artifacts=sorted(listing.record for listing in listings if not listing.files),
            entries=entries,
            uri=dest.uri_of(plan.manifest_path),
        )
        manifest.write(dest.fs, dest.mode, plan.manifest_path)
        if failure is not None:
            self.log.error(
                "Listing artifacts failed (%s); the manifest %s lists the %d artifacts handled before it (with "
                "their sha256, carried over when they are skipped). Run the task again: nothing is copied twice.",
                failure, manifest.uri, len(entries),
            )  # fmt: skip
            raise failure
        return self._report(context, manifest)

    def _report(self, context: Context, manifest: Manifest) -> dict[str, Any]:
        """Log what was done; fail on failed (or refused) artifacts, else answer the summary."""
        summary = manifest.summary()
        counts, no_artifacts = manifest.counts(), manifest.records_without_artifacts
        if no_artifacts:
            self.log.info(
                "%d records produced no artifacts%s: %s%s",
                len(no_artifacts),
                ""
                if manifest.executions.finished
                else " so far (an execution is still running: some may not have run yet)",
                no_artifacts[:20],
                " ..." if len(no_artifacts) > 20 else "",
            )
        self.log.info(
            "Artifacts: %d copied (%d bytes), %d skipped (already there), %d refused, %d failed; manifest %s",
            counts[STATUS_COPIED], summary["bytes_copied"], counts[STATUS_SKIPPED], counts[STATUS_REFUSED],
            counts[STATUS_FAILED], manifest.uri,
        )  # fmt: skip
        if counts[STATUS_FAILED] or (counts[STATUS_REFUSED] and self.fail_on_refused):
            ti = context.get("ti") if hasattr(context, "get") else None
            if ti is not None:
                with contextlib.suppress(Exception):
                    ti.xcom_push(key="summary", value=summary)
            first = next(e for e in manifest.entries if e.status in (STATUS_FAILED, STATUS_REFUSED))
            raise ArtifactTransferError(
                f"{counts[STATUS_FAILED]} artifacts failed to copy and {counts[STATUS_REFUSED]} were refused "
                f"(first: record {first.record} '{first.file_name}': {first.error}). The manifest {manifest.uri} "
                "lists each one. Failed copies left nothing behind: run the task again and only they are copied. "
                "Refused names must be fixed in the service (or excluded with file_names, or allowed to pass "
                "with fail_on_refused=False).",
                summary,
            )
        return summary

    # -- steps ----------------------------------------------------------------------------------------------

    def _wait(self, hook: MLServerHook, name: str, version: str, ids: list[str]) -> list[BatchStatus]:
        """The executions' statuses once all have finished (or now, without ``wait_for_completion``)."""
        if not self.wait_for_completion:
            return [hook.get_batch(name, version, e) for e in ids]
        started = time.monotonic()
        deadline = time.time() + self.timeout if self.timeout is not None else None
        labels = {e: chunk_label(i, len(ids), False) for i, e in enumerate(ids)} if len(ids) > 1 else {}
        # once a minute; a pending execution says how long it has waited
        progress = ProgressLog(self.log, labels)
        statuses: dict[str, BatchStatus] = {}
        waiting = list(ids)
        while waiting:  # a wait ends early when one execution ends (fails): wait on for the others
            polled = wait_for_executions(hook, name, version, waiting, self.poll_interval, deadline, progress)
            statuses.update(zip(waiting, polled, strict=True))
            waiting = [e for e in waiting if not statuses[e].is_finished]
            if waiting and deadline_passed(deadline):
                late = [
                    f"'{e}' ({statuses[e].state}, {statuses[e].completed} of {statuses[e].total} records)"
                    for e in waiting
                ]
                more = f" and {len(late) - 3} more" if len(late) > 3 else ""
                raise ExecutionWaitTimeoutError(
                    f"Not finished after {time.monotonic() - started:.0f} s (timeout is {self.timeout:g} s): batch "
                    f"execution {', '.join(late[:3])}{more} of {name}/{version}. Raise timeout, or set "
                    "wait_for_completion=False to copy what exists so far."
                )
        return [statuses[e] for e in ids]

    def _copy_as_listed(
        self,
        pool: ThreadPoolExecutor,
        records: list[int],
        list_record: Callable[[int], Listing],
        plan: Plan,
        copy: Callable[[Planned], ArtifactEntry],
    ) -> tuple[list[Listing], list[ArtifactEntry], Exception | None]:
        """List each record and copy its artifacts in the same thread, a few records ahead at a time.

        Listing never waits for the other records, as copying never waits for the last listing. A listing
        that fails stops new records (those running finish): answered with what was done, for the manifest.
        """

        def one(record: int) -> tuple[Listing, list[ArtifactEntry]]:
            listing = list_record(record)
            planned, entries = plan.record(listing)
            entries.extend(copy(item) for item in planned)
            return listing, entries

        listings: list[Listing] = []
        entries: list[ArtifactEntry] = []
        failure: Exception | None = None
        queue = iter(records)
        running = {pool.submit(one, r) for r in itertools.islice(queue, 2 * self.max_concurrency)}
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    listing, done = future.result()
                except Exception as exc:
                    failure = failure or exc
                    continue
                listings.append(listing)
                entries.extend(done)
            if failure is None:
                running |= {pool.submit(one, r) for r in itertools.islice(queue, len(finished))}
        return listings, entries, failure


__all__ = [
    "DEFAULT_MANIFEST_TEMPLATE",
    "DEFAULT_PATH_TEMPLATE",
    "TASK_MANIFEST_TEMPLATE",
    "TASK_PATH_TEMPLATE",
    "MLServerArtifactsToObjectStorageOperator",
]
