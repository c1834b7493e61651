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
        "hooks": [
            {
                "integration-name": "Machine Learning Server",
                "python-modules": ["airflow_mlserver.hooks.mlserver"],
            }
        ],
    }
