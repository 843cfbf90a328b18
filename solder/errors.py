"""Every error Solder reports to a client, with its HTTP status and code."""

from __future__ import annotations

from typing import Any, ClassVar


class SolderError(Exception):
    """Something went wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.extra = extra
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "status": self.status, **self.extra}


class InvalidRequest(SolderError):
    """The request is not valid."""

    status = 400
    code = "invalid_request"


class InvalidDefinition(InvalidRequest):
    """The workflow definition is not valid."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        lines = "; ".join(f"{path}: {message}" for path, message in problems)
        super().__init__(
            f"invalid workflow definition: {lines}",
            errors=[{"path": path, "message": message} for path, message in problems],
        )


class Unauthorized(SolderError):
    """Missing or unknown API key: send `Authorization: bearer <API key>`."""

    status = 401
    code = "unauthorized"


class NotFound(SolderError):
    """Not found."""

    status = 404
    code = "not_found"


class MethodNotAllowed(SolderError):
    """Method not allowed."""

    status = 405
    code = "method_not_allowed"


class Conflict(SolderError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class PayloadTooLarge(SolderError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class Unavailable(SolderError):
    """The service is unavailable; retry shortly."""

    status = 503
    code = "unavailable"


class LogUnreadable(SolderError):
    """A stored execution log cannot be read back."""

    status = 500
    code = "log_unreadable"
