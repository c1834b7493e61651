"""Image artifacts of an artifacts task, served to the batch view's thumbnails.

``GET /mlserver/artifact-image/{dag_id}/{run_id}/{task_id}/{map_index}?record=<int>&file=<name>`` answers one
image that ``MLServerArtifactsToObjectStorageOperator`` copied: ``task_id`` and ``map_index`` name the artifacts
task instance (``map_index`` is ``-1``, or the UI's ``{MAP_INDEX}`` placeholder, for a task that is not mapped),
``record`` the record's number in the task (as in the manifest and the results file) and ``file`` the artifact's
file name. It needs the same right as the batch view (read access to the DAG's task instances).

The file is found through what Airflow keeps of that task instance, never through the request: its return value
(XCom) names the manifest, its rendered ``dest_conn_id`` the connection of the store. Only a file that the
manifest lists as copied for that record is read, from the URI the manifest gives, through
``ObjectStoragePath`` on the API server: the store's credentials never reach the browser. A file is served only
if its name says it is an image (:data:`IMAGE_TYPES`) and its content is that image (the raster formats' magic
bytes; for SVG, XML whose root is ``<svg>``, with no entity declared), at most :data:`MAX_IMAGE_BYTES`. An SVG
is served with a sandboxing ``Content-Security-Policy``, so one opened on its own runs no script.

Answers: 200 with the image, its type as sniffed; 404 (an unknown task instance, manifest, record or file), 413
(too large), 415 (not an image), 502 (the store could not be read), each a short plain text.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn
from xml.parsers import expat

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response

from airflow_mlserver.operators.artifacts.manifest import STATUS_COPIED, ArtifactEntry
from airflow_mlserver.operators.links import URL_PREFIX
from airflow_mlserver.ui.airflow_records import TaskInstanceRef, read_airflow_records
from airflow_mlserver.ui.manifests import MAX_MANIFEST_BYTES

if TYPE_CHECKING:
    from airflow_mlserver.ui.batch_view import BatchView
    from airflow_mlserver.ui.manifests import ManifestView

#: The largest image served, in bytes (5 MiB); at most one byte more is ever read.
MAX_IMAGE_BYTES = 5 * 1024 * 1024
#: How many thumbnails the batch view shows per manifest, at most.
MAX_THUMBNAILS = 12
#: The route, below the plugin's app (``/mlserver``).
ROUTE = "/artifact-image/{dag_id}/{run_id}/{task_id}/{map_index}"
#: The file name suffixes served, and the content type each one's content must have.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
#: Headers of every answer: no sniffing by the browser, and an image opened on its own runs nothing.
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
}
CACHE_IMAGE = "private, max-age=300"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"

router = APIRouter()


def is_image(file_name: str) -> bool:
    """Whether a file's name says it is an image that the route serves (by its suffix, in any case)."""
    return _suffix(file_name) in IMAGE_TYPES


def image_url(
    dag_id: str, run_id: str, task_id: str, map_index: int | str, record: int, file_name: str
) -> str:
    """The route's path for one artifact (below the API server's root; ``map_index`` may be ``{MAP_INDEX}``).

    Every part is percent-quoted (run ids hold ``:`` and ``+``).
    """
    index = _map_index(str(map_index))
    parts = "/".join(urllib.parse.quote(str(p), safe="") for p in (dag_id, run_id, task_id, index))
    query = urllib.parse.urlencode({"record": int(record), "file": file_name}, quote_via=urllib.parse.quote)
    return f"{URL_PREFIX}/artifact-image/{parts}?{query}"


def thumbnail_entries(entries: Iterable[ArtifactEntry], limit: int = MAX_THUMBNAILS) -> list[ArtifactEntry]:
    """The first ``limit`` entries of a manifest that the route may serve: copied, named as images."""
    found: list[ArtifactEntry] = []
    for entry in entries:
        if len(found) >= limit:
            break
        if entry.status == STATUS_COPIED and is_image(entry.file_name):
            found.append(entry)
    return found


def sniff(data: bytes) -> str | None:
    """The content type of an image from its content (magic bytes, or an SVG document); None if none."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if is_svg(data):
        return "image/svg+xml"
    return None


class _Refused(Exception):
    """An XML document that declares entities or refers to external ones: not read further."""


def is_svg(data: bytes) -> bool:
    """Whether ``data`` is well-formed XML whose root element is ``<svg>`` (SVG's namespace, or none).

    A document that declares an entity or refers to an external one is refused (no expansion, nothing fetched).
    """
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    roots: list[str] = []

    def start(name: str, attributes: Any) -> None:
        if not roots:
            roots.append(name)

    def refuse(*args: Any) -> NoReturn:
        raise _Refused

    parser.StartElementHandler = start
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, _Refused, ValueError, UnicodeError):
        return False
    return bool(roots) and roots[0] in (f"{SVG_NAMESPACE} svg", "svg")


def check_image(file_name: str, data: bytes) -> str:
    """The content type to serve ``data`` with; :class:`NotAnImage` unless its name and content agree."""
    expected = IMAGE_TYPES.get(_suffix(file_name))
    if expected is None:
        raise NotAnImage(f"{_shown(file_name)} is not an image (served: {', '.join(IMAGE_TYPES)}).")
    found = sniff(data)
    if found != expected:
        what = f"is {found}" if found else "is no image"
        raise NotAnImage(f"{_shown(file_name)} is named as {expected} but its content {what}.")
    return found


class NotAnImage(ValueError):
    """A file the route does not serve as an image (415)."""


class _Answer(Exception):
    """Ends the route with a short plain-text answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@router.get(ROUTE, dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))])
def artifact_image(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: str,
    session: SessionDep,
    record: int = Query(ge=0),
    file: str = Query(min_length=1, max_length=1024),
) -> Response:
    """One image artifact an artifacts task copied, read from its destination on the API server."""
    ref = TaskInstanceRef(dag_id, run_id, task_id, _map_index(map_index))
    try:
        data, content_type = _read_image(ref, session, record, file)
    except _Answer as answer:
        headers = {**SAFE_HEADERS, "Cache-Control": "no-store"}
        return PlainTextResponse(answer.text + "\n", status_code=answer.status, headers=headers)
    headers = {**SAFE_HEADERS, "Cache-Control": CACHE_IMAGE}
    return Response(content=data, media_type=content_type, headers=headers)


def _read_image(ref: TaskInstanceRef, session: Any, record: int, file_name: str) -> tuple[bytes, str]:
    """The image's bytes and content type, or an :class:`_Answer` saying why not."""
    records = read_airflow_records(ref, session)
    summary = records.summary or {}
    manifest_uri = summary.get("manifest")
    if not isinstance(manifest_uri, str) or not manifest_uri:
        raise _Answer(404, "No artifacts manifest for this task instance.")
    conn_id = records.rendered.get("dest_conn_id")
    conn_id = conn_id if isinstance(conn_id, str) and conn_id else None
    entry = find_entry(_read_manifest(manifest_uri, conn_id), record, file_name)
    if entry is None or entry.destination is None:
        raise _Answer(404, f"No artifact {_shown(file_name)} copied for record {record}.")
    if not is_image(file_name):
        raise _Answer(415, f"{_shown(file_name)} is not an image.")
    if entry.bytes is not None and entry.bytes > MAX_IMAGE_BYTES:
        raise _Answer(413, _too_large(file_name))
    data = _read(entry.destination, conn_id, MAX_IMAGE_BYTES + 1, "artifact")
    if len(data) > MAX_IMAGE_BYTES:
        raise _Answer(413, _too_large(file_name))
    try:
        return data, check_image(file_name, data)
    except NotAnImage as exc:
        raise _Answer(415, str(exc)) from None


def _read_manifest(uri: str, conn_id: str | None) -> dict[str, Any]:
    """The manifest's JSON (every entry, unlike the page's first lines)."""
    raw = _read(uri, conn_id, MAX_MANIFEST_BYTES + 1, "manifest")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _Answer(502, "The artifacts manifest is too large to read.")
    try:
        data = json.loads(raw)
    except ValueError:
        raise _Answer(502, "The artifacts manifest is not JSON.") from None
    if not isinstance(data, dict):
        raise _Answer(502, "The artifacts manifest is not a manifest.")
    return data


def find_entry(manifest: dict[str, Any], record: int, file_name: str) -> ArtifactEntry | None:
    """The manifest's copied entry of that record and file name, if its destination lies in the copy's.

    An entry whose destination is not below the manifest's ``destination`` (or climbs out of it) is not taken.
    """
    root = str(manifest.get("destination") or "").rstrip("/") + "/"
    items = manifest.get("artifacts")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError):
            entry = ArtifactEntry.from_json(item)
            if (entry.record, entry.file_name, entry.status) == (record, file_name, STATUS_COPIED):
                return entry if _below(entry.destination, root) else None
    return None


def _below(destination: Any, root: str) -> bool:
    if not isinstance(destination, str) or root == "/" or not destination.startswith(root):
        return False
    parts = destination[len(root) :].split("/")
    return all(part not in ("", ".", "..") for part in parts)


def _read(uri: str, conn_id: str | None, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of a file in a store; a missing file is a 404, any other failure a 502.

    The answer names the kind of failure only: an exception's text may hold the store's URI or more.
    """
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
        with path.open("rb") as handle:
            data: bytes = handle.read(limit)
        return data
    except FileNotFoundError:
        raise _Answer(404, f"The {what} is no longer at its destination.") from None
    except Exception as exc:  # any store, any failure: a short cause, never a trace
        raise _Answer(502, f"Could not read the {what} from its store ({type(exc).__name__}).") from None


def _too_large(file_name: str) -> str:
    return f"{_shown(file_name)} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB: not shown."


def _suffix(file_name: str) -> str:
    dot = file_name.rfind(".")
    return file_name[dot:].lower() if dot > 0 else ""


def _map_index(text: str) -> int:
    """The map index from the URL: a number, else -1 (the UI's ``{MAP_INDEX}`` for a task that is not mapped)."""
    try:
        return int(text)
    except ValueError:
        return -1


def _shown(file_name: str) -> str:
    """A file name for a message: quoted, 80 characters at most."""
    return repr(file_name if len(file_name) <= 80 else file_name[:77] + "...")


def view_thumbnails(view: BatchView, manifest: ManifestView) -> list[tuple[ArtifactEntry, str]]:
    """The first image artifacts of a manifest's lines shown, with the address that serves each (below the UI's
    own base path, if it is served under one)."""
    from airflow.sdk import conf

    base = urllib.parse.urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    ref = view.ref
    return [
        (
            e,
            base
            + image_url(ref.dag_id, ref.run_id, manifest.task_id, manifest.map_index, e.record, e.file_name),
        )
        for e in thumbnail_entries(manifest.entries)
    ]
