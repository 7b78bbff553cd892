"""What the service and the review app answer when they refuse: always JSON, never a traceback.

One error type (:class:`RequestError`), one body (``{"error": code, "detail": sentence}``)
and one set of handlers for both applications.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EcomarineError, GalleryError

__all__ = ["SAFE_ID", "RequestError", "error_response", "install_error_handlers"]

#: An id a client may give (an individual, a sighting, a reviewer): 1-128 characters, no
#: control characters, no slashes (ids end up in paths and file names).
SAFE_ID: Final = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")


class RequestError(Exception):
    """A request refused: an HTTP status, a short code and a sentence.

    Args:
        status: The HTTP status (4xx, or 503).
        code: Machine-readable error code (``"zip_bomb"``, ``"unsafe_name"``, ...).
        detail: What was wrong, for a person.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, http_codes: Mapping[int, str]) -> None:
    """JSON answers for :class:`RequestError`, library errors and Starlette's own errors.

    Args:
        app: The application.
        http_codes: Error codes for Starlette's statuses (e.g. 404 ``"not_found"``); any
            other status is ``"bad_request"``.
    """

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = http_codes.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(EcomarineError)
    async def _library(request: Request, exc: EcomarineError) -> JSONResponse:
        status = 409 if isinstance(exc, GalleryError) else 422
        return error_response(status, type(exc).__name__, str(exc))
