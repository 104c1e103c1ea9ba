"""`aistack pull MODEL`: fetch a model's folder from its hub repository into the cache (docs/models.md).

The hub protocol, as the Hugging Face Hub speaks it (and huggingface_hub reads it in
`hf_api.model_info`, `file_download.get_hf_file_metadata` / `http_get`, `utils/_http.hf_raise_for_status`):

- `GET {hub}/api/models/{repo}/revision/{revision}?blobs=true` -> `{"sha": commit, "siblings":
  [{"rfilename", "size", "blobId", "lfs": {"size", "sha256", "pointerSize"}}]}`. Every file is
  then fetched at that commit, so a branch that moves during the pull cannot mix two versions.
- `GET {hub}/{repo}/resolve/{commit}/{path}`: a file kept in git answers 200 with its bytes and
  `ETag: "<git blob sha1>"`; an LFS file answers 302 to a CDN (another origin, a signed URL that
  needs no token) with `X-Linked-Etag: "<sha256>"` and `X-Linked-Size`, while that response's own
  `ETag` and `Content-Length` describe the redirect, not the file. Same-origin redirects (a renamed
  repo, the resolve cache) keep the token; a redirect to another origin drops it. `X-Repo-Commit`
  names the commit served.
- `Range: bytes=N-` resumes: 206 with `Content-Range: bytes N-(size-1)/size`; 200 means the range
  was ignored (start over); 416 with `Content-Range: bytes */size` means nothing is left.
- Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) and
  `X-Error-Message`; a 401 stands for private, gated and missing repos alike.

On disk: files are downloaded into a staging folder beside the model's cache folder
(`.NAME.pull/`, `FILE.partial` while incomplete), verified (size; sha256 for LFS files, the git
blob sha1 for the others), and the whole folder is renamed into place only when every required
file is there, with `.aistack-pull.json` recording the repository, revision and commit. An
interrupted pull leaves the staging folder, and the next pull resumes it with a Range request. A
lock file (`.NAME.pull.lock`, holding the PID) makes a second pull of the same model wait.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

import httpx

from .. import __version__
from .catalog import ONNX_ASR_MODELS, SILERO_VAD_ID, WHISPER_BY_ID, WHISPER_MODELS, HubFiles, hub_files, whisper_id_for_size
from .resolver import WeightResolver, is_complete_folder

MARKER = ".aistack-pull.json"
STAGING_MANIFEST = ".aistack-staging.json"
CHUNK = 1024 * 1024
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10


# -- errors -------------------------------------------------------------------------------------


class PullError(Exception):
    """A pull that failed, with a message that says what to do; `exit_code` for the CLI."""

    exit_code = 1


class UnknownModel(PullError):
    exit_code = 2


class HubUnreachable(PullError):
    pass


class HubAccessDenied(PullError):
    pass


class HubNotFound(PullError):
    pass


class VerificationFailed(PullError):
    pass


class TransferInterrupted(PullError):
    """The connection broke mid-file; what arrived is kept and the next attempt resumes it."""


class DiskError(PullError):
    pass


class _Transient(Exception):
    """A failure worth another attempt within the same pull (a dropped connection, a 5xx)."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


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


class ByteProgress(Protocol):
    # Positional and returning anything: tqdm's own `update(n)` is one (it returns whether it redrew).
    def update(self, amount: int, /) -> object: ...
    def close(self) -> None: ...


ProgressFactory = Callable[[str, "int | None", int], ByteProgress]


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


# -- the hub ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None = None
    sha256: str | None = None  # LFS files
    git_oid: str | None = None  # files kept in git: sha1 of "blob {size}\0" + content


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str
    commit: str
    files: dict[str, RemoteFile]


@dataclass
class _Meta:
    """What the responses of one resolve (and its redirects) said about the file."""

    commit: str | None = None
    linked_etag: str | None = None
    linked_size: int | None = None
    etag: str | None = None  # only from a hub-origin response that carried the bytes
    final_url: str = ""


def _etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.removeprefix("W/").strip('"').lower() or None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def describe_files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def describe_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


class HubClient:
    """The two hub calls a pull makes: list a repository at a revision, and stream one file."""

    def __init__(self, hub_url: str, token: str | None = None, *, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.token = token or None
        self._origin = _origin(self.hub_url)
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport,
                                    headers={"User-Agent": f"aistack/{__version__}"})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resolve_url(self, repo: str, revision: str, name: str) -> str:
        return f"{self.hub_url}/{repo}/resolve/{quote(revision, safe='')}/{quote(name)}"

    def _headers_for(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token and _origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _unreachable(self, url: str, error: Exception) -> HubUnreachable:
        reason = str(error) or type(error).__name__
        if isinstance(error, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return HubUnreachable(f"the hub URL '{self.hub_url}' is not usable ({reason}); set AISTACK_HUB_URL "
                                  "(setting hub_url) to the hub's base URL, e.g. the default https://huggingface.co")
        return HubUnreachable(f"cannot reach the model hub at {self.hub_url} ({type(error).__name__}: {reason}); check "
                              "the network, or set AISTACK_HUB_URL (setting hub_url) to a hub or mirror you can reach")

    def snapshot(self, repo: str, revision: str) -> RepoSnapshot:
        """The repository's files at `revision` and the commit it points at."""
        url = f"{self.hub_url}/api/models/{repo}/revision/{quote(revision, safe='')}"
        try:
            response = self._client.get(url, params={"blobs": "true"}, headers=self._headers_for(url))
        except httpx.TransportError as error:
            raise self._unreachable(url, error) from error
        if response.status_code != 200:
            failure = self._status_error(response, repo, revision)
            raise failure if isinstance(failure, PullError) else PullError(f"{failure}; try again later")
        try:
            info = response.json()
            commit = info["sha"]
            siblings = info["siblings"]
            assert isinstance(commit, str) and commit and "/" not in commit and isinstance(siblings, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise PullError(f"{url} did not answer with the hub's model info (a JSON object with sha and siblings); "
                            f"is AISTACK_HUB_URL ({self.hub_url}) a model hub?") from None
        files: dict[str, RemoteFile] = {}
        for sibling in siblings:
            if not isinstance(sibling, dict) or not isinstance(sibling.get("rfilename"), str):
                continue
            listed_lfs = sibling.get("lfs")
            lfs = listed_lfs if isinstance(listed_lfs, dict) else {}
            sha256 = lfs.get("sha256") if isinstance(lfs.get("sha256"), str) else None
            size = lfs.get("size", sibling.get("size"))
            blob = sibling.get("blobId") if not lfs and isinstance(sibling.get("blobId"), str) else None
            files[sibling["rfilename"]] = RemoteFile(
                sibling["rfilename"], size if isinstance(size, int) else None,
                sha256.lower() if sha256 and HEX64.match(sha256.lower()) else None,
                blob.lower() if blob and HEX40.match(blob.lower()) else None,
            )
        return RepoSnapshot(repo, revision, commit, files)

    def _status_error(self, response: httpx.Response, repo: str, revision: str, name: str | None = None) -> Exception:
        status = response.status_code
        code = response.headers.get("X-Error-Code")
        message = response.headers.get("X-Error-Message")
        what = f"{repo}/{name}" if name else repo
        if status == 401:
            if message == "Invalid credentials in Authorization header":
                return HubAccessDenied(f"the hub at {self.hub_url} refused the token in AISTACK_HUB_TOKEN (invalid "
                                       "credentials); set AISTACK_HUB_TOKEN to a valid access token")
            if self.token:
                return HubAccessDenied(f"the hub at {self.hub_url} answered 401 for {what}: the repository does not "
                                       "exist or the token in AISTACK_HUB_TOKEN cannot read it")
            return HubAccessDenied(f"the hub at {self.hub_url} answered 401 Unauthorized for {what}: the repository is "
                                   "private, gated or missing; set AISTACK_HUB_TOKEN to an access token that can read it")
        if status == 403:
            if code == "GatedRepo":
                return HubAccessDenied(f"{repo} is gated: accept its terms on the hub with your account, then set "
                                       "AISTACK_HUB_TOKEN to an access token of that account")
            return HubAccessDenied(f"the hub at {self.hub_url} answered 403 Forbidden for {what}"
                                   f"{f' ({message})' if message else ''}; set AISTACK_HUB_TOKEN to a token with read access")
        if status == 404:
            if code == "RevisionNotFound":
                return HubNotFound(f"{repo} has no revision '{revision}' on {self.hub_url}")
            if code == "RepoNotFound":
                return HubNotFound(f"there is no repository {repo} on {self.hub_url}")
            if code == "EntryNotFound" or name:
                return HubNotFound(f"{repo} at {revision} has no file {name} on {self.hub_url} (404)")
            return HubNotFound(f"{response.request.url} answered 404 Not Found; is AISTACK_HUB_URL ({self.hub_url}) a model hub?")
        if status == 429 or status >= 500:
            return _Transient(f"the hub answered {status} {response.reason_phrase} for {response.request.url}")
        return PullError(f"the hub answered {status} {response.reason_phrase} for {response.request.url}")

    @contextlib.contextmanager
    def _open(self, url: str, headers: dict[str, str]) -> Iterator[tuple[httpx.Response, _Meta]]:
        """GET `url`, following redirects by hand: the token only to the hub's origin, metadata from every hop."""
        meta = _Meta()
        for _ in range(MAX_REDIRECTS):
            same_origin = _origin(url) == self._origin
            try:
                response = self._client.send(self._client.build_request("GET", url, headers=self._headers_for(url, headers)),
                                             stream=True)
            except httpx.TransportError as error:
                host = urlsplit(url).netloc
                raise _Transient(f"no answer from {host} for {urlsplit(url).path} ({type(error).__name__}: {error})") from error
            try:
                meta.commit = meta.commit or response.headers.get("X-Repo-Commit")
                meta.linked_etag = meta.linked_etag or _etag(response.headers.get("X-Linked-Etag"))
                meta.linked_size = meta.linked_size if meta.linked_size is not None else _int(response.headers.get("X-Linked-Size"))
                location = response.headers.get("Location")
                if response.status_code in REDIRECTS and location:
                    response.read()
                    url = urljoin(url, location)
                    continue
                if same_origin and response.status_code in (200, 206):
                    meta.etag = _etag(response.headers.get("ETag"))
                meta.final_url = url
                yield response, meta
                return
            finally:
                response.close()
        raise PullError(f"more than {MAX_REDIRECTS} redirects resolving {url}")

    def fetch(self, repo: str, commit: str, remote: RemoteFile, partial: Path,
              progress: ProgressFactory) -> tuple[RemoteFile, int]:
        """Append the rest of `remote` to `partial` (resuming from its size): what the hub said about the file, and
        the bytes received.

        Raises _Transient (with the bytes received) when the transfer breaks, PullError when it cannot work.
        """
        offset = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and offset > remote.size:
            partial.unlink()
            offset = 0
        if remote.size is not None and offset == remote.size and offset > 0:
            return remote, 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self.resolve_url(repo, commit, remote.name)
        with self._open(url, headers) as (response, meta):
            if meta.commit and meta.commit.lower() != commit.lower():
                raise PullError(f"the hub served {remote.name} from commit {meta.commit}, not {commit}; run the pull again")
            status = response.status_code
            total: int | None = None
            if status == 416:
                total = _content_range_total(response.headers.get("Content-Range"))
                if total is not None and total == offset:
                    return _learned(remote, meta, total), 0
                partial.unlink(missing_ok=True)
                raise _Transient(f"the server could not resume {remote.name} at byte {offset}; starting it over")
            if status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    partial.unlink(missing_ok=True)
                    raise _Transient(f"the server resumed {remote.name} at byte {start}, not {offset}; starting it over")
            elif status == 200:
                offset = 0  # the range was ignored (or none was asked): the whole file follows
                if response.headers.get("Content-Encoding", "identity").lower() == "identity":
                    total = _int(response.headers.get("Content-Length"))
            elif _origin(meta.final_url) != self._origin and status in (403, 404, 410):
                # The CDN's signed link went stale (they expire): resolving again gives a fresh one.
                raise _Transient(f"{urlsplit(meta.final_url).netloc} answered {status} for {remote.name}")
            else:
                raise self._status_error(response, repo, commit, remote.name)
            learned = _learned(remote, meta, total)
            bar = progress(remote.name, learned.size, offset)
            received = 0
            try:
                with open(partial, "ab" if offset else "wb") as out:
                    try:
                        for chunk in response.iter_bytes():  # as it arrives: a break keeps every byte received
                            out.write(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                    except httpx.TransportError as error:
                        out.flush()
                        done = offset + received
                        of = f" of {learned.size}" if learned.size is not None else ""
                        raise _Transient(f"the download of {remote.name} broke off after {done}{of} bytes "
                                         f"({type(error).__name__}: {str(error) or 'connection closed'})", received) from error
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                bar.close()
            return learned, received


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None
    return int(match[1]), (int(match[3]) if match[3] != "*" else None)


def _content_range_total(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(match[1]) if match else None


def _learned(remote: RemoteFile, meta: _Meta, total: int | None) -> RemoteFile:
    """The listing's size and hash, completed by what the resolve responses said."""
    size = remote.size if remote.size is not None else meta.linked_size if meta.linked_size is not None else total
    sha256, git_oid = remote.sha256, remote.git_oid
    if sha256 is None and git_oid is None:
        if meta.linked_etag and HEX64.match(meta.linked_etag):
            sha256 = meta.linked_etag
        elif meta.etag and HEX64.match(meta.etag):
            sha256 = meta.etag
        elif meta.etag and HEX40.match(meta.etag) and meta.linked_etag is None:
            git_oid = meta.etag
    return RemoteFile(remote.name, size, sha256, git_oid)


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
            raise _disk_error(error, folder.parent) from error
        with self._locked(model_id, folder):
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

    @contextlib.contextmanager
    def _locked(self, model_id: str, folder: Path) -> Iterator[None]:
        lock_path = folder.parent / f".{folder.name}.pull.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _disk_error(error, lock_path) from error
        try:
            waited_since: float | None = None
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if waited_since is None:
                        waited_since = time.monotonic()
                        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        self.notify(f"waiting for another pull of {model_id} (PID {owner}) to finish")
                    elif self.lock_timeout_s is not None and time.monotonic() - waited_since > self.lock_timeout_s:
                        raise PullError(f"another pull of {model_id} is still running ({lock_path} is locked)") from None
                    time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

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
            raise _disk_error(error, folder) from error
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
            raise _disk_error(error, staging) from error
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
            raise _disk_error(error, partial.parent) from error
        received = 0
        attempt = 0
        while True:
            try:
                learned, got = client.fetch(snapshot.repo, snapshot.commit, remote, partial, self.progress)
                received += got
                break
            except _Transient as transient:
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
                raise _disk_error(error, partial) from error
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
            raise _disk_error(error, target) from error
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
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(part in ("..", "") for part in parts):
        raise PullError(f"the hub listed an unsafe file name {name!r}; refusing to write it")


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


def _disk_error(error: OSError, path: Path) -> DiskError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(f"no space left writing {path}; free some space or set AISTACK_CACHE_DIR to a disk with room "
                         "(what is downloaded so far is kept and the next pull resumes it)")
    reason = error.strerror or str(error)
    return DiskError(f"cannot write {path}: {reason}; check the folder, or set AISTACK_CACHE_DIR to a writable one")
