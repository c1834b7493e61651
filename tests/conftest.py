"""Shared fixtures: one local server for the session (real HTTP, real worker processes), and a real Airflow.

Airflow reads its configuration when first imported, so the environment of the test Airflow (a private
``AIRFLOW_HOME`` with a SQLite database, the DAGs of ``tests/dags``, no examples) is set here, before any test
module imports it. ``airflow_db`` migrates that database once per session.

The browser tests' fixtures (an Airflow API server, Chromium, logged-in pages) live in ``tests/ui_fixtures.py``
and are imported here.

Tests that start something (the local server, Airflow's database or a DAG run, a browser, a deployment, S3) are
marked ``slow`` at collection, by what they use and what their code calls (see :func:`pytest_collection_modifyitems`);
``make check`` runs the others (``pytest -m "not slow"``), ``make test`` all. A test that needs nothing of the kind
is in the fast set by default.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# --- What is slow: `make check` runs the rest ---------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
#: Fixtures that start the local server, Airflow's database, Airflow's API server or Chromium (or need one that
#: does). pytest gives a test the closure of its fixtures, so a fixture built on one of these counts too.
SLOW_FIXTURES = frozenset(
    {"mlserver", "api", "mlserver_conn", "airflow_db", "airflow_ui", "chromium", "ui_page", "ui_logins"}
)
#: Calls (the last part of the called name) that start a server, a process, a browser or Airflow: the local
#: server, ``dag.test()``, Airflow's database, any long-lived process (deployments, browsers, PostgreSQL...),
#: moto's S3. Found in a test's code, its fixtures' code, and the code of the helpers of ``tests/`` they call.
STARTERS = frozenset(
    {
        "LocalMLServer",
        "test",
        "initdb",
        "Popen",
        "create_subprocess_exec",
        "ThreadedMotoServer",
        "sync_playwright",
    }
)
#: Tests that start nothing but wait long on purpose, until they carry ``@pytest.mark.slow`` themselves.
SLOW_TESTS = {
    "tests/test_error_surface.py::test_a_refused_connection_fails_within_about_15_s_with_the_default_settings": (
        "waits out 15 s of retries against a closed port"
    ),
}
#: A test of the fast set taking longer than this is named at the end of the run (mark it slow, or speed it up).
FAST_TEST_SECONDS = 5.0

_starts: dict[object, str | None] = {}


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> object | None:
    """The object a called name (``f``, ``module.f``, ``Class.method``) refers to among a module's globals."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):  # read without running anything (no properties, no lazy imports)
        owner = _resolve(node.value, namespace)
        found = None if owner is None else inspect.getattr_static(owner, node.attr, None)
        return found.__func__ if isinstance(found, staticmethod | classmethod) else found
    return None


def starts_something(obj: object) -> str | None:
    """What, in the code of a function or class of ``tests/`` or of the ``tests/`` helpers it calls (followed
    through), starts a server or a process: ``"where calls what()"``, or None.
    """
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        return None  # instances, modules, constants: no code of tests/ to read
    obj = inspect.unwrap(obj)
    if obj in _starts:
        return _starts[obj]
    _starts[obj] = None  # a helper that calls itself back is read once
    try:
        source_file = inspect.getsourcefile(obj)
        source = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError):
        return None
    if source_file is None or not Path(source_file).resolve().is_relative_to(TESTS):
        return None  # pytest's own fixtures (tmp_path, monkeypatch...), the package's and libraries' code
    module = sys.modules.get(getattr(obj, "__module__", ""))
    namespace = vars(module) if module else {}
    found = None
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        if called.rsplit(".", 1)[-1] in STARTERS:
            found = f"{getattr(obj, '__qualname__', obj)} calls {called}()"
            break
        if found := starts_something(_resolve(node.func, namespace)):
            break
    _starts[obj] = found
    return found


def why_slow(item: pytest.Item) -> str | None:
    """Why a test is slow: a fixture of :data:`SLOW_FIXTURES`, a call that starts something in its code or in its
    fixtures' code, or :data:`SLOW_TESTS`; None for a test that starts nothing."""
    names = getattr(item, "fixturenames", ())
    if slow := sorted(SLOW_FIXTURES.intersection(names)):
        return f"uses {', '.join(slow)}"
    if (found := starts_something(getattr(item, "function", None))) is not None:
        return found
    definitions = item._fixtureinfo.name2fixturedefs if isinstance(item, pytest.Function) else {}
    for name in names:
        for definition in definitions.get(name, ()):
            if found := starts_something(definition.func):
                return f"fixture {name}: {found}"
    return SLOW_TESTS.get(item.nodeid.partition("[")[0])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: starts a server, a browser, Airflow's database or DAG runs, or a deployment; set by tests/conftest.py"
        " from the test's fixtures and code, or written on the test. `make check` leaves these out.",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` each test that starts something, with the reason: ``pytest -m slow --collect-only -q``
    lists them, ``item.get_closest_marker("slow").kwargs["reason"]`` says why. A written marker is kept."""
    for item in items:
        if item.get_closest_marker("slow") is None and (reason := why_slow(item)):
            item.add_marker(pytest.mark.slow(reason=reason))


_fast_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        _fast_seconds[report.nodeid] = _fast_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the tests of the fast set that took long (setup and teardown included): they slow ``make check``."""
    long = sorted(((s, nodeid) for nodeid, s in _fast_seconds.items() if s > FAST_TEST_SECONDS), reverse=True)
    if long:
        terminalreporter.section(f"not marked slow, yet over {FAST_TEST_SECONDS:g} s (make check runs these)")
        for seconds, nodeid in long:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
