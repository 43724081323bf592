"""The smoke generation: a GGUF (with adapters on top) loads in ``llama-server`` and completes a
prompt greedily. It catches files that read back fine but do not run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from forgeline_converter.errors import VerificationFailed
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import (
    LlamaServerError,
    LlamaServerOptions,
    start_llama_server,
)

DEFAULT_PROMPT = "The capital of France is"


def smoke_generate(
    toolchain: Toolchain,
    model: Path,
    log_path: Path,
    *,
    prompt: str = DEFAULT_PROMPT,
    adapters: Sequence[Path] = (),
    tokens: int = 8,
    deadline_s: float = 120.0,
) -> str:
    """The greedy completion of ``prompt`` by ``model`` (plus ``adapters``).

    Raises:
        VerificationFailed: llama-server did not load the file, or generated nothing.
    """
    options = LlamaServerOptions(model=model, lora_adapters=tuple(adapters), context_size=256)
    try:
        server = start_llama_server(options, log_path, toolchain=toolchain, deadline_s=deadline_s)
    except LlamaServerError as error:
        raise VerificationFailed(f"llama-server cannot load {model.name}: {error}") from error
    try:
        response = httpx.post(
            f"{server.base_url}/completion",
            json={"prompt": prompt, "n_predict": tokens, "temperature": 0, "ignore_eos": True},
            timeout=deadline_s,
        )
        response.raise_for_status()
        content = str(response.json().get("content", ""))
    except (httpx.HTTPError, ValueError) as error:
        raise VerificationFailed(
            f"the smoke generation with {model.name} failed: {error}\n{server.output(2000)}"
        ) from error
    finally:
        server.stop()
    if not content:
        raise VerificationFailed(f"{model.name} generated nothing for {prompt!r}")
    return content
