"""`ApiError`, the one error a request's checks raise, with its HTTP status and the field it names.

Kept apart from `errors.py` (which turns it into FastAPI responses) so that the request checks (`prepare`, `img2img`,
`generate.plan`) import without FastAPI: `sd-core batch` validates its jobs with the same code as the server, on
machines (and Ray workers) that may not have the server extra.
"""

from __future__ import annotations

KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    422: "ValidationError",
    500: "InternalError",
    503: "Unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, message and the request field it concerns."""

    def __init__(self, status: int, detail: str, field: str | None = None, kind: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field
        self.kind = kind or KINDS.get(status, "Error")


def invalid(field: str | None, detail: str) -> ApiError:
    """A 422 about one field."""
    return ApiError(422, detail, field)
