"""The one error envelope (docs/errors.md) and the exceptions that carry it."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ErrorKind(str, Enum):
    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    OVERFLOW = "overflow"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    BUSY = "busy"
    NETWORK = "network"
    TIMEOUT = "timeout"


STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.MALFORMED: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.OVERFLOW: 413,
    ErrorKind.CANCELLED: 499,
    ErrorKind.UNKNOWN: 500,
    ErrorKind.BUSY: 503,
    ErrorKind.NETWORK: 503,
    ErrorKind.TIMEOUT: 504,
}

# What a status that came without a kind means (a framework's HTTP exception, an upstream's answer):
# the kind answered with it; any other 4xx is the request's fault, any other 5xx the server's.
KIND_BY_STATUS: dict[int, ErrorKind] = {
    401: ErrorKind.UNAUTHORIZED,
    403: ErrorKind.FORBIDDEN,
    404: ErrorKind.NOT_FOUND,
    413: ErrorKind.OVERFLOW,
    429: ErrorKind.BUSY,
    499: ErrorKind.CANCELLED,
    503: ErrorKind.NETWORK,
    504: ErrorKind.TIMEOUT,
}


def kind_for_status(status: int) -> ErrorKind:
    return KIND_BY_STATUS.get(status, ErrorKind.MALFORMED if status < 500 else ErrorKind.UNKNOWN)


# The OpenAI `type` an SDK client keys on.
OPENAI_TYPE_BY_KIND: dict[ErrorKind, str] = {
    ErrorKind.MALFORMED: "invalid_request_error",
    ErrorKind.UNAUTHORIZED: "authentication_error",
    ErrorKind.FORBIDDEN: "permission_error",
    ErrorKind.NOT_FOUND: "invalid_request_error",
    ErrorKind.OVERFLOW: "invalid_request_error",
    ErrorKind.CANCELLED: "request_cancelled",
    ErrorKind.UNKNOWN: "server_error",
    ErrorKind.BUSY: "server_error",
    ErrorKind.NETWORK: "server_error",
    ErrorKind.TIMEOUT: "server_error",
}


class AistackError(Exception):
    """An error that reaches the client as the envelope."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str = "aistack",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.provider = provider
        self.param = param
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return STATUS_BY_KIND[self.kind]

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.kind, self.message, provider=self.provider, param=self.param)


def error_envelope(
    kind: ErrorKind, message: str, *, provider: str = "aistack", param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "kind": kind.value,
            "provider": provider,
            "message": encodable(message),
            "type": OPENAI_TYPE_BY_KIND[kind],
            "code": kind.value,
            "param": encodable(param) if param is not None else None,
        }
    }


def encodable(text: str) -> str:
    """`text` with lone surrogates (which a request can smuggle in through JSON escapes such as
    `\\udcff`) replaced by U+FFFD, so that the envelope quoting it can always be sent as UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def malformed(message: str, *, param: str | None = None, provider: str = "aistack") -> AistackError:
    return AistackError(ErrorKind.MALFORMED, message, param=param, provider=provider)


def not_found(message: str, *, param: str | None = None) -> AistackError:
    return AistackError(ErrorKind.NOT_FOUND, message, param=param)


def network(message: str, *, provider: str = "aistack") -> AistackError:
    return AistackError(ErrorKind.NETWORK, message, provider=provider)


class ClientGone(Exception):
    """The client disconnected; the work was stopped and the request is logged as 499."""
