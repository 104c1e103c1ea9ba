"""Ollama, reached over HTTP: its native API for health and inventory, its `/v1` for the requests.

Visible while `GET /api/version` answers within the probe timeout. Models come from `/api/tags`;
what each can do from `/api/show` (`capabilities`: "completion" → llm, "embedding" → embeddings),
remembered by digest, since a model's capabilities change only when it is pulled again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import httpx

from ..settings import OllamaSettings
from .base import PROBE_BUDGET_SHARE, BackendStatus, Capability, ModelCard, Unavailable

log = logging.getLogger("aistack.engines.ollama")

PROVIDER = "ollama"
START_FIX = "start Ollama: `ollama serve` (or the Ollama app), then `ollama pull MODEL`"
ENABLE_SETTING = "AISTACK_LLM__OLLAMA__ENABLED"


class OllamaBackend:
    provider = PROVIDER
    capability = "llm"

    def __init__(self, settings: OllamaSettings, probe_timeout_s: float) -> None:
        self._settings = settings
        self._base_url = settings.base_url.rstrip("/")
        self._probe_timeout_s = probe_timeout_s
        self._capabilities: dict[tuple[str, str], tuple[Capability, ...]] = {}
        self._client: httpx.Client | None = None

    def root_url(self) -> str | None:
        return f"{self._base_url}/v1"

    def auth_headers(self) -> dict[str, str]:
        key = self._settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def unreachable(self, detail: str) -> Unavailable:
        return Unavailable(PROVIDER, f"Ollama is not reachable at {self._base_url} ({detail})", START_FIX)

    def missing_model_fix(self, model_id: str) -> str | None:
        return f"ollama pull {model_id}"

    def probe(self) -> BackendStatus:
        if not self._settings.enabled:
            fix = f"set {ENABLE_SETTING}=true, then {START_FIX}"
            return BackendStatus(PROVIDER, "llm", unavailable=(Unavailable(PROVIDER, "Ollama is disabled in the settings", fix),))
        deadline = time.monotonic() + PROBE_BUDGET_SHARE * self._probe_timeout_s
        client = self._sync_client()
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

    def _card(self, client: httpx.Client, item: dict, deadline: float) -> ModelCard:
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
            capabilities = tuple(
                capability for capability, ollama_name in (("llm", "completion"), ("embeddings", "embedding"))
                if ollama_name in listed
            ) or ("llm",)
        self._capabilities[(name, digest)] = capabilities
        return capabilities

    def _sync_client(self) -> httpx.Client:
        # One client for every probe: building one costs more than the probe itself.
        if self._client is None:
            self._client = httpx.Client(timeout=PROBE_BUDGET_SHARE * self._probe_timeout_s, trust_env=False)
        return self._client


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _timestamp(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
