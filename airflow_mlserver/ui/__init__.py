"""The provider inside Airflow's UI: a batch view on each task instance, and this provider's documentation.

An Airflow plugin (:mod:`.plugin`, registered through the ``airflow.plugins`` entry point) mounts a FastAPI app
(:mod:`.app`) on the API server at ``/mlserver``, behind Airflow's own authentication and authorization.
"""
