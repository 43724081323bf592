"""Randomly initialised Llama weights, the same bytes for the same seed.

The values come from NumPy's PCG64 generator, whose stream is stable across NumPy releases and
machines, rather than from torch's initialisers, so the registry sees one digest for one seed
wherever the factory runs. transformers only supplies the architecture: parameter names and
shapes come from a model built on the meta device, which allocates nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from .spec import TinyModelSpec

__all__ = ["llama_config", "random_state_dict", "write_weights"]

WEIGHTS_FILE: Final = "model.safetensors"


def llama_config(spec: TinyModelSpec) -> LlamaConfig:
    """The transformers configuration (``config.json``) of the tiny model."""
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        initializer_range=spec.init_std,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=spec.bos_token_id,
        eos_token_id=spec.eos_token_id,
        pad_token_id=spec.pad_token_id,
        dtype="float32",
    )


def random_state_dict(config: LlamaConfig, *, seed: int, std: float) -> dict[str, torch.Tensor]:
    """Every parameter of ``LlamaForCausalLM(config)``: N(0, std) matrices, RMSNorm weights 1."""
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    shapes = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    rng = np.random.default_rng(seed)
    tensors: dict[str, torch.Tensor] = {}
    # Sorted, so the random stream each tensor gets does not depend on module order.
    for name in sorted(shapes):
        shape = shapes[name]
        if len(shape) == 1:
            values = np.ones(shape, dtype=np.float32)
        else:
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        tensors[name] = torch.from_numpy(values)
    return tensors


def write_weights(out_dir: Path, spec: TinyModelSpec, *, seed: int) -> None:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors``."""
    config = llama_config(spec)
    config.save_pretrained(out_dir)
    GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=spec.bos_token_id,
        eos_token_id=spec.eos_token_id,
        pad_token_id=spec.pad_token_id,
    ).save_pretrained(out_dir)
    tensors = random_state_dict(config, seed=seed, std=spec.init_std)
    # transformers refuses safetensors files without format metadata.
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
