"""Copy the artifacts of a batch execution's records from the Machine Learning Server into object storage.

Each file streams from the HTTP answer to the destination in fixed-size chunks, so memory stays bounded
(a few MiB per transfer) whatever the file size. A destination is never left half-written: on a local
file system the file is written under a temporary name and renamed into place; on object stores whose
uploads become visible only once complete (S3, GCS, Azure Blob) an unfinished upload is aborted; on any
other store the written size is checked and the object deleted on failure. The bytes written are always
checked against the bytes read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_mlserver.client.models import BatchStatus

    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.sdk.definitions.context import Context

DEFAULT_PATH_TEMPLATE = "{execution_id}/{index}/{file_name}"
DEFAULT_MANIFEST_TEMPLATE = "{execution_id}/manifest.json"
#: Placeholders a path template may use.
TEMPLATE_KEYS = ("execution_id", "index", "file_name", "service_name", "service_version")
#: Bytes moved per read/write call.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Upload part size on object stores (S3's smallest multipart part is 5 MiB): the buffer each transfer keeps.
UPLOAD_BLOCK_SIZE = 5 * 1024 * 1024
#: Longest artifact name accepted, in UTF-8 bytes (most file systems and stores allow 255 per segment).
MAX_NAME_BYTES = 255

#: Stores on which an upload becomes visible only once it completes, and can be aborted before that.
_COMMIT_ON_CLOSE = frozenset({"s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "oss"})
#: Stores on which a rename is a cheap, atomic move.
_RENAME = frozenset({"file", "local"})
_GLOB_CHARS = frozenset("*?[")
_DRIVE = re.compile(r"^[A-Za-z]:")

STATUS_COPIED = "copied"
STATUS_SKIPPED = "skipped"
STATUS_REFUSED = "refused"
STATUS_FAILED = "failed"


# --- names and paths -----------------------------------------------------------------------------------------


def check_artifact_name(name: Any, what: str = "Artifact name") -> str:
    """``name`` if it is a plain file name that is safe to use as one segment of a destination path.

    Refused (:class:`UnsafeArtifactNameError`): non-strings, empty names, ``.`` and ``..``, path separators
    (``/`` or ``\\``), drive prefixes (``C:``), control characters, and names longer than 255 UTF-8 bytes.
    """
    problem = _name_problem(name)
    if problem:
        raise UnsafeArtifactNameError(
            f"{what} {name!r} is refused: {problem}. Nothing was written for it. Artifact names must be plain "
            "file names; fix the service's outputFileNames (or the file_names argument)."
        )
    return str(name)


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a directory ('.' or '..'), which could escape the destination"
    if "/" in name or "\\" in name:
        return "it contains a path separator, which could place it outside its folder or the destination"
    if _DRIVE.match(name):
        return "it starts with a drive letter, which some systems read as an absolute path"
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs"):
            return f"it contains the control character {ch!r}, which stores reject or mangle"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - lone surrogates are caught above
        return "it cannot be encoded as UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"it is {len(encoded)} bytes long; stores accept at most {MAX_NAME_BYTES}"
    if name != name.strip():
        return "it starts or ends with white space, which stores strip or reject"
    return None


def render_relative_path(template: str, **fields: Any) -> str:
    """The destination path below ``dest`` that ``template`` gives; refused when it could escape ``dest``."""
    try:
        rel = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ArtifactsConfigError(
            f"Path template {template!r} cannot be filled ({type(exc).__name__}: {exc}). Use only the "
            f"placeholders {', '.join('{' + k + '}' for k in TEMPLATE_KEYS)}."
        ) from None
    if rel.startswith("/") or "\\" in rel:
        raise UnsafeArtifactNameError(
            f"The destination path {rel!r} (from template {template!r}) is absolute or has a backslash; it is "
            "refused so that nothing is written outside dest."
        )
    for segment in rel.split("/"):
        problem = _name_problem(segment)
        if problem:
            raise UnsafeArtifactNameError(
                f"The destination path {rel!r} (from template {template!r}) is refused: its segment "
                f"{segment!r} is unsafe ({problem}). Nothing is written outside dest."
            )
    return rel


def parse_indexes(value: Any, total: int) -> list[int]:
    """Record indexes (0-based) from ``None`` (all), an int, a range, a list, or text like ``"0-9,15"``."""
    if value is None:
        return list(range(total))
    items: list[int] = []
    if isinstance(value, bool):
        raise ArtifactsConfigError(f"indexes must be whole numbers, not {value!r}.")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, range):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip().strip("[]")
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, sep, high = part.partition("-")
            try:
                if sep:
                    items.extend(range(int(low), int(high) + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise ArtifactsConfigError(
                    f"indexes {value!r} cannot be read: write whole numbers and ranges like '0-9,15'."
                ) from None
    elif isinstance(value, Iterable):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ArtifactsConfigError(f"indexes must be whole numbers; {item!r} is not.")
            items.append(item)
    else:
        raise ArtifactsConfigError(
            f"indexes must be None (all records), a list or range of whole numbers, or text like '0-9,15'; "
            f"not {type(value).__name__}."
        )
    bad = [i for i in items if not 0 <= i < total]
    if bad:
        raise ArtifactsConfigError(
            f"Record index {bad[0]} is out of range: the execution has {total} records, indexed 0 to "
            f"{total - 1} (indexes count from 0)."
        )
    return sorted(set(items))


def compile_file_filter(file_names: Any) -> Callable[[str], bool]:
    """A predicate for artifact names from ``None`` (all) or names and globs (``*.csv``)."""
    if file_names is None:
        return lambda _name: True
    patterns = [file_names] if isinstance(file_names, str) else list(file_names)
    literals: set[str] = set()
    globs: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ArtifactsConfigError(f"file_names must be non-empty names or globs, not {pattern!r}.")
        if _GLOB_CHARS & set(pattern):
            if "/" in pattern or "\\" in pattern:
                check_artifact_name(pattern, "File name pattern")
            globs.append(pattern)
        else:
            literals.add(check_artifact_name(pattern, "File name"))

    def accept(name: str) -> bool:
        return name in literals or any(fnmatch.fnmatchcase(name, g) for g in globs)

    return accept


def destination_uri(path: ObjectStoragePath) -> str:
    """``protocol://path`` of a destination, without the connection id (for manifests and logs)."""
    protocol = path.protocol or "file"
    location = path.path
    if protocol in _RENAME and not location.startswith("/"):
        location = "/" + location
    return f"{protocol}://{location}"


def _content_length(reader: IO[bytes]) -> int | None:
    """The artifact's size as the server announced it (``Content-Length``), when the answer says it."""
    size = getattr(reader, "size", None)
    return size if isinstance(size, int) else None


# --- the manifest's entries ----------------------------------------------------------------------------------


@dataclass
class _Planned:
    index: int
    file_name: str
    rel: str = ""
    path: str = ""
    error: str = ""


@dataclass
class ArtifactEntry:
    """One artifact's line in the manifest."""

    index: int
    file_name: str
    status: str
    bytes: int | None = None
    sha256: str | None = None
    destination: str | None = None
    error: str | None = None
    seconds: float | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "file_name": self.file_name,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "destination": self.destination,
            "status": self.status,
        }
        if self.error:
            out["error"] = self.error
        return out


# --- the operator --------------------------------------------------------------------------------------------


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
    :param mlserver_conn_id: The Machine Learning Server connection.
    :param dest_conn_id: The Airflow connection of the destination store (``aws_default`` style);
        overrides one given in ``dest``.
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
    )
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
            outlets.append(Asset(destination_uri(_to_path(dest, dest_conn_id))))
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
        dest = _to_path(self.dest, self.dest_conn_id)
        fs = dest.fs
        root = dest.path.rstrip("/")
        mode = _write_mode(dest.protocol)
        accept = compile_file_filter(self.file_names)
        base_fields = {"execution_id": execution_id, "service_name": name, "service_version": version}
        probe = render_relative_path(self.path_template, index=0, file_name="f", **base_fields)
        if "{file_name}" not in self.path_template:
            raise ArtifactsConfigError(
                f"path_template {self.path_template!r} has no {{file_name}}: every artifact would land on "
                f"{probe!r}. Include {{file_name}} (and {{index}})."
            )
        manifest_rel = render_relative_path(self.manifest_template, **base_fields)
        manifest_path = f"{root}/{manifest_rel}"
        manifest_uri = destination_uri(ObjectStoragePath(f"{dest.protocol or 'file'}://{manifest_path}"))

        status = self._wait(name, version, execution_id)
        indexes = parse_indexes(self.indexes, status.total)
        self.log.info(
            "Execution '%s' of %s/%s is %s (%d of %d records done); copying the artifacts of %d records to %s",
            execution_id, name, version, status.state, status.completed, status.total, len(indexes),
            destination_uri(dest),
        )  # fmt: skip

        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="mlserver-artifacts") as pool:
            listings = list(pool.map(lambda i: (i, self._list(name, version, execution_id, i)), indexes))
            no_artifacts = [i for i, files in listings if not files]
            planned: list[_Planned] = []
            entries: list[ArtifactEntry] = []
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
                        entries.append(ArtifactEntry(index, file_name, STATUS_REFUSED, error=str(exc)))
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

            existing = {} if self.overwrite else _existing_sizes(fs, root, self.path_template, base_fields)
            previous = _read_manifest(fs, manifest_path)
            entries.extend(
                pool.map(lambda p: self._copy(fs, mode, p, existing.get(p.path), previous, dest), planned)
            )

        entries.sort(key=lambda e: (e.index, e.file_name))
        statuses = (STATUS_COPIED, STATUS_SKIPPED, STATUS_REFUSED, STATUS_FAILED)
        counts = {s: sum(1 for e in entries if e.status == s) for s in statuses}
        summary: dict[str, Any] = {
            "execution_id": execution_id,
            "state": status.state,
            "finished": status.is_finished,
            "records": len(indexes),
            "records_without_artifacts": len(no_artifacts),
            "records_without_artifacts_first": no_artifacts[:20],
            "artifacts": len(entries),
            **counts,
            "bytes_copied": sum(e.bytes or 0 for e in entries if e.status == STATUS_COPIED),
            "bytes_total": sum(e.bytes or 0 for e in entries if e.status in (STATUS_COPIED, STATUS_SKIPPED)),
            "destination": destination_uri(dest),
            "manifest": manifest_uri,
        }
        manifest = {
            "service_name": name,
            "service_version": version,
            "execution_id": execution_id,
            "execution_state": status.state,
            "execution_finished": status.is_finished,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "destination": destination_uri(dest),
            "path_template": self.path_template,
            "records": indexes if self.indexes is not None else {"from": 0, "to": status.total - 1},
            "records_without_artifacts": no_artifacts,
            "counts": counts,
            "bytes_total": summary["bytes_total"],
            "artifacts": [e.to_json() for e in entries],
        }
        _write_bytes(fs, mode, manifest_path, json.dumps(manifest, indent=1).encode())
        if no_artifacts:
            self.log.info(
                "%d records produced no artifacts%s: %s%s",
                len(no_artifacts),
                ""
                if status.is_finished
                else " so far (the execution is still running: some may not have run yet)",
                no_artifacts[:20],
                " ..." if len(no_artifacts) > 20 else "",
            )
        self.log.info(
            "Artifacts: %d copied (%d bytes), %d skipped (already there), %d refused, %d failed; manifest %s",
            counts[STATUS_COPIED], summary["bytes_copied"], counts[STATUS_SKIPPED], counts[STATUS_REFUSED],
            counts[STATUS_FAILED], manifest_uri,
        )  # fmt: skip
        if counts[STATUS_FAILED] or (counts[STATUS_REFUSED] and self.fail_on_refused):
            ti = context.get("ti") if hasattr(context, "get") else None
            if ti is not None:
                with contextlib.suppress(Exception):
                    ti.xcom_push(key="summary", value=summary)
            first = next(e for e in entries if e.status in (STATUS_FAILED, STATUS_REFUSED))
            raise ArtifactTransferError(
                f"{counts[STATUS_FAILED]} artifacts failed to copy and {counts[STATUS_REFUSED]} were refused "
                f"(first: record {first.index} '{first.file_name}': {first.error}). The manifest {manifest_uri} lists "
                "each one. Failed copies left nothing behind: run the task again and only they are copied. "
                "Refused names must be fixed in the service (or excluded with file_names, or allowed to pass "
                "with fail_on_refused=False).",
                summary,
            )
        return summary

    # -- steps ----------------------------------------------------------------------------------------------

    def _wait(self, name: str, version: str, execution_id: str) -> BatchStatus:
        hook = self._hook()
        started = time.monotonic()
        while True:
            status = hook.get_batch(name, version, execution_id)
            if status.is_finished or not self.wait_for_completion:
                return status
            waited = time.monotonic() - started
            if self.timeout is not None and waited + self.poll_interval > self.timeout:
                raise ExecutionWaitTimeoutError(
                    f"Batch execution '{execution_id}' of {name}/{version} is still {status.state} "
                    f"({status.completed} of {status.total} records) after {waited:.0f} s, and timeout is "
                    f"{self.timeout:g} s. Raise timeout, or set wait_for_completion=False to copy what exists so far."
                )
            self.log.info(
                "Execution '%s' is %s: %d of %d records done; next poll in %g s",
                execution_id, status.state, status.completed, status.total, self.poll_interval,
            )  # fmt: skip
            time.sleep(self.poll_interval)

    def _list(self, name: str, version: str, execution_id: str, index: int) -> list[Any]:
        return list(self._hook().list_artifacts(name, version, execution_id, index))

    def _copy(
        self,
        fs: AbstractFileSystem,
        mode: str,
        item: _Planned,
        existing_size: int | None,
        previous: dict[tuple[int, str], dict[str, Any]],
        dest: ObjectStoragePath,
    ) -> ArtifactEntry:
        uri = destination_uri(ObjectStoragePath(f"{dest.protocol or 'file'}://{item.path}"))
        entry = ArtifactEntry(item.index, item.file_name, STATUS_FAILED, destination=uri)
        started = time.monotonic()
        for attempt in range(self.transfer_retries + 1):
            try:
                with self._hook().open_artifact(
                    str(self.service_name), str(self.service_version), str(self.execution_id).strip(),
                    item.index, item.file_name,
                ) as source:  # fmt: skip
                    announced = _content_length(source)
                    if existing_size is not None:
                        known = previous.get((item.index, item.file_name), {})
                        size = announced if announced is not None else known.get("bytes")
                        if size == existing_size:
                            entry.status, entry.bytes = STATUS_SKIPPED, existing_size
                            if known.get("bytes") == existing_size:
                                entry.sha256 = known.get("sha256")
                            return entry
                    written, digest = _write_stream(fs, mode, item.path, source, self.chunk_size, announced)
                entry.status, entry.bytes, entry.sha256, entry.error = STATUS_COPIED, written, digest, None
                entry.seconds = time.monotonic() - started
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


# --- destinations --------------------------------------------------------------------------------------------


def _to_path(dest: Any, conn_id: str | None) -> ObjectStoragePath:
    """``dest`` as an ObjectStoragePath using ``conn_id``; refuses credentials given in the URI itself."""
    if isinstance(dest, ObjectStoragePath):
        if conn_id and dest.conn_id != conn_id:
            return ObjectStoragePath(f"{dest.protocol or 'file'}://{dest.path}", conn_id=conn_id)
        return dest
    if not isinstance(dest, str) or not dest.strip():
        raise ArtifactsConfigError(
            f"dest must be an ObjectStoragePath or a URI such as 's3://bucket/prefix' or 'file:///data', "
            f"not {dest!r}."
        )
    text = dest.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ArtifactsConfigError(
            f"dest {text!r} has no scheme: write it as a URI, e.g. 'file://{text}' or 's3://bucket/prefix'."
        )
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        raise ArtifactsConfigError(
            f"dest '{scheme}://***@{rest.split('@', 1)[1]}' carries credentials in the URI. Credentials come "
            "from an Airflow connection only: put them in one and pass dest_conn_id."
        )
    if scheme in _RENAME and not rest.startswith("/") and "@" not in rest.split("/", 1)[0]:
        raise ArtifactsConfigError(f"dest {text!r} is not an absolute path: write 'file:///absolute/path'.")
    return ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def _write_mode(protocol: str | None) -> str:
    protocol = protocol or "file"
    if protocol in _RENAME:
        return "rename"
    if protocol in _COMMIT_ON_CLOSE:
        return "commit"
    return "direct"


def _static_prefix(template: str, fields: dict[str, Any]) -> str:
    """The part of the destination paths that is the same for every artifact (a folder, maybe empty)."""
    cut = min((p for p in (template.find("{index}"), template.find("{file_name}")) if p >= 0), default=0)
    head = template[:cut].rsplit("/", 1)[0] if "/" in template[:cut] else ""
    return head.format(**fields) if head else ""


def _existing_sizes(
    fs: AbstractFileSystem, root: str, template: str, fields: dict[str, Any]
) -> dict[str, int]:
    """Sizes of the files already below the destination's common folder, in one listing."""
    prefix = _static_prefix(template, fields)
    base = f"{root}/{prefix}" if prefix else root
    with contextlib.suppress(Exception):
        fs.invalidate_cache(base)
    try:
        found = fs.find(base, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    sizes: dict[str, int] = {}
    for path, info in found.items():
        if info.get("type", "file") == "file" and info.get("size") is not None:
            sizes[_strip(fs, path)] = int(info["size"])
    return sizes


def _strip(fs: AbstractFileSystem, path: str) -> str:
    try:
        return str(fs._strip_protocol(path)).rstrip("/")
    except Exception:
        return path.rstrip("/")


def _read_manifest(fs: AbstractFileSystem, path: str) -> dict[tuple[int, str], dict[str, Any]]:
    """The previous run's entries that were copied or skipped, by (index, file name); empty if none."""
    try:
        with fs.open(path, "rb") as f:
            data = json.loads(f.read())
    except (FileNotFoundError, ValueError, OSError):
        return {}
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for item in data.get("artifacts", []) if isinstance(data, dict) else []:
        if isinstance(item, dict) and item.get("status") in (STATUS_COPIED, STATUS_SKIPPED):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[(int(item["index"]), str(item["file_name"]))] = item
    return out


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _discard(f: Any) -> None:
    """Abandon a file opened for writing without committing it (aborts a multipart upload)."""
    with contextlib.suppress(Exception):
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()
            with contextlib.suppress(Exception):
                f.closed = True  # fsspec files: close() after discard() would try to commit
            return
    with contextlib.suppress(Exception):
        f.close()


def _remove(fs: AbstractFileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError, Exception):
        fs.rm_file(path)


#: Hashing runs beside the copy (hashlib releases the GIL on large buffers), overlapping reads and writes.
_HASHERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlserver-artifacts-sha256")


def _copy_into(f: Any, source: IO[bytes], chunk_size: int) -> tuple[int, str]:
    """Copy ``source`` into ``f`` in chunks; answer (bytes, sha256).

    Two buffers alternate: while one chunk is hashed (in a helper thread) and written, the next is read into
    the other buffer, so hashing costs no wall time on a large file.
    """
    buffers = (memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size)))
    digest = hashlib.sha256()
    total = 0
    pending: Future[None] | None = None
    turn = 0
    try:
        while True:
            view = buffers[turn]
            n = source.readinto(view)  # type: ignore[attr-defined]
            if pending is not None:
                pending.result()  # the other buffer's hash is done: it may be reused next round
                pending = None
            if not n:
                break
            data = view[:n]
            pending = _HASHERS.submit(digest.update, data) if n >= 65536 else None
            if pending is None:
                digest.update(data)
            f.write(data)
            total += n
            turn ^= 1
    finally:
        if pending is not None:
            pending.result()
    return total, digest.hexdigest()


def _write_stream(
    fs: AbstractFileSystem, mode: str, path: str, source: IO[bytes], chunk_size: int, announced: int | None
) -> tuple[int, str]:
    """Stream ``source`` to ``path`` so that ``path`` is either complete or untouched; (bytes, sha256)."""

    def check(written: int, stored: int | None) -> None:
        if announced is not None and written != announced:
            raise ArtifactSizeMismatchError(
                f"Read {written} bytes of an artifact the server announced as {announced} bytes; the copy was "
                "dropped. Run the task again."
            )
        if stored is not None and stored != written:
            raise ArtifactSizeMismatchError(
                f"The destination holds {stored} bytes after {written} bytes were written; the copy was "
                "deleted. Check the store (quota, permissions) and run the task again."
            )

    if mode == "rename":
        parent = _parent(path)
        fs.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.{path.rsplit('/', 1)[-1][:180]}.{uuid.uuid4().hex[:12]}.part"
        try:
            with fs.open(temp, "wb") as f:
                written, digest = _copy_into(f, source, chunk_size)
            check(written, fs.size(temp))
            fs.mv(temp, path)
        except BaseException:
            _remove(fs, temp)
            raise
        return written, digest
    f = fs.open(path, "wb", block_size=UPLOAD_BLOCK_SIZE)
    try:
        written, digest = _copy_into(f, source, chunk_size)
        check(written, None)
    except BaseException:
        _discard(f)
        if mode == "direct":
            _remove(fs, path)
        raise
    try:
        f.close()
        check(written, fs.size(path))
    except BaseException:
        _remove(fs, path)
        raise
    return written, digest


def _write_bytes(fs: AbstractFileSystem, mode: str, path: str, data: bytes) -> None:
    _write_stream(fs, mode, path, io.BytesIO(data), max(4096, min(len(data), DEFAULT_CHUNK_SIZE)), len(data))


__all__ = [
    "DEFAULT_MANIFEST_TEMPLATE",
    "DEFAULT_PATH_TEMPLATE",
    "ArtifactEntry",
    "MLServerArtifactsToObjectStorageOperator",
    "check_artifact_name",
    "compile_file_filter",
    "parse_indexes",
    "render_relative_path",
]
