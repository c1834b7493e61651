"""Airflow's ``[core] hostname_callable`` in the test deployments: each Celery worker plays a host of its own.

Kept apart from ``tests/deployment.py`` so that the Airflow processes that import it load nothing else.
"""

from __future__ import annotations

import os
import socket

#: The environment variable naming the host a deployment's process plays.
HOST_ENV = "AIRFLOW_MLSERVER_TEST_HOST"


def hostname() -> str:
    """The host named by ``HOST_ENV`` (else the machine's), reported on the task instances a process runs.

    Two Celery workers on one machine then show as two hosts in the REST API, as on two machines.
    """
    return os.environ.get(HOST_ENV) or socket.getfqdn()
