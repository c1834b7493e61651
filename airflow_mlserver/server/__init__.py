"""A local, wire-compatible Machine Learning Server (``airflow-mlserver serve``).

Laid out like the contract's sections: ``auth`` (1. authentication), ``services`` and ``sessions``
(2. web services, sessions and snapshots), ``consume`` (3. request-response), ``batch``
(4. asynchronous batch). ``workers`` runs service code in worker processes, ``store`` persists
everything under the data directory, ``app`` wires them together and ``process`` starts a server
as a child process (for tests, the demo and benchmarks).

This package's ``__init__`` imports nothing heavy: worker processes import ``workers`` through it.
"""
