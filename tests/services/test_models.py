"""The models service's residency rows without HTTP: the rows of an in-process model (the real Piper voice) and of an
upstream that says what it holds (Ollama's loopback double), loads and unloads through the
lifecycle or the upstream, and the refusals for ids that do not exist or cannot be loaded here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from aistack.engines.base import BackendStatus, ModelCard
from aistack.engines.ollama import OllamaBackend
from aistack.engines.piper import MODEL_ID as PIPER
from aistack.engines.piper import PiperBackend
from aistack.errors import AistackError, ErrorKind
from aistack.inventory import Inventory
from aistack.lifecycle import ModelLifecycle
from aistack.scheduler import Scheduler
from aistack.services.models import ModelsService
from aistack.settings import ModelLifecycleSettings, OllamaSettings, PiperSettings, SchedulerSettings
from aistack.weights.resolver import WeightResolver
from doubles.ollama_server import OllamaDouble

CHAT_MODEL = "llama3.2:latest"


class ListsOnly:
    """A chat server whose listing is all aistack knows of it (no residency to read or change)."""

    provider = "listing-only"
    capability = "llm"

    def probe(self) -> BackendStatus:
        return BackendStatus(self.provider, "llm", (ModelCard("plain-llm", self.provider, ("llm",), "plain"),))


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


def with_admin(tmp_path: Path, ollama: OllamaDouble, body: Callable[[ModelsService, ModelLifecycle], Awaitable[None]],
               pinned: tuple[str, ...] = ()) -> None:
    piper = PiperBackend(PiperSettings(), WeightResolver(tmp_path / "cache", {}))
    upstream = OllamaBackend(OllamaSettings(base_url=ollama.url), probe_timeout_s=10, load_timeout_s=30)
    lister = ListsOnly()
    lifecycle = ModelLifecycle({piper.provider: piper}, ModelLifecycleSettings())
    inventory = Inventory((piper, upstream, lister), probe_timeout_s=10, ttl_s=60)
    scheduler = Scheduler(SchedulerSettings())
    admin = ModelsService(inventory, lifecycle, scheduler, {piper.provider: piper},
                          {upstream.provider: upstream, lister.provider: lister}, pinned)

    async def main() -> None:
        try:
            await asyncio.wait_for(body(admin, lifecycle), timeout=60)
        finally:
            await lifecycle.close()
            scheduler.shutdown()

    asyncio.run(main())


def test_an_in_process_model_loads_and_unloads_through_the_lifecycle(tmp_path: Path, ollama: OllamaDouble) -> None:
    async def body(admin: ModelsService, lifecycle: ModelLifecycle) -> None:
        row = next(r for r in await admin.rows() if r.id == PIPER)
        assert (row.owned_by, row.state, row.resident, row.device, row.in_use, row.pinned) == ("piper", "unloaded", False, "cpu", 0, True)
        assert row.size_bytes is not None and row.size_bytes > 0

        loaded = await admin.load(PIPER)
        assert loaded.state == "loaded" and loaded.resident and loaded.loaded_at is not None
        assert lifecycle.entry(PIPER) is not None

        unloaded = await admin.unload(PIPER)
        assert unloaded.state == "unloaded" and unloaded.resident is False and lifecycle.entry(PIPER) is None
        assert (await admin.unload(PIPER)).state == "unloaded"  # again: nothing to do, same answer

    with_admin(tmp_path, ollama, body, pinned=(PIPER,))


def test_an_upstream_that_says_what_it_holds_is_loaded_and_unloaded_through_it(tmp_path: Path, ollama: OllamaDouble) -> None:
    async def body(admin: ModelsService, _: ModelLifecycle) -> None:
        row = next(r for r in await admin.rows() if r.id == CHAT_MODEL)
        assert row.owned_by == "ollama" and row.state == "unloaded"
        assert (await admin.load(CHAT_MODEL)).state == "loaded" and CHAT_MODEL in ollama.running
        assert (await admin.unload(CHAT_MODEL)).state == "unloaded"
        assert CHAT_MODEL not in ollama.running

    with_admin(tmp_path, ollama, body)


def test_an_upstream_that_does_not_say_is_remote_and_a_load_names_its_server(tmp_path: Path, ollama: OllamaDouble) -> None:
    async def body(admin: ModelsService, _: ModelLifecycle) -> None:
        row = next(r for r in await admin.rows() if r.id == "plain-llm")
        assert row.state == "remote" and row.resident is None and row.device is None
        with pytest.raises(AistackError) as error:
            await admin.load("plain-llm")
        assert error.value.kind == ErrorKind.MALFORMED and "listing-only manages plain-llm" in error.value.message

    with_admin(tmp_path, ollama, body)


def test_an_unknown_id_is_not_found_and_names_what_can_be_loaded(tmp_path: Path, ollama: OllamaDouble) -> None:
    async def body(admin: ModelsService, _: ModelLifecycle) -> None:
        for action in (admin.load, admin.unload):
            with pytest.raises(AistackError) as error:
                await action("no-such-model")
            assert error.value.kind == ErrorKind.NOT_FOUND
            assert f"models that can be loaded: {PIPER}, {CHAT_MODEL}" in error.value.message

    with_admin(tmp_path, ollama, body)
