"""The environment llama-server is started with (`LlamaServerOptions.environment`)."""

from __future__ import annotations

from pathlib import Path

from forgeline_kit.llamacpp.server import LlamaServerOptions


def test_a_server_with_adapters_returns_freed_buffers_to_the_system() -> None:
    options = LlamaServerOptions(model=Path("base.gguf"), lora_adapters=(Path("a.gguf"),))

    environment = options.environment({"PATH": "/usr/bin"})

    assert environment == {"PATH": "/usr/bin", "MALLOC_MMAP_THRESHOLD_": "131072"}


def test_an_operator_setting_of_the_threshold_is_kept() -> None:
    options = LlamaServerOptions(model=Path("base.gguf"), lora_adapters=(Path("a.gguf"),))

    environment = options.environment({"MALLOC_MMAP_THRESHOLD_": "65536"})

    assert environment["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_a_server_without_adapters_gets_the_environment_unchanged() -> None:
    options = LlamaServerOptions(model=Path("base.gguf"))

    assert options.environment({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}
