"""The DAG the thumbnail route's tests run: image artifacts of an R service and of a Python one, copied to files.

``score_r`` scores a few mtcars records with the R example's service (``manualTransmission``, which draws
``Histogram.png``), ``collect_r`` copies each record's ``Histogram.png``; ``score_files`` runs a Python service
whose records write files of every kind the route must refuse or guard (a CSV, an SVG with a script, a PNG too
large, a text named ``.png``), and ``collect_files`` copies them all.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator

DAG_ID = "mlserver_test_ui_thumbnails"
R_SERVICE = ("thumbsR", "v1")
FILES_SERVICE = ("thumbsFiles", "v1")

with DAG(
    DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"cars": "", "numbers": "", "output": "", "dest": ""},
) as ui_thumbnails:
    for kind, (name, version), records, files in (
        ("r", R_SERVICE, "{{ params.cars }}", ["Histogram.png"]),
        ("files", FILES_SERVICE, "{{ params.numbers }}", None),
    ):
        score = MLServerBatchOperator(
            task_id=f"score_{kind}",
            service_name=name,
            service_version=version,
            records=records,
            output_path=f"{{{{ params.output }}}}/{kind}.parquet",
            parallel_count=3,
            poll_interval=0.3,
            deferrable=True,
        )
        collect = MLServerArtifactsToObjectStorageOperator(
            task_id=f"collect_{kind}",
            service_name=name,
            service_version=version,
            execution_ids=score.output,
            file_names=files,
            dest=f"{{{{ params.dest }}}}/{kind}",
            poll_interval=0.3,
        )
        score >> collect
