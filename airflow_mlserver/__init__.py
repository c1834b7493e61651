"""Apache Airflow provider for Machine Learning Server web services, consumed asynchronously in batch.

Importing this package is cheap on purpose: the local server's worker processes import it, and so does
Airflow's provider discovery. Nothing here imports Airflow.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow (entry point ``apache_airflow_provider``).

    The connection form is declared here (``ui-field-behaviour`` and ``conn-fields``): Airflow's UI builds it
    from this description without importing the hook.

    Airflow's form stores every extra field in the connection's extra, with the field's default when left as
    it is and null when emptied. So each field has its default (the hook's), and a form saved as it opens stores
    ``{"verify": "true", "timeout": 60, "max_retries": 8}`` and no null. A bearer token has no field of its own:
    Airflow shows any default of a field named like a secret as ``***`` (which the form would then save as the
    token), so an empty token field would be stored as null. The form takes a token in Password with Username
    left empty; the ``access_token`` extra still reads from a URI or JSON extras. The hook reads null (and "")
    as absent.
    """
    from airflow_mlserver.client.settings import DEFAULT_MAX_RETRIES, DEFAULT_PORT, DEFAULT_TIMEOUT

    return {
        "package-name": "airflow-mlserver",
        "name": "Machine Learning Server",
        "description": "Consume Machine Learning Server web services asynchronously, in batch.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "mlserver",
                "hook-class-name": "airflow_mlserver.hooks.mlserver.MLServerHook",
                "hook-name": "Machine Learning Server",
                "ui-field-behaviour": {
                    "hidden-fields": [],
                    "relabeling": {
                        "host": "Server",
                        "schema": "Scheme",
                        "login": "Username",
                        "password": "Password",
                    },
                    "placeholders": {
                        "host": "localhost, or a URL such as https://mlserver.example.com/base",
                        "port": f"{DEFAULT_PORT} for http (the one-box default), 443 for https",
                        "schema": "http or https (default http, or the URL's)",
                        "login": "admin",
                        "password": "the user's password, or a bearer token when no username is set",
                        "extra": '{"verify": true, "timeout": 60, "max_retries": 8}',
                    },
                },
                "conn-fields": {
                    "verify": {
                        "label": "Verify TLS",
                        "description": "true, false, or the path of a CA bundle file on the workers.",
                        "schema": {"type": ["string", "null"], "default": "true"},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": f"Seconds to wait for each answer (default {DEFAULT_TIMEOUT:g}).",
                        "schema": {
                            "type": ["number", "null"],
                            "exclusiveMinimum": 0,
                            "default": DEFAULT_TIMEOUT,
                        },
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of a request that failed on the way (connection errors, 429, "
                        f"502, 503, 504) before giving up (default {DEFAULT_MAX_RETRIES}).",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "default": DEFAULT_MAX_RETRIES},
                    },
                },
            }
        ],
        "integrations": [
            {
                "integration-name": "Machine Learning Server",
                "external-doc-url": "https://learn.microsoft.com/machine-learning-server/",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Machine Learning Server",
                "python-modules": ["airflow_mlserver.hooks.mlserver"],
            }
        ],
        "operators": [
            {
                "integration-name": "Machine Learning Server",
                "python-modules": [
                    "airflow_mlserver.operators.batch",
                    "airflow_mlserver.operators.artifacts",
                    "airflow_mlserver.operators.services",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Machine Learning Server",
                "python-modules": ["airflow_mlserver.sensors.batch"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Machine Learning Server",
                "python-modules": [
                    "airflow_mlserver.triggers.batch",
                    "airflow_mlserver.triggers.executions",
                ],
            }
        ],
        "extra-links": ["airflow_mlserver.operators.links.MLServerBatchLink"],
    }
