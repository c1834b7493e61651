"""The error answer of the contract: ``{"message": ..., "link": ..., "exceptionType": ...}``."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client with an HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exception_type = _EXCEPTION_TYPES.get(status, "ServerError")

    def body(self) -> dict[str, str]:
        return {"message": self.message, "link": "", "exceptionType": self.exception_type}


_EXCEPTION_TYPES = {
    400: "BadRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "NotFoundException",
    409: "ConflictException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
}


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
