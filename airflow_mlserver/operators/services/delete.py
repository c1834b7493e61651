"""Delete web service versions from a DAG: one version, or all but the newest; what is gone already is fine."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.words import plural
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import check_arguments
from airflow_mlserver.operators.links import MLServerBatchLink
from airflow_mlserver.operators.services.arguments import (
    DELETE_CHECKS,
    check_selection,
)
from airflow_mlserver.operators.services.plan import versions_to_delete, versions_words

if TYPE_CHECKING:
    from airflow.sdk import Context


class MLServerDeleteServiceOperator(BaseOperator):
    """Delete one version of a web service, or every version but the newest ``keep_newest``.

    Versions are ordered by the server's creation time; versions created in the same second by the order the
    server lists them in (oldest first); a version without a readable creation time counts as the oldest. A
    version that is not there (deleted already, by an earlier try or anyone) is logged and counts as done, so a
    rerun succeeds. Only a version's publisher may delete it: another user's fails the task.

    Returns (XCom) the list of the versions deleted, oldest first (empty when there was nothing to delete).

    Give exactly one of ``service_version`` and ``keep_newest``
    (:class:`~airflow_mlserver.exceptions.ServiceVersionSelectionError` otherwise, at construction).
    ``keep_newest`` is at least 1: this operator never deletes every version of a service by a count.

    :param service_name: Name of the web service. (templated)
    :param service_version: The version to delete. (templated)
    :param keep_newest: Delete all versions but the newest this many (1 or more).
    :param mlserver_conn_id: The Machine Learning Server connection. (templated)
    """

    operator_extra_links = (MLServerBatchLink(),)  # its tab says what it did to the service
    template_fields: Sequence[str] = ("service_name", "service_version", "mlserver_conn_id")
    ui_color = "#fde8e8"

    def __init__(
        self,
        *,
        service_name: str,
        service_version: str | None = None,
        keep_newest: int | None = None,
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_selection(service_version, keep_newest)
        self.service_name = service_name
        self.service_version = service_version
        self.keep_newest = keep_newest
        self.mlserver_conn_id = mlserver_conn_id
        check_arguments(self, DELETE_CHECKS)

    @cached_property
    def hook(self) -> MLServerHook:
        return MLServerHook(mlserver_conn_id=self.mlserver_conn_id)

    def execute(self, context: Context) -> list[str]:
        check_arguments(self, DELETE_CHECKS, rendered=True)
        check_selection(self.service_version, self.keep_newest)  # a version may render to None
        name = self.service_name
        if self.keep_newest is None:
            wanted = [str(self.service_version)]
        else:
            versions = self.hook.list_services()
            wanted = versions_to_delete(name, versions, self.keep_newest)
            mine = sum(1 for service in versions if service.name == name)
            self.log.info(
                "Web service %s has %s; keeping the newest %s, deleting %s",
                quoted(name), plural(mine, "version"), self.keep_newest,
                versions_words(wanted) if wanted else "none",
            )  # fmt: skip
        deleted = []
        for version in wanted:
            if self.hook.delete_service(name, version, missing_ok=True):
                deleted.append(version)
            else:
                self.log.info(
                    "Web service %s version %s is not there (deleted already)", quoted(name), quoted(version)
                )
        if deleted:
            self.log.info("Deleted web service %s %s", quoted(name), versions_words(deleted))
        return deleted
