"""Ollama, reached over HTTP: its native API for health and inventory, its `/v1` for the requests.

Visible while `GET /api/version` answers within the probe timeout. Models come from `/api/tags`;
what each can do from `/api/show` (`capabilities`: "completion" → llm, "embedding" → embeddings),
remembered by digest, since a model's capabilities change only when it is pulled again.

What it holds in memory comes from `/api/ps` (`size`, `size_vram`, `expires_at` per model). A
request with no prompt loads a model (`/api/generate`; `/api/embed` with no input for a model
that only embeds), and one with `"keep_alive": 0` frees it; Ollama then unloads it in the
background, so an unload waits until `/api/ps` no longer lists it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import httpx

from ..errors import AistackError, ErrorKind
from ..settings import OllamaSettings
from .base import PROBE_BUDGET_SHARE, BackendStatus, Capability, ModelCard, Residency, Unavailable
from .http_upstream import ProbeClient, bearer_headers, one_off_client, transport_error, upstream_status_kind
from .upstream_errors import upstream_message

log = logging.getLogger("aistack.engines.ollama")

PROVIDER = "ollama"
START_FIX = "start Ollama: `ollama serve` (or the Ollama app), then `ollama pull MODEL`"
ENABLE_SETTING = "AISTACK_LLM__OLLAMA__ENABLED"
# How long an unload waits for Ollama's scheduler to drop the model from /api/ps.
UNLOAD_SETTLE_S = 10.0
UNLOAD_POLL_S = 0.05
# Ollama keeps a model with a negative keep_alive for the longest Go duration (about 292 years).
FOREVER_AFTER_S = 100 * 365 * 24 * 3600


class OllamaBackend:
    provider = PROVIDER
    capability: Capability = "llm"
    # Ollama's /v1 passes the role on untouched, and models' templates know `system`, `user`, `assistant`
    # and `tool`: a `developer` message would be left out of the prompt without a word.
    accepts_developer_role = False

    def __init__(self, settings: OllamaSettings, probe_timeout_s: float, load_timeout_s: float = 600.0) -> None:
        self._load_timeout_s = load_timeout_s
        self._settings = settings
        self._base_url = settings.base_url.rstrip("/")
        self._probe_timeout_s = probe_timeout_s
        self._capabilities: dict[tuple[str, str], tuple[Capability, ...]] = {}
        self._probe_client = ProbeClient(PROBE_BUDGET_SHARE * probe_timeout_s)

    def root_url(self) -> str | None:
        return f"{self._base_url}/v1"

    def auth_headers(self) -> dict[str, str]:
        return bearer_headers(self._settings.api_key)

    def unreachable(self, detail: str) -> Unavailable:
        return Unavailable(PROVIDER, f"Ollama is not reachable at {self._base_url} ({detail})", START_FIX)

    def missing_model_fix(self, model_id: str) -> str | None:
        return f"ollama pull {model_id}"

    def retry_after_s(self) -> float | None:
        return None

    def canonical_ids(self, model: str) -> tuple[str, ...]:
        # An untagged name means `:latest`, as `ollama run NAME` does.
        return () if ":" in model.rpartition("/")[2] else (f"{model}:latest",)

    def unservable(self, endpoint: str, payload: dict[str, Any]) -> AistackError | None:
        return None

    def probe(self) -> BackendStatus:
        if not self._settings.enabled:
            fix = f"set {ENABLE_SETTING}=true, then {START_FIX}"
            return BackendStatus(PROVIDER, "llm", unavailable=(Unavailable(PROVIDER, "Ollama is disabled in the settings", fix),))
        deadline = time.monotonic() + PROBE_BUDGET_SHARE * self._probe_timeout_s
        client = self._probe_client.get()
        try:
            version = client.get(f"{self._base_url}/api/version", headers=self.auth_headers())
            if version.status_code != 200:
                return self._down(f"/api/version answered {version.status_code}")
            tags = client.get(f"{self._base_url}/api/tags", headers=self.auth_headers(), timeout=_left(deadline))
            tags.raise_for_status()
            listed = tags.json().get("models") or []
        except httpx.ConnectError:
            return self._down("nothing answers there")
        except httpx.TimeoutException:
            return self._down(f"it did not answer within {self._probe_timeout_s:g} s")
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            return self._down(f"its model list could not be read: {error}")
        cards = tuple(self._card(client, item, deadline) for item in listed if isinstance(item, dict) and item.get("name"))
        return BackendStatus(PROVIDER, "llm", cards=cards)

    def _down(self, detail: str) -> BackendStatus:
        return BackendStatus(PROVIDER, "llm", unavailable=(self.unreachable(detail),))

    def _card(self, client: httpx.Client, item: dict[str, Any], deadline: float) -> ModelCard:
        name = str(item["name"])
        details = item.get("details") or {}
        return ModelCard(
            id=name,
            provider=PROVIDER,
            capabilities=self._capabilities_of(client, name, str(item.get("digest", "")), deadline),
            family=str(details.get("family") or PROVIDER),
            supports_streaming=True,
            created=_timestamp(item.get("modified_at")),
        )

    def _capabilities_of(self, client: httpx.Client, name: str, digest: str, deadline: float) -> tuple[Capability, ...]:
        known = self._capabilities.get((name, digest))
        if known is not None:
            return known
        if deadline - time.monotonic() < 0.01:
            return ("llm",)  # asked again on the next probe
        try:
            shown = client.post(f"{self._base_url}/api/show", json={"model": name}, headers=self.auth_headers(),
                                timeout=_left(deadline))
            listed = shown.json().get("capabilities") if shown.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            log.debug("ollama /api/show %s failed: %s", name, error)
            return ("llm",)
        if not isinstance(listed, list):  # an Ollama too old to say: every model chats
            capabilities: tuple[Capability, ...] = ("llm",)
        else:
            ollama_names: tuple[tuple[Capability, str], ...] = (("llm", "completion"), ("embeddings", "embedding"))
            capabilities = tuple(capability for capability, ollama_name in ollama_names if ollama_name in listed) or ("llm",)
        self._capabilities[(name, digest)] = capabilities
        return capabilities

    # -- what it holds in memory (ResidencyControl) -------------------------------------------

    async def resident(self) -> dict[str, Residency]:
        listed = await self._call("GET", "/api/ps", None, self._probe_timeout_s, "list the models it holds")
        now = time.time()
        held: dict[str, Residency] = {}
        for item in (listed.get("models") or []) if isinstance(listed, dict) else []:
            if not isinstance(item, dict) or not (item.get("name") or item.get("model")):
                continue
            expires_at = _wall_clock(item.get("expires_at"))
            if expires_at is not None and expires_at - now > FOREVER_AFTER_S:
                expires_at = None  # a negative keep_alive: kept until told otherwise
            size = item.get("size") if isinstance(item.get("size"), int) else None
            vram = item.get("size_vram") if isinstance(item.get("size_vram"), int) else None
            held[str(item.get("name") or item.get("model"))] = Residency(
                # expireRunner sets expires_at to now and unloads in the background.
                state="unloading" if expires_at is not None and expires_at <= now else "loaded",
                device=None if vram is None else ("cuda" if vram > 0 else "cpu"),
                size_bytes=size,
                expires_at=expires_at,
            )
        return held

    async def load_model(self, card: ModelCard) -> None:
        name = card.provider_model_id
        if "llm" in card.capabilities:
            await self._call("POST", "/api/generate", {"model": name}, self._load_timeout_s, f"load {name}")
        else:  # /api/generate refuses a model that only embeds; /api/embed with no input loads it
            await self._call("POST", "/api/embed", {"model": name}, self._load_timeout_s, f"load {name}")

    async def unload_model(self, card: ModelCard) -> None:
        name = card.provider_model_id
        await self._call("POST", "/api/generate", {"model": name, "keep_alive": 0}, self._probe_timeout_s,
                         f"unload {name}")
        deadline = time.monotonic() + UNLOAD_SETTLE_S
        while name in await self.resident() and time.monotonic() < deadline:
            await asyncio.sleep(UNLOAD_POLL_S)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float, what: str) -> Any:
        """One request to Ollama's native API; its JSON answer, or an AistackError saying what went wrong."""
        url = f"{self._base_url}{path}"
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._probe_timeout_s))
        try:
            # Admin calls are rare: a client each keeps no connection tied to an event loop.
            async with one_off_client(timeout) as client:
                response = await client.request(method, url, json=body, headers=self.auth_headers())
        except httpx.HTTPError as error:
            raise transport_error(
                error, PROVIDER,
                unreachable=lambda _: f"{self.unreachable('nothing answers there').reason}; {START_FIX}",
                timed_out=f"Ollama at {self._base_url} did not {what} within {timeout_s:g} s",
                dropped=lambda detail: f"Ollama at {self._base_url} could not {what}: {detail}; {START_FIX}",
                dropped_kind=ErrorKind.NETWORK,
            ) from None
        status = response.status_code
        if status >= 400:
            message, _param = upstream_message(response.content, status)
            model = (body or {}).get("model")
            if status == 404 and model:
                raise AistackError(ErrorKind.NOT_FOUND, f"Ollama could not {what}: {message}; to fix it: "
                                   f"{self.missing_model_fix(model)}", provider=PROVIDER, param="model")
            # Ollama's native API answers 503 when its queue of requests is full.
            kind = ErrorKind.BUSY if status == 503 else upstream_status_kind(status)
            raise AistackError(kind, f"Ollama could not {what} ({status}: {message})", provider=PROVIDER)
        try:
            return response.json()
        except ValueError:
            raise AistackError(ErrorKind.UNKNOWN, f"Ollama answered {path} with something that is not JSON",
                               provider=PROVIDER) from None


def _wall_clock(value: object) -> float | None:
    """An RFC 3339 time as Go writes it (nanoseconds, any offset) in Unix seconds; None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _timestamp(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
