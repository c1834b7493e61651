"""The main job, end to end on one machine: ``make demo``.

Starts the local Machine Learning Server on a free loopback port, publishes the seed's mtcars model as a
service, scores the 32 mtcars records in one asynchronous batch, polls it to completion, prints the
results and the artifacts of the first record, and stops the server. Nothing is left running.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))

import mtcars_service

from airflow_mlserver.server.process import LocalMLServer


def main() -> int:
    frame = mtcars_service.load_mtcars()
    coefficients = mtcars_service.fit_logistic(frame)
    print(
        f"Fitted am ~ hp + wt: prediction for hp=120, wt=2.8 is {mtcars_service.predict(coefficients, 120, 2.8):.7f}"
    )
    with tempfile.TemporaryDirectory(prefix="mlserver-demo-") as data_dir, LocalMLServer(data_dir) as server:
        print(f"Local Machine Learning Server at {server.url}")
        http = requests.Session()
        login = http.post(
            f"{server.url}/login", json={"username": server.username, "password": server.password}
        )
        login.raise_for_status()
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        name, version = mtcars_service.SERVICE_NAME, mtcars_service.SERVICE_VERSION
        answer = http.post(
            f"{server.url}/services/{name}/{version}", json=mtcars_service.publish_request(coefficients)
        )
        answer.raise_for_status()
        api = f"{server.url}/api/{name}/{version}"
        one = http.post(api, json={"hp": 120, "wt": 2.8}).json()
        print(f"Request-response: manualTransmission(120, 2.8) = {one['outputParameters']['answer']:.7f}")
        records = frame[["hp", "wt"]].astype(float).to_dict("records")
        started = http.post(f"{api}/batch?parallelCount=10", json=records)
        started.raise_for_status()
        execution_id = started.json()["batchExecutionId"]
        print(f"Batch execution {execution_id}: {len(records)} records, parallelCount 10")
        while True:
            status = http.get(f"{api}/batch/{execution_id}?showPartialResults=false").json()
            print(f"  {status['state']}: {status['completedItemCount']}/{status['totalItemCount']}")
            if status["state"].lower() in ("complete", "failed", "canceled"):
                break
            time.sleep(0.5)
        results = http.get(f"{api}/batch/{execution_id}?showPartialResults=true").json()[
            "batchExecutionResults"
        ]
        print(f"\n{'model':<20} {'hp':>5} {'wt':>6} {'P(manual)':>10}  am")
        for row, result in zip(frame.itertuples(), results, strict=True):
            print(
                f"{row.model:<20} {row.hp:>5} {row.wt:>6} {result['outputParameters']['answer']:>10.4f}  {row.am}"
            )
        files = http.get(f"{api}/batch/{execution_id}/0/files").json()
        print(f"\nArtifacts of record 0: {', '.join(files)}")
        print(http.get(f"{api}/batch/{execution_id}/0/files/answer.csv").text)
        if status["state"].lower() != "complete":
            print(f"The batch ended {status['state']}", file=sys.stderr)
            return 1
    print("Demo finished; the server is stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
