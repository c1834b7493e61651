"""``artifacts.copy``: MLServerArtifactsToObjectStorageOperator throughput and memory, file:// and S3 (moto).

Two data sets on a 2-worker local server: 1,000 artifacts of 1 MiB (one per record) and one artifact of
1 GiB (200 x 1 MiB and 128 MiB with ``--quick``). Each is copied, one after the other, by:

* ``baseline``: a plain streaming HTTP-to-file copy (``requests``, ``iter_content`` of 1 MiB, list then
  get each record's files) with as many threads as the operator;
* ``baseline s3``: the same plain copy into ``ObjectStoragePath.open("wb", block_size=5 MiB)`` on the same
  moto endpoint and connection as the operator (same part size, same threads);
* ``operator file://``: the operator to a local folder (temporary name + rename, sha256, size checks,
  manifest);
* ``operator s3://``: the operator to a moto S3 server on loopback (multipart upload in 5 MiB parts);
* ``MS client``: Microsoft's ``Batch.download(index, file_name, destination)`` (``list_artifacts`` per
  record first; the client has no concurrency and holds each file in memory).

Each copy runs in its own process (``python -m bench.artifacts side ...``) so that its peak memory
(``VmHWM``) is its own; the growth over the process's peak after imports and login is reported. One copy
varies by +-30 % on 2 cores, so after an uncounted warm-up copy, each pair (plain copy, operator) to each
store runs ``ROUNDS`` times, in alternating order (plain first, then operator first), and each round's
operator rate is divided by the plain rate of the same round. Figures: the median MiB/s of each copier, the
median of the rounds' ratios of the operator against the plain copy to the same store (target >= 0.8; S3
also against the local-file copy, in a note), and the operator's largest memory growth while copying the
large file (target <= 64 MiB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from bench.common import Api, BenchResult, Figure, client_peak_mib, quiet_request_logs, running_server

NAME, VERSION = "bench_artifacts", "1.0"
MIB = 1024 * 1024
BUCKET = "bench"
CONCURRENCY = 4
RATIO_TARGET = 0.8
MEMORY_TARGET_MIB = 64.0
ML_CONN, S3_CONN = "bench_mlserver", "bench_s3"
#: Rounds of each pair (plain copy, operator) per store and data set; the median of the rounds' ratios counts.
ROUNDS, ROUNDS_QUICK = 5, 2

CODE = """
size = int(size)
block = (str(size) * (1 << 20)).encode()[: 1 << 20]
with open('blob.bin', 'wb') as f:
    full, rest = divmod(size, len(block))
    for _ in range(full):
        f.write(block)
    f.write(block[:rest])
y = size
"""


# --- the side process ----------------------------------------------------------------------------------------


def _vm_hwm_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _s3_connection(endpoint: str) -> None:
    os.environ[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )


def _side_baseline(args: dict[str, Any]) -> dict[str, Any]:
    import requests

    url, eid, out = args["url"], args["execution_id"], Path(args.get("out", "."))
    dest = None
    if args.get("endpoint"):
        _s3_connection(args["endpoint"])
        from airflow.sdk import ObjectStoragePath

        from airflow_mlserver.operators.artifacts.writes import UPLOAD_BLOCK_SIZE

        dest = ObjectStoragePath(args["dest"], conn_id=S3_CONN)
        dest.fs  # noqa: B018 - import and build the store (not timed), as for the operator
    local = threading.local()
    sessions: list[requests.Session] = []

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            fresh = requests.Session()
            token = fresh.post(
                f"{url}/login", json={"username": "admin", "password": args["password"]}, timeout=60
            )
            fresh.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            local.s = fresh
            sessions.append(fresh)
        current: requests.Session = local.s
        return current

    base = _vm_hwm_mib()
    t0 = time.perf_counter()
    api = f"{url}/api/{NAME}/{VERSION}/batch/{eid}"

    def target(index: int, name: str) -> IO[bytes]:
        if dest is not None:
            # Same store, connection and part size as the operator's S3 uploads (fs.open(..., "wb")).
            f: IO[bytes] = (dest / str(index) / name).open("wb", block_size=UPLOAD_BLOCK_SIZE)
            return f
        folder = out / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / name, "wb")

    def copy(index: int) -> int:
        s = session()
        total = 0
        for name in s.get(f"{api}/{index}/files", timeout=60).json():
            with (
                s.get(f"{api}/{index}/files/{name}", stream=True, timeout=60) as answer,
                target(index, name) as f,
            ):
                answer.raise_for_status()
                for chunk in answer.iter_content(MIB):
                    f.write(chunk)
                    total += len(chunk)
        return total

    with ThreadPoolExecutor(args["concurrency"]) as pool:
        total = sum(pool.map(copy, range(args["records"])))
    return {"seconds": time.perf_counter() - t0, "bytes": total, "base_mib": base}


def _side_operator(args: dict[str, Any]) -> dict[str, Any]:
    os.environ[f"AIRFLOW_CONN_{ML_CONN.upper()}"] = (
        f"mlserver://admin:{quote(args['password'], safe='')}@127.0.0.1:{args['url'].rsplit(':', 1)[1]}"
    )
    if args.get("endpoint"):
        _s3_connection(args["endpoint"])
    from airflow.sdk import ObjectStoragePath

    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator

    conn = S3_CONN if args.get("endpoint") else None
    ObjectStoragePath(args["dest"], conn_id=conn).fs  # noqa: B018 - import and build the store (not timed)
    MLServerHook(ML_CONN).get_batch(NAME, VERSION, args["execution_id"])  # warm up imports (not timed)
    op = MLServerArtifactsToObjectStorageOperator(
        task_id="copy",
        service_name=NAME,
        service_version=VERSION,
        execution_id=args["execution_id"],
        dest=args["dest"],
        dest_conn_id=conn,
        max_concurrency=args["concurrency"],
        mlserver_conn_id=ML_CONN,
    )
    base = _vm_hwm_mib()
    t0 = time.perf_counter()
    summary = op.execute({})  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    if summary["failed"] or summary["copied"] != args["records"]:
        raise RuntimeError(f"operator summary: {summary}")
    return {"seconds": seconds, "bytes": summary["bytes_copied"], "base_mib": base}


def _side_msclient(args: dict[str, Any]) -> dict[str, Any]:
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    from tests.msclient_shim import patched_client

    out = Path(args["out"])
    with patched_client():
        client = DeployClient(args["url"], use=MLServer, auth=("admin", args["password"]))
        svc = client.get_service(NAME, version=VERSION)
        base = _vm_hwm_mib()
        t0 = time.perf_counter()
        batch = svc.get_batch(args["execution_id"])
        total = 0
        for index in range(args["records"]):
            folder = out / str(index)
            folder.mkdir(parents=True, exist_ok=True)
            for name in batch.list_artifacts(index):
                # download(index) without a file name reads record i's files from record i's *position* in
                # the list (a client bug), so each file is named.
                for path in batch.download(index, name, str(folder)):
                    total += os.path.getsize(path)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": total, "base_mib": base}


def side_main(argv: list[str]) -> int:
    which, raw = argv
    args = json.loads(raw)
    side = {"baseline": _side_baseline, "operator": _side_operator, "msclient": _side_msclient}[which]
    answer = side(args)
    answer["peak_mib"] = _vm_hwm_mib()
    print(json.dumps(answer), flush=True)
    return 0


# --- the benchmark --------------------------------------------------------------------------------------------


def _run_side(which: str, args: dict[str, Any], home: Path) -> dict[str, Any]:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.artifacts", "side", which, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=1800,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"side {which} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextlib.contextmanager
def _moto() -> Iterator[tuple[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    quiet_request_logs()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


def _empty_bucket(client: Any) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


@dataclass
class _DataSet:
    """One data set's copies: where they go, what each must copy, and the notes they add to the result."""

    label: str
    common: dict[str, Any]
    expected: int
    tmp: Path
    home: Path
    s3: Any
    result: BenchResult

    def copy(self, name: str, which: str, extra: dict[str, Any], note: str = "") -> dict[str, Any]:
        """One copier's run in its own process, checked, noted and cleaned up; ``rate`` in MiB/s."""
        os.sync()  # the previous copier's dirty pages are not flushed during this one
        answer = _run_side(which, {**self.common, **extra}, self.home)
        if answer["bytes"] != self.expected:
            raise RuntimeError(
                f"{name} copied {answer['bytes']} bytes of {self.label}, expected {self.expected}"
            )
        for folder in ("baseline", "operator", "msclient"):
            shutil.rmtree(self.tmp / folder, ignore_errors=True)
        if "endpoint" in extra:
            _empty_bucket(self.s3)
        answer["rate"] = answer["bytes"] / MIB / answer["seconds"]
        answer["growth"] = answer["peak_mib"] - answer["base_mib"]
        self.result.notes.append(
            f"{self.label}, {name}{note}: {answer['seconds']:.2f} s, {answer['rate']:.0f} MiB/s, peak VmHWM "
            f"{answer['peak_mib']:.0f} MiB (+{answer['growth']:.0f} MiB over {answer['base_mib']:.0f} MiB after "
            "imports)"
        )
        return answer


def _start(api: Api, records: list[dict[str, Any]]) -> str:
    eid = api.start_batch(NAME, VERSION, records, parallel=10)
    status, _ = api.wait_finished(NAME, VERSION, eid, timeout=1200)
    if str(status["state"]).lower() != "complete" or status.get("failedItemCount"):
        raise RuntimeError(f"making the artifacts failed: {status}")
    return eid


def bench_copy(quick: bool) -> BenchResult:
    """Artifacts to file:// and S3 (moto): operator vs plain HTTP-to-file copy and MS client; memory."""
    started = time.perf_counter()
    many, big = (200, 128 * MIB) if quick else (1000, 1024 * MIB)
    result = BenchResult("artifacts.copy")
    with (
        tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp,
        running_server(Path(tmp) / "server", workers=2) as (server, sampler),
        _moto() as (endpoint, s3),
    ):
        home = Path(tmp) / "airflow"
        home.mkdir()
        with Api(server) as api:
            body = {
                "code": CODE,
                "runtimeType": "Python",
                "inputParameterDefinitions": [{"name": "size", "type": "integer"}],
                "outputParameterDefinitions": [{"name": "y", "type": "integer"}],
                "outputFileNames": ["blob.bin"],
            }
            api.request("POST", f"/services/{NAME}/{VERSION}", json=body)
            t0 = time.perf_counter()
            data_sets = [
                (f"{many} x 1 MiB", _start(api, [{"size": MIB}] * many), many, CONCURRENCY),
                (f"1 x {big // MIB} MiB", _start(api, [{"size": big}]), 1, 1),
            ]
            result.notes.append(f"making the artifacts on the server took {time.perf_counter() - t0:.1f} s")
        rounds = ROUNDS_QUICK if quick else ROUNDS
        for label, eid, records, concurrency in data_sets:
            common = {"url": server.url, "password": server.password, "execution_id": eid, "records": records}
            common["concurrency"] = concurrency
            expected = records * (MIB if records > 1 else big)
            data = _DataSet(label, common, expected, Path(tmp), home, s3, result)
            s3_dest = {"dest": f"s3://{BUCKET}/{label.replace(' ', '')}", "endpoint": endpoint}
            # Warm-up (not counted): the server's workers and the page cache hold the artifacts for every pair.
            data.copy("warm-up baseline", "baseline", {"out": f"{tmp}/baseline"})
            pairs = {
                "file://": ("baseline", {"out": f"{tmp}/baseline"}, {"dest": f"file://{tmp}/operator"}),
                "s3://": ("baseline s3", s3_dest, s3_dest),
            }
            rates: dict[str, list[float]] = {}
            ratios: dict[str, list[float]] = {}
            growth: dict[str, float] = {}
            for store, (plain, plain_extra, op_extra) in pairs.items():
                for round_ in range(rounds):
                    # plain then operator, then operator then plain: a drift of the machine hits both alike
                    order = [(plain, "baseline", plain_extra), (f"operator {store}", "operator", op_extra)]
                    answers = {
                        name: data.copy(name, which, extra, f" (round {round_ + 1})")
                        for name, which, extra in (order if round_ % 2 == 0 else order[::-1])
                    }
                    for name, answer in answers.items():
                        rates.setdefault(name, []).append(answer["rate"])
                        growth[name] = max(growth.get(name, 0.0), answer["growth"])
                    ratios.setdefault(store, []).append(
                        answers[f"operator {store}"]["rate"] / answers[plain]["rate"]
                    )
            rate = {name: statistics.median(values) for name, values in rates.items()}
            base, base_s3 = rate["baseline"], rate["baseline s3"]
            result.figures.append(
                Figure(f"{label}: baseline HTTP->file", base, "MiB/s", f"median of {rounds}")
            )
            result.figures.append(
                Figure(f"{label}: baseline HTTP->S3", base_s3, "MiB/s", f"median of {rounds}")
            )
            # Each operator round against the plain copy of the same round to the same kind of store: the median
            # of those ratios is the figure. S3 is also compared with the local-file copy (bounded by moto, not by
            # the operator), for reference.
            for store, what in (("file://", "HTTP->file"), ("s3://", "HTTP->S3")):
                ratio = statistics.median(ratios[store])
                verdict = "PASS" if ratio >= RATIO_TARGET else "MISS"
                each = " ".join(f"{r:.2f}" for r in ratios[store])
                result.figures.append(
                    Figure(
                        f"{label}: operator {store}",
                        rate[f"operator {store}"],
                        "MiB/s",
                        f"x{ratio:.2f} vs baseline {what} (>= {RATIO_TARGET}; rounds {each})",
                        verdict,
                    )
                )
            result.notes.append(
                f"{label}: operator s3:// is x{rate['operator s3://'] / base:.2f} of the baseline HTTP->file "
                f"(local file; moto bounds S3), baseline HTTP->S3 x{base_s3 / base:.2f} of it"
            )
            ms = data.copy("MS client", "msclient", {"out": f"{tmp}/msclient"})
            op = rate["operator file://"]
            result.figures.append(
                Figure(
                    f"{label}: MS client download",
                    ms["rate"],
                    "MiB/s",
                    f"operator file:// x{op / ms['rate']:.2f}",
                )
            )
            if records == 1:
                for name in ("operator file://", "operator s3://"):
                    verdict = "PASS" if growth[name] <= MEMORY_TARGET_MIB else "MISS"
                    result.figures.append(
                        Figure(
                            f"{label}: {name} memory growth",
                            growth[name],
                            "MiB",
                            f"<= {MEMORY_TARGET_MIB:.0f} MiB",
                            verdict,
                        )
                    )
                result.figures.append(Figure(f"{label}: MS client memory growth", ms["growth"], "MiB"))
        sampler.sample()
        result.server_peak_mib = sampler.peak_mib
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "side":
        sys.exit(side_main(sys.argv[2:]))
    sys.exit(f"usage: python -m bench --only artifacts (this module's 'side' mode is internal): {sys.argv}")
