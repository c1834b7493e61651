"""Apache Airflow provider for Machine Learning Server web services, consumed asynchronously in batch.

Importing this package is cheap on purpose: the local server's worker processes import it, and so does
Airflow's provider discovery. Nothing here imports Airflow.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-mlserver",
        "name": "Machine Learning Server",
        "description": "Consume Machine Learning Server web services asynchronously, in batch.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "mlserver",
                "hook-class-name": "airflow_mlserver.hooks.mlserver.MLServerHook",
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
                "python-modules": ["airflow_mlserver.triggers.batch"],
            }
        ],
        "extra-links": ["airflow_mlserver.operators.batch.MLServerSwaggerLink"],
    }
