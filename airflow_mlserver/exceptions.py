"""Errors raised by the Machine Learning Server hook: one class per thing a caller can act on.

Every message says what went wrong and what to do about it. All derive from :class:`MLServerError`, an
:class:`~airflow.exceptions.AirflowException`, so a task fails with the message as its reason.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class MLServerError(AirflowException):
    """Base class of every error of this provider."""


class MLServerConfigError(MLServerError):
    """The Airflow connection (or a hook argument) is not usable as it is; the message names the field."""


class MLServerConnectionError(MLServerError):
    """The server could not be reached, or kept failing, after every retry."""


class MLServerAuthError(MLServerError):
    """The server refused the credentials or the token, also after re-authenticating."""


class MalformedResponseError(MLServerError):
    """The server answered something that is not what the contract says (bad JSON, a missing field)."""


class RecordValidationError(MLServerError, ValueError):
    """Input records do not fit the service's declared inputs; raised before anything is sent."""


class AmbiguousStartError(MLServerError):
    """Starting a batch failed in a way that leaves unknown whether the server started an execution.

    :param candidates: Execution ids that appeared on the service meanwhile (possibly none).
    """

    def __init__(self, message: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class MLServerApiError(MLServerError):
    """The server answered a call with an error status.

    :param status: The HTTP status of the answer.
    :param server_message: The ``message`` of the error body (or a prefix of the raw body).
    :param method: The HTTP method of the call.
    :param path: The path of the call (without the query string).
    """

    def __init__(self, message: str, status: int, server_message: str, method: str, path: str) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.method = method
        self.path = path


class ServiceNotFoundError(MLServerApiError):
    """The web service (or that version of it) is not published on the server."""


class ServiceExistsError(MLServerApiError):
    """Publishing failed because that name and version exist already."""


class ExecutionNotFoundError(MLServerApiError):
    """The server does not know that batch execution id for that service."""


class ArtifactNotFoundError(MLServerApiError):
    """A record index or an artifact file name does not exist for that execution."""


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
