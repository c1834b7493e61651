"""An auth manager for the browser tests: Airflow's SimpleAuthManager plus one user kept out of some DAGs.

SimpleAuthManager's roles (viewer, user, op, admin) grant the same DAGs to everyone, so they cannot show that
a page checks access to *its* DAG. This subclass denies the user named in ``MLSERVER_TESTS_RESTRICTED_USER``
every DAG whose id matches one of the comma-separated ``fnmatch`` patterns in
``MLSERVER_TESTS_RESTRICTED_DAGS`` (``*``: all DAGs); everything else is SimpleAuthManager's answer. The API
server loads it through ``[core] auth_manager = tests.ui_auth.RestrictedDagsAuthManager`` (see
``tests/ui_fixtures.py``), so it is read from the server's environment, not the test process's.
"""

from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

RESTRICTED_USER_ENV = "MLSERVER_TESTS_RESTRICTED_USER"
RESTRICTED_DAGS_ENV = "MLSERVER_TESTS_RESTRICTED_DAGS"


def is_denied(username: str, dag_id: str | None) -> bool:
    """Whether the restricted user asks for a DAG it may not see (``dag_id=None``: DAGs in general)."""
    if not username or username != os.environ.get(RESTRICTED_USER_ENV):
        return False
    patterns = [p.strip() for p in os.environ.get(RESTRICTED_DAGS_ENV, "").split(",") if p.strip()]
    if dag_id is None:
        return "*" in patterns  # a list of DAGs is filtered one id at a time: only "all DAGs" denies it
    return any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in patterns)


class RestrictedDagsAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that one configured user may not read or edit some DAGs at all.

    Every per-DAG check of Airflow (the DAG, its runs, task instances, logs, XComs, and the filtered DAG
    lists, which call this method for each id) goes through :meth:`is_authorized_dag`.
    """

    def is_authorized_dag(
        self,
        *,
        method: ResourceMethod,
        user: SimpleAuthManagerUser,
        access_entity: DagAccessEntity | None = None,
        details: DagDetails | None = None,
    ) -> bool:
        """Deny the restricted user its DAGs; ask SimpleAuthManager otherwise."""
        if is_denied(user.username, details.id if details else None):
            return False
        allowed: Any = super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
        return bool(allowed)
