"""One exception hierarchy: the CLI turns it into a one-line message, the API into an OpenAI error body."""

from __future__ import annotations


class AlambicError(Exception):
    """Base of every error alambic raises on purpose; carries its HTTP status and OpenAI error fields."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(AlambicError):
    """The request is malformed or asks for something the server cannot do."""


class ContextLengthError(InvalidRequestError):
    """The prompt, plus the tokens asked for, does not fit the model's context."""

    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class PayloadTooLargeError(AlambicError):
    status_code = 413


class NotFoundError(AlambicError):
    status_code = 404


class ModelNotFoundError(NotFoundError):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model", code="model_not_found")


class AccountNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No account named '{name}'.", param="name", code="account_not_found")


class ConflictError(AlambicError):
    status_code = 409


class AuthenticationError(AlambicError):
    status_code = 401


class PermissionDeniedError(AlambicError):
    status_code = 403
    error_type = "permission_error"


class RateLimitError(AlambicError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after_s = retry_after_s


class ClientDisconnectedError(AlambicError):
    """The client left before its answer was ready (nginx's 499): its generation was cancelled, the log says so."""

    status_code = 499
    error_type = "client_disconnected"


class ServerBusyError(AlambicError):
    status_code = 503
    error_type = "server_error"


class DatabaseOutdatedError(AlambicError):
    """The store's schema is older than this alambic's: `alambic db upgrade` applies the migrations."""

    status_code = 503
    error_type = "server_error"


class StoreUnavailableError(AlambicError):
    """The store cannot be opened: a URL no installed driver reads, a server that does not answer, or no database
    where a command that reads one was pointed."""

    status_code = 503
    error_type = "server_error"
