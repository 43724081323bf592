"""The registry client is a light package of its own: importing it loads no server code and no
`minio`, and the services and the CLI reach the registry only through it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients/registry/src/forgeline_registry_client"
#: Product code that calls the registry: it must go through `RegistryClient`.
CALLERS = [
    ROOT / "cli/src",
    ROOT / "kit/src",
    ROOT / "services/trainer/src",
    ROOT / "services/converter/src",
    ROOT / "services/gateway/src",
]
#: What a light client never loads: the server and its store's SDK, and (outside a hub import)
#: the hubs' clients of the optional `hub` extra.
HEAVY = ("forgeline_registry", "minio", "huggingface_hub", "modelscope", "modelscope_hub")

_PROBE = """
import importlib, json, pkgutil, sys
import forgeline_registry_client
for module in pkgutil.iter_modules(forgeline_registry_client.__path__):
    importlib.import_module(f"forgeline_registry_client.{module.name}")
heavy = set(json.loads(sys.argv[1]))
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
"""


def test_importing_every_client_module_loads_no_server_code_no_minio_and_no_hub_client() -> None:
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_the_client_package_imports_neither_the_server_nor_minio() -> None:
    sources = sorted(CLIENT.rglob("*.py"))
    assert sources
    for path in sources:
        roots = {name.split(".")[0] for name in _imported_modules(path)}
        assert not roots & {"forgeline_registry", "minio"}, path.relative_to(ROOT)


@pytest.mark.parametrize("tree", CALLERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_callers_reach_the_registry_only_through_its_client(tree: Path) -> None:
    """No registry stub of their own (``RegistryServiceStub`` on a channel), no server code."""
    for path in sorted(tree.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert "RegistryServiceStub" not in text, f"{where} builds a registry stub"
        assert "RegistryServiceAsyncStub" not in text, f"{where} holds a registry stub"
        roots = {name.split(".")[0] for name in _imported_modules(path)}
        assert "forgeline_registry" not in roots, f"{where} imports the registry server"
