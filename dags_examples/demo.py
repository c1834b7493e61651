"""The main job, end to end on one machine: ``make demo``.

Starts the local Machine Learning Server in the background on a free loopback port, points Airflow at it
through an environment connection, runs ``airflow dags test mlserver_batch_scoring`` (train, publish with
``MLServerPublishServiceOperator``, score with the batch operator, deferral included, collect the artifacts) in a
private ``AIRFLOW_HOME`` under ``.demo/``, then the R seed's example ``mlserver_r_manual_transmission`` when R
and rpy2 are installed (else one line says what to install), prints what each publish did (published, or found
with the same content), where the results and the artifacts are and a few result rows, and stops the server.
Results and artifacts stay in ``.demo/storage``; nothing is left running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from airflow_mlserver.server.process import LocalMLServer

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
DAG_ID = "mlserver_batch_scoring"
#: Run after DAG_ID when R (and rpy2, which the local server runs R with) is installed.
R_DAG_ID = "mlserver_r_manual_transmission"


def _environment(server: LocalMLServer, storage: Path) -> dict[str, str]:
    """Airflow's settings for the demo: a private home, the example DAGs, the local server as connection."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_MLSERVER_DEFAULT": (
            f"mlserver://{server.username}:{quote(server.password, safe='')}@127.0.0.1:{server.port}"
        ),
        "MLSERVER_EXAMPLES_STORAGE": storage.as_uri(),
    }


def ui() -> int:
    """``make demo-ui``: the local server plus ``airflow standalone`` with the example DAGs, until Ctrl-C."""
    storage = DEMO / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    with LocalMLServer(DEMO / "mlserver", workers=2) as server:
        bin_dir = str(Path(sys.executable).parent)  # standalone starts its components as `airflow ...`
        passwords = DEMO / "airflow-ui-passwords.json"  # the UI's login, chosen here so that it is said first
        if not passwords.exists():
            passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        login = json.loads(passwords.read_text())["admin"]
        env = _environment(server, storage) | {
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the Test icon in the Connections list
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        print(f"Airflow UI:   http://localhost:8080, user 'admin', password '{login}' (in {passwords})")
        print(
            f"ML Server:    {server.url}, user 'admin', password '{server.password}'; the DAGs use it as the "
            "environment connection mlserver_default, which Admin > Connections does not list: to try Test, "
            f"add a connection of type Machine Learning Server with Server 127.0.0.1, Port {server.port} and this "
            "user."
        )
        print("Starting airflow standalone (its log follows). Ctrl-C stops everything.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop on SIGTERM as on Ctrl-C
        standalone = subprocess.Popen(
            [Path(sys.executable).parent / "airflow", "standalone"], env=env, start_new_session=True
        )
        try:
            return standalone.wait()
        except KeyboardInterrupt:
            # stop standalone and every component it started (its own process group), politely first
            for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(standalone.pid, sig)
                try:
                    standalone.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(standalone.pid, signal.SIGKILL)  # components that outlived standalone
            return 0


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(DEMO, ignore_errors=True)
    storage = DEMO / "storage"
    storage.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    with LocalMLServer(DEMO / "mlserver", workers=2) as server:
        print(f"Local Machine Learning Server at {server.url} (data in {server.data_dir})", flush=True)
        env = _environment(server, storage)
        subprocess.run([bin_dir / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        if not _dags_test(DAG_ID, env, DEMO / "dags-test.log"):
            return 1
        missing = _r_missing()
        if missing:
            print(f"\nSkipping the R example ({R_DAG_ID}): {missing}", flush=True)
        elif not _dags_test(R_DAG_ID, env, DEMO / "dags-test-r.log"):
            return 1
    results = sorted(storage.glob("scores/*/mtcars.parquet"))
    manifest = sorted(storage.glob("artifacts/*/manifest.json"))[-1]
    files = sum(1 for p in manifest.parent.rglob("*") if p.is_file() and p != manifest)
    print(f"\nResults (Parquet): {results[-1]}")
    print(f"Artifacts:         {manifest.parent} ({files} files)")
    print(f"Manifest:          {manifest}")
    print(f"Airflow log:       {DEMO / 'dags-test.log'}")
    r_results = sorted(storage.glob("r/*/mtcars-*.parquet"))
    if r_results:
        pngs = sum(1 for _ in storage.glob("r/*/artifacts-*/*/Histogram.png"))
        print(f"R example:         {', '.join(str(p) for p in r_results)} ({pngs} Histogram.png)")
        for model in sorted(storage.glob("r/*/carsModel.rds"))[-1:]:
            print(f"R model (RDS):     {model}")
        print(f"R example log:     {DEMO / 'dags-test-r.log'}")
    print(f"Done in {time.monotonic() - started:.0f} s; the local server is stopped.")
    return 0


def _dags_test(dag_id: str, env: dict[str, str], log: Path) -> bool:
    """``airflow dags test <dag_id>``: its log kept in ``log``, the lines its tasks printed shown; True if it ran."""
    print(f"Running: airflow dags test {dag_id}", flush=True)
    airflow = Path(sys.executable).parent / "airflow"
    run = subprocess.run([airflow, "dags", "test", dag_id], env=env, capture_output=True, text=True)
    log.write_text(run.stdout + run.stderr)
    print("\n".join(line for line in run.stdout.splitlines() if _is_summary(line)), flush=True)
    if run.returncode != 0:
        print(f"The DAG run failed: see {log}", file=sys.stderr)
    return run.returncode == 0


def _r_missing() -> str:
    """Why the R example cannot run here (R or rpy2 missing, and what to install), or "" when it can."""
    if shutil.which("Rscript") is None:
        return "R is not installed: run 'sudo apt-get install -y r-base-core r-base-dev fonts-dejavu-core'."
    if importlib.util.find_spec("rpy2") is None:
        return "rpy2 is not installed: run pip install -e '.[r]' (make demo does it when R is there)."
    return ""


def _is_summary(line: str) -> bool:
    """The lines the ``summary`` task printed (not Airflow's log records)."""
    noise = line.startswith("20") or "graphviz" in line or "[py.warnings]" in line
    return not noise and line.strip() != ""


if __name__ == "__main__":
    sys.exit(ui() if "--ui" in sys.argv[1:] else main())
