"""Copy the artifacts of a batch execution's records from the Machine Learning Server into object storage.

Each file streams from the HTTP answer to the destination in fixed-size chunks, so memory stays bounded
(a few MiB per transfer) whatever the file size. A destination is never left half-written (see
:mod:`~airflow_mlserver.operators.artifact_writes`), and the bytes written are always checked against the bytes
read. The other concerns live beside this module: names, paths and selections in
:mod:`~airflow_mlserver.operators.artifact_names`, the destination in
:mod:`~airflow_mlserver.operators.artifact_destination`, the manifest in
:mod:`~airflow_mlserver.operators.artifact_manifest`, and the wait for the execution in
:mod:`~airflow_mlserver.triggers.waiting`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath

from airflow_mlserver.exceptions import (
    ArtifactsConfigError,
    ArtifactSizeMismatchError,
    ArtifactTransferError,
    ExecutionWaitTimeoutError,
    MLServerConnectionError,
    UnsafeArtifactNameError,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.artifact_destination import Destination, destination_path, destination_uri
from airflow_mlserver.operators.artifact_manifest import (
    STATUS_COPIED,
    STATUS_FAILED,
    STATUS_REFUSED,
    STATUS_SKIPPED,
    ArtifactEntry,
    Manifest,
    read_previous,
)
from airflow_mlserver.operators.artifact_names import (
    check_artifact_name,
    compile_file_filter,
    parse_indexes,
    render_relative_path,
)
from airflow_mlserver.operators.artifact_writes import DEFAULT_CHUNK_SIZE, write_stream
from airflow_mlserver.operators.links import MLServerBatchLink
from airflow_mlserver.triggers.progress import ProgressLog
from airflow_mlserver.triggers.waiting import wait_for_executions

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlserver.client.models import BatchStatus

DEFAULT_PATH_TEMPLATE = "{execution_id}/{index}/{file_name}"
DEFAULT_MANIFEST_TEMPLATE = "{execution_id}/manifest.json"


@dataclass
class _Planned:
    """An artifact to copy: its record, its name, and its path below ``dest`` and in the store."""

    index: int
    file_name: str
    rel: str = ""
    path: str = ""


def _content_length(reader: IO[bytes]) -> int | None:
    """The artifact's size as the server announced it (``Content-Length``), when the answer says it."""
    size = getattr(reader, "size", None)
    return size if isinstance(size, int) else None


class MLServerArtifactsToObjectStorageOperator(BaseOperator):
    """Copy the artifacts (files) of a batch execution's records into object storage.

    Every artifact of the selected records streams from the server to
    ``dest / path_template.format(execution_id=..., index=..., file_name=...)`` in chunks, with up to
    ``max_concurrency`` transfers at a time. A destination is never left half-written (temporary name and
    rename on local file systems; aborted upload on S3, GCS and Azure Blob; size check and delete
    elsewhere), and the bytes written are checked against the bytes read. A JSON manifest (index, file
    name, bytes, sha256, destination URI and status of each artifact, and the records that produced none)
    is written next to the files; the task returns a small summary (counts, bytes, manifest URI) as XCom.

    A rerun copies nothing twice: by default an artifact whose destination exists with the size the
    server announces is skipped (its sha256 is carried over from the previous manifest). Artifact names
    that could escape ``dest`` (a path separator, ``..``, an absolute path, control characters) are
    refused, counted and never written; by default the task then fails after copying everything else.

    Credentials of the destination come only from its Airflow connection (``dest_conn_id``, or a
    ``protocol://conn_id@bucket/key`` URI); a URI that carries a password is refused.

    :param service_name: Name of the web service. (templated)
    :param service_version: Version of the web service. (templated)
    :param execution_id: The batch execution id, typically the batch operator's XCom. (templated)
    :param dest: Where the files go: an ``ObjectStoragePath`` or a URI such as ``file:///data/out``,
        ``s3://bucket/prefix``, ``gs://...`` or ``abfs://...`` (any store Airflow's object storage
        supports). (templated)
    :param indexes: Records to copy (0-based): ``None`` for all, a list or range, or text such as
        ``"0-9,15"``. (templated)
    :param file_names: Artifact names or globs (``"*.csv"``) to copy; ``None`` for all. (templated)
    :param path_template: Destination path below ``dest``; placeholders ``{execution_id}``, ``{index}``,
        ``{file_name}``, ``{service_name}``, ``{service_version}``. (templated)
    :param manifest_template: Path of the JSON manifest below ``dest``, same placeholders but ``{index}``
        and ``{file_name}``. (templated)
    :param max_concurrency: Transfers (and artifact listings) run in parallel threads.
    :param overwrite: Copy every artifact again, even when its destination exists with the same size.
    :param wait_for_completion: Wait for the execution to finish before copying; when ``False``, copy the
        artifacts of the records finished so far.
    :param poll_interval: Seconds between two status polls while waiting.
    :param timeout: Longest wait for the execution, in seconds (``None``: no limit besides the task's).
    :param fail_on_refused: Fail the task (after copying the rest) when an artifact name was refused.
    :param transfer_retries: Further attempts of a transfer that broke off (each starts over).
    :param chunk_size: Bytes moved per read and write.
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
        execution_id: str,
        dest: str | ObjectStoragePath,
        indexes: Any = None,
        file_names: str | Sequence[str] | None = None,
        path_template: str = DEFAULT_PATH_TEMPLATE,
        manifest_template: str = DEFAULT_MANIFEST_TEMPLATE,
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
        if dest_as_outlet:
            if isinstance(dest, str) and ("{{" in dest or "{%" in dest):
                raise ArtifactsConfigError(
                    "dest_as_outlet needs a fixed dest, but dest is a Jinja template: pass "
                    "outlets=[Asset(...)] yourself."
                )
            outlets = list(kwargs.pop("outlets", None) or [])
            outlets.append(Asset(destination_uri(destination_path(dest, dest_conn_id))))
            kwargs["outlets"] = outlets
        super().__init__(**kwargs)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ArtifactsConfigError(
                f"max_concurrency must be a whole number of at least 1, not {max_concurrency!r}."
            )
        if poll_interval <= 0:
            raise ArtifactsConfigError(f"poll_interval must be positive, not {poll_interval!r}.")
        if timeout is not None and timeout <= 0:
            raise ArtifactsConfigError(f"timeout must be positive or None, not {timeout!r}.")
        if chunk_size < 4096:
            raise ArtifactsConfigError(f"chunk_size must be at least 4096 bytes, not {chunk_size!r}.")
        if transfer_retries < 0:
            raise ArtifactsConfigError(f"transfer_retries must be 0 or more, not {transfer_retries!r}.")
        self.service_name = service_name
        self.service_version = service_version
        self.execution_id = execution_id
        self.dest = dest
        self.indexes = indexes
        self.file_names = file_names
        self.path_template = path_template
        self.manifest_template = manifest_template
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
        self._hooks: list[MLServerHook] = []
        self._local = threading.local()
        self._hooks_lock = threading.Lock()

    # -- hooks, one per thread (a hook holds one requests session and one token) ---------------------------

    def _hook(self) -> MLServerHook:
        hook: MLServerHook | None = getattr(self._local, "hook", None)
        if hook is None:
            hook = MLServerHook(self.mlserver_conn_id)
            self._local.hook = hook
            with self._hooks_lock:
                self._hooks.append(hook)
        return hook

    def _close_hooks(self) -> None:
        with self._hooks_lock:
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            with contextlib.suppress(Exception):
                hook.close()
        self._local = threading.local()

    # -- execute ------------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return self._execute(context)
        finally:
            self._close_hooks()

    def _execute(self, context: Context) -> dict[str, Any]:
        name, version = str(self.service_name), str(self.service_version)
        execution_id = check_artifact_name(str(self.execution_id).strip(), "Execution id")
        dest = Destination.open(self.dest, self.dest_conn_id)
        accept = compile_file_filter(self.file_names)
        base_fields = {"execution_id": execution_id, "service_name": name, "service_version": version}
        probe = render_relative_path(self.path_template, index=0, file_name="f", **base_fields)
        if "{file_name}" not in self.path_template:
            raise ArtifactsConfigError(
                f"path_template {self.path_template!r} has no {{file_name}}: every artifact would land on "
                f"{probe!r}. Include {{file_name}} (and {{index}})."
            )
        manifest_rel = render_relative_path(self.manifest_template, **base_fields)
        manifest_path = f"{dest.root}/{manifest_rel}"

        status = self._wait(name, version, execution_id)
        indexes = parse_indexes(self.indexes, status.total)
        self.log.info(
            "Execution '%s' of %s/%s is %s (%d of %d records done); copying the artifacts of %d records to %s",
            execution_id, name, version, status.state, status.completed, status.total, len(indexes), dest.uri,
        )  # fmt: skip

        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="mlserver-artifacts") as pool:
            listings = list(pool.map(lambda i: (i, self._list(name, version, execution_id, i)), indexes))
            planned, entries = self._plan(listings, accept, base_fields, dest.root, manifest_path)
            existing = {} if self.overwrite else dest.existing_sizes(self.path_template, base_fields)
            previous = read_previous(dest.fs, manifest_path)
            entries.extend(pool.map(lambda p: self._copy(dest, p, existing.get(p.path), previous), planned))

        entries.sort(key=lambda e: (e.index, e.file_name))
        no_artifacts = [i for i, files in listings if not files]
        manifest = Manifest(
            service_name=name,
            service_version=version,
            execution_id=execution_id,
            execution=status,
            destination=dest.uri,
            path_template=self.path_template,
            indexes=indexes,
            all_records=self.indexes is None,
            records_without_artifacts=no_artifacts,
            entries=entries,
            uri=dest.uri_of(manifest_path),
        )
        manifest.write(dest.fs, dest.mode, manifest_path)
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
                if manifest.execution.is_finished
                else " so far (the execution is still running: some may not have run yet)",
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
                f"(first: record {first.index} '{first.file_name}': {first.error}). The manifest {manifest.uri} lists "
                "each one. Failed copies left nothing behind: run the task again and only they are copied. "
                "Refused names must be fixed in the service (or excluded with file_names, or allowed to pass "
                "with fail_on_refused=False).",
                summary,
            )
        return summary

    # -- steps ----------------------------------------------------------------------------------------------

    def _wait(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """The execution's status once it has finished (or now, without ``wait_for_completion``)."""
        hook = self._hook()
        if not self.wait_for_completion:
            return hook.get_batch(name, version, execution_id)
        started = time.monotonic()
        deadline = time.time() + self.timeout if self.timeout is not None else None
        progress = ProgressLog(self.log)  # once a minute; a pending execution says how long it has waited
        [status] = wait_for_executions(
            hook, name, version, [execution_id], self.poll_interval, deadline, progress
        )
        if not status.is_finished:
            raise ExecutionWaitTimeoutError(
                f"Batch execution '{execution_id}' of {name}/{version} is still {status.state} "
                f"({status.completed} of {status.total} records) after {time.monotonic() - started:.0f} s, and "
                f"timeout is {self.timeout:g} s. Raise timeout, or set wait_for_completion=False to copy what "
                "exists so far."
            )
        return status

    def _plan(
        self,
        listings: list[tuple[int, list[Any]]],
        accept: Callable[[str], bool],
        base_fields: dict[str, Any],
        root: str,
        manifest_path: str,
    ) -> tuple[list[_Planned], list[ArtifactEntry]]:
        """The artifacts to copy, and the entries of those refused for their names.

        Refuses (fails the task) a path template that sends two artifacts, or one and the manifest, to one place.
        """
        planned: list[_Planned] = []
        refused: list[ArtifactEntry] = []
        seen: dict[str, _Planned] = {}
        for index, files in listings:
            for file_name in files:
                if not isinstance(file_name, str) or not accept(file_name):
                    continue
                item = _Planned(index, file_name)
                try:
                    check_artifact_name(file_name, f"Artifact name of record {index}")
                    item.rel = render_relative_path(
                        self.path_template, index=index, file_name=file_name, **base_fields
                    )
                except UnsafeArtifactNameError as exc:
                    self.log.error("%s", exc)
                    refused.append(ArtifactEntry(index, file_name, STATUS_REFUSED, error=str(exc)))
                    continue
                item.path = f"{root}/{item.rel}"
                if item.path == manifest_path:
                    raise ArtifactsConfigError(
                        f"Artifact '{file_name}' of record {index} would overwrite the manifest at {item.rel!r}: "
                        "change path_template or manifest_template."
                    )
                if item.path in seen:
                    other = seen[item.path]
                    raise ArtifactsConfigError(
                        f"path_template {self.path_template!r} sends artifact '{file_name}' of record {index} and "
                        f"'{other.file_name}' of record {other.index} to the same place ({item.rel!r}): include "
                        "{index} and {file_name}."
                    )
                seen[item.path] = item
                planned.append(item)
        return planned, refused

    def _list(self, name: str, version: str, execution_id: str, index: int) -> list[Any]:
        return list(self._hook().list_artifacts(name, version, execution_id, index))

    def _copy(
        self,
        dest: Destination,
        item: _Planned,
        existing_size: int | None,
        previous: dict[tuple[int, str], ArtifactEntry],
    ) -> ArtifactEntry:
        """Copy one artifact (skipped when its destination holds the announced size), retrying a broken transfer."""
        uri = dest.uri_of(item.path)
        entry = ArtifactEntry(item.index, item.file_name, STATUS_FAILED, destination=uri)
        for attempt in range(self.transfer_retries + 1):
            try:
                with self._hook().open_artifact(
                    str(self.service_name), str(self.service_version), str(self.execution_id).strip(),
                    item.index, item.file_name,
                ) as source:  # fmt: skip
                    announced = _content_length(source)
                    if existing_size is not None:
                        known = previous.get((item.index, item.file_name))
                        known_size = known.bytes if known is not None else None
                        size = announced if announced is not None else known_size
                        if size == existing_size:
                            entry.status, entry.bytes = STATUS_SKIPPED, existing_size
                            if known is not None and known_size == existing_size:
                                entry.sha256 = known.sha256
                            return entry
                    written, digest = write_stream(
                        dest.fs, dest.mode, item.path, source, self.chunk_size, announced
                    )
                entry.status, entry.bytes, entry.sha256, entry.error = STATUS_COPIED, written, digest, None
                return entry
            except (MLServerConnectionError, ArtifactSizeMismatchError, OSError) as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                if attempt < self.transfer_retries:
                    self.log.warning(
                        "Copying record %d '%s' broke off (%s); starting over (attempt %d of %d)",
                        item.index, item.file_name, exc, attempt + 2, self.transfer_retries + 1,
                    )  # fmt: skip
                    continue
            except Exception as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                break
        self.log.error(
            "Could not copy record %d '%s' to %s: %s", item.index, item.file_name, uri, entry.error
        )
        return entry


__all__ = ["DEFAULT_MANIFEST_TEMPLATE", "DEFAULT_PATH_TEMPLATE", "MLServerArtifactsToObjectStorageOperator"]
