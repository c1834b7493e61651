"""The local server across restarts, crashes and token expiry (each test starts its own server)."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest
import requests

from airflow_mlserver.server.process import LocalMLServer
from airflow_mlserver.server.runner import GROUP_SECONDS
from tests.helpers import Api


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "crash"])
def test_restart_mid_batch_loses_nothing_and_reruns_only_unfinished(tmp_path: Path, sig: int) -> None:
    log = tmp_path / "ran.log"
    code = (
        "import time\n"
        "time.sleep(0.005)\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{x}\\n')\n"
        "y = x * 2\n"
    )
    server = LocalMLServer(tmp_path / "data", workers=2)
    with server:
        api = Api(server)
        api.publish("restartable", "v1", code, {"x": "integer"}, {"y": "integer"})
        execution_id = api.start_batch("restartable", "v1", [{"x": i} for i in range(2000)], parallel=10)
        deadline = time.monotonic() + 60
        while api.status("restartable", "v1", execution_id)["completedItemCount"] < 600:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop(sig)
        done_before = set(int(x) for x in log.read_text().split())
        assert 600 <= len(done_before) < 2000, "the batch must be stopped mid-way"
        server.start()
        api = Api(server)  # the old token is still valid after a restart, but log in as a new client would
        results = api.wait("restartable", "v1", execution_id, timeout=120)
    assert results["state"] == "Complete"
    assert results["completedItemCount"] == results["totalItemCount"] == 2000
    assert [r["outputParameters"]["y"] for r in results["batchExecutionResults"]] == [
        2 * i for i in range(2000)
    ]
    runs = collections.Counter(int(x) for x in log.read_text().split())
    assert set(runs) == set(range(2000))
    rerun = [i for i, n in runs.items() if n > 1]
    # only records that were in flight when the server stopped may have run twice: at most a group (about
    # GROUP_SECONDS of 5 ms records) on each of the two workers
    assert len(rerun) <= 2 * (int(GROUP_SECONDS / 0.005) + 1), rerun


def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    server = LocalMLServer(tmp_path, workers=1)
    with server:
        api = Api(server)
        server.restart()
        assert api.get("/services").status_code == 200


def test_access_token_expires_and_refresh_renews_it(tmp_path: Path) -> None:
    with LocalMLServer(tmp_path, workers=1, extra_args=["--token-ttl", "2"]) as server:
        tokens = requests.post(
            f"{server.url}/login", json={"username": "admin", "password": server.password}
        ).json()
        assert tokens["expires_in"] == 2
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert requests.get(f"{server.url}/services", headers=headers).status_code == 200
        # the server refuses a token from its expires_on on (whole seconds, the same clock as this process)
        time.sleep(max(0.0, tokens["expires_on"] - time.time()))
        expired = requests.get(f"{server.url}/services", headers=headers)
        assert expired.status_code == 401
        assert expired.json()["message"] == (
            "The access token has expired: refresh it with POST /login/refreshToken or log in again."
        )
        renewed = requests.post(
            f"{server.url}/login/refreshToken", json={"refreshToken": tokens["refresh_token"]}
        )
        headers = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
        assert requests.get(f"{server.url}/services", headers=headers).status_code == 200


def test_generated_admin_password_is_printed_once(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_MLSERVER_ADMIN_PASSWORD"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_mlserver.cli", "serve", "--port", "0", "--data-dir", str(tmp_path),
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert first.startswith("Generated password for user 'admin': ")
        password = first.split(": ", 1)[1].strip()
        url = second.split()[3]
        answer = requests.post(f"{url}/login", json={"username": "admin", "password": password})
        assert answer.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_bad_fault_spec_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "airflow_mlserver.cli", "serve", "--data-dir", str(tmp_path), "--faults", "503:lots"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Cannot read fault '503:lots'" in result.stderr
