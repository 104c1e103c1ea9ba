"""The model hub's HTTP side of `aistack pull`: list a repository at a revision, and stream one file
of it at that commit, resuming with a Range request.

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
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urljoin, urlsplit

import httpx

from .. import __version__
from .pull_errors import HubAccessDenied, HubNotFound, HubUnreachable, PullError, TransientFailure

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10


class ByteProgress(Protocol):
    # Positional and returning anything: tqdm's own `update(n)` is one (it returns whether it redrew).
    def update(self, amount: int, /) -> object: ...
    def close(self) -> None: ...


ProgressFactory = Callable[[str, "int | None", int], ByteProgress]


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
            return TransientFailure(f"the hub answered {status} {response.reason_phrase} for {response.request.url}")
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
                raise TransientFailure(f"no answer from {host} for {urlsplit(url).path} ({type(error).__name__}: {error})") from error
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

        Raises TransientFailure (with the bytes received) when the transfer breaks, PullError when it cannot work.
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
                raise TransientFailure(f"the server could not resume {remote.name} at byte {offset}; starting it over")
            if status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    partial.unlink(missing_ok=True)
                    raise TransientFailure(f"the server resumed {remote.name} at byte {start}, not {offset}; starting it over")
            elif status == 200:
                offset = 0  # the range was ignored (or none was asked): the whole file follows
                if response.headers.get("Content-Encoding", "identity").lower() == "identity":
                    total = _int(response.headers.get("Content-Length"))
            elif _origin(meta.final_url) != self._origin and status in (403, 404, 410):
                # The CDN's signed link went stale (they expire): resolving again gives a fresh one.
                raise TransientFailure(f"{urlsplit(meta.final_url).netloc} answered {status} for {remote.name}")
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
                        raise TransientFailure(f"the download of {remote.name} broke off after {done}{of} bytes "
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

