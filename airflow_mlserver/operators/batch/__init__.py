"""``MLServerBatchOperator`` and what it is made of, one module a role:

- :mod:`.operator`: the operator (its arguments, ``execute``, the resume after a deferral, the final pass);
- :mod:`.planner`: what to do next, decided from the stored state, the statuses just read and the clock, with no
  I/O (start a part, stage a chunk, plan a rescore round, wait, time out, finish);
- :mod:`.driver`: carries the planner's actions out with the hook (the same driver whether the task defers or
  waits in the worker);
- :mod:`.state`: the crash-safe state in the task-state store: a list of rounds, each a list of parts;
- :mod:`.starts`: the intent stored before each start, and the reconciliation after a crash;
- :mod:`.frames`: the input records of the parts to start or stage, read in one pass;
- :mod:`.parts`: each complete chunk's result rows staged next to the output while others run;
- :mod:`.results`: the final pass (the output in input order, each record's latest outcome, failures counted);
- :mod:`.summary`: the task's return value as a class, and the one reader of every form a DAG passes it on.

The import path of the operator is this package: ``airflow_mlserver.operators.batch.MLServerBatchOperator``.
"""

from airflow_mlserver.operators.batch.operator import (
    ARGUMENT_CHECKS,
    EXECUTIONS_XCOM_KEY,
    MLServerBatchOperator,
)

__all__ = ["ARGUMENT_CHECKS", "EXECUTIONS_XCOM_KEY", "MLServerBatchOperator"]
