"""Shared fixtures: one local server for the session (real HTTP, real worker processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A local server shared by the whole session. Tests that restart or fault a server start their own."""
    server = LocalMLServer(tmp_path_factory.mktemp("mlserver"), workers=2)
    with server:
        yield server


@pytest.fixture(scope="session")
def api(mlserver: LocalMLServer) -> Api:
    return Api(mlserver)
