"""The table of parameter types (``client.parameters``) is what every part of the package goes by.

One service declares an input and an output of each of the seven types; a value of each type goes through
the client's coercion, the served swagger schema, the local server's runtime and the results file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_mlserver.client import records
from airflow_mlserver.client.models import ParameterDefinition, ResultsPage, WebService
from airflow_mlserver.client.parameters import PARAMETER_TYPES, Column
from airflow_mlserver.client.records import prepare_records
from airflow_mlserver.tables import ResultsWriter, results_frame, storage_path
from tests.helpers import Api

#: Per type (the contract, section 2): a value as a caller gives it (it survives the round trip unchanged),
#: what the service code sees for it, and the Arrow type of its column in a results file.
EXPECTED: dict[str, tuple[Any, str, pa.DataType]] = {
    "integer": (3, "builtins.int", pa.int64()),
    "numeric": (2.5, "builtins.float", pa.float64()),
    "character": ("abc", "builtins.str", pa.string()),
    "logical": (True, "builtins.bool", pa.bool_()),
    "vector": ([1, 2, 3], "numpy.ndarray", pa.string()),
    "matrix": ([[1, 2], [3, 4]], "numpy.ndarray", pa.string()),
    "data.frame": ({"a": [1, 2], "b": ["x", "y"]}, "pandas.DataFrame", pa.string()),
}


def _variable(kind: str) -> str:
    return kind.replace(".", "_")


@pytest.fixture(scope="module")
def every_type(api: Api) -> WebService:
    """A service that echoes an input of each type and says what Python type its code saw for each."""
    names = [_variable(k) for k in PARAMETER_TYPES]
    code = "".join(f"o_{n} = i_{n}\n" for n in names) + (
        "seen = ' '.join(type(v).__module__.split('.')[0] + '.' + type(v).__name__ for v in ("
        + ", ".join(f"i_{n}" for n in names)
        + "))\n"
    )
    inputs = {f"i_{_variable(k)}": k for k in PARAMETER_TYPES}
    outputs = {**{f"o_{_variable(k)}": k for k in PARAMETER_TYPES}, "seen": "character"}
    api.publish("every_type", "v1", code, inputs, outputs)
    return WebService(
        name="every_type",
        version="v1",
        inputs=tuple(ParameterDefinition(n, t) for n, t in inputs.items()),
        outputs=tuple(ParameterDefinition(n, t) for n, t in outputs.items()),
    )


def test_every_type_has_a_coercer() -> None:
    assert set(records._COERCERS) == set(PARAMETER_TYPES)


def test_every_type_through_swagger_runtime_and_results_file(
    api: Api, every_type: WebService, tmp_path: Path
) -> None:
    assert set(EXPECTED) == set(PARAMETER_TYPES), "give each type of the table its expectations here"
    samples = {kind: sample for kind, (sample, _, _) in EXPECTED.items()}
    record = prepare_records([{f"i_{_variable(k)}": v for k, v in samples.items()}], every_type)[0]

    doc = api.get("/api/every_type/v1/swagger.json").json()
    served_inputs, served_outputs = (
        doc["definitions"]["InputParameters"],
        doc["definitions"]["OutputParameters"],
    )
    for kind, declared in PARAMETER_TYPES.items():
        assert served_inputs["properties"][f"i_{_variable(kind)}"] == declared.json_schema
        assert served_outputs["properties"][f"o_{_variable(kind)}"] == declared.json_schema
    jsonschema.Draft4Validator(served_inputs).validate(record)  # what the client sends fits the served schema

    answer = api.post("/api/every_type/v1", json=record).json()
    assert answer["success"], answer["errorMessage"]
    outputs = answer["outputParameters"]
    jsonschema.Draft4Validator(served_outputs).validate(outputs)
    assert outputs.pop("seen").split() == [seen for _, seen, _ in EXPECTED.values()]
    assert outputs == {f"o_{_variable(k)}": v for k, v in samples.items()}

    import pandas as pd

    path = tmp_path / "results.parquet"
    writer = ResultsWriter(storage_path(str(path)), "parquet", every_type)
    writer.write(results_frame(pd.DataFrame({"id": [0]}), [ResultsPage([answer], 0)], every_type, 0))
    writer.commit()
    table = pq.read_table(path)
    for kind, (sample, _, arrow) in EXPECTED.items():
        column = f"o_{_variable(kind)}"
        assert table.schema.field(column).type == arrow, kind
        stored = table.column(column)[0].as_py()
        assert (json.loads(stored) if PARAMETER_TYPES[kind].column is Column.JSON else stored) == sample


def test_the_table_and_the_worker_runtime_import_nothing_heavy() -> None:
    """Worker processes and the triggerer import these; numpy, pandas, pyarrow or HTTP clients would slow them."""
    heavy = ("numpy", "pandas", "pyarrow", "requests", "aiohttp", "airflow", "fastapi")
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, airflow_mlserver.client.parameters, airflow_mlserver.server.runtimes.worker;"
            "import airflow_mlserver.server.runtimes.python, airflow_mlserver.server.runtimes.r;"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded == []
