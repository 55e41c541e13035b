"""ASGI middleware run before any route: token check, loopback Host/Origin check, request body cap.

- Token: `Authorization: Bearer T`, or HTTP Basic with T as the password (A1111 clients only know Basic auth,
  e.g. webuiapi's `set_auth`). Compared in constant time.
- Host/Origin: a server bound to loopback answers only requests addressed to a loopback name, which defeats DNS
  rebinding; a browser page from another origin cannot drive it either.
- Body cap: a declared Content-Length over the cap is refused before reading; a chunked body is counted as it
  arrives. The refused body is read and discarded (up to a bound) so that the client gets to read the 413.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from .errors import error_body
from .settings import is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
DRAIN_LIMIT = 256 * 1024 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server accepts ({limit} bytes, --max-body-mb)")


def _hostname(value: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:80' -> '::1', 'http://localhost:1' -> 'localhost'."""
    if "://" in value:
        return urlsplit(value).hostname or ""
    try:
        return urlsplit("//" + value).hostname or ""
    except ValueError:
        return ""


def _local_name(host: str) -> bool:
    return is_loopback(host) or host == "localhost" or host.endswith(".localhost")


class Guard:
    """Wraps the app; see the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int, loopback_only: bool) -> None:
        self.app, self.max_body, self.loopback_only = app, max_body, loopback_only
        self.token = token.encode("utf-8") if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.loopback_only:
            host = _hostname(headers.get("host", "127.0.0.1"))
            if not _local_name(host):
                return await self._reject(
                    receive,
                    send,
                    403,
                    "Forbidden",
                    f"this server answers only requests addressed to localhost, not {host!r}",
                )
            origin = headers.get("origin")
            if origin and origin != "null" and not _local_name(_hostname(origin)):
                return await self._reject(
                    receive, send, 403, "Forbidden", f"cross-origin requests from {origin!r} are not allowed"
                )
        if self.token is not None and not self._authorized(headers.get("authorization", "")):
            return await self._reject(
                receive,
                send,
                401,
                "Unauthorized",
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                {"www-authenticate": 'Bearer realm="sd-core"'},
            )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await self._reject(receive, send, 400, "BadRequest", "invalid Content-Length header")
            if int(length) > self.max_body:
                return await self._reject(receive, send, 413, "PayloadTooLarge", BodyTooLarge(self.max_body).detail)
        await self.app(scope, self._counting(receive), send)

    def _authorized(self, header: str) -> bool:
        assert self.token is not None
        scheme, _, value = header.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            given = value.encode("latin-1")
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        else:
            given = b""
        return hmac.compare_digest(given, self.token)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise BodyTooLarge(self.max_body)
            return message

        return counted

    async def _reject(
        self,
        receive: Receive,
        send: Send,
        status: int,
        kind: str,
        detail: str,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        await _drain(receive)
        body = json.dumps(error_body(status, detail, None, kind)).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read and discard the rest of a request body (up to DRAIN_LIMIT) so the client can read our answer."""
    drained = 0
    while drained <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
