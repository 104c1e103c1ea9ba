"""Load shedding, queueing, cancellation and model lifecycle through HTTP, on the real engine (whisper-tiny.en).

The engine is held at a chosen segment through the engine events, so who runs, who waits and who
is refused is decided by order of events, not by wall time.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.settings import ModelLifecycleSettings, SchedulerSettings
from conftest import Gateway, start_gateway, stop_gateway, wait_until

pytestmark = pytest.mark.slow

MODEL = "whisper-tiny.en"
HOLD_LIMIT_S = 60  # a held engine is released after this, so a failing test cannot hang
SHORT_KEEP_ALIVE_S = 5


def post_transcription(client: httpx.Client, audio: bytes, **fields: str) -> httpx.Response:
    return client.post("/v1/audio/transcriptions", data={"model": MODEL, **fields}, files={"file": ("a.wav", audio, "audio/wav")})


class EngineHold:
    """Holds the first job's engine at its first segment until `release` (or the hold limit)."""

    def __init__(self, gateway) -> None:
        self.released = threading.Event()
        self.holding = threading.Event()
        self._remove = gateway.runtime.events.on_step(self._on_segment)

    def _on_segment(self, model_id: str, index: int) -> None:
        if not self.holding.is_set():
            self.holding.set()
            self.released.wait(HOLD_LIMIT_S)

    def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            self._remove()


def test_one_slot_and_a_queue_of_four_serve_five_of_ten_and_refuse_five_promptly(make_inprocess_gateway, english_wav: Path) -> None:
    gateway = make_inprocess_gateway(scheduler=SchedulerSettings(cpu_slots=1, queue_size=4, max_wait_s=120))
    audio = english_wav.read_bytes()
    cpu = gateway.runtime.scheduler.queue("cpu")
    with gateway.client() as client:
        assert post_transcription(client, audio).status_code == 200  # loaded, and one service time on record
    hold = EngineHold(gateway)
    try:
        with ThreadPoolExecutor(10) as pool, gateway.client(timeout=HOLD_LIMIT_S + 60) as client:
            futures = [pool.submit(post_transcription, client, audio) for _ in range(10)]
            assert wait_until(lambda: cpu.rejected == 5 and cpu.queued == 4, timeout=30), cpu.describe()
            assert wait_until(lambda: sum(f.done() for f in futures) == 5, timeout=30)
            refused = [f.result() for f in futures if f.done()]
            ready = client.get("/ready").json()["devices"]["cpu"]
            hold.release()
            responses = [f.result(timeout=HOLD_LIMIT_S + 60) for f in futures]
    finally:
        hold.release()

    assert ready["busy"] == 1 and ready["queued"] == 4 and ready["running"] == {"asr": 1} and ready["rejected"] == 5
    served = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 503]
    assert len(served) == 5 and len(busy) == 5, [r.status_code for r in responses]
    # The refusals came while the engine was still held: nobody waited for the queue to drain.
    assert len(refused) == 5 and all(r.status_code == 503 for r in refused), refused
    for response in busy:
        error = response.json()["error"]
        assert error["kind"] == "busy" and error["type"] == "server_error" and "retry in about" in error["message"]
        assert int(response.headers["retry-after"]) >= 1
    waits = sorted(int(r.headers["x-aistack-slot-wait-ms"]) for r in served)
    assert waits[-1] > 0  # the queued ones waited, and the wait was measured
    assert all(r.json()["text"].strip() for r in served)
    assert wait_until(lambda: cpu.busy == 0 and cpu.queued == 0)


def test_a_request_that_waits_past_the_maximum_gets_busy_with_retry_after(make_inprocess_gateway, english_wav: Path) -> None:
    gateway = make_inprocess_gateway(scheduler=SchedulerSettings(cpu_slots=1, queue_size=4, max_wait_s=0.5))
    audio = english_wav.read_bytes()
    hold = EngineHold(gateway)
    try:
        with ThreadPoolExecutor(1) as pool, gateway.client() as client:
            first = pool.submit(post_transcription, client, audio)
            assert hold.holding.wait(60)
            second = post_transcription(client, audio)
            hold.release()
            assert first.result(timeout=60).status_code == 200
    finally:
        hold.release()
    assert second.status_code == 503
    assert second.json()["error"]["kind"] == "busy" and "within 0.5 s" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert gateway.runtime.scheduler.queue("cpu").timed_out == 1


def test_health_answers_while_every_slot_is_busy_and_ready_shows_the_queue(make_inprocess_gateway, english_wav: Path) -> None:
    gateway = make_inprocess_gateway(scheduler=SchedulerSettings(cpu_slots=1, queue_size=4, max_wait_s=120))
    audio = english_wav.read_bytes()
    cpu = gateway.runtime.scheduler.queue("cpu")
    hold = EngineHold(gateway)
    try:
        with ThreadPoolExecutor(3) as pool, gateway.client() as client:
            jobs = [pool.submit(post_transcription, client, audio) for _ in range(3)]
            assert hold.holding.wait(60) and wait_until(lambda: cpu.queued == 2)
            # The engine stays held until release() (or HOLD_LIMIT_S): a /health that waited for the
            # engine or the queue would run into this client timeout instead of answering.
            for _ in range(5):
                assert client.get("/health", timeout=HOLD_LIMIT_S / 4).status_code == 200
            assert not hold.released.is_set() and cpu.busy == 1 and cpu.queued == 2  # still held meanwhile
            ready = client.get("/ready").json()
            hold.release()
            assert [j.result(timeout=120).status_code for j in jobs] == [200, 200, 200]
    finally:
        hold.release()
    devices = ready["devices"]["cpu"]
    assert devices["busy"] == devices["slots"] == 1 and devices["queued"] == 2 and devices["running"] == {"asr": 1}
    assert ready["engines"]["faster-whisper"]["running"] == 1
    assert ready["engines"]["faster-whisper"]["loaded"] == [MODEL]


def _settled(gateway) -> bool:
    runtime = gateway.runtime
    return runtime.scheduler.total_running() == 0 and runtime.scheduler.total_queued() == 0 and not any(
        entry.in_use for entry in runtime.lifecycle.entries()
    )


Client = tuple[bool, bool, float | None]  # (long clip, stream, leave after seconds or None to wait for the end)


def test_clients_leaving_at_random_moments_leak_nothing(
    make_inprocess_gateway, english_wav: Path, long_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Uploads over 1 MB spill to temporary files; they land here, where leftovers can be seen.
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    gateway = make_inprocess_gateway(scheduler=SchedulerSettings(cpu_slots=1, queue_size=2, max_wait_s=30))
    clips = {False: english_wav.read_bytes(), True: long_wav.read_bytes()}
    with gateway.client() as client:
        assert post_transcription(client, clips[False]).status_code == 200
    threads_before = threading.active_count()
    outcomes: list[int | str] = []

    async def one_client(http: httpx.AsyncClient, long: bool, stream: bool, leave_after: float | None) -> None:
        request = http.post(
            "/v1/audio/transcriptions",
            data={"model": MODEL, "stream": str(stream).lower()},
            files={"file": ("a.wav", clips[long], "audio/wav")},
        )
        task = asyncio.ensure_future(request)
        if leave_after is None:
            outcomes.append((await asyncio.wait_for(task, 120)).status_code)
            return
        done, _ = await asyncio.wait({task}, timeout=leave_after)
        if done:
            outcomes.append(task.result().status_code)
        else:
            task.cancel()  # httpx closes the connection: the client is gone
            outcomes.append("left")

    async def crowd(plan: list[Client]) -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
            await asyncio.gather(*(one_client(http, *c) for c in plan))

    leave = st.one_of(st.none(), st.floats(0.0, 2.0))

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.tuples(st.booleans(), st.booleans(), leave), min_size=1, max_size=4))
    def clients_come_and_go(plan: list[Client]) -> None:
        asyncio.run(asyncio.wait_for(crowd(plan), 300))
        assert wait_until(lambda: _settled(gateway), timeout=60), gateway.runtime.scheduler.describe()
        assert all(o in (200, 503, "left") for o in outcomes), outcomes
        workers = [t for t in threading.enumerate() if t.name.startswith("aistack-cpu")]
        assert len(workers) <= 1, workers
        assert wait_until(lambda: not list(spill.iterdir()), timeout=10), list(spill.iterdir())

    clients_come_and_go()
    assert "left" in outcomes and 200 in outcomes  # the runs did cover both kinds of client
    # Threads: the engine's one worker, and at most the event loop's default pool, which grows to a fixed size.
    assert threading.active_count() <= threads_before + 8
    with gateway.client() as client:
        after = post_transcription(client, clips[False])
    assert after.status_code == 200 and after.json()["text"].strip()
    assert after.headers["x-aistack-slot-wait-ms"] == "0"


def _resident(client: httpx.Client, model_id: str) -> dict:
    rows = client.get("/admin/models").json()["data"]
    return next(row for row in rows if row["id"] == model_id)


@pytest.fixture
def short_ttl_gateway(models_cache: Path, tmp_path: Path):
    # Long enough that the model is surely still loaded when the test reads its row right after using it.
    running = start_gateway(models_cache, tmp_path, {"AISTACK_MODELS__KEEP_ALIVE_S": str(SHORT_KEEP_ALIVE_S)})
    try:
        yield running
    finally:
        stop_gateway(running)


def rss_with_workers(process: psutil.Process) -> int:
    """The gateway's resident set plus its children's (Whisper decodes in a worker process by default)."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def test_an_idle_model_unloads_after_its_keep_alive_and_memory_goes_back(short_ttl_gateway: Gateway, english_wav: Path) -> None:
    gateway = short_ttl_gateway
    process = psutil.Process(gateway.process.pid)
    audio = english_wav.read_bytes()
    with gateway.client() as client:
        assert _resident(client, MODEL)["state"] == "unloaded"
        assert post_transcription(client, audio).status_code == 200
        loaded = _resident(client, MODEL)
        rss_loaded = rss_with_workers(process)
        assert loaded["resident"] and loaded["in_use"] == 0 and loaded["size_bytes"] > 10 * 2**20
        assert loaded["last_used"] is not None and 0 <= loaded["expires_in_s"] <= SHORT_KEEP_ALIVE_S

        assert wait_until(lambda: _resident(client, MODEL)["state"] == "unloaded", timeout=30)
        rss_unloaded = rss_with_workers(process)
        # tiny.en holds about 70 MB once it has run; a drop of 25 MB cannot come from noise alone.
        assert rss_loaded - rss_unloaded > 25 * 2**20, (rss_loaded >> 20, rss_unloaded >> 20)

        again = post_transcription(client, audio)
        assert again.status_code == 200 and again.json()["text"].strip()
        assert _resident(client, MODEL)["resident"]
    assert f"unloaded whisper-tiny.en (idle for {SHORT_KEEP_ALIVE_S} s)" in gateway.log()


def test_pinned_models_load_at_start_and_outlive_their_keep_alive(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway(models=ModelLifecycleSettings(keep_alive_s=0.2, pinned=[MODEL]))
    with gateway.client() as client:
        assert wait_until(lambda: _resident(client, MODEL)["resident"], timeout=60)
        # A model that is not pinned, loaded after the pinned one: once the keep-alive has unloaded
        # it, the pinned one (idle for longer) has been past its keep-alive too.
        assert client.post("/admin/models/whisper-base/load").status_code == 200
        assert wait_until(lambda: _resident(client, "whisper-base")["state"] == "unloaded", timeout=60)
        row = _resident(client, MODEL)
    assert row["resident"] and row["pinned"] and row["expires_in_s"] is None
