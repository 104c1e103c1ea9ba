"""The live inventory (docs/models.md): concurrent probes under a timeout, a short cache, and `auto`."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from aistack import inventory as inventory_module
from aistack.engines.base import BackendStatus, ModelCard
from aistack.inventory import AUTO_ID, Inventory, Snapshot
from clocks import SteppedClock, stepped_clock_fixture

# A probe of a hung backend is given up after this; a healthy one (a thread returning at once)
# must answer within it, so it is generous, not tight.
PROBE_TIMEOUT_S = 1.0


clock = stepped_clock_fixture(inventory_module)  # aistack.inventory reads this clock in the tests that take `clock`


def asr(model_id: str, provider: str = "faster-whisper", streaming: bool = True, created: int = 100, translate: bool = False) -> ModelCard:
    return ModelCard(
        id=model_id,
        provider=provider,
        capabilities=("asr",),
        family=provider,
        languages=("en",),
        supports_streaming=streaming,
        can_translate=translate,
        created=created,
    )


def tts(model_id: str = "piper-joe") -> ModelCard:
    return ModelCard(id=model_id, provider="piper", capabilities=("tts",), family="piper", supports_streaming=False, created=5)


class StaticBackend:
    """A backend that answers its probe at once, counting the calls."""

    def __init__(self, provider: str, cards: tuple[ModelCard, ...], capability: str = "asr") -> None:
        self.provider = provider
        self.capability = capability
        self.cards = cards
        self.calls = 0
        self._lock = threading.Lock()

    def probe(self) -> BackendStatus:
        with self._lock:
            self.calls += 1
        return BackendStatus(self.provider, self.capability, self.cards)

    async def acquire(self, card: ModelCard):
        raise NotImplementedError


class MeetingBackend(StaticBackend):
    """Its probe only succeeds if the other backend's probe is running at the same time."""

    def __init__(self, provider: str, cards: tuple[ModelCard, ...], barrier: threading.Barrier) -> None:
        super().__init__(provider, cards)
        self.barrier = barrier

    def probe(self) -> BackendStatus:
        self.barrier.wait()  # BrokenBarrierError after the barrier's timeout if alone
        return super().probe()


class HungBackend(StaticBackend):
    """A probe that blocks until the test lets it go."""

    def __init__(self, provider: str, release: threading.Event) -> None:
        super().__init__(provider, (asr("hung-model", provider),))
        self.release = release
        self.entered = threading.Event()

    def probe(self) -> BackendStatus:
        self.entered.set()
        self.release.wait(10)
        return super().probe()


class RaisingBackend(StaticBackend):
    def probe(self) -> BackendStatus:
        super().probe()
        raise ConnectionRefusedError("connection refused on 127.0.0.1:11434")


class SlowBackend(StaticBackend):
    def __init__(self, provider: str, cards: tuple[ModelCard, ...], delay: float) -> None:
        super().__init__(provider, cards)
        self.delay = delay

    def probe(self) -> BackendStatus:
        time.sleep(self.delay)
        return super().probe()


def status_of(snapshot: Snapshot, provider: str) -> BackendStatus:
    (status,) = [s for s in snapshot.statuses if s.provider == provider]
    return status


# ----------------------------------------------------------------------------- probing


def test_probes_run_at_the_same_time():
    # Each probe waits for the other to arrive; run one after the other, both would break.
    barrier = threading.Barrier(2, timeout=3)
    a = MeetingBackend("faster-whisper", (asr("whisper-small"),), barrier)
    b = MeetingBackend("parakeet", (asr("parakeet-v3", "parakeet", streaming=False),), barrier)
    snapshot = asyncio.run(Inventory([a, b], probe_timeout_s=5, ttl_s=60).snapshot())
    assert [c.id for c in snapshot.cards] == ["whisper-small", "parakeet-v3"]
    assert all(not s.unavailable for s in snapshot.statuses)
    assert (a.calls, b.calls) == (1, 1)


def test_a_hung_probe_does_not_stall_the_listing():
    release = threading.Event()
    hung = HungBackend("ollama", release)
    healthy = StaticBackend("faster-whisper", (asr("whisper-small"),))
    try:
        snapshot = asyncio.run(_snapshot_then_release(Inventory([hung, healthy], probe_timeout_s=PROBE_TIMEOUT_S, ttl_s=60),
                                                      release, hung))
    finally:
        release.set()
    # The listing came back while the hung probe was still blocked (it was released only afterwards).
    assert [c.id for c in snapshot.cards] == ["whisper-small"]
    status = status_of(snapshot, "ollama")
    assert status.cards == ()
    (why,) = status.unavailable
    assert why.subject == "ollama"
    assert f"did not answer within {PROBE_TIMEOUT_S:g} s" in why.reason
    assert why.fix
    assert status.capability == "asr"
    assert status_of(snapshot, "faster-whisper").unavailable == ()


def test_a_probe_that_stops_answering_names_the_models_it_served_last():
    """A request for one of them is then told why (503 network), not that the model does not exist (404)."""
    release = threading.Event()
    release.set()
    backend = HungBackend("qwen3-tts", release)
    inventory = Inventory([backend], probe_timeout_s=PROBE_TIMEOUT_S, ttl_s=0)

    async def scenario() -> Snapshot:
        first = await inventory.snapshot()
        assert [c.id for c in first.cards] == ["hung-model"]
        release.clear()
        return await inventory.snapshot()

    try:
        snapshot = asyncio.run(scenario())
    finally:
        release.set()
    assert snapshot.cards == ()
    assert {m.subject for m in status_of(snapshot, "qwen3-tts").unavailable} == {"qwen3-tts", "hung-model"}
    error = snapshot.unknown_model_error("hung-model", "pick another")
    assert error.status_code == 503 and error.kind.value == "network" and error.provider == "qwen3-tts"
    assert f"did not answer within {PROBE_TIMEOUT_S:g} s" in error.message
    assert snapshot.unknown_model_error("never-seen", "pick another").status_code == 404


async def _snapshot_then_release(inventory: Inventory, release: threading.Event, hung: HungBackend) -> Snapshot:
    snapshot = await inventory.snapshot()
    assert hung.entered.is_set() and not release.is_set()
    release.set()
    return snapshot


def test_a_raising_probe_is_reported_with_its_reason():
    broken = RaisingBackend("ollama", (), capability="llm")
    healthy = StaticBackend("piper", (tts(),), capability="tts")
    snapshot = asyncio.run(Inventory([broken, healthy], probe_timeout_s=1, ttl_s=60).snapshot())
    assert [c.id for c in snapshot.cards] == ["piper-joe"]
    status = status_of(snapshot, "ollama")
    assert status.capability == "llm" and status.cards == ()
    (why,) = status.unavailable
    assert "connection refused on 127.0.0.1:11434" in why.reason
    assert why.fix


# ----------------------------------------------------------------------------- caching


def test_results_are_cached_within_the_ttl_and_refreshed_after(clock: SteppedClock):
    backend = StaticBackend("faster-whisper", (asr("whisper-small"),))
    inventory = Inventory([backend], probe_timeout_s=PROBE_TIMEOUT_S, ttl_s=0.3)

    async def scenario():
        first = await inventory.snapshot()
        clock.now += 0.29
        second = await inventory.snapshot()
        assert second is first and backend.calls == 1
        clock.now += 0.02  # 0.31 s after the first probe: past the TTL
        third = await inventory.snapshot()
        assert third is not first and backend.calls == 2
        assert third.taken_at > first.taken_at
        inventory.invalidate()
        await inventory.snapshot()
        assert backend.calls == 3

    asyncio.run(scenario())


def test_the_listed_ids_outlive_an_invalidation(clock: SteppedClock):
    # Metric labels are bounded by them: emptied by `invalidate` (the embedded server starting, a request
    # for a made-up model), a listed model's counts went to `other` until the next listing.
    inventory = Inventory([StaticBackend("faster-whisper", (asr("whisper-small"),))], probe_timeout_s=PROBE_TIMEOUT_S,
                          ttl_s=0.3)

    async def scenario():
        assert inventory.listed_ids() == frozenset() and inventory.last_snapshot() is None
        taken = await inventory.snapshot()
        inventory.invalidate()
        assert "whisper-small" in inventory.listed_ids()
        assert inventory.last_snapshot() is taken

    asyncio.run(scenario())


def test_a_request_may_take_a_stale_listing_while_it_is_refreshed(clock: SteppedClock):
    release = threading.Event()
    release.set()
    backend = HungBackend("faster-whisper", release)
    inventory = Inventory([backend], probe_timeout_s=30, ttl_s=0.05)

    async def scenario() -> tuple[Snapshot, Snapshot, Snapshot]:
        first = await inventory.snapshot()
        release.clear()
        backend.entered.clear()
        clock.now += 0.1  # past the TTL
        stale = await inventory.snapshot(allow_stale=True)
        # The refresh it started is under way and held: the stale listing came without waiting for it.
        assert await asyncio.to_thread(backend.entered.wait, 10)
        assert not release.is_set()
        release.set()
        fresh = await inventory.snapshot()  # joins the refresh that the stale read started
        return first, stale, fresh

    try:
        first, stale, fresh = asyncio.run(scenario())
    finally:
        release.set()
    assert stale is first
    assert fresh is not first and fresh.taken_at > first.taken_at
    assert backend.calls == 2


def test_a_zero_ttl_probes_every_time():
    backend = StaticBackend("faster-whisper", (asr("whisper-small"),))
    inventory = Inventory([backend], probe_timeout_s=1, ttl_s=0)

    async def scenario():
        for _ in range(3):
            await inventory.snapshot()

    asyncio.run(scenario())
    assert backend.calls == 3


def test_concurrent_callers_share_one_refresh():
    backend = SlowBackend("faster-whisper", (asr("whisper-small"),), delay=0.1)
    other = SlowBackend("piper", (tts(),), delay=0.05)
    inventory = Inventory([backend, other], probe_timeout_s=2, ttl_s=60)

    async def scenario():
        return await asyncio.gather(*(inventory.snapshot() for _ in range(20)))

    snapshots = asyncio.run(scenario())
    assert (backend.calls, other.calls) == (1, 1)
    assert all(s is snapshots[0] for s in snapshots)


def test_a_caller_that_gives_up_does_not_cancel_the_shared_refresh():
    release = threading.Event()
    backend = HungBackend("faster-whisper", release)
    inventory = Inventory([backend], probe_timeout_s=30, ttl_s=60)

    async def scenario():
        impatient = asyncio.create_task(inventory.snapshot())
        assert await asyncio.to_thread(backend.entered.wait, 10)  # its refresh is probing, held
        patient = asyncio.create_task(inventory.snapshot())
        await asyncio.sleep(0)  # the patient caller joins the refresh
        impatient.cancel()
        release.set()
        snapshot = await patient
        assert impatient.cancelled()
        return snapshot

    try:
        snapshot = asyncio.run(scenario())
    finally:
        release.set()
    assert [c.id for c in snapshot.cards] == ["hung-model"] and backend.calls == 1


def test_a_permanently_hung_backend_does_not_eventually_hide_the_others():
    release = threading.Event()
    hung = HungBackend("ollama", release)
    healthy = StaticBackend("faster-whisper", (asr("whisper-small"),))
    inventory = Inventory([hung, healthy], probe_timeout_s=PROBE_TIMEOUT_S / 2, ttl_s=0)

    async def scenario():
        # A small default executor stands for the real one (min(32, cpus + 4) threads) filling up.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=3))
        try:
            return [await inventory.snapshot() for _ in range(6)]
        finally:
            release.set()

    snapshots = asyncio.run(scenario())
    for snapshot in snapshots:
        assert [c.id for c in snapshot.cards] == ["whisper-small"]


# ----------------------------------------------------------------------------- the `auto` alias


def listing(*cards_by_backend: tuple[ModelCard, ...]) -> list[ModelCard]:
    backends = [StaticBackend(f"p{i}", cards) for i, cards in enumerate(cards_by_backend)]
    return asyncio.run(Inventory(backends, probe_timeout_s=1, ttl_s=60).snapshot()).listing()


def test_auto_comes_first_when_any_speech_model_is_visible():
    models = listing((tts(),), (asr("whisper-small", created=300), asr("whisper-base", created=200)))
    assert [c.id for c in models] == [AUTO_ID, "piper-joe", "whisper-small", "whisper-base"]
    auto = models[0]
    assert auto.capabilities == ("asr",)
    assert auto.languages is None
    assert auto.provider == "aistack"
    assert auto.created == 200


def test_no_auto_without_a_speech_model():
    assert [c.id for c in listing((tts(),))] == ["piper-joe"]
    assert listing() == []


@pytest.mark.parametrize(
    ("streaming", "expected"),
    [((True,), True), ((True, True), True), ((True, False), False), ((False,), False), ((False, False), False)],
)
def test_auto_streams_only_if_every_speech_model_does(streaming, expected):
    cards = tuple(asr(f"m{i}", streaming=s) for i, s in enumerate(streaming))
    # A TTS model that does not stream must not drag `auto` down.
    (auto, *_rest) = listing(cards, (tts(),))
    assert auto.id == AUTO_ID and auto.supports_streaming is expected


def test_auto_translates_if_any_speech_model_does():
    assert listing((asr("a"), asr("b", translate=True)))[0].can_translate is True
    assert listing((asr("a"), asr("b")))[0].can_translate is False


def test_unavailable_backends_do_not_count_for_auto():
    broken = RaisingBackend("parakeet", (asr("parakeet-v3", "parakeet", streaming=False),))
    healthy = StaticBackend("faster-whisper", (asr("whisper-small", streaming=True),))
    snapshot = asyncio.run(Inventory([broken, healthy], probe_timeout_s=1, ttl_s=60).snapshot())
    auto = snapshot.listing()[0]
    assert auto.id == AUTO_ID and auto.supports_streaming is True
    assert snapshot.card("parakeet-v3") is None and snapshot.card("whisper-small") is not None


def test_an_engine_in_this_process_is_not_listed_down_for_a_probe_slower_than_the_network_timeout():
    # A busy machine: the file checks of a local engine's probe take longer than a server's probe may.
    slow = SlowBackend("piper", (tts(),), delay=0.5)
    inventory = Inventory([slow], probe_timeout_s=0.1, ttl_s=60, in_process=["piper"])
    snapshot = asyncio.run(inventory.snapshot())
    assert [c.id for c in snapshot.cards] == ["piper-joe"]
    assert status_of(snapshot, "piper").unavailable == ()
