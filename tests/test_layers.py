"""The layers stay layers: the core imports without torch, and no module imports a layer above its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. A module may import its own layer and any layer listed before it.
LAYERS = ["server.core", "server.wire", "server.engine", "server.service", "server.transports", "server.cli"]
CORE_MODULES = ["server.core." + p.stem for p in sorted((ROOT / "server" / "core").glob("*.py")) if p.stem != "__init__"]
WIRE_MODULES = ["server.wire." + p.stem for p in sorted((ROOT / "server" / "wire").glob("*.py")) if p.stem != "__init__"]


def _layer(module: str) -> int | None:
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at top level or inside functions (absolute names)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]  # `from server.core import pcm`
    return names


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    files = sorted((ROOT / "server").rglob("*.py"))
    assert len(files) > 25  # the walk found the package
    for path in files:
        own = _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if own is None:
            continue
        for name in _imports(path):
            rank = _layer(name)
            if rank is not None and rank > own:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_core_and_wire_import_and_run_where_torch_cannot_be_imported() -> None:
    """A process whose ``import torch`` fails still imports every core and wire module and runs a session."""
    script = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'safetensors', 'peft', 'websockets'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, NoTorch())
import importlib
for name in {CORE_MODULES + WIRE_MODULES!r}:
    importlib.import_module(name)
from server.core.events import Audio, EndStream
from server.core.session import Session, SessionConfig, StreamFormat
session = Session('s', StreamFormat(), SessionConfig('m', 1, 2))
session.handle(Audio(bytes(3200)))
out = session.handle(EndStream('eos'))
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'websockets')), type(out.events[-1]).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "Ended"]
    assert len(CORE_MODULES) >= 8 and "server.core.session" in CORE_MODULES and "server.wire.v1" in WIRE_MODULES
