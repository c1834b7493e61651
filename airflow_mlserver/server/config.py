"""Settings of the local server, shared by the CLI, the app and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 12800
ADMIN_PASSWORD_ENV = "AIRFLOW_MLSERVER_ADMIN_PASSWORD"
#: What ``airflow-mlserver serve`` prints, followed by its URL, once it answers (``process`` waits for it).
READY_LINE = "airflow-mlserver listening on"


@dataclass
class ServerConfig:
    """What the local server needs to run.

    :param data_dir: Where services, executions, results and artifacts are persisted (SQLite + files).
    :param workers: Worker processes that run service code (default: one per core).
    :param admin_password: Password of the ``admin`` user.
    :param users: Further ``username -> password`` pairs (e.g. to test ownership rules).
    :param token_ttl: Lifetime of an access token, in seconds (a real server's default is one hour).
    :param refresh_ttl: Lifetime of a refresh token, in seconds.
    :param max_parallel_count: Highest ``parallelCount`` a batch may ask for
        (``MaxNumberOfThreadsPerBatchExecution`` on a real server).
    :param execution_timeout: Seconds one execution (one record) may run before it is stopped.
    :param max_body_bytes: Largest request body accepted; a larger one is answered 413.
    :param faults: Fault-injection spec (see :mod:`airflow_mlserver.server.faults`), empty for none.
    :param idempotency_keys: Honour a batch start's ``Idempotency-Key`` header (a start sent again with the same
        key answers the execution the first one created) and say so in every answer's
        ``X-Idempotency-Keys: honoured`` header. False answers as a real Machine Learning Server does: the header
        is ignored.
    """

    data_dir: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    admin_password: str = ""
    users: dict[str, str] = field(default_factory=dict)
    token_ttl: int = 3600
    refresh_ttl: int = 14 * 24 * 3600
    max_parallel_count: int = 100
    execution_timeout: float = 600.0
    max_body_bytes: int = 512 * 1024 * 1024
    faults: str = ""
    idempotency_keys: bool = True

    def all_users(self) -> dict[str, str]:
        return {"admin": self.admin_password, **self.users}
