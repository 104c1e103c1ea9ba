"""Every non-2xx response, from every route, as the one envelope (docs/errors.md)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import AistackError, ClientGone, ErrorKind, error_envelope, kind_for_status

log = logging.getLogger("aistack.errors")

def too_large_message(limit_bytes: int) -> str:
    return (
        f"the request body is larger than the {limit_bytes / 1024 / 1024:.3g} MB limit; send a smaller file "
        "or raise AISTACK_MAX_UPLOAD_MB"
    )


class PayloadTooLarge(StarletteHTTPException):
    """Raised while the body is still arriving; an HTTPException so that body parsers let it through."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, too_large_message(limit_bytes))


class BodyTooSlow(StarletteHTTPException):
    """The body did not arrive in time (`server.body_timeout_s`); the connection is closed after the answer."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(400, f"the request body did not arrive within {timeout_s:g} s; send it faster, or raise "
                              "AISTACK_SERVER__BODY_TIMEOUT_S", headers={"Connection": "close"})


def unexpected_error_response(error: BaseException) -> JSONResponse:
    return envelope_response(500, ErrorKind.UNKNOWN,
                             f"aistack hit an internal error ({type(error).__name__}); the server log has the details")


def envelope_response(status: int, kind: ErrorKind, message: str, *, param: str | None = None,
                      provider: str = "aistack", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_envelope(kind, message, provider=provider, param=param), status_code=status, headers=headers)


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """What was wrong with the request, naming the field, from the first of pydantic's errors."""
    where = error.get("loc", ())
    source = where[0] if where else "body"
    path = list(where[1:]) if source in ("body", "query", "path", "header", "cookie") else list(where)
    kind = error.get("type")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error") or "it does not parse"
        at = f" at character {path[0]}" if path and isinstance(path[0], int) else ""
        return f"the request body is not valid JSON ({reason}{at}); send a JSON object", None
    if not path:
        if kind == "missing":
            return "the request body is missing; send a JSON object with the fields this endpoint takes", None
        return ("the request body must be a JSON object, sent with Content-Type: application/json "
                f"(pydantic: {error.get('msg')})"), None
    # Multipart arrays arrive as `name[]`; the envelope names the field itself.
    param = str(path[0]).removesuffix("[]")
    field = param + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path[1:])
    if kind == "missing":
        return f"the field '{field}' is required; add it to the request", param
    return f"{field}: {error.get('msg')}", param


def _unparsable_body_message(cause: BaseException) -> str:
    """FastAPI's words for a body its parser raised on ("There was an error parsing the body"), made to
    say what was wrong and what to send."""
    if isinstance(cause, RecursionError):
        return ("the request body nests arrays or objects too deeply to parse (hundreds of levels); "
                "send the fields as the API reference gives them")
    return (f"the request body could not be parsed ({type(cause).__name__}); send a JSON object, or for "
            "audio uploads multipart/form-data with the file and the fields")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AistackError)
    async def aistack_error(request: Request, error: AistackError) -> JSONResponse:
        return envelope_response(error.status_code, error.kind, error.message, param=error.param,
                                 provider=error.provider, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error.errors()[0])
        return envelope_response(400, ErrorKind.MALFORMED, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code
        kind = kind_for_status(status)
        message = str(error.detail)
        if status == 404 and error.detail == "Not Found":
            message = f"no route {request.method} {request.url.path}; the API lives under /v1 (see GET /v1/models)"
        elif status == 405:
            # Each kind has one status (docs/errors.md): a wrong method is a malformed request, 400.
            allowed = next((v for k, v in (error.headers or {}).items() if k.lower() == "allow"), "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}"
            status = 400
        elif status == 400 and error.__cause__ is not None:
            message = _unparsable_body_message(error.__cause__)
        return envelope_response(status, kind, message, headers=getattr(error, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def left_while_sending(request: Request, error: ClientDisconnect) -> JSONResponse:
        from .middleware import mark_cancelled  # (middleware builds on this module)

        mark_cancelled(request.scope)  # the client left while sending its request: 499, not a failure
        return envelope_response(499, ErrorKind.CANCELLED, "the client went away while sending the request")

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> JSONResponse:
        return envelope_response(499, ErrorKind.CANCELLED, "the client went away; the work was stopped")

