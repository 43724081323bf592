"""Perplexity of a GGUF on a text, with ``llama-perplexity``, read from its logits file.

llama.cpp's logger is a leaked singleton with a worker thread (llama.cpp issue 22142), so the
last lines a tool prints, ``Final estimate: PPL = ...`` among them, are sometimes lost when it
exits: measured here 1 run in 4 to 1 in 3 on a busy machine, with exit status 0. The figure is
therefore computed from the file ``--kl-divergence-base`` writes synchronously: for every scored
token, the log-probabilities of the whole vocabulary (16-bit, offset and scale per token).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.subprocesses import ToolFailed, run_tool

_MAGIC = b"_logits_"


def perplexity(
    toolchain: Toolchain,
    model: Path,
    text: Path,
    env: Mapping[str, str],
    *,
    context_size: int = 128,
    chunks: int = 0,
    threads: int = 2,
    logits_out: Path | None = None,
) -> float:
    """Perplexity of ``model`` on ``text`` as llama-perplexity scores it (the second half of
    every ``context_size`` window); lower is better. ``logits_out`` keeps the logits file (for
    :func:`compare_logits`).

    Raises:
        ToolFailed: the tool failed, or the text is shorter than two windows.
    """
    with tempfile.TemporaryDirectory(prefix="forgeline-ppl-") as scratch:
        logits = logits_out or Path(scratch) / "logits.bin"
        command: list[str | Path] = [
            toolchain.llama_perplexity, "--model", model, "--file", text,
            "--ctx-size", str(context_size), "--threads", str(threads),
            "--kl-divergence-base", logits,
        ]  # fmt: skip
        if chunks:
            command += ["--chunks", str(chunks)]
        run = run_tool("llama-perplexity", command, env=env)
        try:
            return perplexity_from_logits(logits)
        except (OSError, ValueError) as error:
            raise ToolFailed(
                "llama-perplexity", f"wrote no usable logits ({error})", run.output[-3000:]
            ) from error


class _Logits:
    """A ``--kl-divergence-base`` file (layout: :func:`perplexity_from_logits`)."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError(f"{path.name} is not a llama-perplexity logits file")
        self.n_ctx = int(np.frombuffer(data, np.int32, 1, 8)[0])
        self.n_vocab, self.n_chunk = (int(v) for v in np.frombuffer(data, np.int32, 2, 12))
        if self.n_chunk <= 0:
            raise ValueError("no chunk was scored: the text is shorter than two contexts")
        offset = 20
        self.tokens = np.frombuffer(data, np.int32, self.n_chunk * self.n_ctx, offset).reshape(
            self.n_chunk, self.n_ctx
        )
        offset += self.n_chunk * self.n_ctx * 4
        self.first = self.n_ctx // 2
        scored = self.n_ctx - 1 - self.first
        width = 2 * ((self.n_vocab + 1) // 2) + 4
        records = np.frombuffer(data, np.uint16, self.n_chunk * scored * width, offset)
        self.records = records.reshape(self.n_chunk, scored, width)

    def log_probs(self, chunk: int) -> np.ndarray:
        """Log-probabilities of the whole vocabulary for each scored token of ``chunk``."""
        records = self.records[chunk]
        header = records[:, :4].copy().view(np.float32)  # (scale, min_log_prob) per record
        values = records[:, 4 : 4 + self.n_vocab].astype(np.float64)
        result: np.ndarray = header[:, 1:2].astype(np.float64) + header[:, 0:1] * values
        return result


@dataclass(frozen=True)
class LogitsComparison:
    """How a quantized file's token distributions compare with its unquantized intermediate's
    on the same text."""

    #: Mean KL(base ‖ other) over the scored tokens: llama-perplexity's "Mean KLD"; 0 is
    #: identical.
    kl_divergence: float
    #: Fraction of the scored tokens whose most likely next token is the same in both:
    #: llama-perplexity's "Same top p", the share of greedy steps the quantization leaves alone.
    same_top_token: float


def compare_logits(base: Path, other: Path) -> LogitsComparison:
    """Compare two logits files made on the same text with the same context size, computed
    from the files so that no lost log line can hide a figure.

    Raises:
        ValueError: the files do not score the same tokens.
    """
    reference, candidate = _Logits(base), _Logits(other)
    if not np.array_equal(reference.tokens, candidate.tokens):
        raise ValueError("the two logits files do not score the same tokens")
    total, same, count = 0.0, 0, 0
    for chunk in range(reference.n_chunk):
        expected = reference.log_probs(chunk)
        actual = candidate.log_probs(chunk)
        same += int((expected.argmax(axis=1) == actual.argmax(axis=1)).sum())
        # Renormalise: the 16-bit storage leaves each row's probabilities summing to ~1 only.
        expected -= np.logaddexp.reduce(expected, axis=1, keepdims=True)
        actual -= np.logaddexp.reduce(actual, axis=1, keepdims=True)
        divergence = (np.exp(expected) * (expected - actual)).sum(axis=1)
        total += float(divergence.sum())
        count += divergence.shape[0]
    return LogitsComparison(kl_divergence=max(0.0, total / count), same_top_token=same / count)


def perplexity_from_logits(path: Path) -> float:
    """exp(mean negative log-likelihood) of the tokens scored in a ``--kl-divergence-base`` file.

    Layout (tools/perplexity/perplexity.cpp): ``_logits_``, int32 n_ctx, n_vocab, n_chunk, the
    int32 tokens of every chunk, then per chunk ``n_ctx - 1 - n_ctx/2`` records of
    ``2*ceil(n_vocab/2) + 4`` uint16: float32 scale, float32 minimum log-prob, then one uint16 per
    vocabulary entry q, with log-prob = minimum + scale * q.
    """
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path.name} is not a llama-perplexity logits file")
    n_ctx = int(np.frombuffer(data, np.int32, 1, 8)[0])
    n_vocab, n_chunk = (int(v) for v in np.frombuffer(data, np.int32, 2, 12))
    if n_chunk <= 0:
        raise ValueError("no chunk was scored: the text is shorter than two contexts")
    offset = 20
    tokens = np.frombuffer(data, np.int32, n_chunk * n_ctx, offset).reshape(n_chunk, n_ctx)
    offset += n_chunk * n_ctx * 4
    first = n_ctx // 2
    scored = n_ctx - 1 - first
    width = 2 * ((n_vocab + 1) // 2) + 4
    records = np.frombuffer(data, np.uint16, n_chunk * scored * width, offset)
    records = records.reshape(n_chunk, scored, width)
    header = records[:, :, :4].copy().view(np.float32)  # (scale, min_log_prob) per record
    targets = tokens[:, first + 1 :]
    quantized = np.take_along_axis(records[:, :, 4:], targets[:, :, None], axis=2)[:, :, 0]
    log_probs = header[:, :, 1] + header[:, :, 0] * quantized.astype(np.float64)
    return math.exp(-float(log_probs.mean()))
