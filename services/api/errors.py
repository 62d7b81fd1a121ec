"""The API's error set and the handlers that turn errors into ``{"detail", "code"}`` bodies.

Domain errors from ``shared.db`` are mapped here, at the boundary, to a status and a stable
``code``; the routers simply let them propagate. Anything unmapped is a bug and stays a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api import message_ops, room_ops
from shared.db import users as users_db
from shared.db.pool import describe

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error response: a readable ``detail`` and a stable, machine-readable ``code``."""

    detail: str = Field(description="What went wrong, for a person.")
    code: str = Field(description="What went wrong, for a program (e.g. user_not_found).")
    errors: list[dict[str, Any]] | None = Field(
        None, description="For invalid_input: each invalid field (loc, msg, type)."
    )


class ApiError(Exception):
    """An error the client caused; subclasses fix the status and the default code."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_input"


#: Domain exception → (status, code). Starlette picks the handler by the exception's MRO.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    users_db.UserNotFound: (404, "user_not_found"),
    users_db.UserExists: (409, "user_exists"),
    users_db.WeakPassword: (422, "weak_password"),
    users_db.InvalidUser: (422, "invalid_user"),
    users_db.UserError: (422, "invalid_user"),
    room_ops.RoomNotFound: (404, "room_not_found"),
    room_ops.BanNotFound: (404, "ban_not_found"),
    room_ops.MemberNotFound: (404, "member_not_found"),
    room_ops.RoomExists: (409, "room_exists"),
    room_ops.MemberExists: (409, "member_exists"),
    room_ops.RoomFull: (409, "room_full"),
    room_ops.OwnerRequired: (409, "owner_required"),
    room_ops.InvalidRoom: (422, "invalid_room"),
    room_ops.RoomError: (422, "invalid_room"),
    message_ops.InvalidSend: (422, "invalid_message"),
    message_ops.UserDisabled: (409, "user_disabled"),
    message_ops.MailboxFull: (409, "mailbox_full"),
    message_ops.SendError: (422, "invalid_message"),
}

#: The database cannot be reached or takes no more connections: 503, so clients retry.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

#: Documented on every route that can give them.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorBody, "description": "The token's scope does not allow this."},
    422: {"model": ErrorBody, "description": "Invalid input."},
    503: {"model": ErrorBody, "description": "The database cannot be reached; retry later."},
}


def error_response(
    status: int, detail: str, code: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(detail=detail, code=code)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.detail, exc.code, exc.headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            status, code = DOMAIN_ERRORS[cls]
            return error_response(status, str(exc), code)
    raise exc  # not a domain error: a bug, let it be a 500


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", describe(exc))
    return error_response(
        503, "the database cannot be reached; retry later", "database_unavailable"
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # The invalid input is not echoed back: it may be a password.
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid input"
    body = ErrorBody(detail=detail, code="invalid_input", errors=errors)
    return JSONResponse(body.model_dump(), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's "There was an error parsing the body" (bytes that are not JSON text):
        # invalid input like any other, so 422 as documented.
        return error_response(422, f"invalid body: {exc.detail}", "invalid_input")
    if exc.status_code == 413:
        log.info("refused %s %s: %s", request.method, request.url.path, exc.detail)
        return error_response(413, str(exc.detail), "payload_too_large")
    return error_response(exc.status_code, str(exc.detail), _slug(str(exc.detail)), exc.headers)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "error"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    for cls in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _domain_error)
    for cls in DATABASE_UNAVAILABLE:
        app.add_exception_handler(cls, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
