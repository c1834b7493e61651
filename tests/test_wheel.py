"""The package as users get it: its sdist and wheel built, the wheel installed into a fresh venv on Python 3.13.

The sdist is built from a copy of the working tree and the wheel from the unpacked sdist (as ``python -m build``
does), both with setuptools' own build hooks, in a venv holding only the build requirements. The wheel then goes
into a new venv, where Airflow lists the provider with its version, loads the plugin and imports the hook, and
runs ``mlserver_batch_scoring`` (``airflow dags test``, SQLite, its own ``AIRFLOW_HOME``) against the local server
started by the wheel's ``airflow-mlserver serve``.

Both venvs install with no index from ``.wheelhouse-py313/``, the requirements of pyproject.toml as wheels for
Python 3.13, which ``make test`` builds (``make wheelhouse``) and builds again when pyproject.toml changes. Python
3.13 is ``$PYTHON313`` (the Makefile sets it), else ``python3.13``, else pyenv's.
"""

from __future__ import annotations

import contextlib
import email.parser
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow(reason="builds the package and runs Airflow from it in a new Python 3.13 venv")

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = REPO / ".wheelhouse-py313"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: What the copy of the working tree leaves out: never part of a build, and large (or built by an earlier build).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".wheelhouse-*", "__pycache__", "*.egg-info", ".*_cache", ".demo", ".bench", ".artifacts"
)  # fmt: skip
DAG_ID = "mlserver_batch_scoring"
PASSWORD = "wheel-test-admin"


def python313() -> str:
    """The Python 3.13 interpreter to build and install with (a path), or the test fails saying what to do."""
    if found := os.environ.get("PYTHON313"):
        return found
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(
            ["python3.13", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip():
            return probe.stdout.strip()
    if pyenv := sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))):
        return pyenv[-1]
    pytest.fail(
        "Python 3.13 is not installed: `make test` installs it or says how (see the Makefile's PYTHON313)."
    )


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run(
    what: str,
    cmd: list[str | Path],
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``cmd`` to its end; its standard output, or the test fails quoting the tails of its output and errors."""
    args = [str(c) for c in cmd]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        failure, stdout, stderr = f"still running after {timeout:g} s", text(exc.stdout), text(exc.stderr)
    else:
        if done.returncode == 0:
            return done.stdout
        failure, stdout, stderr = f"exit status {done.returncode}", done.stdout, done.stderr
    pytest.fail(
        f"{what}: {failure}: {' '.join(args)}\n--- the last lines of its output:\n{tail(stdout)}"
        f"\n--- the last lines of its errors:\n{tail(stderr)}",
        pytrace=False,
    )


def json_list(out: str) -> list[dict[str, object]]:
    """The JSON list an ``airflow ... --output json`` command printed, among any other lines."""
    for line in out.splitlines():
        if line.startswith("["):
            with contextlib.suppress(ValueError):
                return list(json.loads(line))
    pytest.fail(f"no JSON list in the output:\n{tail(out)}")


def new_venv(path: Path, *requirements: str | Path) -> Path:
    """A new venv on Python 3.13 at ``path`` with ``requirements`` installed from the wheelhouse only; its python.

    The venv gets no pip of its own: the test's pip installs into it (``pip --python``). Nothing is compiled at
    install (a third of the time): Python compiles what a command imports, once."""
    run(f"creating the venv {path.name}", [python313(), "-m", "venv", "--without-pip", path])
    python = path / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile"]
    run(
        f"installing {', '.join(map(str, requirements))} into {path.name} from {WHEELHOUSE.name}/ with no index "
        "(if a requirement is missing there: is the wheelhouse older than pyproject.toml? `make wheelhouse`)",
        [*pip, "--no-index", "--find-links", WHEELHOUSE, *requirements],
        timeout=900,
    )
    return python


@dataclass(frozen=True)
class Built:
    source: Path  #: the copy of the working tree the sdist was built from
    sdist: Path
    wheel: Path

    @property
    def version(self) -> str:
        """The version in the wheel's metadata (the package's ``__version__``, through pyproject.toml)."""
        with zipfile.ZipFile(self.wheel) as wheel:
            (metadata,) = (n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            return str(email.parser.Parser().parsestr(wheel.read(metadata).decode())["Version"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not (WHEELHOUSE / ".built").is_file():
        pytest.fail(f"{WHEELHOUSE.name}/ is missing: `make wheelhouse` builds it (`make test` does).")
    work = tmp_path_factory.mktemp("wheel-build")
    source = work / "source"
    top_level = {"build", "dist"}  # setuptools' and pip's output folders, at the top only
    shutil.copytree(
        REPO, source, ignore=lambda d, names: NOT_SOURCE(d, names) | (top_level if Path(d) == REPO else set())
    )
    python = new_venv(work / "build-venv", *PYPROJECT["build-system"]["requires"])
    hook = "import sys; from setuptools import build_meta; build_meta.build_{}(sys.argv[1])"
    run("building the sdist", [python, "-c", hook.format("sdist"), work / "sdist"], cwd=source)
    (sdist,) = (work / "sdist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    build_wheel = [python, "-c", hook.format("wheel"), work / "wheel"]
    run("building the wheel from the sdist", build_wheel, cwd=unpacked)
    (wheel,) = (work / "wheel").glob("*.whl")
    return Built(source, sdist, wheel)


def package_files(source: Path) -> set[str]:
    """The files the package must ship, relative to the source tree: its modules and the package data that
    pyproject.toml declares (the UI's templates...), found in the copy of the working tree."""
    files = {p for p in (source / "airflow_mlserver").rglob("*.py")}
    for package, patterns in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        for pattern in patterns:
            files.update(p for p in (source / package.replace(".", "/")).glob(pattern) if p.is_file())
    return {p.relative_to(source).as_posix() for p in files}


def test_the_sdist_and_the_wheel_hold_the_package_its_data_and_the_pyproject(built: Built) -> None:
    expected = package_files(built.source)
    assert any(name.startswith("airflow_mlserver/ui/templates/") for name in expected), sorted(expected)
    with tarfile.open(built.sdist) as tar:
        top, *_ = tar.getnames()[0].split("/")
        in_sdist = {name.partition("/")[2] for name in tar.getnames()}
    missing = sorted((expected | {"pyproject.toml", "README.md"}) - in_sdist)
    assert not missing, f"{built.sdist.name} lacks {missing}; it holds:\n" + "\n".join(sorted(in_sdist))
    with zipfile.ZipFile(built.wheel) as wheel:
        in_wheel = set(wheel.namelist())
    missing = sorted(expected - in_wheel)
    assert not missing, f"{built.wheel.name} lacks {missing}; it holds:\n" + "\n".join(sorted(in_wheel))
    assert top == f"airflow_mlserver-{built.version}", top


@dataclass(frozen=True)
class Installed:
    venv: Path
    #: The environment of Airflow in the venv: its own AIRFLOW_HOME, a copy of the example DAGs, the venv's PATH.
    env: dict[str, str]
    #: The working directory of every command: nothing of the repository can be imported from there.
    work: Path

    def run(self, what: str, *cmd: str | Path, **env: str) -> str:
        """``cmd`` with its first word from the venv's bin/, ``env`` added to the environment."""
        return run(what, [self.venv / "bin" / str(cmd[0]), *cmd[1:]], env={**self.env, **env}, cwd=self.work)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel-venv")
    venv = work / "venv"
    new_venv(venv, built.wheel)
    dags = work / "dags"  # a copy: parsing writes nothing into dags_examples/
    shutil.copytree(REPO / "dags_examples", dags, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv),
            "PYTHONNOUSERSITE": "1",
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MLSERVER_EXAMPLES_STORAGE": (work / "storage").as_uri(),
        }
    )
    return Installed(venv, env, work)


def test_the_installed_package_is_the_wheel_on_python_3_13(built: Built, installed: Installed) -> None:
    probe = "import sys, airflow_mlserver as m; print(sys.version.split()[0], m.__version__, m.__file__)"
    python, version, location = installed.run("importing the package", "python", "-c", probe).split()
    assert python.startswith("3.13."), f"the venv runs Python {python}"
    assert version == built.version, f"the package says {version}, the wheel's metadata {built.version}"
    assert Path(location).is_relative_to(installed.venv / "lib"), f"imported from {location}, not the venv"


def test_airflow_lists_the_provider_with_its_version(built: Built, installed: Installed) -> None:
    out = installed.run("airflow providers list", "airflow", "providers", "list", "--output", "json")
    providers = {p["package_name"]: p for p in json_list(out)}
    assert "airflow-mlserver" in providers, f"not among the providers listed:\n{tail(out)}"
    assert providers["airflow-mlserver"]["version"] == built.version, providers["airflow-mlserver"]


def test_airflow_loads_the_plugin_and_imports_the_hook(installed: Installed) -> None:
    out = installed.run("airflow plugins", "airflow", "plugins", "--output", "json")
    plugins = {p["name"]: p for p in json_list(out)}
    assert "mlserver" in plugins, f"the plugin 'mlserver' is not loaded:\n{tail(out)}"
    assert plugins["mlserver"]["external_views"] and plugins["mlserver"]["fastapi_apps"], plugins["mlserver"]
    out = installed.run("airflow providers hooks", "airflow", "providers", "hooks", "--output", "json")
    hooks = {h["connection_type"]: h for h in json_list(out)}
    assert hooks.get("mlserver", {}).get("class") == "airflow_mlserver.hooks.mlserver.MLServerHook", (
        f"the hook of the 'mlserver' connection type: {hooks.get('mlserver')}"
    )


@contextlib.contextmanager
def local_server(installed: Installed, timeout: float = 60) -> Iterator[int]:
    """``airflow-mlserver serve`` of the venv on a free port, until the block ends; the port."""
    cmd = [installed.venv / "bin" / "airflow-mlserver", "serve", "--port", "0", "--workers", "2"]
    cmd += ["--data-dir", installed.work / "mlserver"]
    env = {**installed.env, "AIRFLOW_MLSERVER_ADMIN_PASSWORD": PASSWORD}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=installed.work,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout or ():
            lines.append(line)
            if line.startswith("airflow-mlserver listening on"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"airflow-mlserver serve did not start: its last lines:\n{tail(''.join(lines))}")
        (ready_line,) = (line for line in lines if line.startswith("airflow-mlserver listening on"))
        # airflow-mlserver listening on http://127.0.0.1:PORT (data dir ...)
        yield int(ready_line.split()[3].rsplit(":", 1)[1])
    finally:
        with contextlib.suppress(ProcessLookupError):  # the worker processes share its process group
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            with contextlib.suppress(ProcessLookupError):  # any worker left, or a server that did not stop
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_an_example_dag_runs_against_the_wheels_own_server(installed: Installed) -> None:
    installed.run("airflow db migrate", "airflow", "db", "migrate")
    with local_server(installed) as port:
        dag_file = Path(installed.env["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{DAG_ID}.py"
        out = installed.run(
            f"airflow dags test {DAG_ID}", "airflow", "dags", "test", DAG_ID, "-f", dag_file,
            AIRFLOW_CONN_MLSERVER_DEFAULT=f"mlserver://admin:{PASSWORD}@127.0.0.1:{port}",
        )  # fmt: skip
    assert f"dag_id={DAG_ID}" in out and "state=success" in out, f"the run did not succeed:\n{tail(out)}"
    assert "Scored 32 cars (0 failed)" in out, tail(out)
    storage = installed.work / "storage"
    results = sorted(storage.glob("scores/*/mtcars.parquet"))
    assert len(results) == 1, f"one results file expected under {storage}/scores, found {results}"
    frame = pd.read_parquet(results[0])
    assert len(frame) == 32 and frame["success"].all(), frame
    manifests = sorted(storage.glob("artifacts/*/manifest.json"))
    assert len(manifests) == 1 and len(list(manifests[0].parent.rglob("answer.csv"))) == 32, manifests
