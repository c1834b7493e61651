"""The publish and delete service operators against the local server (real HTTP, real worker processes).

Python services from inline code, from a ``file://`` code path and with model objects from object storage; the
R seed's service with its ``.rds`` model; reruns that publish nothing (the server's versions and creation times
unchanged), changed code under one version refused then replaced, versions the server picks; a DAG whose
batch task scores with the version its publish task answered; deletes of one version, of all but the newest,
of what is not there.
"""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlserver.client.models import WebService
from airflow_mlserver.exceptions import (
    ModelObjectError,
    ServiceCodeArgumentError,
    ServiceVersionConflictError,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.services import MLServerDeleteServiceOperator, MLServerPublishServiceOperator
from airflow_mlserver.operators.services.plan import digest_in
from tests.helpers import Api
from tests.test_server_r import CARS_MODEL, require_r, rscript

DOUBLE = "y = x * 2\n"
TRIPLE = "y = x * 3\n"
SIGNATURE: dict[str, Any] = {"inputs": {"x": "numeric"}, "outputs": {"y": "numeric"}}


def _name(what: str) -> str:
    return f"{what}_{uuid.uuid4().hex[:8]}"


def publish(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run the publish operator's ``execute`` as a worker would (no DAG run)."""
    if "code_path" not in kwargs:
        kwargs.setdefault("code", DOUBLE)
    task = MLServerPublishServiceOperator(
        task_id=f"publish_{time.monotonic_ns()}", service_name=name, **{**SIGNATURE, **kwargs}
    )
    answer: dict[str, Any] = task.execute({})  # type: ignore[arg-type]
    return answer


def delete(name: str, **kwargs: Any) -> list[str]:
    task = MLServerDeleteServiceOperator(task_id=f"delete_{time.monotonic_ns()}", service_name=name, **kwargs)
    answer: list[str] = task.execute({})  # type: ignore[arg-type]
    return answer


def versions(name: str) -> list[WebService]:
    return [s for s in MLServerHook().list_services() if s.name == name]


def consume(name: str, version: str, **inputs: Any) -> dict[str, Any]:
    result = MLServerHook().consume(name, version, inputs)
    assert result.success, result.error_message
    return dict(result.outputs)


# --- publish ------------------------------------------------------------------------------------------------


def test_python_inline_code_is_published_once(mlserver_conn: str) -> None:
    name = _name("inline")
    first = publish(name, service_version="v1", description="Doubles x.")
    assert first["published"] is True and first["service_version"] == "v1" and len(first["digest"]) == 16
    assert first == {
        "service_name": name,
        "service_version": "v1",
        "published": True,
        "digest": first["digest"],
    }
    assert consume(name, "v1", x=2.5) == {"y": 5.0}
    (service,) = versions(name)
    assert service.description == f"Doubles x. [content sha256:{first['digest']}]"
    time.sleep(1.1)  # creation times have whole seconds: a publish now would show

    again = publish(name, service_version="v1", description="Doubles x.")
    assert again == {**first, "published": False}
    assert versions(name) == [service]  # same version, same creation time, same description


def test_code_and_init_code_from_file_paths(mlserver_conn: str, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("y = x * factor\n")
    (tmp_path / "init.py").write_text("\ufefffactor = 10\n")  # a byte order mark is dropped
    name = _name("from_file")
    kwargs = {"code_path": f"file://{tmp_path}/score.py", "init_code_path": f"file://{tmp_path}/init.py"}
    answer = publish(name, service_version="1.0", **kwargs)
    assert answer["published"] and consume(name, "1.0", x=1.5) == {"y": 15.0}
    assert publish(name, service_version="1.0", **kwargs)["published"] is False

    (tmp_path / "init.py").write_text("factor = 100\n")  # the file changed: other content
    with pytest.raises(ServiceVersionConflictError):
        publish(name, service_version="1.0", **kwargs)
    with pytest.raises(ServiceCodeArgumentError, match="readable file"):
        publish(name, service_version="1.0", code_path=f"file://{tmp_path}/missing.py")
    (tmp_path / "empty.py").write_text(" \n")
    with pytest.raises(ServiceCodeArgumentError, match="it is empty"):
        publish(name, service_version="1.0", code_path=f"file://{tmp_path}/empty.py")
    (tmp_path / "latin1.py").write_bytes("y = 'caf\u00e9'".encode("latin-1"))
    with pytest.raises(ServiceCodeArgumentError, match="the byte at offset 8 is not UTF-8"):
        publish(name, service_version="1.0", code_path=str(tmp_path / "latin1.py"))  # a plain path too


def test_changed_code_under_one_version_fails_clearly_then_replaces(mlserver_conn: str) -> None:
    name = _name("changed")
    first = publish(name, service_version="v1")
    with pytest.raises(ServiceVersionConflictError) as raised:
        publish(name, service_version="v1", code=TRIPLE)
    error = raised.value
    message = str(error)
    assert f"'{name}' version 'v1'" in message and first["digest"] in message and error.digest in message
    assert "if_exists='replace'" in message
    assert (error.found, error.service_version) == (first["digest"], "v1")
    assert isinstance(error, AirflowFailException)  # publishing again cannot help: no retries
    assert consume(name, "v1", x=1.0) == {"y": 2.0}  # untouched

    kept = publish(name, service_version="v1", code=TRIPLE, if_exists="skip")
    assert kept == {**first, "published": False}
    replaced = publish(name, service_version="v1", code=TRIPLE, if_exists="replace")
    assert replaced["published"] and replaced["digest"] == error.digest
    assert consume(name, "v1", x=1.0) == {"y": 3.0}
    assert [digest_in(s.description) for s in versions(name)] == [error.digest]
    assert publish(name, service_version="v1", code=TRIPLE, if_exists="replace")["published"] is False


def test_a_version_without_a_digest_is_not_taken_for_this_content(mlserver_conn: str, api: Api) -> None:
    name = _name("bare")
    api.publish(name, "v1", DOUBLE, {"x": "numeric"}, {"y": "numeric"})  # published otherwise: no marker
    with pytest.raises(ServiceVersionConflictError, match="unknown digest"):
        publish(name, service_version="v1")
    assert publish(name, service_version="v1", if_exists="replace")["published"]


def test_version_none_lets_the_server_pick_and_reuses_the_newest_of_the_same_content(
    mlserver_conn: str,
) -> None:
    name = _name("picked")
    first = publish(name)
    assert first["published"] and first["service_version"]
    assert publish(name) == {**first, "published": False}
    other = publish(name, code=TRIPLE)
    assert other["published"] and other["service_version"] != first["service_version"]
    back = publish(name)  # the first content again: the newest has other content, so a new version
    assert back["published"] and back["service_version"] not in (
        first["service_version"],
        other["service_version"],
    )
    assert back["digest"] == first["digest"]
    assert len(versions(name)) == 3
    assert MLServerHook().get_service(name).version == back["service_version"]  # the latest is this content


def test_python_model_objects_from_a_pickle_file_and_from_the_task(
    mlserver_conn: str, tmp_path: Path
) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps({"slope": 4.0}))
    name = _name("model")
    code = "y = coef['slope'] * x + offset"
    kwargs = {"code": code, "model_paths": {"coef": f"file://{model}"}, "model_objects": {"offset": 1.0}}
    answer = publish(name, service_version="v1", **kwargs)
    assert answer["published"] and consume(name, "v1", x=2.0) == {"y": 9.0}
    assert publish(name, service_version="v1", **kwargs)["published"] is False

    model.write_bytes(pickle.dumps({"slope": 5.0}))  # the model changed: other content
    with pytest.raises(ServiceVersionConflictError):
        publish(name, service_version="v1", **kwargs)
    model.write_bytes(b"not a pickle")
    with pytest.raises(ModelObjectError, match="does not unpickle"):
        publish(name, service_version="v2", **kwargs)


def test_r_service_with_an_rds_model_from_object_storage(mlserver_conn: str, tmp_path: Path) -> None:
    require_r()
    rds = tmp_path / "carsModel.rds"
    rscript(f'carsModel <- {CARS_MODEL}; saveRDS(carsModel, file = "{rds}")')
    name = _name("mtcars")
    kwargs: dict[str, Any] = {
        "code": "answer <- predict(carsModel, data.frame(hp = hp, wt = wt), type = 'response')",
        "inputs": {"hp": "numeric", "wt": "numeric"},
        "outputs": {"answer": "numeric"},
        "runtime_type": "R",
        "model_paths": {"carsModel": f"file://{rds}"},
    }
    answer = publish(name, service_version="v1.0.0", **kwargs)
    assert answer["published"]
    assert round(consume(name, "v1.0.0", hp=120, wt=2.8)["answer"], 7) == 0.6418125  # the seed's value
    assert publish(name, service_version="v1.0.0", **kwargs)["published"] is False
    as_bytes = {**kwargs, "model_paths": None, "model_objects": {"carsModel": rds.read_bytes()}}
    assert publish(name, service_version="v1.0.0", **as_bytes)["published"] is False  # the same bytes

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(1))
    with pytest.raises(ModelObjectError, match="not RDS"):
        publish(
            name,
            service_version="v2",
            **{**kwargs, "model_paths": {"carsModel": f"file://{tmp_path}/model.pkl"}},
        )


def test_a_dag_publishes_then_scores_with_the_version_it_published(
    airflow_db: Path, mlserver_conn: str, tmp_path: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "services_dags.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("mlserver_test_publish_then_score")
    name = _name("dag")
    records = tmp_path / "records.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0]}).to_csv(records, index=False)
    params = {"service": name, "records": f"file://{records}"}

    first = dag.test(run_conf={**params, "output": f"file://{tmp_path}/one.csv"})
    assert first.state == DagRunState.SUCCESS
    assert pd.read_csv(tmp_path / "one.csv")["y"].tolist() == [2.0, 4.0, 6.0]
    (version,) = [s.version for s in versions(name)]

    second = dag.test(run_conf={**params, "output": f"file://{tmp_path}/two.csv", "code": TRIPLE})
    assert second.state == DagRunState.SUCCESS
    assert pd.read_csv(tmp_path / "two.csv")["y"].tolist() == [3.0, 6.0, 9.0]
    (newest,) = versions(name)  # the tidy task kept the newest only
    assert newest.version != version


# --- delete -------------------------------------------------------------------------------------------------


def test_delete_one_version_and_one_that_is_not_there(mlserver_conn: str, api: Api) -> None:
    name = _name("delete_one")
    for version in ("v1", "v2"):
        api.publish(name, version, DOUBLE, {"x": "numeric"}, {"y": "numeric"})
    assert delete(name, service_version="v1") == ["v1"]
    assert [s.version for s in versions(name)] == ["v2"]
    assert delete(name, service_version="v1") == []  # gone already: fine
    assert delete(_name("never_published"), service_version="v1") == []


def test_delete_all_but_the_newest(mlserver_conn: str, api: Api) -> None:
    name = _name("delete_old")
    for version in ("v1", "v2", "v3", "v10"):
        api.publish(name, version, DOUBLE, {"x": "numeric"}, {"y": "numeric"})
    assert delete(name, keep_newest=2) == ["v1", "v2"]  # oldest first; v10 is the newest, whatever its name
    assert [s.version for s in versions(name)] == ["v3", "v10"]
    assert delete(name, keep_newest=2) == []
    assert delete(name, keep_newest=1) == ["v3"]
    assert delete(_name("never_published"), keep_newest=1) == []
