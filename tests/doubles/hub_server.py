"""A stand-in for the Hugging Face Hub's file layout: a real HTTP/1.1 server on loopback.

The real hub is out of reach on these machines, so `aistack pull` is tested against this (DESIGN
§6). It speaks the parts of the hub's protocol a downloader sees, as huggingface_hub
(`file_download.py`, `hf_api.py`, `utils/_http.py`) and huggingface.js (`fileDownloadInfo`) read it:

- `GET /api/models/{repo}/revision/{revision}` (`/api/models/{repo}` for main) -> the model info:
  `{"id", "sha", "siblings": [{"rfilename"}]}`; with `?blobs=true` each sibling also has `size`,
  `blobId` (its git oid) and, for an LFS file, `lfs: {"size", "sha256", "pointerSize"}`. The
  revision is a branch name or a commit sha, URL-quoted as one path segment.
- `GET|HEAD /{repo}/resolve/{revision}/{path}`:
  * a file kept in git: 200 with the body, `ETag: "<git blob sha1>"`, `X-Repo-Commit`,
    `Content-Length`, `Accept-Ranges: bytes`; `Range: bytes=N-` -> 206 with `Content-Range`.
  * an LFS file: 302 to the CDN (a second listening port, so another origin as on the real hub;
    `cdn_same_origin=True` puts it under `/cdn/` on the hub's own port), with `X-Linked-Etag:
    "<sha256>"`, `X-Linked-Size`, `X-Repo-Commit`, `ETag` (the pointer's git oid) and a short
    text body whose `Content-Length` is not the file's size.
  * errors the way the hub marks them: `X-Error-Code` RepoNotFound (401 when unauthenticated,
    as the hub answers for private, gated and missing repos alike), RevisionNotFound (404),
    EntryNotFound (404), GatedRepo (403: a `gated=True` repo asked with a token whose account
    has not accepted its terms); `X-Error-Message` "Invalid credentials in Authorization header"
    for a wrong token; the body `{"error": message}`.
- `GET|HEAD` on the CDN: `/lfs/{sha256}?X-Amz-...` (signed-looking, needs no token) -> the
  bytes with an S3-style `ETag` (an md5, not the sha256), `Range` -> 206, past the end -> 416
  with `Content-Range: bytes */size`.

Faults, for the next file bodies (`queue_fault(name, fault, ...)`) or every one (`fault=`):
`"drop"` (close the connection after `after` body bytes), `"corrupt"` (flip a byte in the middle:
same size, wrong content), `"slow"` (the body in `chunk`-byte pieces `delay` s apart),
`"ignore_range"` (200 with the whole file even when a Range was asked for), `"error_500"`,
`"expired"` (the CDN's 403 AccessDenied for a signed link past its time), `"hold"` (send `after`
body bytes, then nothing until `release()`; `wait_until_holding()` waits for a body to get there;
a client that leaves or `stop()` ends the hold).
A token: `token=` makes every hub request (not the CDN's) need `Authorization: Bearer TOKEN`.
A refused connection: `stop()` the server (its ports stay held; `start()` serves there again).
Every request is recorded (`requests`).
tests/doubles/test_hub_double.py checks all this with huggingface_hub itself as the client.

    with HubDouble() as hub:
        hub.add_repo("org/model", {"model.bin": data, "config.json": b"{}"})
        settings = Settings(hub_url=hub.url)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from doubles.loopback import ClientWatch, LoopbackServer, ReleaseGate

FAULTS = ("drop", "corrupt", "slow", "ignore_range", "error_500", "expired", "hold")
LFS_SUFFIXES = (".bin", ".onnx", ".safetensors", ".gguf", ".pt")


def git_blob_oid(data: bytes) -> str:
    """The sha1 git gives a file's content: what the hub sends as the ETag of a file kept in git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


@dataclass
class HubFile:
    name: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.data)

    @property
    def blob_id(self) -> str:
        return git_blob_oid(self.pointer if self.lfs else self.data)

    def sibling(self, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.name}
        if blobs:
            entry["blobId"] = self.blob_id
            entry["size"] = len(self.data)
            if self.lfs:
                entry["lfs"] = {"size": len(self.data), "sha256": self.sha256, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class HubRepo:
    id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    gated: bool = False

    def commit_for(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    origin: str  # "hub" | "cdn"
    at: float
    status: int | None = None
    body_bytes: int = 0  # bytes of the response body actually sent

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class Fault:
    kind: str
    after: int = 0
    chunk: int = 64 * 1024
    delay: float = 0.05


class HubDouble(LoopbackServer):
    thread_name = "hub-double"
    label = "hub double"

    def __init__(self, *, token: str | None = None, fault: str | None = None, cdn_same_origin: bool = False,
                 chunk_size: int = 256 * 1024) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        super().__init__()
        self.token = token
        self.fault = fault
        self.cdn_same_origin = cdn_same_origin
        self.chunk_size = chunk_size
        self.port = 0  # both until the first start() binds them
        self.cdn_port = 0
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        self._blobs: dict[str, bytes] = {}
        self._readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}
        self._lock = threading.Lock()
        # "hold": where held bodies wait for release().
        self._hold_gate = ReleaseGate()

    # -- content ----------------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, bytes], *, revision: str = "main", lfs: set[str] | None = None,
                 private: bool = False, gated: bool = False) -> str:
        """Commit `files` as the whole tree of `repo` at branch `revision`; returns the commit sha."""
        entry = self.repos.setdefault(repo, HubRepo(repo))
        entry.private = entry.private or private
        entry.gated = entry.gated or gated
        tree = {
            name: HubFile(name, data, name in lfs if lfs is not None else name.endswith(LFS_SUFFIXES))
            for name, data in files.items()
        }
        digest = hashlib.sha1(repo.encode())
        for name in sorted(tree):
            digest.update(name.encode() + b"\0" + tree[name].blob_id.encode())
        digest.update(revision.encode() + str(len(entry.commits)).encode())
        commit = digest.hexdigest()
        entry.commits[commit] = tree
        entry.refs[revision] = commit
        for hub_file in tree.values():
            if hub_file.lfs:
                self._blobs[hub_file.sha256] = hub_file.data
        return commit

    def queue_fault(self, name: str, fault: str, times: int = 1, *, after: int = 0, chunk: int = 64 * 1024,
                    delay: float = 0.05) -> None:
        """The next `times` bodies of file `name` (hub or CDN) fail this way."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self._faults[name].extend(Fault(fault, after, chunk, delay) for _ in range(times))

    # -- control ----------------------------------------------------------------------------

    def wait_until_holding(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Block until `count` bodies in all reached their "hold" point (True) or `timeout` passes (False)."""
        return self._hold_gate.wait_until_reached(count, timeout)

    @property
    def holding(self) -> int:
        """Bodies waiting at their hold point now."""
        return self._hold_gate.waiting

    def release(self) -> None:
        """Let one held body go on (a release given before any body holds is kept for the next one)."""
        self._hold_gate.release()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"{self.url}/cdn" if self.cdn_same_origin else f"http://127.0.0.1:{self.cdn_port}"

    # -- serving ----------------------------------------------------------------------------

    async def _main(self) -> None:
        self._hold_gate.bind()
        sockets: list[socket.socket] = []
        try:
            for role in ("hub", "cdn"):
                sockets.append(self._listening_socket(role))
            self.port = sockets[0].getsockname()[1]
            self.cdn_port = sockets[1].getsockname()[1]
            hub = await self._start_server(lambda r, w: self._connection(r, w, "hub"), sockets[0])
            cdn = await self._start_server(lambda r, w: self._connection(r, w, "cdn"), sockets[1])
        except BaseException as error:
            self._startup_failed(error, *sockets)
            return
        self._ready.set()
        try:
            await self._serve_until_stopped(hub, cdn)
        finally:
            for sock in sockets:
                sock.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: str) -> None:
        self._readers[writer] = reader
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                path, _, query = target.partition("?")
                record = RecordedRequest(method, path, query, headers, origin, time.monotonic())
                with self._lock:
                    self.requests.append(record)
                reusable = await self._route(record, writer)
                if not reusable or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._readers.pop(writer, None)

    async def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.method not in ("GET", "HEAD"):
            return await self._json(request, writer, 405, {"error": "Method Not Allowed"})
        path = request.path
        if request.origin == "cdn" or (self.cdn_same_origin and path.startswith("/cdn/")):
            return await self._cdn(request, writer, path.removeprefix("/cdn"))
        if self.token is not None:
            given = request.headers.get("authorization")
            if given is None:
                return await self._error(request, writer, 401, "RepoNotFound", "Repository not found")
            if given != f"Bearer {self.token}":
                return await self._error(request, writer, 401, None, "Invalid credentials in Authorization header")
        if path.startswith("/api/models/"):
            match = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
            if match is not None:
                return await self._model_info(request, writer, unquote(match[1]), unquote(match[2]))
            return await self._model_info(request, writer, unquote(path.removeprefix("/api/models/")), "main")
        match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if match is None:
            return await self._json(request, writer, 404, {"error": "Sorry, we can't find the page you are looking for."})
        return await self._resolve(request, writer, unquote(match[1]), unquote(match[2]), unquote(match[3]))

    def _repo(self, request: RecordedRequest, repo_id: str) -> HubRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if (repo.private or repo.gated) and "authorization" not in request.headers:
            return None  # the hub answers as for a missing repo
        return repo

    async def _model_info(self, request: RecordedRequest, writer: asyncio.StreamWriter, repo_id: str, revision: str) -> bool:
        repo = self._repo(request, repo_id)
        if repo is None:
            return await self._error(request, writer, 401, "RepoNotFound", "Repository not found")
        commit = repo.commit_for(revision)
        if commit is None:
            return await self._error(request, writer, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = parse_qs(request.query).get("blobs", ["false"])[0].lower() == "true"
        tree = repo.commits[commit]
        body = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "sha": commit,
            "lastModified": "2024-07-17T00:00:00.000Z",
            "tags": [],
            "siblings": [tree[name].sibling(blobs) for name in sorted(tree)],
        }
        return await self._json(request, writer, 200, body)

    async def _resolve(self, request: RecordedRequest, writer: asyncio.StreamWriter, repo_id: str, revision: str,
                       name: str) -> bool:
        repo = self._repo(request, repo_id)
        if repo is None:
            return await self._error(request, writer, 401, "RepoNotFound", "Repository not found")
        if repo.gated:  # a token, but its account has not accepted the repo's terms
            return await self._error(request, writer, 403, "GatedRepo",
                                     "Access to model " + repo_id + " is restricted."
                                     " You must have access to it and be authenticated to access it.")
        commit = repo.commit_for(revision)
        if commit is None:
            return await self._error(request, writer, 404, "RevisionNotFound", "Invalid rev id: " + revision)
        hub_file = repo.commits[commit].get(name)
        if hub_file is None:
            return await self._error(request, writer, 404, "EntryNotFound", "Entry not found", commit=commit)
        common = {"x-repo-commit": commit, "access-control-expose-headers": "X-Repo-Commit,X-Linked-Etag,X-Linked-Size,ETag"}
        if hub_file.lfs:
            signature = hashlib.sha256(f"{hub_file.sha256}{time.time()}".encode()).hexdigest()[:32]
            disposition = quote("inline; filename*=UTF-8''" + quote(name) + '; filename="' + name + '";', safe="")
            location = (f"{self.cdn_url}/lfs/{hub_file.sha256}?response-content-disposition={disposition}"
                        f"&Expires={int(time.time()) + 3600}&X-Amz-Signature={signature}")
            text = f"Found. Redirecting to {location}".encode()
            headers = {**common, "location": location, "content-type": "text/plain; charset=utf-8",
                       "content-length": str(len(text)), "etag": f'"{hub_file.blob_id}"',
                       "x-linked-etag": f'"{hub_file.sha256}"', "x-linked-size": str(len(hub_file.data)),
                       "vary": "Origin, Accept"}
            await self._head(writer, 302, headers)
            request.status = 302
            if request.method == "GET":
                writer.write(text)
                await writer.drain()
            return True
        return await self._body(request, writer, hub_file.name, hub_file.data,
                                {**common, "etag": f'"{hub_file.blob_id}"', "content-type": "text/plain; charset=utf-8"})

    async def _cdn(self, request: RecordedRequest, writer: asyncio.StreamWriter, path: str) -> bool:
        match = re.fullmatch(r"/lfs/([0-9a-f]{64})", path)
        data = self._blobs.get(match[1]) if match else None
        name = unquote(parse_qs(request.query).get("response-content-disposition", [""])[0]).rpartition('filename="')[2].rstrip('";')
        queued = self._faults.get(name)
        if queued and queued[0].kind == "expired" and request.method == "GET":
            queued.popleft()
            data = None
        if data is None or "X-Amz-Signature" not in request.query:
            body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code></Error>"
            await self._head(writer, 403, {"content-type": "application/xml", "content-length": str(len(body))})
            request.status = 403
            if request.method == "GET":
                writer.write(body)
                await writer.drain()
            return True
        headers = {"content-type": "application/octet-stream", "etag": f'"{hashlib.md5(data).hexdigest()}"',
                   "x-cache": "Miss from cloudfront", "content-disposition": f'inline; filename="{name}";'}
        return await self._body(request, writer, name, data, headers)

    async def _body(self, request: RecordedRequest, writer: asyncio.StreamWriter, name: str, data: bytes,
                    headers: dict[str, str]) -> bool:
        """A file's bytes, honouring `Range: bytes=N-` / `bytes=N-M` (the only forms downloaders send)."""
        fault = self._next_fault(name) if request.method == "GET" else None
        status, start, end = 200, 0, len(data)
        asked = request.headers.get("range")
        if asked and not (fault and fault.kind == "ignore_range"):
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", asked.strip())
            if match is None or int(match[1]) >= len(data):
                await self._head(writer, 416, {**headers, "content-range": f"bytes */{len(data)}", "content-length": "0"})
                request.status = 416
                return True
            status, start = 206, int(match[1])
            end = min(len(data), int(match[2]) + 1) if match[2] else len(data)
        if fault and fault.kind == "error_500":
            return await self._json(request, writer, 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
        extra = {"accept-ranges": "bytes", "content-length": str(end - start)}
        if status == 206:
            extra["content-range"] = f"bytes {start}-{end - 1}/{len(data)}"
        await self._head(writer, status, {**headers, **extra})
        request.status = status
        if request.method == "HEAD":
            return True
        body = data[start:end]
        if fault and fault.kind == "corrupt" and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        # Bytes are counted before they go out, so a client that has them finds them counted.
        if fault and fault.kind in ("drop", "hold"):
            cut = min(fault.after, len(body))
            request.body_bytes = cut
            writer.write(body[:cut])
            await writer.drain()
            if fault.kind == "drop":
                return False  # the connection closes with the body short of Content-Length
            if await self._hold(writer):
                return False
            body = body[cut:]
        chunk = fault.chunk if fault and fault.kind == "slow" else self.chunk_size
        for offset in range(0, len(body), chunk):
            if fault and fault.kind == "slow" and offset:
                assert self._stopping is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), fault.delay)
                if self._stopping.is_set():
                    return False
            request.body_bytes += len(body[offset:offset + chunk])
            writer.write(body[offset:offset + chunk])
            await writer.drain()
        return True

    async def _hold(self, writer: asyncio.StreamWriter) -> str | None:
        """Wait for this body's release(); "gone" or "stopping" if the client left or the server stops first."""
        assert self._stopping is not None
        watch = ClientWatch(self._readers[writer], self._stopping)
        try:
            return await self._hold_gate.wait(watch)
        finally:
            await watch.close()

    def _next_fault(self, name: str) -> Fault | None:
        queued = self._faults.get(name)
        if queued:
            return queued.popleft()
        return Fault(self.fault) if self.fault else None

    # -- bytes on the wire ------------------------------------------------------------------

    async def _head(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"date: {formatdate(usegmt=True)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()

    async def _json(self, request: RecordedRequest, writer: asyncio.StreamWriter, status: int, payload: Any,
                    extra: dict[str, str] | None = None) -> bool:
        body = json.dumps(payload).encode()
        await self._head(writer, status, {"content-type": "application/json; charset=utf-8",
                                          "content-length": str(len(body)), **(extra or {})})
        request.status = status
        if request.method == "GET":
            writer.write(body)
            await writer.drain()
        return True

    async def _error(self, request: RecordedRequest, writer: asyncio.StreamWriter, status: int, code: str | None,
                     message: str, commit: str | None = None) -> bool:
        extra = {"x-error-message": message}
        if code is not None:
            extra["x-error-code"] = code
        if commit is not None:
            extra["x-repo-commit"] = commit
        return await self._json(request, writer, status, {"error": message}, extra)
