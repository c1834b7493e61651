"""OpenLineage helpers, imported only when the OpenLineage provider is installed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client.facet_v2 import JobFacet


@attr.define
class MLServerServiceJobFacet(JobFacet):
    """The Machine Learning Server web service a task scored against."""

    server: str
    service: str
    version: str
    swagger: str

    @staticmethod
    def _get_schema() -> str:
        return (
            "https://github.com/airflow-mlserver/airflow-mlserver/blob/main/docs/MLServerServiceJobFacet.json"
        )


def service_job_facet(base_url: str, name: str, version: str) -> MLServerServiceJobFacet:
    return MLServerServiceJobFacet(
        server=base_url,
        service=name,
        version=version,
        swagger=f"{base_url}/api/{name}/{version}/swagger.json",
    )


def uri_dataset(dataset_cls: Any, uri: Any) -> Any:
    """An OpenLineage data set for a URI or path: namespace ``scheme://authority``, name the path."""
    text = str(uri)
    if "://" not in text:
        return dataset_cls(namespace="file", name=text)
    parts = urlsplit(text)
    if parts.scheme == "file":
        return dataset_cls(namespace="file", name=parts.path)
    return dataset_cls(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


def batch_lineage(base_url: str, service: tuple[str, str], inputs: list[Any], outputs: list[Any]) -> Any:
    """OpenLineage of a batch task: its records and results as data sets (URIs or paths), the service as a job
    facet; None when the OpenLineage provider is not installed."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
    except ImportError:
        return None
    return OperatorLineage(
        inputs=[uri_dataset(Dataset, i) for i in inputs],
        outputs=[uri_dataset(Dataset, o) for o in outputs],
        job_facets={"mlserverService": service_job_facet(base_url, service[0], service[1])},
    )
