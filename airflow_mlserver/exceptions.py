"""Errors of this provider: the client's (re-exported) and the operators' own.

Every message says what went wrong and what to do about it. All derive from :class:`MLServerError`. The
client's errors are plain Python exceptions (:mod:`airflow_mlserver.client.errors`, no Airflow import);
Airflow fails a task on any exception, with the message as its reason.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from airflow_mlserver.client.errors import (
    AmbiguousStartError,
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    MalformedResponseError,
    MLServerApiError,
    MLServerAuthError,
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
    MLServerTLSError,
    ModelObjectError,
    RecordValidationError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.client.quoting import quoted


class OperatorArgumentError(MLServerConfigError, ValueError):
    """An operator or sensor argument is not usable: refused where it is written, or right after it renders.

    :param argument: The argument's name.
    :param value: Its value (the message shows at most about 200 characters of it).
    :param fix: What to give instead, as a clause: ``give a whole number from 1 to 100``.
    :param rendered: Whether the value is what a template rendered to.
    """

    def __init__(self, argument: str, value: object, fix: str, rendered: bool = False) -> None:
        super().__init__(
            f"Argument {argument} is {quoted(value)}{' once rendered' if rendered else ''}: {fix}."
        )
        self.argument = argument
        self.value = value
        self.fix = fix


class ServiceArgumentError(OperatorArgumentError):
    """An argument of the publish or delete service operator is not usable (a name, a version, ``if_exists``)."""


class ServiceCodeArgumentError(ServiceArgumentError):
    """The service's code is given in no way or in two (``code`` and ``code_path``), or its init code in two
    (``init_code`` and ``init_code_path``), or it is empty once rendered."""


class ServiceRuntimeTypeError(ServiceArgumentError):
    """``runtime_type`` names no runtime the client publishes to (``Python`` or ``R``)."""


class ServiceParameterArgumentError(ServiceArgumentError):
    """A declared input or output (its name or its type) or an output file name is not usable."""


class ServiceModelArgumentError(ServiceArgumentError):
    """``model_objects`` or ``model_paths`` is not a mapping of variable names, or both name one variable."""


class ServiceVersionSelectionError(ServiceArgumentError):
    """The delete operator was given both or neither of ``service_version`` and ``keep_newest``, or a
    ``keep_newest`` below 1."""


class ServiceVersionConflictError(MLServerError, AirflowFailException):
    """The version to publish exists with other content (or content of unknown digest); nothing was published.

    Publishing again cannot help, so the task fails without retries.

    :param service_name: The web service's name.
    :param service_version: The version that exists.
    :param digest: The content digest of what the task would publish.
    :param found: The digest the published version carries, or None when it carries none.
    """

    def __init__(
        self, message: str, service_name: str, service_version: str, digest: str, found: str | None
    ) -> None:
        super().__init__(message)
        self.service_name = service_name
        self.service_version = service_version
        self.digest = digest
        self.found = found


class ArtifactsConfigError(MLServerConfigError, ValueError):
    """An argument of the artifacts operator is not usable (a bad ``dest``, index, glob or path template)."""


class UnsafeArtifactNameError(MLServerError):
    """An artifact name (or the destination path made from it) could escape or break the destination.

    Names with a path separator, ``..``, an absolute path, control characters, or that the store cannot
    hold are refused and never written.
    """


class ArtifactSizeMismatchError(MLServerError):
    """The bytes written to the destination are not the bytes read from the server; nothing was kept."""


class ArtifactTransferError(MLServerError):
    """Some artifacts could not be copied (or were refused); the manifest lists each one with its error.

    :param summary: The operator's summary of the run (counts, bytes, manifest URI).
    """

    def __init__(self, message: str, summary: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


class ExecutionWaitTimeoutError(MLServerError):
    """The batch execution did not finish within the time the operator was given to wait."""


class MLServerBatchError(MLServerError):
    """A batch execution did not end well: it failed, was canceled, or ran past its timeout."""


class MLServerBatchFailedError(MLServerBatchError):
    """An execution failed or was canceled on the server, or more records failed than allowed."""


class MLServerBatchTimeoutError(MLServerBatchError):
    """The batch did not finish before the task's ``timeout``; its executions were canceled."""


class MLServerExecutionEndedError(MLServerBatchFailedError, AirflowFailException):
    """The awaited execution ended Failed or Canceled: waiting again cannot help, so no retry."""


__all__ = [
    "AmbiguousStartError",
    "ArtifactNotFoundError",
    "ArtifactSizeMismatchError",
    "ArtifactTransferError",
    "ArtifactsConfigError",
    "ExecutionNotFoundError",
    "ExecutionWaitTimeoutError",
    "MLServerApiError",
    "MLServerAuthError",
    "MLServerBatchError",
    "MLServerBatchFailedError",
    "MLServerBatchTimeoutError",
    "MLServerConfigError",
    "MLServerConnectionError",
    "MLServerError",
    "MLServerExecutionEndedError",
    "MLServerTLSError",
    "MalformedResponseError",
    "ModelObjectError",
    "OperatorArgumentError",
    "RecordValidationError",
    "ServiceArgumentError",
    "ServiceCodeArgumentError",
    "ServiceExistsError",
    "ServiceModelArgumentError",
    "ServiceNotFoundError",
    "ServiceParameterArgumentError",
    "ServiceRuntimeTypeError",
    "ServiceVersionConflictError",
    "ServiceVersionSelectionError",
    "UnsafeArtifactNameError",
]
