"""A Machine Learning Server REST client: typed, sync and async, with no Airflow import.

The hook (:mod:`airflow_mlserver.hooks.mlserver`) is made of it, and it is usable on its own::

    from airflow_mlserver.client import ConnectionSettings, MLServerClient

Modules, from the bottom up: ``errors`` and ``models`` (the API's objects), ``settings`` (where the server is,
how to log in), ``streaming`` (incremental decoding), ``records`` (checking input records), ``protocol``
(requests as data, retry classification, error mapping), ``tls`` (certificate refusals), ``auth`` (tokens),
``calls`` (one flow per API call), ``reconcile`` (the rule for a batch start whose answer was lost),
``sync`` and ``aio`` (the drivers), ``starting`` (batch starts by that rule), ``mlserver``
(:class:`MLServerClient`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_mlserver.client.mlserver import MLServerClient
    from airflow_mlserver.client.settings import ConnectionSettings

__all__ = ["ConnectionSettings", "MLServerClient"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one light module of the client (e.g. its parameter types, which the local
    # server's workers use) does not import requests and tenacity.
    if name == "MLServerClient":
        from airflow_mlserver.client.mlserver import MLServerClient

        return MLServerClient
    if name == "ConnectionSettings":
        from airflow_mlserver.client.settings import ConnectionSettings

        return ConnectionSettings
    raise AttributeError(name)
