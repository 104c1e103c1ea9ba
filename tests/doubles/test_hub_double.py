"""The hub double against the hub's own client: huggingface_hub (installed with faster-whisper) lists,
reads metadata from and downloads from it exactly as from the real hub, so the protocol the pull
tests rely on is the one real clients read."""

from __future__ import annotations

import errno
import hashlib
import socket
from pathlib import Path

import httpx
import huggingface_hub  # noqa: E402 - installed with faster-whisper
import pytest

from conftest import wait_until
from doubles.hub_server import HubDouble, git_blob_oid

REPO = "org/tiny-model"
WEIGHTS = bytes(range(256)) * 4096  # 1 MiB, kept in LFS
CONFIG = b'{"hidden": 8}\n'


@pytest.fixture
def hub():
    with HubDouble() as server:
        server.commit = server.add_repo(REPO, {"model.bin": WEIGHTS, "config.json": CONFIG})
        yield server


def test_model_info_reads_the_listing(hub: HubDouble) -> None:
    info = huggingface_hub.HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="main", files_metadata=True)
    assert info.sha == hub.commit
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.bin"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["model.bin"].size == len(WEIGHTS)
    assert siblings["config.json"].lfs is None and siblings["config.json"].blob_id == git_blob_oid(CONFIG)


def test_file_metadata_from_the_redirect_and_from_a_plain_file(hub: HubDouble) -> None:
    lfs = huggingface_hub.get_hf_file_metadata(
        huggingface_hub.hf_hub_url(REPO, "model.bin", endpoint=hub.url), token=False, endpoint=hub.url)
    assert lfs.etag == hashlib.sha256(WEIGHTS).hexdigest() and lfs.size == len(WEIGHTS)
    assert lfs.commit_hash == hub.commit and lfs.location.startswith(hub.cdn_url)
    plain = huggingface_hub.get_hf_file_metadata(
        huggingface_hub.hf_hub_url(REPO, "config.json", endpoint=hub.url), token=False, endpoint=hub.url)
    assert plain.etag == git_blob_oid(CONFIG) and plain.size == len(CONFIG) and plain.commit_hash == hub.commit
    assert [r.method for r in hub.requests] == ["HEAD", "HEAD"]


def test_hf_hub_download_gets_the_bytes(hub: HubDouble, tmp_path: Path) -> None:
    for name, data in (("model.bin", WEIGHTS), ("config.json", CONFIG)):
        path = huggingface_hub.hf_hub_download(REPO, name, endpoint=hub.url, cache_dir=tmp_path, token=False)
        assert Path(path).read_bytes() == data


def test_errors_carry_the_hub_error_codes(hub: HubDouble) -> None:
    errors = huggingface_hub.errors
    with pytest.raises(errors.RemoteEntryNotFoundError):
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(REPO, "nope.bin", endpoint=hub.url),
                                             token=False, endpoint=hub.url)
    with pytest.raises(errors.RevisionNotFoundError):
        huggingface_hub.HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="nope")
    with pytest.raises(errors.RepositoryNotFoundError):
        huggingface_hub.HfApi(endpoint=hub.url, token=False).model_info("org/missing")


def test_ranges_on_the_hub_and_on_the_cdn(hub: HubDouble) -> None:
    with httpx.Client() as client:
        plain = client.get(f"{hub.url}/{REPO}/resolve/main/config.json", headers={"Range": "bytes=3-"})
        assert plain.status_code == 206 and plain.content == CONFIG[3:]
        assert plain.headers["content-range"] == f"bytes 3-{len(CONFIG) - 1}/{len(CONFIG)}"
        redirect = client.get(f"{hub.url}/{REPO}/resolve/main/model.bin")
        assert redirect.status_code == 302 and int(redirect.headers["content-length"]) != len(WEIGHTS)
        cdn = client.get(redirect.headers["location"], headers={"Range": "bytes=1000-1999"})
        assert cdn.status_code == 206 and cdn.content == WEIGHTS[1000:2000]
        past = client.get(redirect.headers["location"], headers={"Range": f"bytes={len(WEIGHTS)}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(WEIGHTS)}"
        head = client.head(redirect.headers["location"])
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(WEIGHTS) and not head.content


def test_a_held_body_waits_for_its_release_and_then_ends_whole(hub: HubDouble) -> None:
    hub.queue_fault("model.bin", "hold", after=1000)
    with httpx.Client() as client:
        location = client.get(f"{hub.url}/{REPO}/resolve/main/model.bin").headers["location"]
        with client.stream("GET", location) as response:
            parts = response.iter_raw(1000)
            assert next(parts) == WEIGHTS[:1000]
            assert hub.wait_until_holding(1)
            cdn = hub.requests[-1]
            assert cdn.origin == "cdn" and cdn.body_bytes == 1000  # nothing past the hold point went out
            hub.release()
            assert WEIGHTS[:1000] + b"".join(parts) == WEIGHTS
        assert cdn.body_bytes == len(WEIGHTS)


def test_a_held_body_ends_when_its_client_leaves(hub: HubDouble) -> None:
    hub.queue_fault("model.bin", "hold", after=10)
    with httpx.Client() as client:
        location = client.get(f"{hub.url}/{REPO}/resolve/main/model.bin").headers["location"]
        with client.stream("GET", location) as response:
            parts = response.iter_raw(10)  # kept: a dropped iterator closes the response, and the client leaves early
            assert next(parts) == WEIGHTS[:10]
            assert hub.wait_until_holding(1) and hub.holding == 1
        # Never released: the hold ends because its client hung up, and the server serves on.
        assert wait_until(lambda: hub.holding == 0, timeout=10)
        assert hub.requests[-1].body_bytes == 10
        assert client.get(location).content == WEIGHTS


def test_stopped_it_refuses_connections_and_keeps_both_ports_until_closed() -> None:
    hub = HubDouble().start()
    try:
        hub.add_repo(REPO, {"model.bin": WEIGHTS})
        ports = (hub.port, hub.cdn_port)
        hub.stop()
        for port in ports:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/")
            with socket.socket() as other, pytest.raises(OSError) as taken:
                other.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE
        hub.start()
        assert (hub.port, hub.cdn_port) == ports
        with httpx.Client(follow_redirects=True) as client:
            assert client.get(f"{hub.url}/{REPO}/resolve/main/model.bin").content == WEIGHTS
    finally:
        hub.close()
    with pytest.raises(RuntimeError, match="closed"):
        hub.start()
