"""``MLServerArtifactsToObjectStorageOperator`` and what it is made of, one module a role:

- :mod:`.operator`: the operator as Airflow sees it (its arguments, ``execute``, its templated fields);
- :mod:`.arguments`: the check of each argument, the default templates and the limits;
- :mod:`.plan`: the operator's decisions, each a function of data (no hook, no store, no Airflow): which
  executions it reads, where each listed artifact goes, the rule that no two go to one place, whether a
  record can be copied as soon as it is listed and which records start next, whether the destination holds an
  artifact already, which executions are still waited for, and whether the task fails;
- :mod:`.wait`: the wait for the executions (their statuses once finished, or now);
- :mod:`.copies`: the copy loop: each record listed and its artifacts copied in a pool of threads;
- :mod:`.records`: which executions it reads (every form of ``execution_ids``) and the task-wide record numbers;
- :mod:`.names`: artifact names, path templates, index ranges and file-name globs, and their checks;
- :mod:`.transfers`: the HTTP side: each record's listing, each artifact streamed into its store with retries;
- :mod:`.destination`: ``dest`` as a store path and what is there already;
- :mod:`.writes`: never-half-written writes, one strategy per kind of store;
- :mod:`.manifest`: the manifest file and the task's summary.

The import path of the operator is this package:
``airflow_mlserver.operators.artifacts.MLServerArtifactsToObjectStorageOperator``.
"""

from airflow_mlserver.operators.artifacts.arguments import (
    DEFAULT_MANIFEST_TEMPLATE,
    DEFAULT_PATH_TEMPLATE,
    MAX_CHUNK_SIZE,
    MAX_CONCURRENCY,
    TASK_MANIFEST_TEMPLATE,
    TASK_PATH_TEMPLATE,
)
from airflow_mlserver.operators.artifacts.operator import MLServerArtifactsToObjectStorageOperator

__all__ = [
    "DEFAULT_MANIFEST_TEMPLATE",
    "DEFAULT_PATH_TEMPLATE",
    "MAX_CHUNK_SIZE",
    "MAX_CONCURRENCY",
    "TASK_MANIFEST_TEMPLATE",
    "TASK_PATH_TEMPLATE",
    "MLServerArtifactsToObjectStorageOperator",
]
