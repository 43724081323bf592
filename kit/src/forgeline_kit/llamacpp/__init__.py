"""The pinned llama.cpp toolchain: build it once into a cache, then locate its binaries,
convert scripts and gguf-py (see :mod:`.toolchain` for the layout and :mod:`.build` for the build).
"""

from forgeline_kit.llamacpp.build import BuildResult, ensure_built
from forgeline_kit.llamacpp.toolchain import (
    PIN,
    Pin,
    Toolchain,
    ToolchainError,
    ToolchainNotBuiltError,
    locate,
)

__all__ = [
    "PIN",
    "BuildResult",
    "Pin",
    "Toolchain",
    "ToolchainError",
    "ToolchainNotBuiltError",
    "ensure_built",
    "locate",
]
