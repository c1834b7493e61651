"""``MLServerPublishServiceOperator`` and ``MLServerDeleteServiceOperator``, one module a role:

- :mod:`.publish`: the publish operator as Airflow sees it (its arguments, ``execute``, its templated fields);
- :mod:`.delete`: the delete operator, likewise;
- :mod:`.arguments`: the check of each argument, each refusal a class of its own;
- :mod:`.plan`: the decisions, each a function of data (no hook, no store, no Airflow): the content digest and
  its marker in the description, the order of a service's versions, publish or reuse or replace or refuse, and
  which versions ``keep_newest`` deletes;
- :mod:`.sources`: the code and the model objects, read from object storage or taken from the task.

The import path of the operators is this package:
``airflow_mlserver.operators.services.MLServerPublishServiceOperator``.
"""

from airflow_mlserver.operators.services.delete import MLServerDeleteServiceOperator
from airflow_mlserver.operators.services.publish import MLServerPublishServiceOperator

__all__ = ["MLServerDeleteServiceOperator", "MLServerPublishServiceOperator"]
