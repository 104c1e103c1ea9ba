"""Where a model's weights are on this machine (docs/models.md).

Order: an explicit path in config; the cache folder; a weights package installed from the package
index. A package that carries a file in pieces is joined once into the cache: written under a
temporary name, checked by size, then renamed, so an interrupted join never looks complete.
Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from ..observability.progress import Progress
from .catalog import PackagedFolder, PackagedParts

log = logging.getLogger("aistack.weights")

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ResolvedWeights:
    model_id: str
    path: Path
    source: str  # "config" | "cache" | "package"
    # Pieces still to be joined into `path` before the model can load.
    pending_join: PackagedParts | None = None


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_complete_folder(path: Path, required: Sequence[str]) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in required)


def unsafe_relative(name: str) -> str | None:
    """Why `name` (a model id, a hub file name) cannot be a path inside a folder, or None when it can:
    absolute, with `..` or empty parts (also percent-escaped, as `%2e%2e`), a backslash or a NUL."""
    if not name or "\x00" in name or "\\" in name:
        return "it is empty or holds a backslash or a NUL"
    for candidate in {name, unquote(name)}:
        if candidate.startswith("/") or PurePosixPath(candidate).is_absolute():
            return "it is an absolute path"
        if any(part in ("", ".", "..") for part in candidate.split("/")):
            return "it has an empty, '.' or '..' part"
    return None


def contained(root: Path, name: str) -> Path:
    """`root / name`, refused with ValueError when it would lead outside `root`: an unsafe name, or a
    symbolic link on the way (planted in the folder) that points elsewhere."""
    reason = unsafe_relative(name)
    if reason is not None:
        raise ValueError(f"unsafe path {name!r}: {reason}")
    path = root / name
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):
        raise ValueError(f"{name!r} leads outside {root} (through a symbolic link)")
    return path


def is_contained_folder(folder: Path, required: Sequence[str]) -> bool:
    """A complete folder whose required files all lie inside it (no link out of it)."""
    try:
        return is_complete_folder(folder, required) and all(contained(folder, name) for name in required)
    except ValueError as error:
        log.warning("ignoring %s: %s", folder, error)
        return False


class WeightResolver:
    """Finds weight folders; `required` names the files a folder must hold to be usable."""

    def __init__(self, cache_dir: Path, explicit_paths: dict[str, Path]) -> None:
        self.cache_dir = cache_dir
        self.explicit_paths = explicit_paths

    def cache_folder(self, model_id: str) -> Path:
        """The model's folder in the cache; ValueError for an id that would lead outside the cache. (The
        folder itself may be a link, to another disk; what lies inside it must stay inside it.)"""
        reason = unsafe_relative(model_id)
        if reason is not None:
            raise ValueError(f"unsafe model id {model_id!r}: {reason}")
        return self.cache_dir / model_id

    def resolve(
        self,
        model_id: str,
        required: Sequence[str],
        packaged: PackagedFolder | PackagedParts | None = None,
    ) -> ResolvedWeights | None:
        explicit = self.explicit_paths.get(model_id)
        if explicit is not None:
            path = Path(explicit).expanduser()
            return ResolvedWeights(model_id, path, "config") if is_complete_folder(path, required) else None

        if unsafe_relative(model_id) is not None:
            return None
        cached = self.cache_folder(model_id)
        if is_contained_folder(cached, required) and self._cache_matches_parts(cached, packaged):
            return ResolvedWeights(model_id, cached, "cache")

        if isinstance(packaged, PackagedFolder):
            root = package_dir(packaged.package)
            if root is not None and is_complete_folder(root / packaged.subdir, required):
                return ResolvedWeights(model_id, root / packaged.subdir, "package")
        elif isinstance(packaged, PackagedParts) and self._part_paths(packaged) is not None:
            return ResolvedWeights(model_id, cached, "package", pending_join=packaged)
        return None

    def materialize(self, resolved: ResolvedWeights) -> Path:
        """The folder to load from, joining packaged pieces first if needed (blocking)."""
        if resolved.pending_join is not None:
            join_parts(resolved.pending_join, self._part_paths(resolved.pending_join) or [], resolved.path)
        return resolved.path

    def size_bytes(self, resolved: ResolvedWeights) -> int:
        """The weights' size on disk, counting pieces not joined yet as what they will join into."""
        parts = resolved.pending_join
        if parts is not None:
            paths = self._part_paths(parts) or []
            side_root = package_dir(parts.side_dir[0])
            side = [side_root / parts.side_dir[1] / f for f in parts.side_files] if side_root else []
            return sum(p.stat().st_size for p in [*paths, *side] if p.is_file())
        if not resolved.path.is_dir():
            return 0
        return sum(f.stat().st_size for f in resolved.path.iterdir() if f.is_file())

    def _part_paths(self, parts: PackagedParts) -> list[Path] | None:
        paths: list[Path] = []
        for package, relative in parts.parts:
            root = package_dir(package)
            if root is None or not (root / relative).is_file():
                return None
            paths.append(root / relative)
        side_root = package_dir(parts.side_dir[0])
        if side_root is None or not all((side_root / parts.side_dir[1] / f).is_file() for f in parts.side_files):
            return None
        if parts.expected_size is not None and sum(p.stat().st_size for p in paths) != parts.expected_size:
            log.warning("the pieces in %s do not add up to %d bytes; ignoring them", ", ".join(parts.packages), parts.expected_size)
            return None
        return paths

    def _cache_matches_parts(self, folder: Path, packaged: PackagedFolder | PackagedParts | None) -> bool:
        if not isinstance(packaged, PackagedParts) or packaged.expected_size is None:
            return True
        return (folder / packaged.target).stat().st_size == packaged.expected_size


def join_parts(
    parts: PackagedParts,
    part_paths: Sequence[Path],
    destination: Path,
    progress_factory: Callable[[int, str], Progress] = Progress,
) -> None:
    """Join `part_paths` into `destination/parts.target` atomically, with its side files beside it."""
    if not part_paths:
        raise FileNotFoundError(f"the packages {', '.join(parts.packages)} are not all installed")
    destination.mkdir(parents=True, exist_ok=True)
    side_root = package_dir(parts.side_dir[0])
    assert side_root is not None
    for name in parts.side_files:
        _atomic_copy(side_root / parts.side_dir[1] / name, destination / name)

    total = sum(p.stat().st_size for p in part_paths)
    if parts.expected_size is not None and total != parts.expected_size:
        raise OSError(
            f"the pieces of {destination.name}/{parts.target} add up to {total} bytes, expected "
            f"{parts.expected_size}; reinstall {' '.join(parts.packages)}"
        )
    target = destination / parts.target
    _remove_stale_partials(destination, parts.target)
    # Unique per join, so two joins into one cache (two processes, two threads) never share a file.
    temporary = destination / f".{parts.target}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with progress_factory(total, f"joining {destination.name}") as progress, open(temporary, "wb") as out:
            for piece in part_paths:
                with open(piece, "rb") as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        written = temporary.stat().st_size
        if written != total:
            raise OSError(f"joined {written} bytes of {total} for {target}; run the command again")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    log.info("joined %s (%.1f MB)", target, total / 1e6)


def _remove_stale_partials(folder: Path, target: str) -> None:
    """Delete pieces left by joins whose process died; a live process's file is still being written."""
    prefix = f".{target}."
    for partial in folder.glob(f"{prefix}*.partial"):
        owner = partial.name[len(prefix) : -len(".partial")].split(".", 1)[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            partial.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_copy(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
