"""Make the vendored gguf-py the one that ``import gguf`` finds.

gguf-py is not a PyPI dependency on purpose: the GGUF metadata keys and quantization types it
knows must match the convert scripts and binaries of the pinned llama.cpp, and the ``gguf`` wheel
on PyPI trails llama.cpp's tree. So it is imported from the toolchain's ``src/gguf-py``, and this
module is the one place that touches ``sys.path`` or ``PYTHONPATH`` for it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from forgeline_kit.llamacpp.toolchain import Toolchain, ToolchainError, locate


def import_gguf(toolchain: Toolchain | None = None) -> ModuleType:
    """Import the toolchain's gguf-py as ``gguf`` (in this process) and return the module.

    Raises:
        ToolchainNotBuiltError: no toolchain is built.
        ToolchainError: another ``gguf`` was imported first, so this process would mix versions.
    """
    directory = str((toolchain or locate()).gguf_py)
    loaded = sys.modules.get("gguf")
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", None) or "")
        if not origin.is_relative_to(directory):
            raise ToolchainError(
                f"a different gguf ({origin}) was imported before the llama.cpp toolchain's "
                f"({directory}): import gguf through forgeline_kit.llamacpp.gguf_py only"
            )
        return loaded
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module("gguf")


def subprocess_env(
    toolchain: Toolchain | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for running the convert scripts or any Python that imports gguf.

    The convert scripts already prefer the gguf-py beside them; putting it first on PYTHONPATH as
    well keeps helper processes that import gguf on the same version.
    """
    env = dict(os.environ if base is None else base)
    directory = str((toolchain or locate()).gguf_py)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (directory, env.get("PYTHONPATH")) if p)
    env.pop("NO_LOCAL_GGUF", None)  # it would make the scripts skip their own gguf-py
    return env
