"""A local, wire-compatible Machine Learning Server (``airflow-mlserver serve``).

Laid out like the contract's sections: ``auth`` (1. authentication), ``services`` and ``sessions``
(2. web services, sessions and snapshots), ``consume`` (3. request-response), ``batch`` and
``runner`` (4. asynchronous batch: its routes, and what executes it). ``jobs`` builds the job of one
execution and its answer for both; ``workers`` runs jobs in worker processes (``runtimes`` is the
worker side: the registry of service runtimes, the worker protocol and one module per runtime),
``store`` persists everything under the data directory, ``app`` wires them together and ``process``
starts a server as a child process (for tests, the demo and benchmarks). Of the client, the server
uses only the table of parameter types (``airflow_mlserver.client.parameters``), the quoting of
values in messages (``client.quoting``) and the check of RDS bytes (``client.publishing.is_rds``).

This package's ``__init__`` imports nothing heavy: worker processes import ``runtimes`` through it.
"""
