"""One error shape for every failure: `{"error": kind, "detail": message, "field": name or null}`.

Clients show `detail` to the user and can highlight `field`; `error` says which kind of failure it was. Validation
errors also carry FastAPI's usual `errors` list (loc/msg/type) for clients that parse it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api_error import KINDS, ApiError, invalid

__all__ = ["KINDS", "ApiError", "error_body", "error_response", "install_handlers", "invalid", "log"]

log = logging.getLogger("sd_core.server")


def error_body(
    status: int,
    detail: str,
    field: str | None = None,
    kind: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": kind or KINDS.get(status, "Error"), "detail": detail, "field": field}
    if errors is not None:
        body["errors"] = errors
    return body


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'init_images', 0) -> 'init_images[0]'; the leading 'body'/'query' is dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors without the raw input and context objects (which may be large or not JSON)."""
    return [
        {
            "loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def install_handlers(app: FastAPI) -> None:
    """Route every exception to the shared error shape; anything unexpected is logged and becomes a 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, error_body(exc.status, exc.detail, exc.field, exc.kind))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable(list(exc.errors()))
        if not errors:
            return error_response(422, error_body(422, "invalid request"))
        first = errors[0]
        field = _field_of(first["loc"])
        if first["type"] == "json_invalid":
            return error_response(422, error_body(422, f"the body is not valid JSON: {first['msg']}", errors=errors))
        if first["type"] == "model_attributes_type" or field is None:
            return error_response(
                422, error_body(422, f"the body must be a JSON object: {first['msg']}", errors=errors)
            )
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return error_response(422, error_body(422, f"{field}: {first['msg']}{more}", field, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body could not be read: it must be UTF-8 encoded JSON"
        return error_response(exc.status_code, error_body(exc.status_code, detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, error_body(500, f"internal error: {type(exc).__name__}: {exc}"))
