"""The batch operator, trigger and sensor in real Airflow (``dag.test()``, deferral included) on the local server."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import Api

SCORER = "if x < 0:\n    raise ValueError(f'negative input {x}')\ny = x * 2\nlabel = name.upper()\n"
SLOW = "import time\ntime.sleep(1)\ny = x\nlabel = name\n"
#: The results file's columns for the services' inputs (x, name) and outputs (y, label).
COLUMNS = ["record", "x", "name", "y", "label", "success", "error_message"]


#: Sleeps ``x`` seconds per record: chunks of very different durations.
NAPPER = "import time\ntime.sleep(x)\ny = x\nlabel = name\n"


#: Fails a record named ``flaky...`` at its first attempt only (a marker file in a folder of the test's), and a
#: negative ``x`` at every attempt.
FLAKY = """import os
marker = os.path.join({markers!r}, name)
if name.startswith('flaky') and not os.path.exists(marker):
    open(marker, 'w').close()
    raise ValueError('first attempt fails')
if x < 0:
    raise ValueError(f'negative input {{x}}')
y = x * 2
label = name.upper()
"""


@pytest.fixture(scope="module")
def services(api: Api, tmp_path_factory: pytest.TempPathFactory) -> None:
    outputs = {"y": "numeric", "label": "character"}
    api.publish("scorer", "v1", SCORER, {"x": "numeric", "name": "character"}, outputs)
    api.publish("slowpoke", "v1", SLOW, {"x": "numeric", "name": "character"}, outputs)
    api.publish(
        "sleeper", "v1", SLOW.replace("sleep(1)", "sleep(4)"), {"x": "numeric", "name": "character"}, outputs
    )
    markers = str(tmp_path_factory.mktemp("flaky-markers"))
    api.publish("flaky", "v1", FLAKY.format(markers=markers), {"x": "numeric", "name": "character"}, outputs)
    api.publish("napper", "v1", NAPPER, {"x": "numeric", "name": "character"}, outputs)


@pytest.fixture
def run_dag(airflow_db: Path, mlserver_conn: str, services: None) -> Any:
    """Run one of ``tests/dags/batch_dags.py``'s DAGs with ``dag.test()``; answer the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "batch_dags.py"))
    assert not bag.import_errors, bag.import_errors

    def run(dag_id: str, **params: Any) -> Any:
        return bag.get_dag(dag_id).test(run_conf=params)

    return run


def _frame(n: int, negative: tuple[int, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame(
        {"x": [float(-i if i in negative else i) for i in range(n)], "name": [f"n{i}" for i in range(n)]}
    )


def _write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    return f"file://{path}"


def _summary(dagrun: Any, task_id: str = "score") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id, task_id=task_id, key="return_value")
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


def _stored_batch(dagrun: Any, task_id: str = "score") -> dict[str, Any]:
    """The batch state the task instance left in the task-state store, as stored (JSON)."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(TaskStateStoreModel)
            .filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id, task_id=task_id, key="mlserver_batch")
            .one()
        )
        value: dict[str, Any] = json.loads(row.value)
        return value


def _task_state(dagrun: Any, task_id: str = "score") -> str:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id, task_id=task_id)
            .one()
        )
        return str(ti.state)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_deferrable_batch_from_each_file_format(run_dag: Any, api: Api, tmp_path: Path, suffix: str) -> None:
    frame = _frame(12)
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_deferrable", records=_write(frame, tmp_path / f"in{suffix}"), output=str(out)
    )
    assert dagrun.state == "success"
    results = pd.read_parquet(out)
    assert list(results.columns) == COLUMNS
    assert results["record"].tolist() == list(range(12))
    assert results["y"].tolist() == [2.0 * i for i in range(12)]
    assert results["label"].tolist() == [f"N{i}" for i in range(12)]
    assert results["success"].all()
    summary = _summary(dagrun)
    assert summary["total"] == 12 and summary["succeeded"] == 12 and summary["failed"] == 0
    assert summary["service_version"] == "v1"
    assert len(summary["execution_ids"]) == 1
    assert summary["execution_ids"][0] in api.get("/api/scorer/v1/batch").json()


def test_in_worker_batch_writes_csv_results(
    run_dag: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.csv"
    dagrun = run_dag(
        "mlserver_test_in_worker", records=_write(_frame(5), tmp_path / "in.csv"), output=f"file://{out}"
    )
    assert dagrun.state == "success"
    log = capfd.readouterr().out
    assert "new_state=deferred" not in log
    assert pd.read_csv(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert re.search(r"Started batch execution \S+ for the only chunk \(5 records\)", log)
    # the last line: a sentence with the counts, the duration, the rate and the output, not a dict
    assert re.search(
        r"Scored 5 records with web service 'scorer' version 'v1' in \d+(\.\d)?s \([\d,.]+ records/s\): "
        rf"5 succeeded, 0 failed; results in file://{re.escape(str(out))}",
        log,
    ), log[-3000:]
    assert "Batch done: {" not in log and "map index" not in log


def test_dataframe_records_and_latest_version(run_dag: Any, tmp_path: Path) -> None:
    out = tmp_path / "frame.parquet"
    dagrun = run_dag("mlserver_test_dataframe", version=None, output=str(out))
    assert dagrun.state == "success"
    assert pd.read_parquet(out)["y"].tolist() == [3.0, 4.0, 6.0]


def test_failed_records_fail_the_task_by_default(run_dag: Any, tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    records = _write(_frame(8, negative=(3, 5)), tmp_path / "in.csv")
    dagrun = run_dag("mlserver_test_deferrable", records=records, output=str(out))
    assert dagrun.state == "failed"
    results = pd.read_parquet(out)  # the results are written all the same, for inspection
    assert results["success"].tolist() == [True, True, True, False, True, False, True, True]
    assert results["error_message"][3] == "ValueError: negative input -3.0\n  line 2 in <module> (code)"


def test_failed_records_within_tolerance(run_dag: Any, tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    records = _write(_frame(8, negative=(3, 5)), tmp_path / "in.csv")
    dagrun = run_dag("mlserver_test_tolerant", records=records, output=str(out))
    assert dagrun.state == "success"
    summary = _summary(dagrun)
    assert (summary["succeeded"], summary["failed"]) == (6, 2)
    assert pd.read_parquet(out)["y"].isna().tolist() == [False, False, False, True, False, True, False, False]


def test_chunks_run_as_separate_executions_and_results_keep_input_order(
    run_dag: Any, api: Api, tmp_path: Path
) -> None:
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_chunked", records=_write(_frame(30), tmp_path / "in.parquet"), output=str(out)
    )
    assert dagrun.state == "success"
    summary = _summary(dagrun)
    assert len(summary["execution_ids"]) == 5  # 30 records in chunks of 7
    for execution_id in summary["execution_ids"]:
        assert api.status("scorer", "v1", execution_id)["state"] == "Complete"
    # the task-state store keeps its times as ISO-8601 text in UTC, each chunk's start among them
    stored = _stored_batch(dagrun)
    assert [p["execution_id"] for p in stored["rounds"][0]["parts"]] == summary["execution_ids"]
    assert [p["records"] for p in stored["rounds"][0]["parts"]] == ["0-6", "7-13", "14-20", "21-27", "28-29"]
    assert stored["deadline"] is None
    started = datetime.fromisoformat(stored["started"])
    assert started.utcoffset() is not None and started.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(started.timestamp() - time.time()) < 600
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stored["started"])
    chunk_starts = [datetime.fromisoformat(p["started"]) for p in stored["rounds"][0]["parts"]]
    assert chunk_starts == sorted(chunk_starts) and chunk_starts[0] >= started
    results = pd.read_parquet(out)
    assert results["record"].tolist() == list(range(30))
    assert results["y"].tolist() == [2.0 * i for i in range(30)]


def test_timeout_cancels_the_execution_and_fails_the_task(run_dag: Any, api: Api, tmp_path: Path) -> None:
    before = set(api.get("/api/slowpoke/v1/batch").json())
    records = _write(_frame(40), tmp_path / "in.csv")
    started = time.monotonic()
    dagrun = run_dag(
        "mlserver_test_timeout", service="slowpoke", records=records, output=str(tmp_path / "o.parquet")
    )
    assert dagrun.state == "failed"
    assert time.monotonic() - started < 60
    (execution_id,) = set(api.get("/api/slowpoke/v1/batch").json()) - before
    assert api.status("slowpoke", "v1", execution_id)["state"] == "Canceled"
    assert not (tmp_path / "o.parquet").exists()


def test_bad_records_fail_before_anything_is_sent(run_dag: Any, api: Api, tmp_path: Path) -> None:
    before = api.get("/api/scorer/v1/batch").json()
    bad = pd.DataFrame({"x": [1.0, 2.0], "nom": ["a", "b"]})
    dagrun = run_dag(
        "mlserver_test_deferrable", records=_write(bad, tmp_path / "bad.csv"), output=str(tmp_path / "o")
    )
    assert dagrun.state == "failed"
    assert api.get("/api/scorer/v1/batch").json() == before


@pytest.mark.parametrize("dag_id", ["mlserver_test_sensor_poke", "mlserver_test_sensor_reschedule",
                                    "mlserver_test_sensor_deferrable"])  # fmt: skip
def test_sensor_waits_for_an_execution_started_outside_airflow(run_dag: Any, api: Api, dag_id: str) -> None:
    execution_id = api.start_batch("slowpoke", "v1", [{"x": float(i), "name": "s"} for i in range(3)], 3)
    dagrun = run_dag(dag_id, service="slowpoke", execution_id=execution_id)
    assert dagrun.state == "success"
    assert api.status("slowpoke", "v1", execution_id)["state"] == "Complete"
    assert _summary(dagrun, "wait")["completed"] == 3


@pytest.mark.parametrize("dag_id", ["mlserver_test_sensor_poke", "mlserver_test_sensor_deferrable"])
def test_sensor_fails_on_a_canceled_execution(run_dag: Any, api: Api, dag_id: str) -> None:
    execution_id = api.start_batch("slowpoke", "v1", [{"x": float(i), "name": "s"} for i in range(30)], 1)
    api.delete(f"/api/slowpoke/v1/batch/{execution_id}")
    dagrun = run_dag(dag_id, service="slowpoke", execution_id=execution_id)
    assert dagrun.state == "failed"
    assert _task_state(dagrun, "wait") == "failed"


def test_openlineage_facets(mlserver_conn: str) -> None:
    from airflow_mlserver.operators.batch import MLServerBatchOperator

    operator = MLServerBatchOperator(
        task_id="lineage",
        service_name="scorer",
        service_version="v1",
        records="s3://bucket/in/records.csv",
        output_path="file:///data/out/results.parquet",
    )
    lineage = operator.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://bucket", "in/records.csv")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", "/data/out/results.parquet")]
    facet = lineage.job_facets["mlserverService"]
    assert (facet.service, facet.version) == ("scorer", "v1")
    assert facet.swagger.endswith("/api/scorer/v1/swagger.json")


def test_return_results_on_a_small_batch(run_dag: Any, tmp_path: Path) -> None:
    dagrun = run_dag(
        "mlserver_test_return_results", records=_write(_frame(3), tmp_path / "in.csv"), output=None
    )
    assert dagrun.state == "success"
    summary = _summary(dagrun)
    assert summary["output_uri"] is None
    assert [r["y"] for r in summary["results"]] == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("dag_id", ["mlserver_test_deferrable", "mlserver_test_in_worker_badinit"])
def test_a_failed_execution_fails_the_task_once(run_dag: Any, api: Api, tmp_path: Path, dag_id: str) -> None:
    if api.get("/services/brokeninit/v1").status_code != 200:
        inputs, outputs = {"x": "numeric", "name": "character"}, {"y": "numeric", "label": "character"}
        api.publish("brokeninit", "v1", "y = x", inputs, outputs, init_code="raise OSError('model missing')")
    before = set(api.get("/api/brokeninit/v1/batch").json())
    records = _write(_frame(4), tmp_path / "in.csv")
    dagrun = run_dag(dag_id, service="brokeninit", records=records, output=str(tmp_path / "o"))
    assert dagrun.state == "failed"
    started = set(api.get("/api/brokeninit/v1/batch").json()) - before
    assert len(started) == 1  # failed once, never started again in the same try


def test_timeout_is_stored_as_an_iso_deadline(run_dag: Any, tmp_path: Path) -> None:
    records = _write(_frame(40), tmp_path / "in.csv")
    dagrun = run_dag("mlserver_test_timeout", service="slowpoke", records=records, output=str(tmp_path / "o"))
    stored = _stored_batch(dagrun)
    started, deadline = (datetime.fromisoformat(stored[k]) for k in ("started", "deadline"))
    assert abs((deadline - started).total_seconds() - 3) < 0.01  # timeout=3


def test_a_state_stored_by_an_older_version_reattaches(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Unix-timestamp times (the form before ISO-8601) are read: the task uses that execution, starts none."""
    frame = _frame(4)
    execution_id = api.start_batch("scorer", "v1", frame.to_dict("records"), 2)
    before = set(api.get("/api/scorer/v1/batch").json())
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_legacy_state",
        records=_write(frame, tmp_path / "in.csv"),
        output=str(out),
        execution_id=execution_id,
    )
    assert dagrun.state == "success"
    assert set(api.get("/api/scorer/v1/batch").json()) == before  # nothing started again
    assert _summary(dagrun)["execution_ids"] == [execution_id]
    assert pd.read_parquet(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0]
    log = capfd.readouterr().out
    assert re.search(
        rf"Found the executions of an earlier try \(started 1m3\ds ago\): the only chunk: {execution_id}", log
    ), log[-3000:]
    assert "Started batch execution" not in log
    # the summary's duration counts from the older try's start, 90 s ago
    assert 90 <= _summary(dagrun)["duration_seconds"] < 150
    assert re.search(r"Scored 4 records with web service 'scorer' version 'v1' in 1m3\ds ", log)


def test_a_task_deferred_by_the_earlier_release_resumes_on_this_one(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The earlier release's state (no record numbers per chunk) and trigger: the resume numbers the chunks from
    the input, stores this release's form, uses both executions and starts none."""
    frame = _frame(5)
    first = api.start_batch("scorer", "v1", frame.iloc[:3].to_dict("records"), 2)
    second = api.start_batch("scorer", "v1", frame.iloc[3:].to_dict("records"), 2)
    before = set(api.get("/api/scorer/v1/batch").json())
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_deferred_by_earlier_release", records=_write(frame, tmp_path / "in.csv"), output=str(out),
        execution_id=first, rescore_execution=second,
    )  # fmt: skip
    assert dagrun.state == "success"
    assert set(api.get("/api/scorer/v1/batch").json()) == before  # nothing started
    assert _summary(dagrun)["execution_ids"] == [first, second]
    assert pd.read_parquet(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    stored = _stored_batch(dagrun)
    assert [(p["records"], p["execution_id"]) for p in stored["rounds"][0]["parts"]] == [
        ("0-2", first),
        ("3-4", second),
    ]
    assert "Started batch execution" not in capfd.readouterr().out


def test_mapped_task_names_its_map_index_and_its_own_chunks(
    run_dag: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    dagrun = run_dag("mlserver_test_mapped")
    assert dagrun.state == "success"
    log = capfd.readouterr().out
    for map_index, records, chunks in ((0, 3, 2), (1, 2, 1)):
        for chunk in range(1, chunks + 1):
            which = f"this task's chunk {chunk} of {chunks}" if chunks > 1 else "this task's only chunk"
            assert re.search(
                rf"map index {map_index}: Started batch execution \S+ for {which} \(\d records?\)",
                log,
            ), log[-3000:]
        assert re.search(
            rf"map index {map_index}: Scored {records} records with web service 'scorer' version 'v1' in "
            rf"[\d.]+s \([\d,.]+ records/s\): {records} succeeded, 0 failed; no results file",
            log,
        )
    assert "the only chunk" not in log  # a mapped task's chunk always says whose records it cuts


def test_pending_execution_says_so_while_the_server_is_busy(
    run_dag: Any,
    api: Api,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both workers busy: the task's execution is Pending, and its progress line says that, not 0.0 records/s."""
    from airflow_mlserver.executions.progress import ProgressLog

    busy = api.start_batch("slowpoke", "v1", [{"x": float(i), "name": "b"} for i in range(60)], 2)
    said_pending = threading.Event()
    lines = ProgressLog.lines

    def noting_lines(self: ProgressLog, *args: Any, **kwargs: Any) -> list[str]:
        answer = lines(self, *args, **kwargs)
        if any(" is Pending: waiting " in line for line in answer):
            said_pending.set()
        return answer

    monkeypatch.setattr(ProgressLog, "lines", noting_lines)

    def free_the_server() -> None:
        """Once the task's first poll has seen its execution Pending (and said so), cancel the blocker."""
        said_pending.wait(timeout=120)
        api.delete(f"/api/slowpoke/v1/batch/{busy}")

    freer = threading.Thread(target=free_the_server)
    freer.start()
    try:
        records = _write(_frame(2), tmp_path / "in.csv")
        dagrun = run_dag("mlserver_test_in_worker", records=records, output=str(tmp_path / "o.csv"))
    finally:
        freer.join()
    assert dagrun.state == "success"
    log = capfd.readouterr().out
    assert re.search(
        r"Batch execution \S+ \(the only chunk\) is Pending: waiting \d+\.\ds for the server to start it", log
    ), log[-3000:]
    assert "records/s, ETA unknown" not in log


def _run_with_intent(run_dag: Any, api: Api, tmp_path: Path, before: list[str]) -> tuple[Any, Path]:
    """Run the only chunk (4 records) of a task whose earlier try left an intent of 4 records and ``before``."""
    out = tmp_path / "results.parquet"
    records = _write(_frame(4), tmp_path / "in.csv")
    dagrun = run_dag(
        "mlserver_test_intent", records=records, output=str(out), before=before, intent_records=4
    )
    return dagrun, out


def test_an_intent_with_one_new_execution_adopts_it(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The earlier try's start reached the server: the one new execution of 4 records is adopted."""
    before = api.get("/api/scorer/v1/batch").json()
    api.start_batch("scorer", "v1", [{"x": 1.0, "name": "other"}] * 3)  # another batch: 3 records, not 4
    execution_id = api.start_batch("scorer", "v1", _frame(4).to_dict("records"))
    everything = set(api.get("/api/scorer/v1/batch").json())
    dagrun, out = _run_with_intent(run_dag, api, tmp_path, before)
    assert dagrun.state == "success"
    assert set(api.get("/api/scorer/v1/batch").json()) == everything  # nothing started
    assert _summary(dagrun)["execution_ids"] == [execution_id]
    assert pd.read_parquet(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0]
    log = capfd.readouterr().out
    assert (
        f"Adopted batch execution {execution_id} for the only chunk: an earlier try started it and was stopped "
        "before it stored its id" in log
    )
    stored = _stored_batch(dagrun)
    assert stored["intent"] is None and stored["rounds"][0]["parts"][0]["execution_id"] == execution_id


def test_an_intent_without_a_new_execution_starts_the_chunk(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The earlier try's start never reached the server: new executions of other sizes are not adopted."""
    before = api.get("/api/scorer/v1/batch").json()
    other = api.start_batch("scorer", "v1", [{"x": 1.0, "name": "other"}] * 5)
    dagrun, _ = _run_with_intent(run_dag, api, tmp_path, before)
    assert dagrun.state == "success"
    (started,) = set(api.get("/api/scorer/v1/batch").json()) - set(before) - {other}
    assert _summary(dagrun)["execution_ids"] == [started]
    log = capfd.readouterr().out
    assert (
        "An earlier try was stopped while it started the only chunk, and the server has no execution of it: "
        "starting it" in log
    )
    assert re.search(rf"Started batch execution {started} for the only chunk \(4 records\)", log)


def test_an_intent_never_adopts_a_siblings_execution_of_the_same_size(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A mapped sibling (or another run) started 4 other records while this try was stopped between its intent
    and its start: its results are not this chunk's, so it is never adopted; the chunk is started."""
    before = api.get("/api/scorer/v1/batch").json()
    sibling = api.start_batch("scorer", "v1", _frame(8).iloc[4:].to_dict("records"))
    api.wait("scorer", "v1", sibling)
    dagrun, out = _run_with_intent(run_dag, api, tmp_path, before)
    assert dagrun.state == "success"
    (started,) = set(api.get("/api/scorer/v1/batch").json()) - set(before) - {sibling}
    assert _summary(dagrun)["execution_ids"] == [started]
    assert pd.read_parquet(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert "starting it" in capfd.readouterr().out


def test_an_intent_whose_candidates_cannot_be_told_apart_fails_and_names_them(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two new executions of this chunk's very records: none is adopted, none started, both named."""
    before = api.get("/api/scorer/v1/batch").json()
    first, second = (api.start_batch("scorer", "v1", _frame(4).to_dict("records")) for _ in range(2))
    for execution_id in (first, second):
        api.wait("scorer", "v1", execution_id)
    dagrun, _ = _run_with_intent(run_dag, api, tmp_path, before)
    assert dagrun.state == "failed"
    assert set(api.get("/api/scorer/v1/batch").json()) - set(before) == {first, second}
    log = capfd.readouterr().out
    assert (
        "AmbiguousStartError: The start of the only chunk (4 records) on web service 'scorer' version 'v1' may have "
        "created an execution, and the service has 2 new executions of 4 records that could be it: "
        f"{first}, {second}. Cannot tell which one is the execution of the only chunk: their results for the "
        "sampled records are the same as this start's. None is adopted and none is started." in log
    ), log[-3000:]


@pytest.mark.parametrize("reached", [True, False], ids=["start reached the server", "start lost"])
def test_an_intent_with_a_key_is_settled_by_sending_the_start_again(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str], reached: bool
) -> None:
    """This release's intents carry the start's idempotency key: the server that honours keys answers the
    execution the earlier try's start created (adopted), or starts it now; a sibling's is never taken."""
    before = api.get("/api/scorer/v1/batch").json()
    sibling = api.start_batch("scorer", "v1", _frame(8).iloc[4:].to_dict("records"))
    key = f"intent-{reached}-{time.time()}"
    earlier = None
    if reached:
        answer = api.post(
            "/api/scorer/v1/batch?parallelCount=2",
            json=_frame(4).to_dict("records"),
            headers={"Idempotency-Key": key},
        )
        earlier = answer.json()["batchExecutionId"]
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_intent", records=_write(_frame(4), tmp_path / "in.csv"), output=str(out), before=before,
        intent_records=4, intent_key=key,
    )  # fmt: skip
    assert dagrun.state == "success"
    new = set(api.get("/api/scorer/v1/batch").json()) - set(before) - {sibling}
    (chunk,) = new
    assert chunk == earlier if reached else chunk != sibling
    assert _summary(dagrun)["execution_ids"] == [chunk]
    assert pd.read_parquet(out)["y"].tolist() == [0.0, 2.0, 4.0, 6.0]
    log = capfd.readouterr().out
    if reached:
        assert f"Adopted batch execution {chunk} for the only chunk: an earlier try started it" in log
    else:
        assert re.search(rf"Started batch execution {chunk} for the only chunk \(4 records\)", log)


def _with_ids(n: int) -> pd.DataFrame:
    """Records with an id column the service does not declare, beside its inputs."""
    return _frame(n).assign(car_id=[f"car-{i}" for i in range(n)])[["car_id", "x", "name"]]


def test_a_csv_with_an_id_column_scores_with_nothing_but_records_and_output(
    run_dag: Any, tmp_path: Path
) -> None:
    """The common DAG: no extra_columns, no version, no chunking; the id rides along into the results."""
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_defaults", records=_write(_with_ids(3), tmp_path / "cars.csv"), output=str(out)
    )
    assert dagrun.state == "success"
    results = pd.read_parquet(out)
    assert list(results.columns) == ["record", "car_id", *COLUMNS[1:]]
    assert results["car_id"].tolist() == ["car-0", "car-1", "car-2"]
    assert results["y"].tolist() == [0.0, 2.0, 4.0]


def test_ignore_leaves_extra_columns_out_of_the_results(run_dag: Any, tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_ignore", records=_write(_with_ids(3), tmp_path / "cars.csv"), output=str(out)
    )
    assert dagrun.state == "success"
    assert list(pd.read_parquet(out).columns) == COLUMNS


def test_error_refuses_extra_columns_before_anything_is_sent(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = api.get("/api/scorer/v1/batch").json()
    dagrun = run_dag(
        "mlserver_test_refuse", records=_write(_with_ids(3), tmp_path / "c.csv"), output=str(tmp_path)
    )
    assert dagrun.state == "failed"
    assert api.get("/api/scorer/v1/batch").json() == before
    assert (
        "Unexpected column 'car_id': service 'scorer' version 'v1' declares inputs x (numeric), name (character). "
        "Remove it, or pass extra_columns='keep' or 'ignore' to send only the declared inputs."
    ) in capfd.readouterr().out


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (pd.DataFrame({"car_id": [1], "x": [1.0]}), "Missing input column 'name' (character)"),
        (pd.DataFrame({"car_id": [1], "x": ["fast"], "name": ["a"]}), "Row 0, column 'x': 'fast' (str) is not a "
                                                                       "valid numeric value: expected a number."),
    ],
)  # fmt: skip
def test_missing_or_mistyped_inputs_still_fail_before_anything_is_sent(
    run_dag: Any,
    api: Api,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    frame: pd.DataFrame,
    problem: str,
) -> None:
    before = api.get("/api/scorer/v1/batch").json()
    records = _write(frame, tmp_path / "bad.jsonl")
    dagrun = run_dag("mlserver_test_deferrable", records=records, output=str(tmp_path / "o"))
    assert dagrun.state == "failed"
    assert api.get("/api/scorer/v1/batch").json() == before
    assert problem in capfd.readouterr().out


def test_drop_still_keeps_extra_columns_and_warns_where_the_dag_says_it() -> None:
    from airflow.exceptions import AirflowProviderDeprecationWarning

    from airflow_mlserver.operators.batch import MLServerBatchOperator

    with pytest.warns(AirflowProviderDeprecationWarning) as warned:
        operator = MLServerBatchOperator(
            task_id="old", service_name="scorer", records=[{"x": 1}], extra_columns="drop"
        )
    assert operator.extra_columns == "keep"
    (warning,) = warned.list
    assert warning.filename == __file__
    assert str(warning.message) == (
        "extra_columns='drop' is deprecated: it keeps the columns the service does not declare in the results (it "
        "never sends them), which extra_columns='keep', the default, now says. Remove the argument, or pass "
        "extra_columns='ignore' to leave those columns out of the results."
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"service": ""}, "Argument service_name is '' once rendered: give the name of a published web service "
                          "(non-empty text without '/', '\\' or control characters, and not '.' or '..')."),
        ({"version": "v1/batch"}, "Argument service_version is 'v1/batch' once rendered: give a version of the "
                                  "service, or None for its latest"),
        ({"records": "file:///tmp/cars"}, "Argument records is 'file:///tmp/cars' once rendered: give a file whose "
                                          "name ends in .csv, .tsv, .parquet or .jsonl"),
        ({"records": []}, "Argument records is [] once rendered: give a DataFrame, a list of dicts"),
        ({"output": "s3://key:s3cr3t@bucket/o.parquet"}, "Argument output_path is 's3://***@bucket/o.parquet' once "
                                                         "rendered: give the URI without credentials"),
    ],
)  # fmt: skip
def test_a_bad_rendered_argument_fails_before_anything_is_sent(
    run_dag: Any,
    api: Api,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    params: dict[str, Any],
    message: str,
) -> None:
    before = api.get("/api/scorer/v1/batch").json()
    arguments = {
        "records": _write(_frame(3), tmp_path / "in.csv"),
        "output": str(tmp_path / "o.parquet"),
        **params,
    }
    dagrun = run_dag("mlserver_test_deferrable", **arguments)
    assert dagrun.state == "failed"
    assert api.get("/api/scorer/v1/batch").json() == before
    log = capfd.readouterr().out
    assert f"OperatorArgumentError: {message}" in log, log[-3000:]
    assert "s3cr3t" not in log


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"execution_id": ""}, "Argument execution_id is '' once rendered: give the id of a batch execution"),
        (
            {"execution_id": "../x"},
            "Argument execution_id is '../x' once rendered: give the id of a batch execution",
        ),
        ({"version": ""}, "Argument service_version is '' once rendered: give the version of the service"),
    ],
)
def test_a_bad_rendered_sensor_argument_fails_before_the_first_poke(
    run_dag: Any, capfd: pytest.CaptureFixture[str], params: dict[str, Any], message: str
) -> None:
    dagrun = run_dag("mlserver_test_sensor_poke", **params)
    assert dagrun.state == "failed"
    log = capfd.readouterr().out
    assert f"OperatorArgumentError: {message}" in log, log[-3000:]
    assert "Batch execution" not in log  # no poke logged a state


def _flaky_frame(n: int, flaky: tuple[int, ...], negative: tuple[int, ...] = ()) -> pd.DataFrame:
    """``n`` records for the flaky service: ``flaky`` ones fail at their first attempt, ``negative`` ones always."""
    token = uuid.uuid4().hex[:8]  # a new marker per test: each flaky record fails once in this test
    names = [f"flaky-{token}-{i}" if i in flaky else f"n{i}" for i in range(n)]
    return pd.DataFrame({"x": [float(-i if i in negative else i) for i in range(n)], "name": names})


def test_rescore_sends_only_the_failed_records_again_and_keeps_their_latest_outcome(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Three chunks; records 1, 5, 9 fail once, record 7 always: round 1 sends 1, 5, 7, 9; round 2 sends 7."""
    before = set(api.get("/api/flaky/v1/batch").json())
    out = tmp_path / "results.parquet"
    records = _write(_flaky_frame(10, flaky=(1, 5, 9), negative=(7,)), tmp_path / "in.csv")
    dagrun = run_dag("mlserver_test_rescore", service="flaky", records=records, output=str(out))
    assert dagrun.state == "success"  # max_failed_records=1: record 7 is the one failure left
    results = pd.read_parquet(out)
    assert list(results.columns) == [*COLUMNS, "attempts"]
    assert results["attempts"].tolist() == [1, 2, 1, 1, 1, 2, 1, 3, 1, 2]
    assert results["success"].tolist() == [True] * 7 + [False, True, True]
    assert results["y"].tolist()[:7] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0] and results["y"][9] == 18.0
    assert results["error_message"][7].startswith("ValueError: negative input -7.0")
    stored = _stored_batch(dagrun)
    assert [[p["records"] for p in r["parts"]] for r in stored["rounds"][1:]] == [["1,5,7,9"], ["7"]]
    summary = _summary(dagrun)
    assert (summary["total"], summary["failed"], summary["rescore_rounds"], summary["rescored_records"]) == (
        10,
        1,
        2,
        4,
    )
    assert [(e["round"], e["records"]) for e in summary["executions"]] == [
        (0, "0-3"), (0, "4-7"), (0, "8-9"), (1, "1,5,7,9"), (2, "7")
    ]  # fmt: skip
    assert [e["execution_id"] for e in summary["executions"][:3]] == summary["execution_ids"]
    rescore_ids = [e["execution_id"] for e in summary["executions"][3:]]
    assert [api.status("flaky", "v1", e)["totalItemCount"] for e in rescore_ids] == [4, 1]
    assert set(api.get("/api/flaky/v1/batch").json()) - before == {
        e["execution_id"] for e in summary["executions"]
    }
    log = capfd.readouterr().out
    assert "Rescoring 4 records that failed (round 1 of 2, 1 execution)" in log
    assert "Rescoring 1 record that failed (round 2 of 2, 1 execution)" in log
    assert f"Started batch execution {rescore_ids[0]} for rescore round 1 (4 records)" in log
    assert "Rescored 4 records in 2 rounds: 3 succeeded on a later attempt" in log


def test_max_failed_records_counts_after_the_last_round(
    run_dag: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """One round in parts of 3 (chunk_size): records 1, 5, 7, 9 go again as "1,5,7" and "9"; 7 still fails."""
    out = tmp_path / "results.parquet"
    records = _write(_flaky_frame(10, flaky=(1, 5, 9), negative=(7,)), tmp_path / "in.csv")
    dagrun = run_dag("mlserver_test_rescore_strict", service="flaky", records=records, output=str(out))
    assert dagrun.state == "failed"
    results = pd.read_parquet(out)  # written all the same, with the latest outcomes
    assert results["attempts"].tolist() == [1, 2, 1, 1, 1, 2, 1, 2, 1, 2]
    assert results["success"].tolist() == [True] * 7 + [False, True, True]
    assert [[p["records"] for p in r["parts"]] for r in _stored_batch(dagrun)["rounds"][1:]] == [
        ["1,5,7", "9"]
    ]
    log = capfd.readouterr().out
    assert (
        "MLServerBatchFailedError: 1 of 10 records failed, after 1 round of rescoring (max_failed_records=0); failure: "
        "record 7: ValueError: negative input -7.0. Results are in file://" in log
    ), log[-3000:]


@pytest.mark.parametrize("stopped", ["waiting", "starting"])
def test_a_retry_during_a_rescore_round_reattaches_to_its_execution(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str], stopped: str
) -> None:
    """An earlier try completed the chunk and started (or was starting) the rescore of records 1 and 3."""
    frame = _flaky_frame(4, flaky=(1, 3))
    chunk = api.start_batch("flaky", "v1", frame.to_dict("records"))
    assert api.wait("flaky", "v1", chunk)["failedItemCount"] == 2
    before = api.get("/api/flaky/v1/batch").json()
    rescore = api.start_batch("flaky", "v1", frame.iloc[[1, 3]].to_dict("records"))
    everything = set(api.get("/api/flaky/v1/batch").json())
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_rescore_retry", service="flaky", records=_write(frame, tmp_path / "in.csv"), output=str(out),
        execution_id=chunk, rescore_records="1,3", rescore_execution=rescore if stopped == "waiting" else "",
        before=before,
    )  # fmt: skip
    assert dagrun.state == "success"
    assert set(api.get("/api/flaky/v1/batch").json()) == everything  # nothing started again
    results = pd.read_parquet(out)
    assert (results["attempts"].tolist(), results["success"].all()) == ([1, 2, 1, 2], True)
    assert results["y"].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert [p["execution_id"] for p in _stored_batch(dagrun)["rounds"][1]["parts"]] == [rescore]
    log = capfd.readouterr().out
    if stopped == "waiting":
        assert "Found the executions of an earlier try (started 2m" in log
        assert f"the only chunk: {chunk} and 1 more" in log  # the first, and how many more
    else:
        assert f"Adopted batch execution {rescore} for rescore round 1: an earlier try started it" in log
    assert "Started batch execution" not in log


def _staged_chunks(log: str) -> list[int]:
    """The chunk numbers (1-based) the log says were staged, in the order they were."""
    return [int(n) for n in re.findall(r"Staged the results of chunk (\d+) of \d+", log)]


@pytest.mark.parametrize("dag_id", ["mlserver_test_pipeline", "mlserver_test_pipeline_in_worker"])
def test_the_next_chunk_starts_when_the_first_running_one_finishes(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str], dag_id: str
) -> None:
    """Two at a time, chunk 1 sleeps 10 s and chunks 2 to 5 0.1 s: 3, 4 and 5 run while chunk 1 still runs,
    and their results are staged before chunk 1's; the output is in input order all the same."""
    frame = pd.DataFrame({"x": [10.0] + [0.1] * 4, "name": [f"n{i}" for i in range(5)]})
    before = set(api.get("/api/napper/v1/batch").json())
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        dag_id, service="napper", records=_write(frame, tmp_path / "in.parquet"), output=str(out)
    )
    assert dagrun.state == "success"
    stored = _stored_batch(dagrun)
    starts = [datetime.fromisoformat(p["started"]).timestamp() for p in stored["rounds"][0]["parts"]]
    assert starts == sorted(starts)
    assert starts[4] - starts[0] < 10  # chunk 1 cannot have finished yet: its one record sleeps 10 s
    assert stored["written"] == "0-4"
    summary = _summary(dagrun)
    assert set(api.get("/api/napper/v1/batch").json()) - before == set(summary["execution_ids"])  # one each
    results = pd.read_parquet(out)
    assert list(results.columns) == COLUMNS
    assert results["record"].tolist() == list(range(5))
    assert (
        results["y"].tolist() == frame["x"].tolist() and results["label"].tolist() == frame["name"].tolist()
    )
    assert results["success"].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "results.parquet"]  # parts removed
    staged = _staged_chunks(capfd.readouterr().out)
    assert sorted(staged) == [1, 2, 3, 4, 5] and staged[-1] == 1  # chunk 1 last, after the others


def test_a_retry_after_a_lost_worker_scores_each_chunk_once_and_writes_everything(
    run_dag: Any, api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The first try is lost mid-way (a chunk staged, others complete or running); the retry reattaches, stages
    only what is not staged yet, and the output has every record once, in order."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    # chunk 1 is staged while 2 and 3 run for 3 s: the task waits again, and is lost when it resumes
    frame = pd.DataFrame({"x": [0.1, 3.0, 3.0, 0.1, 0.2, 0.1], "name": [f"n{i}" for i in range(6)]})
    before = set(api.get("/api/napper/v1/batch").json())
    out = tmp_path / "results.parquet"
    dagrun = run_dag(
        "mlserver_test_lost_midway",
        service="napper",
        records=_write(frame, tmp_path / "in.csv"),
        output=str(out),
    )
    assert dagrun.state == "success"
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id).one()
        assert ti.try_number == 2
    summary = _summary(dagrun)
    assert len(set(summary["execution_ids"])) == 6
    assert set(api.get("/api/napper/v1/batch").json()) - before == set(summary["execution_ids"])
    results = pd.read_parquet(out)
    assert results["record"].tolist() == list(range(6))
    assert results["y"].tolist() == frame["x"].tolist() and results["success"].all()
    log = capfd.readouterr().out
    assert "RuntimeError: the worker was lost" in log
    assert "Found the executions of an earlier try" in log
    assert sorted(_staged_chunks(log)) == [1, 2, 3, 4, 5, 6]  # each chunk staged once, across both tries
    assert not (tmp_path / ".results.parquet.parts").exists()


#: A line of the task's log as Airflow prints it: time, level, message, logger, source.
_LOG_LINE = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<message>.*) \[(?P<logger>[^\]]+)\](?: \S+=\S+)*\s*$")
#: What a line may quote of the user's, whatever its length: a quoted name, a file URI or path.
_VALUES = re.compile(r"'[^']*'|\w+://\S+|(?<!\w)/[\w.\-/]+")
#: The most characters of our own text in one line of a task's log.
MAX_LINE = 160


def test_log_lines_stay_short_in_a_chunked_batch_with_failures_and_a_retry(
    run_dag: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every line the provider writes in a task's log fits in MAX_LINE characters, the user's quoted values
    (names, paths, URIs) aside: a chunked batch whose failing records are rescored, then one lost midway and
    retried, with failing records.

    Before the lines were shortened, the retry's "Found the executions of an earlier try ..." listed every chunk
    with its execution id on one line (here 4 to 6 of them: 260 to 370 characters); it fails this test.
    """
    lines: list[str] = []

    def run(dag_id: str, frame: pd.DataFrame, state: str) -> None:
        dagrun = run_dag(
            dag_id,
            service="scorer",
            records=_write(frame, tmp_path / f"{dag_id}.csv"),
            output=str(tmp_path / f"{dag_id}.parquet"),
        )
        assert dagrun.state == state
        found = map(_LOG_LINE.match, capfd.readouterr().out.splitlines())
        lines.extend(m["message"] for m in found if m and _ours(m["logger"]))

    run(
        "mlserver_test_rescore", _frame(10, negative=(7,)), "success"
    )  # one failure tolerated, after 2 rounds
    run("mlserver_test_lost_midway", _frame(6, negative=(2, 4)), "failed")  # two failures, none tolerated
    for start in ("Started batch execution", "Rescoring", "Rescored", "Scored", "Found the executions of an"):
        assert any(line.startswith(start) for line in lines), (start, lines)
    too_long = [line for line in lines if len(_VALUES.sub("…", line)) > MAX_LINE]
    assert not too_long, "\n".join(too_long)


def _ours(logger: str) -> bool:
    """A logger of the provider's: its modules', or a task's of an operator of ours (or of a subclass)."""
    return "airflow_mlserver" in logger or logger.startswith(("airflow.task.operators.", "airflow.triggers."))
