"""Services know nothing of HTTP: no module under aistack/services imports FastAPI or Starlette, or the
HTTP layer (aistack.api, aistack.app), neither in its own source nor through what it imports.

Two checks, because each misses what the other sees: reading the sources finds an import inside a
function that importing the module never runs; importing every services module in a fresh
interpreter finds FastAPI pulled in by something a service imports.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import aistack
import aistack.services

HTTP_PACKAGES = ("fastapi", "starlette", "sse_starlette")
HTTP_LAYER = ("aistack.api", "aistack.app")
SERVICES_DIR = Path(aistack.services.__file__).parent
SOURCE_ROOT = Path(aistack.__file__).parents[1]


def _is_http(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in (*HTTP_PACKAGES, *HTTP_LAYER))


def http_imports(source: str, module: str) -> list[str]:
    """The HTTP modules `source` (the text of the module named `module`) imports, anywhere in it."""
    package = module.rsplit(".", 1)[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from .. import api` names the module among the imported names.
            names = [target] if _is_http(target) else [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [name for name in names if _is_http(name)]
    return found


def services_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        # A package's own __init__ resolves relative imports against itself.
        modules[name if parts[-1] != "__init__" else f"{name}.__init__"] = path
    return modules


def http_modules_loaded_by(modules: list[str]) -> list[str]:
    """Import `modules` in a fresh interpreter; the HTTP modules that are then loaded."""
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return [name for name in json.loads(done.stdout) if _is_http(name)]


def test_there_are_services_to_check() -> None:
    names = services_modules()
    assert "aistack.services.llm" in names and "aistack.services.transcription" in names


def test_no_services_source_imports_http() -> None:
    offenders = {
        name: imports for name, path in services_modules().items()
        if (imports := http_imports(path.read_text(), name))
    }
    assert offenders == {}, "services must not know HTTP; move the HTTP part into aistack/api/"


def test_importing_every_service_loads_no_http_module() -> None:
    modules = [name.removesuffix(".__init__") for name in services_modules()]
    assert http_modules_loaded_by(modules) == []


# -- the checks themselves catch what they are for ------------------------------------------------


def test_the_source_check_finds_http_imports_of_every_form() -> None:
    source = (
        "import os\n"
        "import fastapi\n"
        "from starlette.responses import StreamingResponse\n"
        "from ..api import errors\n"
        "from .. import app\n"
        "from ..engines.base import PcmChunk\n"
        "def later():\n"
        "    import sse_starlette.sse\n"
    )
    assert http_imports(source, "aistack.services.example") == [
        "fastapi", "starlette.responses", "aistack.api", "aistack.app", "sse_starlette.sse",
    ]


def test_the_import_check_sees_fastapi_where_it_is_loaded() -> None:
    loaded = http_modules_loaded_by(["aistack.api.errors"])
    assert "fastapi" in loaded and "aistack.api.errors" in loaded
