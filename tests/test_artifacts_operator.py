"""MLServerArtifactsToObjectStorageOperator against the local server (real HTTP), to file:// and to S3 (moto).

The only patching is the fault injection of the interrupted-transfer tests: the artifact stream raises
after a given number of bytes, for one given file.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from airflow_mlserver.exceptions import (
    ArtifactsConfigError,
    ArtifactTransferError,
    ExecutionWaitTimeoutError,
    MalformedResponseError,
    MLServerConnectionError,
    OperatorArgumentError,
    UnsafeArtifactNameError,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.artifacts.names import (
    check_artifact_name,
    may_render_to,
    places_apart,
    select_records,
)
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

ML_CONN = "mlserver_artifacts"
S3_CONN = "s3_artifacts"
BUCKET = "artifacts"
VERSION = "1.0"

# Record n writes a.txt unless n % 10 == 0 (so 20 of 200 records produce nothing) and b.bin when n % 3 == 0.
SERVICE_CODE = """
import hashlib
n = int(x)
y = x
if n % 10 != 0:
    open('a.txt', 'w').write(f'record {n}\\n' * (n + 1))
    if n % 3 == 0:
        block = hashlib.sha256(str(n).encode()).digest()
        open('b.bin', 'wb').write(block * (100 * n + 1))
"""
# Record 0 writes a 12 MiB file (several S3 parts), record 1 a small one.
BIG_CODE = """
n = int(x)
y = x
size = 12 * 1024 * 1024 if n == 0 else 1000
block = bytes(range(256)) * 4096
with open('big.bin', 'wb') as f:
    left = size
    while left:
        f.write(block[: min(left, len(block))])
        left -= min(left, len(block))
"""
SLOW_CODE = """
import time
n = int(x)
y = x
if n >= 3:
    time.sleep(1.5)
open('out.txt', 'w').write(str(n))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(mlserver: LocalMLServer) -> Iterator[dict[str, str]]:
    """Connections for the module (set in os.environ: Airflow caches object stores per connection id)."""
    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    values = {
        f"AIRFLOW_CONN_{ML_CONN.upper()}": f"mlserver://{mlserver.username}:{mlserver.password}@127.0.0.1:{mlserver.port}",
        f"AIRFLOW_CONN_{S3_CONN.upper()}": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
        "MOTO_ENDPOINT": endpoint,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield values
    finally:
        moto.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["MOTO_ENDPOINT"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _finished(api: Api, name: str, execution_id: str) -> dict[str, Any]:
    return api.wait(name, VERSION, execution_id, timeout=180)


@pytest.fixture(scope="module")
def batch200(api: Api) -> str:
    api.publish("artsvc", VERSION, SERVICE_CODE, {"x": "numeric"}, {"y": "numeric"}, files=["a.txt", "b.bin"])
    execution_id = api.start_batch("artsvc", VERSION, [{"x": float(i)} for i in range(200)], parallel=10)
    status = _finished(api, "artsvc", execution_id)
    assert status["state"] == "Complete", status
    return execution_id


@pytest.fixture(scope="module")
def big_batch(api: Api) -> str:
    api.publish("artbig", VERSION, BIG_CODE, {"x": "numeric"}, {"y": "numeric"}, files=["big.bin"])
    execution_id = api.start_batch("artbig", VERSION, [{"x": 0.0}, {"x": 1.0}], parallel=2)
    assert _finished(api, "artbig", execution_id)["state"] == "Complete"
    return execution_id


def expected_files(index: int) -> list[str]:
    if index % 10 == 0:
        return []
    return ["a.txt", "b.bin"] if index % 3 == 0 else ["a.txt"]


def operator(
    execution_id: str | None, dest: Any, service: str = "artsvc", **kwargs: Any
) -> MLServerArtifactsToObjectStorageOperator:
    """The operator for one execution, or (``None``, ``execution_ids=...``) for a batch task's executions."""
    kwargs.setdefault("mlserver_conn_id", ML_CONN)
    kwargs.setdefault("poll_interval", 0.2)
    if execution_id is not None:
        kwargs["execution_id"] = execution_id
    return MLServerArtifactsToObjectStorageOperator(
        task_id=f"copy_{time.monotonic_ns()}",
        service_name=service,
        service_version=VERSION,
        dest=dest,
        **kwargs,
    )


def run(op: MLServerArtifactsToObjectStorageOperator) -> dict[str, Any]:
    return op.execute({})  # type: ignore[arg-type]


def server_bytes(api: Api, service: str, execution_id: str, index: int, name: str) -> bytes:
    answer = api.get(f"/api/{service}/{VERSION}/batch/{execution_id}/{index}/files/{name}")
    assert answer.status_code == 200, answer.text
    return answer.content


def local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class _Breaking(io.RawIOBase):
    """An artifact stream that raises (as a dropped connection does) once ``limit`` bytes were read."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner, self.left = inner, limit
        self.raw = getattr(inner, "raw", None)  # keeps the announced Content-Length visible

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise MLServerConnectionError("Reading an artifact broke off (injected fault); open it again.")
        view = memoryview(buffer)[: min(len(buffer), self.left)]
        n = int(self.inner.readinto(view))
        self.left -= n
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


def break_after(monkeypatch: pytest.MonkeyPatch, index: int, file_name: str, limit: int) -> list[int]:
    """Make the stream of one artifact raise after ``limit`` bytes; answer a list counting the faults."""
    original = MLServerHook.open_artifact
    faults: list[int] = []

    def open_artifact(self: MLServerHook, name: str, version: str, eid: str, i: int, fname: str) -> Any:
        stream = original(self, name, version, eid, i, fname)
        if (i, fname) == (index, file_name):
            faults.append(i)
            return _Breaking(stream, limit)
        return stream

    monkeypatch.setattr(MLServerHook, "open_artifact", open_artifact)
    return faults


# --- pure validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "/etc/passwd",
        "C:evil",
        "bad\x00name",
        "bell\x07",
        "new\nline",
        "",
        " pad",
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeArtifactNameError, match="refused"):
        check_artifact_name(name)


def test_plain_names_pass() -> None:
    for name in ("answer.csv", "plot (1).png", "résumé.txt", "a..b", ".hidden"):
        assert check_artifact_name(name) == name


def test_select_records() -> None:
    assert select_records(None, 3) == [0, 1, 2]
    assert select_records("0-2,5", 10) == [0, 1, 2, 5]
    assert select_records(" [ 7 , 1-2 ] ", 10) == [1, 2, 7]  # a list as a template renders it
    assert select_records(range(2, 4), 10) == [2, 3]
    assert select_records([3, 1, 3], 10) == [1, 3]
    assert select_records([], 10) == [] and select_records("[]", 10) == []  # an empty XCom list: nothing
    assert select_records(4, 10) == [4]
    with pytest.raises(ArtifactsConfigError) as info:
        select_records([10], 10)
    assert str(info.value) == (
        "indexes selects record 10, but the executions have 10 records, numbered 0 to 9 (as in the results "
        "file): select records below 10."
    )


def test_file_names_hostile_literal_refused_where_written(tmp_path: Path) -> None:
    with pytest.raises(OperatorArgumentError, match="path separator"):
        operator("e", f"file://{tmp_path}/out", file_names=["../../x"])
    assert not any(tmp_path.rglob("*"))


# --- file:// --------------------------------------------------------------------------------------------------


def test_file_copy_all_manifest_and_rerun(
    env: dict[str, str], api: Api, batch200: str, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    summary = run(operator(batch200, f"file://{dest}", max_concurrency=4))
    expected = {(i, f) for i in range(200) for f in expected_files(i)}
    assert summary["copied"] == len(expected) and summary["failed"] == summary["refused"] == 0
    assert summary["records"] == 200 and summary["records_without_artifacts"] == 20
    assert summary["finished"] is True
    assert summary["manifest"] == f"file://{dest}/{batch200}/manifest.json"

    manifest = json.loads((dest / batch200 / "manifest.json").read_text())
    assert manifest["records_without_artifacts"] == [i for i in range(200) if i % 10 == 0]
    entries = {(e["index"], e["file_name"]): e for e in manifest["artifacts"]}
    assert set(entries) == expected
    total = 0
    for (index, name), entry in entries.items():
        data = (dest / batch200 / str(index) / name).read_bytes()
        assert data == server_bytes(api, "artsvc", batch200, index, name)
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["status"] == "copied"
        assert entry["destination"] == f"file://{dest}/{batch200}/{index}/{name}"
        total += len(data)
    assert summary["bytes_copied"] == summary["bytes_total"] == total
    assert not [p for p in dest.rglob("*.part")]

    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json"}
    again = run(operator(batch200, f"file://{dest}"))
    assert again["copied"] == 0 and again["skipped"] == len(expected) and again["bytes_copied"] == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    rerun_manifest = json.loads((dest / batch200 / "manifest.json").read_text())
    assert all(e["status"] == "skipped" for e in rerun_manifest["artifacts"])
    assert [e["sha256"] for e in rerun_manifest["artifacts"]] == [e["sha256"] for e in manifest["artifacts"]]

    # a destination of another size is copied again; overwrite=True copies everything
    (dest / batch200 / "1" / "a.txt").write_text("tampered")
    third = run(operator(batch200, f"file://{dest}"))
    assert third["copied"] == 1
    assert (dest / batch200 / "1" / "a.txt").read_bytes() == server_bytes(api, "artsvc", batch200, 1, "a.txt")
    assert run(operator(batch200, f"file://{dest}", overwrite=True, indexes="1-5"))["copied"] == 6


def test_file_indexes_globs_and_template(env: dict[str, str], batch200: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    summary = run(
        operator(
            batch200,
            f"file://{dest}",
            indexes="0-9,30",
            file_names=["*.bin"],
            path_template="{service_name}/{execution_id}/{index:04d}-{file_name}",
        )
    )
    bins = [i for i in [*range(10), 30] if "b.bin" in expected_files(i)]
    assert bins == [3, 6, 9]
    assert summary["copied"] == 3 and summary["records"] == 11
    assert summary["records_without_artifacts"] == 2  # records 0 and 30
    names = sorted(p.name for p in (dest / "artsvc" / batch200).iterdir())
    assert names == ["0003-b.bin", "0006-b.bin", "0009-b.bin"]
    assert (dest / batch200 / "manifest.json").is_file()
    only_a = run(operator(batch200, f"file://{dest}/lit", indexes=[11, 12], file_names="a.txt"))
    assert only_a["copied"] == 2


def test_template_collisions_fail_before_any_copy(env: dict[str, str], batch200: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactsConfigError, match="same place"):
        run(operator(batch200, f"file://{tmp_path}", indexes=[1, 2], path_template="x/{file_name}"))
    with pytest.raises(ArtifactsConfigError, match="would overwrite the manifest"):
        run(
            operator(
                batch200,
                f"file://{tmp_path}",
                indexes=[1],
                path_template="m/{file_name}",
                manifest_template="m/a.txt",
            )
        )
    # a template that keeps artifacts apart, but whose paths could be the manifest's: all checked first too
    with pytest.raises(ArtifactsConfigError, match="would overwrite the manifest"):
        run(
            operator(
                batch200,
                f"file://{tmp_path}",
                indexes=[0, 1],
                path_template="{index}/{file_name}",
                manifest_template="1/a.txt",
                max_concurrency=1,
            )
        )
    assert not any(tmp_path.rglob("*"))


def test_file_transfer_killed_midway_then_rerun(
    env: dict[str, str], api: Api, batch200: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out"
    faults = break_after(monkeypatch, 99, "b.bin", 1000)  # b.bin of record 99 has 316,832 bytes
    with pytest.raises(ArtifactTransferError, match="1 artifact failed") as info:
        run(operator(batch200, f"file://{dest}", indexes="90-99", transfer_retries=1, chunk_size=4096))
    assert len(faults) == 2  # the first try and one retry, each cut after 1,000 bytes
    assert info.value.summary["failed"] == 1 and info.value.summary["copied"] == 11
    assert not (dest / batch200 / "99" / "b.bin").exists()
    assert [p.name for p in (dest / batch200 / "99").iterdir()] == ["a.txt"]  # no temporary left behind
    manifest = json.loads((dest / batch200 / "manifest.json").read_text())
    failed = [e for e in manifest["artifacts"] if e["status"] == "failed"]
    assert [(e["index"], e["file_name"]) for e in failed] == [(99, "b.bin")]
    assert "injected fault" in failed[0]["error"]

    monkeypatch.undo()
    summary = run(operator(batch200, f"file://{dest}", indexes="90-99"))
    assert summary["copied"] == 1 and summary["skipped"] == 11 and summary["failed"] == 0
    data = (dest / batch200 / "99" / "b.bin").read_bytes()
    assert data == server_bytes(api, "artsvc", batch200, 99, "b.bin")


def test_running_execution_copies_what_exists(env: dict[str, str], api: Api, tmp_path: Path) -> None:
    api.publish("artslow", VERSION, SLOW_CODE, {"x": "numeric"}, {"y": "numeric"}, files=["out.txt"])
    execution_id = api.start_batch("artslow", VERSION, [{"x": float(i)} for i in range(8)], parallel=1)
    try:
        deadline = time.monotonic() + 60
        while api.status("artslow", VERSION, execution_id)["completedItemCount"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        expected = (
            rf"Not finished after \d+ s \(timeout is 0.5 s\): batch execution '{execution_id}' \((Pending|Running), "
            r"\d of 8 records\) of artslow/1.0. Raise timeout, or set wait_for_completion=False to copy what exists "
            r"so far.$"
        )
        with pytest.raises(ExecutionWaitTimeoutError, match=expected):
            run(
                operator(
                    execution_id, f"file://{tmp_path}/w", service="artslow", timeout=0.5, poll_interval=0.2
                )
            )
        summary = run(
            operator(execution_id, f"file://{tmp_path}/out", service="artslow", wait_for_completion=False)
        )
        assert summary["finished"] is False and summary["state"].lower() in ("running", "pending")
        assert 3 <= summary["copied"] < 8
        assert summary["records_without_artifacts"] == 8 - summary["copied"]
        copied = sorted(int(p.parent.name) for p in (tmp_path / "out" / execution_id).rglob("out.txt"))
        assert copied == list(range(summary["copied"]))
    finally:
        api.delete(f"/api/artslow/{VERSION}/batch/{execution_id}")


# --- the executions of a batch task, numbered as its results file ---------------------------------------------

#: Records 0-4, 5-7 and 8-11 in three executions (as three chunks); record r has x = r, so its a.txt says "record r".
CHUNKS = [range(0, 5), range(5, 8), range(8, 12)]


@pytest.fixture(scope="module")
def chunked(api: Api, batch200: str) -> list[str]:
    """Three executions of ``artsvc`` (published by ``batch200``), as a chunked batch task leaves them."""
    ids = [
        api.start_batch("artsvc", VERSION, [{"x": float(r)} for r in chunk], parallel=4) for chunk in CHUNKS
    ]
    for execution_id in ids:
        assert _finished(api, "artsvc", execution_id)["state"] == "Complete"
    return ids


def test_executions_of_a_batch_task_are_numbered_as_its_results_file(
    env: dict[str, str], api: Api, chunked: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    summary = run(operator(None, f"file://{dest}", execution_ids=chunked))
    expected = {(r, f) for r in range(12) for f in expected_files(r)}
    assert summary["copied"] == len(expected) and summary["records"] == 12
    assert summary["execution_id"] == chunked[0] and summary["execution_ids"] == chunked
    assert summary["state"] == "Complete" and summary["finished"] is True
    assert summary["records_without_artifacts"] == 2 and summary["records_without_artifacts_first"] == [0, 10]
    assert summary["manifest"] == f"file://{dest}/manifest.json"
    for record, name in expected:  # {record}/{file_name} by default; record r wrote "record r" r + 1 times
        data = (dest / str(record) / name).read_bytes()
        if name == "a.txt":
            assert data == f"record {record}\n".encode() * (record + 1)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["execution_ids"] == chunked and manifest["execution_id"] == chunked[0]
    assert manifest["executions"] == [
        {
            "execution_id": chunked[0],
            "round": 0,
            "first_record": 0,
            "records": 5,
            "state": "Complete",
            "finished": True,
        },
        {
            "execution_id": chunked[1],
            "round": 0,
            "first_record": 5,
            "records": 3,
            "state": "Complete",
            "finished": True,
        },
        {
            "execution_id": chunked[2],
            "round": 0,
            "first_record": 8,
            "records": 4,
            "state": "Complete",
            "finished": True,
        },
    ]
    assert manifest["records"] == {"from": 0, "to": 11} and manifest["records_without_artifacts"] == [0, 10]
    nine = next(e for e in manifest["artifacts"] if (e["record"], e["file_name"]) == (9, "b.bin"))
    assert (nine["execution_id"], nine["index"]) == (chunked[2], 1)
    assert nine["destination"] == f"file://{dest}/9/b.bin"
    assert nine["bytes"] == len(server_bytes(api, "artsvc", chunked[2], 1, "b.bin"))

    again = run(operator(None, f"file://{dest}", execution_ids=chunked))
    assert again["copied"] == 0 and again["skipped"] == len(expected)
    rerun = json.loads((dest / "manifest.json").read_text())
    assert [e["sha256"] for e in rerun["artifacts"]] == [e["sha256"] for e in manifest["artifacts"]]


@pytest.mark.parametrize(
    "form",
    ["list", "per map index", "summaries", "rendered text"],
)
def test_execution_ids_in_the_forms_a_dag_passes_them(
    env: dict[str, str], chunked: list[str], tmp_path: Path, form: str
) -> None:
    given: Any = {
        "list": chunked,
        "per map index": [[chunked[0]], chunked[1:]],  # a mapped batch task's XCom: a list per map index
        "summaries": [
            {"execution_ids": [chunked[0]], "total": 5},
            {"execution_ids": chunked[1:], "total": 7},
        ],
        "rendered text": str(chunked),  # {{ ti.xcom_pull(task_ids='score', key='execution_ids') }}
    }[form]
    dest = tmp_path / "out"
    summary = run(
        operator(
            None,
            f"file://{dest}",
            execution_ids=given,
            indexes="4-6,9",  # across the first two executions' boundary
            path_template="{execution_id}/{index}/{record}-{file_name}",
        )
    )
    assert summary["records"] == 4 and summary["execution_ids"] == chunked
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(
        [
            "manifest.json",
            f"{chunked[0]}/4/4-a.txt",
            f"{chunked[1]}/0/5-a.txt",
            f"{chunked[1]}/1/6-a.txt",
            f"{chunked[1]}/1/6-b.bin",
            f"{chunked[2]}/1/9-a.txt",
            f"{chunked[2]}/1/9-b.bin",
        ]
    )


@pytest.mark.parametrize("mapped", [False, True])
def test_rescored_records_come_from_their_latest_attempt(
    env: dict[str, str], api: Api, chunked: list[str], tmp_path: Path, mapped: bool
) -> None:
    """Given the batch operator's summary, a record that a rescore round scored again has its latest attempt."""
    first = api.start_batch("artsvc", VERSION, [{"x": 109.0}, {"x": 110.0}], parallel=2)  # records 9 and 10
    second = api.start_batch("artsvc", VERSION, [{"x": 211.0}], parallel=1)  # record 10 again
    for execution_id in (first, second):
        assert _finished(api, "artsvc", execution_id)["state"] == "Complete"
    if mapped:  # map index 0 has records 0-4; map index 1 has 5-11, its own 4-5 (and its rescores name those)
        given: Any = [
            {
                "execution_ids": chunked[:1],
                "executions": [{"execution_id": chunked[0], "round": 0, "records": "0-4"}],
            },
            {
                "execution_ids": chunked[1:],
                "executions": [
                    {"execution_id": chunked[1], "round": 0, "records": "0-2"},
                    {"execution_id": chunked[2], "round": 0, "records": "3-6"},
                    {"execution_id": first, "round": 1, "records": "4-5"},
                    {"execution_id": second, "round": 2, "records": "5"},
                ],
            },
        ]
    else:
        given = {
            "execution_ids": chunked,
            "executions": [
                {"execution_id": chunked[0], "round": 0, "records": "0-4"},
                {"execution_id": chunked[1], "round": 0, "records": "5-7"},
                {"execution_id": chunked[2], "round": 0, "records": "8-11"},
                {"execution_id": first, "round": 1, "records": "9-10"},
                {"execution_id": second, "round": 2, "records": "10"},
            ],
        }
    dest = tmp_path / "out"
    summary = run(operator(None, f"file://{dest}", execution_ids=given, indexes="8-11"))
    assert summary["execution_ids"] == chunked and summary["rescored_records"] == 2
    assert (dest / "9" / "a.txt").read_text() == "record 109\n" * 110  # round 1's first record
    assert not (dest / "9" / "b.bin").exists()  # the first attempt wrote one; the latest did not
    assert (dest / "10" / "a.txt").read_text() == "record 211\n" * 212  # round 2 scored it last
    assert (dest / "11" / "a.txt").read_text() == "record 11\n" * 12  # never rescored
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["executions"][3:] == [
        {"execution_id": first, "round": 1, "records": 2, "record_numbers": "9-10", "state": "Complete",
         "finished": True},
        {"execution_id": second, "round": 2, "records": 1, "record_numbers": "10", "state": "Complete",
         "finished": True},
    ]  # fmt: skip
    lines = {
        e["record"]: (e["execution_id"], e["index"])
        for e in manifest["artifacts"]
        if e["file_name"] == "a.txt"
    }
    assert lines == {8: (chunked[2], 0), 9: (first, 0), 10: (second, 0), 11: (chunked[2], 3)}


def test_executions_of_a_batch_task_refuse_what_cannot_be_numbered(
    env: dict[str, str], chunked: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ArtifactsConfigError) as info:
        run(
            operator(
                None,
                f"file://{tmp_path}",
                execution_ids=chunked,
                path_template="{index}/{file_name}",
            )
        )
    assert str(info.value) == (
        "path_template '{index}/{file_name}' places record index {index} without {execution_id} or {record}, so the "
        "records of the 3 executions would overwrite each other: use {record} (the record's number in the task, as "
        "in the results file)."
    )
    with pytest.raises(
        ArtifactsConfigError, match="indexes selects record 12, but the executions have 12 records"
    ):
        run(operator(None, f"file://{tmp_path}", execution_ids=chunked, indexes=[3, 12]))
    assert not any(tmp_path.rglob("*"))


def test_executions_of_a_batch_task_are_all_awaited(env: dict[str, str], api: Api, tmp_path: Path) -> None:
    """One execution canceled, the other still running: the wait goes on until that one has finished too."""
    api.publish("artslow", VERSION, SLOW_CODE, {"x": "numeric"}, {"y": "numeric"}, files=["out.txt"])
    running = api.start_batch("artslow", VERSION, [{"x": float(i)} for i in range(5)], parallel=1)
    canceled = api.start_batch("artslow", VERSION, [{"x": float(i)} for i in range(5, 7)], parallel=1)
    api.delete(f"/api/artslow/{VERSION}/batch/{canceled}")
    summary = run(
        operator(
            None,
            f"file://{tmp_path}/out",
            service="artslow",
            execution_ids=[running, canceled],
        )
    )
    assert summary["finished"] is True and summary["state"].startswith("Complete (1), Cancel")
    copied = sorted(int(p.parent.name) for p in (tmp_path / "out").rglob("out.txt"))
    assert copied[:5] == [0, 1, 2, 3, 4] and summary["records"] == 7


@pytest.mark.parametrize(
    ("template", "one", "apart"),
    [
        ("{record}/{file_name}", False, True),
        ("{execution_id}/{index}/{file_name}", False, True),
        ("out/{record}/x/{file_name}", False, True),
        ("{index}/{file_name}", True, True),
        ("{index}/{file_name}", False, False),  # two executions' record 0
        ("{record}{file_name}", True, False),  # record 1's '2a' and record 12's 'a'
        ("{record}/{file_name}.bak", True, False),
        ("{record:03d}/{file_name}", True, False),  # a spec: not read back
        ("{file_name:.3}/{record}", True, False),
        ("x/{file_name}", True, False),
    ],
)
def test_templates_that_keep_artifacts_apart(template: str, one: bool, apart: bool) -> None:
    assert places_apart(template, one) is apart


def test_templates_that_may_render_to_the_manifest() -> None:
    assert may_render_to("{record}/{file_name}", "12/manifest.json")
    assert not may_render_to("{record}/{file_name}", "manifest.json")
    assert not may_render_to("{record}/{file_name}", "x/manifest.json")  # {record} is a number
    assert may_render_to("{execution_id}/{index}/{file_name}", "e1/0/m.json")
    assert not may_render_to("{execution_id}/{index}/{file_name}", "e1/manifest.json")
    assert may_render_to("{record:03d}/{file_name}", "manifest.json")  # cannot tell: say it might


# --- hostile names from a server (a loopback stub: the local server refuses such outputFileNames) -------------

# Record 0's names reach the operator, which refuses all but two; record 1's listing holds names that cannot be
# one path segment, which the client refuses as a malformed answer.
HOSTILE = ["good.txt", "C:evil.txt", " lead.txt", "trail.txt ", "n" * 256, "ok2.csv"]
UNUSABLE = ["fine.txt", "../../evil.txt", "/etc/passwd-copy", "a\\b.txt", "..", "bell\x07.txt"]
REPEATED = ["twice.txt", "once.txt", "twice.txt"]


class _StubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/login":
            self._send(
                200, json.dumps({"token_type": "Bearer", "access_token": "t", "expires_in": 3600}).encode()
            )
        else:
            self._send(404, b'{"message": "no"}')

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        base = "/api/stub/1.0/batch/ex1"
        if path == base:
            head = {"name": "stub", "version": "1.0", "batchExecutionId": "ex1", "state": "Complete"}
            self._send(200, json.dumps({**head, "totalItemCount": 3, "completedItemCount": 3}).encode())
        elif path == f"{base}/0/files":
            self._send(200, json.dumps(HOSTILE).encode())
        elif path == f"{base}/1/files":
            self._send(200, json.dumps(UNUSABLE).encode())
        elif path == f"{base}/2/files":
            self._send(200, json.dumps(REPEATED).encode())
        elif path.startswith((f"{base}/0/files/", f"{base}/2/files/")):
            self._send(200, b"content of " + path.rsplit("/", 1)[1].encode(), "application/octet-stream")
        else:
            self._send(404, b'{"message": "not found"}')


def test_hostile_names_from_server_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_STUB", f"mlserver://u:p@127.0.0.1:{stub.server_address[1]}")
    root = tmp_path / "root"
    dest = root / "a" / "b" / "dest"
    stubbed = {"service": "stub", "mlserver_conn_id": "stub"}
    try:
        with pytest.raises(ArtifactTransferError, match="4 were refused") as info:
            run(operator("ex1", f"file://{dest}", indexes=[0], **stubbed))
        assert info.value.summary["refused"] == 4 and info.value.summary["copied"] == 2
        summary = run(operator("ex1", f"file://{dest}", indexes=[0], fail_on_refused=False, **stubbed))
        assert summary["refused"] == 4 and summary["skipped"] == 2
        with pytest.raises(MalformedResponseError, match=re.escape("'../../evil.txt' and 4 more")):
            run(operator("ex1", f"file://{tmp_path}/other", indexes=[1], **stubbed))
    finally:
        stub.shutdown()
        stub.server_close()
    assert sorted(local_tree(root)) == [
        "a/b/dest/ex1/0/good.txt",
        "a/b/dest/ex1/0/ok2.csv",
        "a/b/dest/ex1/manifest.json",
    ]
    assert not (tmp_path / "other").exists()  # record 1's listing failed before anything was written
    manifest = json.loads((dest / "ex1" / "manifest.json").read_text())
    refused = {e["file_name"]: e for e in manifest["artifacts"] if e["status"] == "refused"}
    assert set(refused) == set(HOSTILE) - {"good.txt", "ok2.csv"}
    assert all(e["destination"] is None and "refused" in e["error"] for e in refused.values())


def test_listing_failing_midway_keeps_what_was_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are copied as they are listed: when a later listing fails, the manifest still lists the copies."""
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_STUB", f"mlserver://u:p@127.0.0.1:{stub.server_address[1]}")
    stubbed = {"service": "stub", "mlserver_conn_id": "stub", "fail_on_refused": False, "max_concurrency": 1}
    try:
        with pytest.raises(MalformedResponseError, match="evil"):
            run(operator("ex1", f"file://{tmp_path}", indexes=[0, 1], **stubbed))
        manifest = json.loads((tmp_path / "ex1" / "manifest.json").read_text())
        copied = {e["file_name"]: e["sha256"] for e in manifest["artifacts"] if e["status"] == "copied"}
        assert copied == {
            n: hashlib.sha256(b"content of " + n.encode()).hexdigest() for n in ("good.txt", "ok2.csv")
        }
        rerun = run(operator("ex1", f"file://{tmp_path}", indexes=[0], **stubbed))
        assert rerun["skipped"] == 2 and rerun["copied"] == 0
    finally:
        stub.shutdown()
        stub.server_close()
    again = json.loads((tmp_path / "ex1" / "manifest.json").read_text())
    assert {e["file_name"]: e["sha256"] for e in again["artifacts"] if e["status"] == "skipped"} == copied


def test_a_name_listed_twice_is_one_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that repeats a name (the contract does not forbid it) copies that file once, with one entry."""
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_STUB", f"mlserver://u:p@127.0.0.1:{stub.server_address[1]}")
    try:
        summary = run(
            operator("ex1", f"file://{tmp_path}", indexes=[2], service="stub", mlserver_conn_id="stub")
        )
    finally:
        stub.shutdown()
        stub.server_close()
    assert summary["copied"] == 2 and summary["failed"] == 0
    assert sorted(local_tree(tmp_path)) == ["ex1/2/once.txt", "ex1/2/twice.txt", "ex1/manifest.json"]
    manifest = json.loads((tmp_path / "ex1" / "manifest.json").read_text())
    assert sorted(e["file_name"] for e in manifest["artifacts"]) == ["once.txt", "twice.txt"]


# --- S3 through moto ----------------------------------------------------------------------------------------


def s3_objects(s3: Any, prefix: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def test_s3_copy_all_manifest_and_rerun(env: dict[str, str], api: Api, s3: Any, batch200: str) -> None:
    dest = f"s3://{BUCKET}/run1"
    summary = run(operator(batch200, dest, dest_conn_id=S3_CONN, max_concurrency=8))
    expected = {(i, f) for i in range(200) for f in expected_files(i)}
    assert summary["copied"] == len(expected) and summary["failed"] == 0
    assert summary["manifest"] == f"s3://{BUCKET}/run1/{batch200}/manifest.json"
    objects = s3_objects(s3, f"run1/{batch200}/")
    assert len(objects) == len(expected) + 1
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"run1/{batch200}/manifest.json")["Body"].read())
    for entry in manifest["artifacts"]:
        key = f"run1/{batch200}/{entry['index']}/{entry['file_name']}"
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        assert entry["destination"] == f"s3://{BUCKET}/{key}"
    sample = {(3, "b.bin"), (199, "a.txt")}
    for index, name in sample:
        key = f"run1/{batch200}/{index}/{name}"
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == server_bytes(
            api, "artsvc", batch200, index, name
        )

    again = run(operator(batch200, dest, dest_conn_id=S3_CONN))
    assert again["copied"] == 0 and again["skipped"] == len(expected)


def test_s3_transfer_killed_midway_then_rerun(
    env: dict[str, str], s3: Any, big_batch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = f"s3://{BUCKET}/big"
    faults = break_after(monkeypatch, 0, "big.bin", 7 * 1024 * 1024)  # after one 5 MiB part was uploaded
    with pytest.raises(ArtifactTransferError, match="1 artifact failed"):
        run(operator(big_batch, dest, service="artbig", dest_conn_id=S3_CONN, transfer_retries=0))
    assert faults == [0]
    objects = s3_objects(s3, "big/")
    assert sorted(objects) == [f"big/{big_batch}/1/big.bin", f"big/{big_batch}/manifest.json"]
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # the started upload was aborted

    monkeypatch.undo()
    summary = run(operator(big_batch, dest, service="artbig", dest_conn_id=S3_CONN))
    assert summary["copied"] == 1 and summary["skipped"] == 1
    body = s3.get_object(Bucket=BUCKET, Key=f"big/{big_batch}/0/big.bin")["Body"].read()
    assert body == (bytes(range(256)) * 4096) * 12


# --- a real DAG ---------------------------------------------------------------------------------------------


def _dag_run(dag_id: str, conf: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Run a DAG of ``tests/dags/artifacts_dags.py`` with ``dag.test()``: its tasks' states, and copy's summary."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "artifacts_dags.py"))
    assert not bag.import_errors, bag.import_errors
    dagrun = bag.get_dag(dag_id).test(run_conf=conf)
    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=dagrun.run_id).all()
        states = {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in tis}
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=dagrun.run_id, task_id="copy", key="return_value")
            .one_or_none()
        )
        summary = XComModel.deserialize_value(row) if row is not None else None
    return states, summary


def test_in_a_dag_with_dag_test(env: dict[str, str], s3: Any, batch200: str, airflow_db: Path) -> None:
    """``artifacts_to_storage``: templated fields, XCom summary, Asset outlet."""
    states, summary = _dag_run("artifacts_to_storage", {"execution_id": batch200, "bucket": BUCKET})
    assert states == {"copy[-1]": "success"}
    assert summary is not None and summary["copied"] == 18 and summary["records_without_artifacts"] == 2, (
        summary
    )
    assert summary["manifest"] == f"s3://{BUCKET}/dag/artifacts_to_storage/{batch200}/manifest.json"
    assert len(s3_objects(s3, "dag/artifacts_to_storage/")) == 19


def test_a_mapped_batch_task_in_a_dag(
    env: dict[str, str], chunked: list[str], airflow_db: Path, tmp_path: Path
) -> None:
    """``artifacts_of_a_mapped_task``: execution_ids from a mapped task's XCom (one list per map index)."""
    conf = {"chunks": [[chunked[0]], chunked[1:]], "dest": str(tmp_path), "indexes": "4-9"}
    states, summary = _dag_run("artifacts_of_a_mapped_task", conf)
    assert states == {
        "chunks[-1]": "success",
        "score_chunk[0]": "success",
        "score_chunk[1]": "success",
        "copy[-1]": "success",
    }
    assert summary is not None and summary["execution_ids"] == chunked and summary["records"] == 6
    copied = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.txt"))
    assert copied == [f"{r}/a.txt" for r in range(4, 10)]
    assert (tmp_path / "9" / "a.txt").read_text() == "record 9\n" * 10

    states, summary = _dag_run(
        "artifacts_of_a_mapped_task", {**conf, "indexes": "9-4"}
    )  # refused once rendered
    assert states["copy[-1]"] == "failed" and summary is None


def test_dest_as_outlet_declares_an_asset(tmp_path: Path) -> None:
    from airflow.sdk import Asset

    op = operator("e", f"file://{tmp_path}/out", dest_as_outlet=True)
    assert op.outlets == [Asset(f"file://{tmp_path}/out")]
    s3op = operator("e", "s3://bucket/prefix", dest_conn_id=S3_CONN, dest_as_outlet=True)
    assert [a.uri for a in s3op.outlets] == ["s3://bucket/prefix"]
    with pytest.raises(OperatorArgumentError) as info:
        operator("e", "s3://bucket/{{ ds }}", dest_as_outlet=True)
    assert str(info.value) == (
        "Argument dest is 's3://bucket/{{ ds }}': give a fixed dest with dest_as_outlet=True, or pass "
        "outlets=[Asset(...)] yourself."
    )
