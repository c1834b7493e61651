"""Errors of the Machine Learning Server client: one class per thing a caller can act on.

Every message says what went wrong and what to do about it. They are plain Python exceptions (the client
imports nothing of Airflow); Airflow fails a task on any exception, with the message as its reason.
:mod:`airflow_mlserver.exceptions` re-exports them beside the operators' own errors.
"""

from __future__ import annotations


class MLServerError(Exception):
    """Base class of every error of this provider."""


class MLServerConfigError(MLServerError):
    """The connection settings (or a call's argument) are not usable as they are; the message names the field."""


class MLServerTLSError(MLServerConfigError):
    """The TLS handshake with the server failed in a way no retry mends: its certificate was refused (issued by a
    CA the connection does not trust, for another host name, expired) or the server does not answer in TLS.

    Never retried; the message names the server's URL, what failed and the connection field to set (Verify TLS:
    the path of the CA bundle on the workers, or false to skip the check).
    """


class MLServerConnectionError(MLServerError):
    """The server could not be reached, or kept failing, after every retry."""


class MLServerAuthError(MLServerError):
    """The server refused the credentials or the token, also after re-authenticating."""


class MalformedResponseError(MLServerError):
    """The server answered something that is not what the contract says (bad JSON, a missing field)."""


class RecordValidationError(MLServerError, ValueError):
    """Input records do not fit the service's declared inputs; raised before anything is sent."""


class ModelObjectError(MLServerConfigError, ValueError):
    """A model object to publish is not in the form its service's runtime loads (an R service's: RDS bytes).

    :param object_name: The object's name (the variable the service code uses).
    """

    def __init__(self, message: str, object_name: str) -> None:
        super().__init__(message)
        self.object_name = object_name


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
    :param server_message: The ``message`` of the error body (or the raw body), its first 500 characters.
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
