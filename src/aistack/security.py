"""Who may call what: API keys with scopes, and the Host and Origin rules that keep browsers from being
turned against a local gateway (drive-by requests and DNS rebinding).

Every door asks the one `AccessPolicy` built from settings: the HTTP middleware, and a WebSocket door
with the key it was handed (`key_from_authorization` or `key_from_subprotocols`) and its route's scope.
Nothing here knows HTTP frameworks; refusals are `AistackError`s that each door turns into its own answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from .errors import AistackError, ErrorKind

# The WebSocket subprotocol browsers use to hand over a key (they cannot set headers on a WebSocket).
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# Paths that answer without a key: probes, and the web console's own page.
OPEN_PATHS = frozenset({"/health", "/ready", "/"})
USER_DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
WEB_SCHEME_OF = {"ws": "http", "wss": "https"}
# Environment variables a child process (an engine worker, the embedded llama.cpp server) is not handed:
# aistack's own settings (keys, the key file's path) and the model hub's token.
SECRET_ENV_PREFIXES = ("AISTACK_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class AccessScope(str, Enum):
    """What a key may do. `admin` includes everything `user` may."""

    NONE = "none"  # open routes
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class _Key:
    digest: bytes
    scope: AccessScope


def _digest(key: str) -> bytes:
    # Fixed-length digests, so that the comparison takes the same time whatever the key's length.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def environment_without_secrets() -> dict[str, str]:
    """This process's environment for a child it starts, less aistack's settings and hub tokens."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith(SECRET_ENV_PREFIXES)}


def key_from_authorization(value: str | None) -> str | None:
    """The key in an `Authorization: Bearer KEY` header (the scheme in any case); None when absent.

    A value that is not `Bearer KEY` (a bare key, another scheme) gives "" : a key presented wrongly
    is refused, never taken for the key itself."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def key_from_subprotocols(subprotocols: Iterable[str]) -> str | None:
    """The key a browser WebSocket offers as the subprotocol `openai-insecure-api-key.KEY`."""
    for offered in subprotocols:
        if offered.startswith(KEY_SUBPROTOCOL_PREFIX):
            return offered.removeprefix(KEY_SUBPROTOCOL_PREFIX)
    return None


def read_key_file(path: Path) -> list[tuple[AccessScope, str]]:
    """Keys from a file: one per line, `KEY` (user scope) or `user KEY` / `admin KEY`; `#` starts a comment."""
    keys: list[tuple[AccessScope, str]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            keys.append((AccessScope.USER, parts[0]))
        elif len(parts) == 2 and parts[0] in ("user", "admin"):
            keys.append((AccessScope(parts[0]), parts[1]))
        else:
            # The line itself is not quoted: it holds a key.
            raise ValueError(f"{path}, line {number}: write one key per line, as KEY, `user KEY` or `admin KEY`")
    return keys


def _normal_host(host: str) -> str:
    """`Host` without its port, lower case, IPv6 without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    name = _normal_host(host)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AccessPolicy:
    """Keys and their scopes, the host names the gateway answers to and the origins it trusts."""

    def __init__(
        self,
        keys: Iterable[tuple[AccessScope, str]],
        *,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        public_metrics: bool = False,
    ) -> None:
        self._keys = tuple(_Key(_digest(key), scope) for scope, key in keys if key)
        self._hosts = frozenset(_normal_host(h) for h in allowed_hosts)
        self.allowed_origins = tuple(o.rstrip("/").lower() for o in allowed_origins)
        self.public_metrics = public_metrics

    @classmethod
    def from_settings(cls, settings: object) -> AccessPolicy:
        from .settings import Settings

        assert isinstance(settings, Settings)
        security = settings.security
        keys: list[tuple[AccessScope, str]] = []
        if settings.api_key:
            # The one key of earlier versions opened /v1 and /admin alike.
            keys.append((AccessScope.ADMIN, settings.api_key))
        keys += [(AccessScope.USER, k) for k in security.user_keys]
        keys += [(AccessScope.ADMIN, k) for k in security.admin_keys]
        if security.key_file is not None:
            keys += read_key_file(security.key_file.expanduser())
        return cls(keys, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins,
                   public_metrics=security.public_metrics)

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def required_scope(self, path: str) -> AccessScope:
        if path.startswith("/admin/") or path == "/admin":
            return AccessScope.ADMIN
        if path == "/metrics":
            return AccessScope.NONE if self.public_metrics else AccessScope.ADMIN
        if path.startswith("/v1/") or path == "/v1" or path.startswith(USER_DOCS_PATHS):
            return AccessScope.USER
        return AccessScope.NONE

    def scope_of(self, presented: str | None) -> AccessScope:
        """The scope the presented key grants (NONE for no key or a wrong one); every key is compared,
        in constant time, so the answer's timing does not tell which key came close."""
        if not self._keys:
            return AccessScope.ADMIN  # no keys: the host rule keeps the gateway on loopback
        if not presented:
            return AccessScope.NONE
        digest = _digest(presented)
        granted = AccessScope.NONE
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and granted != AccessScope.ADMIN:
                granted = key.scope
        return granted

    def authorize(self, presented: str | None, required: AccessScope) -> AccessScope:
        """The scope granted to the presented key, or the refusal: 401 for a missing or wrong key,
        403 `forbidden` for a user key on an admin route. The key is never quoted."""
        granted = self.scope_of(presented)
        if required == AccessScope.NONE:
            return granted
        if granted == AccessScope.NONE:
            if presented == "":
                message = ("the Authorization header must be `Bearer <key>`; a key without the Bearer scheme "
                           "is not accepted")
            elif presented is None:
                message = ("this gateway needs an API key: send `Authorization: Bearer <key>` with a key from "
                           "AISTACK_SECURITY__USER_KEYS, AISTACK_SECURITY__ADMIN_KEYS, the key file or AISTACK_API_KEY")
            else:
                message = "the API key is not valid for this gateway; send one of its keys as `Authorization: Bearer <key>`"
            raise AistackError(ErrorKind.UNAUTHORIZED, message)
        if required == AccessScope.ADMIN and granted != AccessScope.ADMIN:
            raise AistackError(ErrorKind.FORBIDDEN, "this route needs an admin key; the key sent has the user scope "
                                                    "(admin keys: AISTACK_SECURITY__ADMIN_KEYS or `admin KEY` in the key file)")
        return granted

    def check_host(self, host: str | None) -> None:
        """Only loopback names, IP addresses and configured host names: a name an attacker controls
        (DNS rebinding points it at 127.0.0.1) is refused. No Host at all (HTTP/1.0) cannot be rebound."""
        if host is None or "*" in self._hosts:
            return
        name = _normal_host(host)
        if is_loopback_host(name) or _is_ip(name) or name in self._hosts:
            return
        raise AistackError(ErrorKind.MALFORMED, f"this gateway does not answer to the host name '{name[:100]}'; "
                                                "add it to AISTACK_SECURITY__ALLOWED_HOSTS to allow it",
                           headers={"Connection": "close"})

    def check_origin(self, origin: str | None, host: str | None, scheme: str = "http") -> None:
        """A browser's request from a page that is not the gateway's own (the request's scheme, and
        host and port as its `Host` says) nor a configured origin is refused before any work."""
        if origin is None:
            return
        origin = origin.strip().rstrip("/").lower()
        if self.origin_trusted(origin):
            return
        parsed = urlsplit(origin)
        scheme = WEB_SCHEME_OF.get(scheme, scheme)  # a WebSocket's page is http(s)
        if host is not None and parsed.scheme == scheme and parsed.netloc:
            default_port = "443" if parsed.scheme == "https" else "80"
            if _with_port(parsed.netloc, default_port) == _with_port(host.strip().lower(), default_port):
                return
        raise AistackError(ErrorKind.FORBIDDEN, f"requests from the web origin '{origin[:200]}' are not allowed; "
                                                "add it to AISTACK_SECURITY__ALLOWED_ORIGINS to let its pages call this gateway")

    def admit(self, path: str, headers: Iterable[tuple[bytes, bytes]], scheme: str = "http",
              subprotocols: Iterable[str] = ()) -> AccessScope:
        """Every rule at once, for a door that checks a handshake itself (a WebSocket): Host, Origin,
        then the key from `Authorization: Bearer KEY` or the `openai-insecure-api-key.KEY`
        subprotocol, against `path`'s scope. The scope granted, or the AistackError refusing it."""
        found: dict[bytes, str] = {}
        for name, value in headers:
            found.setdefault(name.lower(), value.decode("latin-1"))
        host = found.get(b"host")
        self.check_host(host)
        self.check_origin(found.get(b"origin"), host, scheme)
        presented = key_from_authorization(found.get(b"authorization"))
        if presented is None:
            presented = key_from_subprotocols(subprotocols)
        return self.authorize(presented, self.required_scope(path))

    def origin_trusted(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins


def _with_port(netloc: str, default_port: str) -> str:
    if netloc.endswith("]") or ":" not in netloc.rpartition("]")[2]:
        return f"{netloc}:{default_port}"
    return netloc
