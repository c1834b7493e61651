"""Shared fixtures: one local server for the session (real HTTP, real worker processes), and a real Airflow.

Airflow reads its configuration when first imported, so the environment of the test Airflow (a private
``AIRFLOW_HOME`` with a SQLite database, the DAGs of ``tests/dags``, no examples) is set here, before any test
module imports it. ``airflow_db`` migrates that database once per session.

The browser tests' fixtures (an Airflow API server, Chromium, logged-in pages) live in ``tests/ui_fixtures.py``
and are imported here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-mlserver-tests-"))
TEST_DAGS = Path(__file__).parent / "dags"
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)

from airflow_mlserver.server.process import LocalMLServer  # noqa: E402 - after the environment is set
from tests.helpers import Api  # noqa: E402
from tests.ui_fixtures import (  # noqa: E402, F401 - the browser tests' fixtures, see that module
    airflow_ui,
    chromium,
    pytest_runtest_makereport,
    ui_logins,
    ui_page,
)


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A local server shared by the whole session. Tests that restart or fault a server start their own."""
    server = LocalMLServer(tmp_path_factory.mktemp("mlserver"), workers=2)
    with server:
        yield server


@pytest.fixture(scope="session")
def api(mlserver: LocalMLServer) -> Api:
    return Api(mlserver)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) in the session's private ``AIRFLOW_HOME``."""
    from airflow.utils.db import initdb

    initdb()
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def mlserver_conn(mlserver: LocalMLServer) -> Iterator[str]:
    """``mlserver_default`` pointing at the session's local server, as an environment connection."""
    from urllib.parse import quote

    os.environ["AIRFLOW_CONN_MLSERVER_DEFAULT"] = (
        f"mlserver://{mlserver.username}:{quote(mlserver.password, safe='')}@127.0.0.1:{mlserver.port}"
    )
    yield "mlserver_default"
    os.environ.pop("AIRFLOW_CONN_MLSERVER_DEFAULT", None)
