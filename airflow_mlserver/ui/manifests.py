"""The artifacts manifests the batch view shows: read from object storage, kept to the task instance's own
executions, and shown a page at a time."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from airflow_mlserver.operators.artifacts.manifest import ArtifactEntry

#: Manifest lines on one page of the view.
PAGE_SIZE = 50
#: The largest manifest file read.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ManifestView:
    """An artifacts manifest: where it is, the counts and one page of the lines of the executions shown.

    :param task_id: The artifacts task that wrote it; ``map_index`` its map index (-1: not mapped).
    :param counts: Lines by status, of the executions shown (the whole manifest's when it is not filtered).
    :param lines: The lines of page ``page`` (1-based) of ``pages``; ``shown`` lines in all.
    :param dest_conn_id: The connection the artifacts task wrote with (to read images back through it).
    """

    task_id: str
    uri: str
    map_index: int = -1
    counts: dict[str, int] = field(default_factory=dict)
    lines: list[ArtifactEntry] = field(default_factory=list)
    shown: int = 0
    page: int = 1
    problem: str | None = None
    destination: str = ""
    dest_conn_id: str | None = None
    entries: list[ArtifactEntry] = field(default_factory=list, repr=False)

    @property
    def pages(self) -> int:
        return max(1, -(-self.shown // PAGE_SIZE))

    @property
    def first(self) -> int:
        """The position (1-based) of the page's first line among those shown."""
        return (self.page - 1) * PAGE_SIZE + 1 if self.lines else 0

    @property
    def last(self) -> int:
        return self.first + len(self.lines) - 1 if self.lines else 0

    def relative(self, entry: ArtifactEntry) -> str:
        """Where an artifact went, below the copy's destination."""
        where = entry.destination or ""
        root = self.destination.rstrip("/") + "/"
        return where[len(root) :] if self.destination and where.startswith(root) else where


def read_manifest(
    task_id: str,
    uri: str,
    conn_id: str | None,
    *,
    executions: Collection[str] | None = None,
    page: int = 1,
    map_index: int = -1,
) -> ManifestView:
    """Read a manifest the artifacts operator wrote, keeping only the lines of ``executions`` (None: all), and
    page ``page`` of them; a problem in words instead of an exception."""
    from airflow.sdk import ObjectStoragePath

    base = ManifestView(task_id, uri, map_index, dest_conn_id=conn_id)
    try:
        path = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return _with(base, problem="The manifest is too large to show here.")
        data = json.loads(raw)
    except Exception as exc:  # any store, any failure: the page says so and shows the rest
        return _with(base, problem=f"Could not read the manifest ({type(exc).__name__}).")
    data = data if isinstance(data, dict) else {}
    entries = []
    for item in data.get("artifacts") or []:
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            entry = ArtifactEntry.from_json(item)
            if executions is None or entry.execution_id in executions:
                entries.append(entry)
    if executions is None:
        counts = {str(k): v for k, v in (data.get("counts") or {}).items() if isinstance(v, int)}
    else:
        counts = dict(Counter(e.status for e in entries))
    pages = max(1, -(-len(entries) // PAGE_SIZE))
    page = min(max(1, page), pages)
    lines = entries[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    destination = str(data.get("destination") or "")
    return _with(
        base,
        counts=counts,
        lines=lines,
        shown=len(entries),
        page=page,
        destination=destination,
        entries=entries,
    )


def _with(base: ManifestView, **changes: Any) -> ManifestView:
    from dataclasses import replace

    return replace(base, **changes)
