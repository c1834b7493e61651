"""``MLServerArtifactsToObjectStorageOperator`` and what it is made of, one module a role:

- :mod:`.operator`: the operator (its arguments, the wait for the executions, the copy, the manifest);
- :mod:`.records`: which executions it reads (every form of ``execution_ids``) and the task-wide record numbers;
- :mod:`.names`: artifact names, path templates, index ranges and file-name globs, and their checks;
- :mod:`.plan`: where each listed artifact goes, the rule that no two go to one place, and when a record can be
  copied as soon as it is listed (decisions, no I/O);
- :mod:`.transfers`: the HTTP side: each record's listing, each artifact streamed into its store with retries;
- :mod:`.destination`: ``dest`` as a store path and what is there already;
- :mod:`.writes`: never-half-written writes, one strategy per kind of store;
- :mod:`.manifest`: the manifest file and the task's summary.

The import path of the operator is this package:
``airflow_mlserver.operators.artifacts.MLServerArtifactsToObjectStorageOperator``.
"""

from airflow_mlserver.operators.artifacts.operator import (
    DEFAULT_MANIFEST_TEMPLATE,
    DEFAULT_PATH_TEMPLATE,
    MAX_CHUNK_SIZE,
    MAX_CONCURRENCY,
    TASK_MANIFEST_TEMPLATE,
    TASK_PATH_TEMPLATE,
    MLServerArtifactsToObjectStorageOperator,
)

__all__ = [
    "DEFAULT_MANIFEST_TEMPLATE",
    "DEFAULT_PATH_TEMPLATE",
    "MAX_CHUNK_SIZE",
    "MAX_CONCURRENCY",
    "TASK_MANIFEST_TEMPLATE",
    "TASK_PATH_TEMPLATE",
    "MLServerArtifactsToObjectStorageOperator",
]
