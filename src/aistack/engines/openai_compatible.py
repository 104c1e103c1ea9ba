"""Any OpenAI-compatible LLM server (llama.cpp server, vLLM, LM Studio), reached over HTTP.

Visible while its `GET /v1/models` answers within the probe timeout; every model it lists is a
chat/completions model. The embedded llama.cpp server is one of these whose address is known only
while it runs; on demand (its packaged default), the model lifecycle starts and stops it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..errors import AistackError, ErrorKind
from .base import PROBE_BUDGET_SHARE, BackendStatus, Capability, LoadedModel, ModelCard, Residency, Unavailable
from .http_upstream import ProbeClient, bearer_headers, describe

log = logging.getLogger("aistack.engines.openai_compatible")

# How long a server whose model list stops answering in time still counts as busy rather than down.
BUSY_GRACE_S = 60.0


class OpenAICompatibleBackend:
    capability: Capability = "llm"
    # llama-cpp-python refuses the role (a 500); which others take it cannot be asked, and `system` means
    # the same to all of them.
    accepts_developer_role = False

    def __init__(
        self,
        provider: str,
        root_url: Callable[[], str | None],
        api_key: str | None,
        probe_timeout_s: float,
        start_fix: str,
        not_running: Callable[[], str] | None = None,
        unservable: Callable[[str, dict[str, Any]], AistackError | None] | None = None,
    ) -> None:
        """`unservable`: what the server is known to fail on (`ChatUpstream.unservable`), for one whose
        server program aistack knows (the embedded llama.cpp server)."""
        self.provider = provider
        self._root_url = root_url
        self._unservable = unservable
        self._api_key = api_key
        self._start_fix = start_fix
        self._not_running = not_running
        self._probe_client = ProbeClient(PROBE_BUDGET_SHARE * probe_timeout_s)
        self._last_seen: tuple[float, BackendStatus] | None = None

    @classmethod
    def fixed(cls, provider: str, base_url: str, api_key: str | None, probe_timeout_s: float) -> OpenAICompatibleBackend:
        root = base_url.rstrip("/")
        return cls(provider, lambda: root, api_key, probe_timeout_s, f"start the OpenAI-compatible server at {root}")

    def root_url(self) -> str | None:
        return self._root_url()

    def auth_headers(self) -> dict[str, str]:
        return bearer_headers(self._api_key)

    def unreachable(self, detail: str) -> Unavailable:
        return Unavailable(self.provider, f"{self.provider} is not reachable ({detail})", self._start_fix)

    def missing_model_fix(self, model_id: str) -> str | None:
        return None

    def retry_after_s(self) -> float | None:
        return None

    def canonical_ids(self, model: str) -> tuple[str, ...]:
        return ()

    def unservable(self, endpoint: str, payload: dict[str, Any]) -> AistackError | None:
        return self._unservable(endpoint, payload) if self._unservable is not None else None

    def probe(self) -> BackendStatus:
        root = self.root_url()
        if root is None:
            reason = self._not_running() if self._not_running else f"{self.provider} is not running"
            return BackendStatus(self.provider, "llm", unavailable=(Unavailable(self.provider, reason, self._start_fix),))
        try:
            response = self._probe_client.get().get(f"{root}/models", headers=self.auth_headers())
        except httpx.TimeoutException as error:
            if self._last_seen is not None and time.monotonic() - self._last_seen[0] < BUSY_GRACE_S:
                # Some servers (llama-cpp-python) answer /models only between generations: busy, not gone.
                return self._last_seen[1]
            return BackendStatus(self.provider, "llm", unavailable=(self.unreachable(_describe(error, root)),))
        except httpx.HTTPError as error:
            self._last_seen = None  # refused or broken: gone, not busy
            return BackendStatus(self.provider, "llm", unavailable=(self.unreachable(_describe(error, root)),))
        if response.status_code != 200:
            detail = f"{root}/models answered {response.status_code}"
            return BackendStatus(self.provider, "llm", unavailable=(self.unreachable(detail),))
        try:
            listed = response.json().get("data") or []
        except (ValueError, AttributeError):
            return BackendStatus(self.provider, "llm", unavailable=(self.unreachable(f"{root}/models sent no model list"),))
        now = int(time.time())
        cards = tuple(
            ModelCard(
                id=str(item["id"]),
                provider=self.provider,
                capabilities=("llm",),
                family=self.provider,
                supports_streaming=True,
                created=int(item.get("created") or now),
            )
            for item in listed
            if isinstance(item, dict) and item.get("id")
        )
        status = BackendStatus(self.provider, "llm", cards=cards)
        self._last_seen = (time.monotonic(), status)
        return status


class SupervisedServerBackend(OpenAICompatibleBackend):
    """A server that aistack runs itself (the embedded llama.cpp server): it holds its model for as long
    as it runs and runs as long as the gateway does, so the model is not loaded or freed on its own."""

    def __init__(
        self,
        provider: str,
        root_url: Callable[[], str | None],
        probe_timeout_s: float,
        start_fix: str,
        not_running: Callable[[], str],
        residency: Callable[[], dict[str, Residency]],
        unload_refusal: str,
        api_key: str | None = None,
        retry_after: Callable[[], float | None] | None = None,
        unservable: Callable[[str, dict[str, Any]], AistackError | None] | None = None,
    ) -> None:
        super().__init__(provider, root_url, api_key, probe_timeout_s, start_fix, not_running, unservable)
        self._residency = residency
        self._unload_refusal = unload_refusal
        self._retry_after = retry_after

    def retry_after_s(self) -> float | None:
        return self._retry_after() if self._retry_after is not None else None

    async def resident(self) -> dict[str, Residency]:
        return {model_id: held for model_id, held in self._residency().items() if held.state != "unloaded"}

    async def load_model(self, card: ModelCard) -> None:
        held = self._residency().get(card.provider_model_id)
        if held is None or held.state != "loaded":
            reason = self._not_running() if self._not_running else f"{self.provider} is not running"
            raise AistackError(ErrorKind.NETWORK, f"{reason}; {self._start_fix}", provider=self.provider)

    async def unload_model(self, card: ModelCard) -> None:
        raise AistackError(ErrorKind.MALFORMED, self._unload_refusal)


def _describe(error: httpx.HTTPError, url: str) -> str:
    if isinstance(error, httpx.ConnectError):
        return f"nothing answers at {url}"
    if isinstance(error, httpx.TimeoutException):
        return f"{url} did not answer in time"
    return f"{url}: {describe(error)}"


class SupervisedServer(Protocol):
    """What an on-demand backend needs of the server it runs (the embedded llama.cpp server)."""

    model_id: str
    error: str | None
    log_path: Path

    @property
    def state(self) -> str: ...

    @property
    def base_url(self) -> str | None: ...

    @property
    def pid(self) -> int | None: ...

    def problem(self) -> str | None: ...

    def retry_after_s(self) -> float | None: ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool: ...

    async def stop(self) -> None: ...


@dataclass
class RunningServer:
    """What the model lifecycle holds for a model served by a server process: the process itself."""

    card: ModelCard
    pid: int | None

    def close(self) -> None:
        """Nothing in this process to free: stopping the server frees its memory."""


class OnDemandServerBackend(OpenAICompatibleBackend):
    """A server aistack runs itself, started when its model is first used and stopped when the model
    lifecycle unloads the model (keep-alive, budget, /admin/models), like a model run in this process.

    Its model is listed while the server is stopped (it can be started), unless it cannot start at all
    (the weights or the library are missing), which the listing then says with the fix.
    """

    def __init__(self, provider: str, server: SupervisedServer, *, weights: Path | None, start_timeout_s: float,
                 probe_timeout_s: float, start_fix: str, problem_fix: str, not_running: Callable[[], str],
                 api_key: str | None = None, unservable: Callable[[str, dict[str, Any]], AistackError | None] | None = None) -> None:
        """`problem_fix`: what to do when the server cannot start at all (its weights or library missing);
        `api_key`: the key the server was started with."""
        super().__init__(provider, lambda: server.base_url, api_key, probe_timeout_s, start_fix, not_running, unservable)
        self._server = server
        self._weights = weights
        self._start_timeout_s = start_timeout_s
        self._problem_fix = problem_fix
        self._why_not_running = not_running

    def probe(self) -> BackendStatus:
        if self._server.state == "running":
            return super().probe()
        problem = self._server.problem()
        if problem is not None:
            missing = Unavailable(self._server.model_id, problem, self._problem_fix)
            return BackendStatus(self.provider, "llm", unavailable=(missing,))
        card = ModelCard(id=self._server.model_id, provider=self.provider, capabilities=("llm",), family=self.provider,
                         supports_streaming=True, created=self._created())
        return BackendStatus(self.provider, "llm", cards=(card,))

    def retry_after_s(self) -> float | None:
        # Killed or crashed while in use, its supervisor restarts it: a moment's 503 says when to come back.
        return self._server.retry_after_s()

    def _created(self) -> int:
        try:
            return int(self._weights.stat().st_mtime) if self._weights is not None else int(time.time())
        except OSError:
            return int(time.time())

    def device(self, card: ModelCard) -> str:
        return "cpu"

    def footprint(self, card: ModelCard) -> int:
        # llama.cpp maps the whole GGUF at start and keeps it: its size is the model's footprint.
        try:
            return self._weights.stat().st_size if self._weights is not None else 0
        except OSError:
            return 0

    async def start_serving(self, card: ModelCard) -> LoadedModel:
        log.info("starting %s for %s (first use since it was stopped); requests for it wait until it is healthy",
                 self.provider, card.id)
        await self._server.start()
        if not await self._server.wait_ready(self._start_timeout_s):
            why = self._why_not_running()
            # Not left retrying in the background: the next request starts it afresh.
            await self._server.stop()
            raise AistackError(ErrorKind.NETWORK, f"{card.id} could not be started: {why}", provider=self.provider)
        return RunningServer(card, self._server.pid)

    async def stop_serving(self, model: LoadedModel) -> None:
        await self._server.stop()
