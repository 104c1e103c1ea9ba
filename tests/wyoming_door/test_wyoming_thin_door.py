"""The Wyoming door is a thin door: it calls the services, as the HTTP routers do, and reaches no engine
and nothing of the HTTP door (read from its sources, imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import aistack.wyoming_door

DOOR_DIR = Path(aistack.wyoming_door.__file__).parent
# The HTTP door and its framework; the engines' own modules (engines/base.py, the shared types, is fine).
FORBIDDEN = ("fastapi", "starlette", "aistack.api", "aistack.app", "aistack.engines.", "aistack.lifecycle")
ALLOWED = ("aistack.engines.base",)


def imported_modules(path: Path) -> list[str]:
    package = "aistack.wyoming_door"
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found += [target, *(f"{target}.{alias.name}" for alias in node.names)]
    return found


def forbidden_imports(path: Path) -> list[str]:
    return [name for name in imported_modules(path)
            if any(name == bad.rstrip(".") or name.startswith(bad) for bad in FORBIDDEN)
            and not any(name == ok or name.startswith(f"{ok}.") for ok in ALLOWED)]


def test_the_door_reaches_only_the_services_and_shared_types() -> None:
    sources = sorted(DOOR_DIR.glob("*.py"))
    assert {path.name for path in sources} >= {"__init__.py", "server.py", "session.py", "listening.py", "speaking.py"}
    assert {path.name: found for path in sources if (found := forbidden_imports(path))} == {}
    # And it is built on the protocol's own library, not on a framing of its own.
    assert "wyoming.server.AsyncEventHandler" in imported_modules(DOOR_DIR / "session.py")


def test_the_check_sees_a_forbidden_import_inside_a_function(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from ..engines.base import ModelCard\n\ndef f():\n    from ..engines.whisper import WhisperBackend\n"
                      "    from ..api import audio\n    import fastapi\n")
    found = forbidden_imports(sneaky)
    assert "aistack.engines.whisper" in found and "aistack.api" in found and "fastapi" in found
    assert not any(name.startswith("aistack.engines.base") for name in found)
