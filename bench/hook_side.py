"""One side of ``hook.results``, run in its own process so that its peak memory is its own.

``python -m bench.hook_side hook|msclient URL PASSWORD NAME VERSION EXECUTION_ID EXPECTED`` fetches and
decodes every result of a finished batch execution and prints one JSON line: ``seconds`` (the timed fetch
and decode), ``count``, ``checksum`` (sum of the output ``y``), ``base_mib`` (peak RSS, ``VmHWM``, after
imports and login, before the fetch) and ``peak_mib`` (``VmHWM`` at the end).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

from bench.common import client_peak_mib

CONN_ID = "bench_hook_side"


def _hook(url: str, password: str, name: str, version: str, execution_id: str) -> dict[str, Any]:
    parts = urlsplit(url)
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = (
        f"mlserver://admin:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    )
    from airflow_mlserver.hooks.mlserver import MLServerHook

    hook = MLServerHook(CONN_ID)
    hook.get_batch(name, version, execution_id)  # log in (not timed)
    base = client_peak_mib()
    t0 = time.perf_counter()
    count, checksum = 0, 0.0
    for record in hook.iter_batch_results(name, version, execution_id):
        count += 1
        checksum += float(record.outputs["y"])
    seconds = time.perf_counter() - t0
    hook.close()
    return {"seconds": seconds, "count": count, "checksum": checksum, "base_mib": base}


def _msclient(url: str, password: str, name: str, version: str, execution_id: str) -> dict[str, Any]:
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    from tests.msclient_shim import patched_client

    with patched_client():
        client = DeployClient(url, use=MLServer, auth=("admin", password))
        svc = client.get_service(name, version=version)  # login and service lookup (not timed)
        base = client_peak_mib()
        t0 = time.perf_counter()
        batch = svc.get_batch(execution_id)
        results = batch.results()
        count, checksum = 0, 0.0
        for i in range(results.total_item_count):
            outputs = results.execution(i).outputs
            count += 1
            checksum += float(outputs["y"])
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "count": count, "checksum": checksum, "base_mib": base}


def main(argv: list[str]) -> int:
    which, url, password, name, version, execution_id, expected = argv
    side = {"hook": _hook, "msclient": _msclient}[which]
    answer = side(url, password, name, version, execution_id)
    answer["peak_mib"] = client_peak_mib()
    if answer["count"] != int(expected):
        answer["error"] = f"expected {expected} results, decoded {answer['count']}"
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
