"""The provider's triggers, one module each:

- :mod:`.batch`: ``MLServerBatchTrigger``, the async poll behind every deferral of the operators and the sensor;
- :mod:`.executions`: ``MLServerBatchExecutionsTrigger``, an event trigger for ``AssetWatcher``: one event per
  batch execution of a service that finishes, whoever started it.
"""

from airflow_mlserver.triggers.batch import MLServerBatchTrigger
from airflow_mlserver.triggers.executions import MLServerBatchExecutionsTrigger

__all__ = ["MLServerBatchExecutionsTrigger", "MLServerBatchTrigger"]
