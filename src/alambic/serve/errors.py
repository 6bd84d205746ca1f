"""Every error leaves the gateway as an OpenAI-style body with the right status, and is noted in the log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alambic.errors import (
    AlambicError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from alambic.serve.schemas import UNSUPPORTED

logger = logging.getLogger(__name__)

# Pydantic's error types when the body as a whole is absent or not a JSON object.
WHOLE_BODY_ERRORS = {"missing", "model_attributes_type", "model_type", "dict_type"}


def error_response(request: Request, error: AlambicError) -> JSONResponse:
    record = getattr(request.state, "record", None)
    if record is not None:
        record.error_type = error.code or error.error_type
        record.error_message = error.message
    headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, RateLimitError) else None
    return JSONResponse(error.to_openai(), status_code=error.status_code, headers=headers)


def describe_validation_error(error: RequestValidationError) -> AlambicError:
    """The first problem FastAPI found, said the way OpenAI says it: a 400 naming the field (not FastAPI's 422,
    which the openai client raises as an error no caller of OpenAI expects)."""
    problems = error.errors()
    first = problems[0] if problems else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return InvalidRequestError("We could not parse the JSON body of your request.", code="invalid_json")
    fields = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(fields) or None
    if not fields and first["type"] in WHOLE_BODY_ERRORS:
        return InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    if first["type"] == "extra_forbidden":
        return InvalidRequestError(f"{param} is not supported by this server.", param=param, code=UNSUPPORTED)
    if first["type"] == UNSUPPORTED:
        return InvalidRequestError(f"{param} {first['msg']}.", param=param, code=UNSUPPORTED)
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return InvalidRequestError(message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AlambicError)
    async def alambic_error(request: Request, error: AlambicError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request, describe_validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            wrapped: AlambicError = NotFoundError(f"Unknown path {request.url.path}.", code="unknown_url")
        elif error.status_code == 413:
            wrapped = PayloadTooLargeError(str(error.detail), code="request_too_large")
        else:
            wrapped = AlambicError(str(error.detail))
            wrapped.status_code = error.status_code
        return error_response(request, wrapped)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        failure = AlambicError("The server had an error while processing your request.")
        failure.status_code, failure.error_type = 500, "server_error"
        return error_response(request, failure)
