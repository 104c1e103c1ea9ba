"""`aistack pull MODEL`: fetch a model's folder from its hub repository into the cache (docs/models.md).

The hub's protocol is in hub_client.py; this is the transaction around it.

On disk: files are downloaded into a staging folder beside the model's cache folder
(`.NAME.pull/`, `FILE.partial` while incomplete), verified (size; sha256 for LFS files, the git
blob sha1 for the others), and the whole folder is renamed into place only when every required
file is there, with `.aistack-pull.json` recording the repository, revision and commit. An
interrupted pull leaves the staging folder, and the next pull resumes it with a Range request. A
lock file (`.NAME.pull.lock`, holding the PID) makes a second pull of the same model wait.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .catalog import ONNX_ASR_MODELS, SILERO_VAD_ID, WHISPER_BY_ID, WHISPER_MODELS, HubFiles, hub_files, whisper_id_for_size
from .hub_client import ByteProgress, HubClient, ProgressFactory, RemoteFile, RepoSnapshot
from .lock import pull_lock
from .pull_errors import (
    DiskError,
    HubNotFound,
    PullError,
    TransferInterrupted,
    TransientFailure,
    UnknownModel,
    VerificationFailed,
    disk_error,
)
from .resolver import WeightResolver, contained, is_complete_folder, unsafe_relative

MARKER = ".aistack-pull.json"
STAGING_MANIFEST = ".aistack-staging.json"
CHUNK = 1024 * 1024


# -- what a model is and whether it is here -----------------------------------------------------


def pullable_models() -> tuple[str, ...]:
    ids = [*(spec.id for spec in WHISPER_MODELS), *(spec.id for spec in ONNX_ASR_MODELS), SILERO_VAD_ID]
    return tuple(model_id for model_id in ids if hub_files(model_id) is not None)


def canonical_model_id(name: str) -> str:
    """The catalog id `name` means (`small` -> `whisper-small`), or UnknownModel listing the pullable ones."""
    if hub_files(name) is not None:
        return name
    if whisper_id_for_size(name) in WHISPER_BY_ID:
        return whisper_id_for_size(name)
    raise UnknownModel(f"unknown model '{name}'; aistack can pull: {', '.join(pullable_models())}")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_pulled(folder: Path, hub: HubFiles) -> bool:
    """Whether `aistack pull` put this model's complete folder there (and nothing has gone since)."""
    marker = read_marker(folder)
    return marker is not None and marker.get("repo") == hub.repo and _marker_files_present(folder, marker) \
        and is_complete_folder(folder, hub.files)


def _marker_files_present(folder: Path, marker: dict[str, Any]) -> bool:
    files = marker.get("files")
    if not isinstance(files, dict):
        return False
    for name, meta in files.items():
        path = folder / name
        if not path.is_file() or (isinstance(meta, dict) and meta.get("size") not in (None, path.stat().st_size)):
            return False
    return True


# -- progress -----------------------------------------------------------------------------------


class _NoProgress:
    def update(self, amount: int) -> None:
        pass

    def close(self) -> None:
        pass


def tqdm_progress(description: str, total: int | None, initial: int) -> ByteProgress:
    """One bar per file on stderr: bytes done of the total, rate and time left."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=description, unit="B", unit_scale=True, unit_divisor=1000,
                file=sys.stderr, leave=True, dynamic_ncols=tty, mininterval=0.1 if tty else 0.5, smoothing=0.1)


def no_progress(description: str, total: int | None, initial: int) -> ByteProgress:
    return _NoProgress()


def describe_files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def describe_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# -- the pull -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    model_id: str
    path: Path
    repo: str
    revision: str
    commit: str | None
    files: tuple[str, ...]
    downloaded_bytes: int = 0
    total_bytes: int = 0
    already_complete: bool = False
    note: str | None = None


@dataclass
class ModelPuller:
    """Pulls catalog models into `resolver`'s cache from the hub at `hub_url`."""

    resolver: WeightResolver
    hub_url: str
    token: str | None = None
    progress: ProgressFactory = tqdm_progress
    notify: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))
    retries: int = 3
    retry_wait_s: float = 1.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    lock_timeout_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ModelPuller:
        resolver = WeightResolver(settings.models_cache_dir, settings.model_paths)
        return cls(resolver, settings.hub_url, settings.hub_token, **overrides)

    def is_pulled(self, model_id: str) -> bool:
        hub = hub_files(model_id)
        return hub is not None and is_pulled(self.resolver.cache_folder(model_id), hub)

    def pull(self, name: str, revision: str | None = None, *, force: bool = False) -> PullResult:
        model_id = canonical_model_id(name)
        hub = hub_files(model_id)
        assert hub is not None
        revision = revision or hub.revision
        folder = self.resolver.cache_folder(model_id)
        done = self._already_complete(model_id, hub, folder, revision, force)
        if done is not None:
            return done
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise disk_error(error, folder.parent) from error
        with pull_lock(folder.parent / f".{folder.name}.pull.lock", model_id, self.notify, self.lock_timeout_s):
            done = self._already_complete(model_id, hub, folder, revision, force)
            if done is not None:
                return done
            with HubClient(self.hub_url, self.token, connect_timeout=self.connect_timeout_s,
                           read_timeout=self.read_timeout_s) as client:
                return self._pull_locked(client, model_id, hub, folder, revision)

    # -- steps ----------------------------------------------------------------------------------

    def _already_complete(self, model_id: str, hub: HubFiles, folder: Path, revision: str, force: bool) -> PullResult | None:
        if force:
            return None
        marker = read_marker(folder)
        files = tuple(sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MARKER)) if folder.is_dir() else ()
        if marker is not None:
            same = marker.get("repo") == hub.repo and revision in (marker.get("revision"), marker.get("commit"))
            if same and _marker_files_present(folder, marker) and is_complete_folder(folder, hub.files):
                return PullResult(model_id, folder, hub.repo, revision, marker.get("commit"), files, already_complete=True)
            return None
        if revision == hub.revision and is_complete_folder(folder, hub.files):
            return PullResult(model_id, folder, hub.repo, revision, None, files, already_complete=True,
                              note="its folder already holds every file it needs (not pulled by aistack); "
                                   "`aistack pull --force` replaces it with the hub's copy")
        return None

    def _pull_locked(self, client: HubClient, model_id: str, hub: HubFiles, folder: Path, revision: str) -> PullResult:
        # A folder set aside by a swap that did not finish (the process died between two renames).
        for stale in folder.parent.glob(f".{glob.escape(folder.name)}.old.*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        snapshot = client.snapshot(hub.repo, revision)
        missing = [name for name in hub.files if name not in snapshot.files]
        if missing:
            raise HubNotFound(f"{hub.repo} at {revision} (commit {snapshot.commit[:12]}) lacks {', '.join(missing)}, "
                              f"which {model_id} needs; try another --revision")
        wanted = [snapshot.files[name] for name in (*hub.files, *hub.optional) if name in snapshot.files]
        for remote in wanted:
            _check_relative(remote.name)
        staging = folder.parent / f".{folder.name}.pull"
        state = self._staging_state(staging, hub.repo, snapshot.commit)
        for remote in wanted:  # a link planted in a resumed staging folder must not lead the writes out of it
            _check_contained(staging, remote.name)
        known = sum(r.size for r in wanted if r.size is not None)
        self.notify(f"pulling {model_id} from {hub.repo} at {revision} (commit {snapshot.commit[:12]}): "
                    f"{describe_files(len(wanted))}, {describe_size(known)}, into {folder}")
        self._check_space(staging, wanted, state)
        downloaded = 0
        for remote in wanted:
            downloaded += self._fetch_verified(client, model_id, snapshot, remote, staging, state)
        marker = {
            "model": model_id, "repo": hub.repo, "revision": revision, "commit": snapshot.commit,
            "hub": client.hub_url, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": state["files"],
        }
        try:
            _write_json(staging / MARKER, marker)
            (staging / STAGING_MANIFEST).unlink(missing_ok=True)
            _swap_into_place(staging, folder)
        except OSError as error:
            raise disk_error(error, folder) from error
        total = sum(meta.get("size") or 0 for meta in state["files"].values())
        return PullResult(model_id, folder, hub.repo, revision, snapshot.commit, tuple(sorted(state["files"])),
                          downloaded, total)

    def _staging_state(self, staging: Path, repo: str, commit: str) -> dict[str, Any]:
        """The staging folder for this commit: resumed if an earlier pull of the same commit left one."""
        manifest = staging / STAGING_MANIFEST
        try:
            state = json.loads(manifest.read_text()) if manifest.is_file() else None
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict) or state.get("repo") != repo or state.get("commit") != commit \
                or not isinstance(state.get("files"), dict):
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            state = {"repo": repo, "commit": commit, "files": {}}
        try:
            staging.mkdir(parents=True, exist_ok=True)
            _write_json(manifest, state)
        except OSError as error:
            raise disk_error(error, staging) from error
        return state

    def _check_space(self, staging: Path, wanted: list[RemoteFile], state: dict[str, Any]) -> None:
        needed = 0
        for remote in wanted:
            if remote.name in state["files"] or remote.size is None:
                continue
            partial = _partial_path(staging, remote.name)
            have = partial.stat().st_size if partial.exists() else 0
            needed += max(0, remote.size - have)
        try:
            free = shutil.disk_usage(staging).free
        except OSError:
            return
        if needed > free:
            raise DiskError(f"pulling needs {describe_size(needed)} more but {staging.parent} has {describe_size(free)} free; free some "
                            "space, or set AISTACK_CACHE_DIR to a disk with room (what is downloaded so far is kept)")

    def _fetch_verified(self, client: HubClient, model_id: str, snapshot: RepoSnapshot, remote: RemoteFile,
                        staging: Path, state: dict[str, Any]) -> int:
        """Download, verify and stage one file; the bytes transferred."""
        target = staging / remote.name
        if remote.name in state["files"] and target.is_file() \
                and target.stat().st_size == state["files"][remote.name].get("size"):
            return 0  # verified by an earlier, interrupted pull of the same commit
        partial = _partial_path(staging, remote.name)
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise disk_error(error, partial.parent) from error
        received = 0
        attempt = 0
        while True:
            try:
                learned, got = client.fetch(snapshot.repo, snapshot.commit, remote, partial, self.progress)
                received += got
                break
            except TransientFailure as transient:
                received += transient.received
                if attempt >= self.retries:
                    kept = partial.stat().st_size if partial.exists() else 0
                    raise TransferInterrupted(
                        f"{transient}; gave up after {attempt + 1} attempts. {describe_size(kept)} of {remote.name} is kept: "
                        f"run `aistack pull {model_id}` again to resume") from None
                wait = self.retry_wait_s * (2 ** attempt)
                self.notify(f"{transient}; trying again in {wait:g} s")
                attempt += 1
                time.sleep(wait)
            except OSError as error:
                raise disk_error(error, partial) from error
        self._verify(model_id, learned, partial)
        try:
            os.replace(partial, target)
            state["files"][remote.name] = {
                "size": learned.size if learned.size is not None else target.stat().st_size,
                **({"sha256": learned.sha256} if learned.sha256 else {}),
                **({"git_oid": learned.git_oid} if learned.git_oid else {}),
            }
            _write_json(staging / STAGING_MANIFEST, state)
        except OSError as error:
            raise disk_error(error, target) from error
        return received

    def _verify(self, model_id: str, remote: RemoteFile, partial: Path) -> None:
        size = partial.stat().st_size
        retry = f"the partial file was deleted; run `aistack pull {model_id}` again"
        if remote.size is not None and size != remote.size:
            partial.unlink(missing_ok=True)
            raise VerificationFailed(f"{remote.name} came down as {size} bytes but the hub says {remote.size}; {retry}")
        if remote.sha256:
            digest = _hash_file(partial, hashlib.sha256())
            if digest != remote.sha256:
                partial.unlink(missing_ok=True)
                raise VerificationFailed(f"checksum mismatch for {remote.name}: sha256 {digest}, the hub's is "
                                         f"{remote.sha256}; the download was corrupted, {retry}")
        elif remote.git_oid:
            blob = hashlib.sha1(b"blob %d\0" % size)
            digest = _hash_file(partial, blob)
            if digest != remote.git_oid:
                partial.unlink(missing_ok=True)
                raise VerificationFailed(f"checksum mismatch for {remote.name}: git blob sha1 {digest}, the hub's is "
                                         f"{remote.git_oid}; the download was corrupted, {retry}")


def _partial_path(staging: Path, name: str) -> Path:
    return staging / f"{name}.partial"


def _check_relative(name: str) -> None:
    reason = unsafe_relative(name)
    if reason is not None:
        raise PullError(f"the hub listed an unsafe file name {name!r} ({reason}); refusing to write it")


def _check_contained(staging: Path, name: str) -> None:
    try:
        contained(staging, name)
    except ValueError as error:
        raise PullError(f"refusing to write {name!r}: {error}; remove {staging} and pull again") from None


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _hash_file(path: Path, digest: _Digest) -> str:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished staging folder to `folder`; whatever was there goes only once the new one is in."""
    old: Path | None = None
    if folder.exists() or folder.is_symlink():
        old = folder.parent / f".{folder.name}.old.{os.getpid()}"
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except OSError:
        if old is not None:
            os.rename(old, folder)
        raise
    with contextlib.suppress(OSError):
        directory = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
