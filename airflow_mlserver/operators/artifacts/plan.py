"""Where each listed artifact of the artifacts operator goes, and the rule that no two go to one place.

A :class:`Plan` turns a record's artifact names into destination paths below ``dest``: it skips names that
``file_names`` does not select, refuses unsafe names (an entry with status ``refused``, nothing written), and
fails the task (:class:`~airflow_mlserver.exceptions.ArtifactsConfigError`) when two artifacts, or one and the
manifest, would land on one path. When the path template provably keeps artifacts apart and away from the
manifest (:attr:`Plan.streams`), each record is copied as soon as it is listed; otherwise every record is
listed and checked before the first copy, so a collision fails before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.exceptions import ArtifactsConfigError, UnsafeArtifactNameError
from airflow_mlserver.operators.artifacts.manifest import STATUS_REFUSED, ArtifactEntry
from airflow_mlserver.operators.artifacts.names import (
    check_artifact_name,
    may_render_to,
    places_apart,
    render_relative_path,
)
from airflow_mlserver.operators.artifacts.transfers import Listing, Planned, WarningLog


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
