"""Convert + quantize through the converter core against the same two llama.cpp commands run by
hand, on the tiny model; then size and perplexity per quantization type.

    .venv/bin/python benchmarks/converter_overhead.py [--rounds 3]

Rounds alternate (by hand, then converter) so drift on a shared machine hits both alike. The
converter's extra work is the source checks, the disk check, GGUF metadata read-back, sha256 of
each output and the move into place; perplexity is off in the timed runs (it is a separate,
optional measurement). Registry transfer is not part of this slice.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from forgeline_converter.core import ConversionPlan, convert_model
from forgeline_converter.llamacpp_tools import convert_hf_to_gguf, quantize
from forgeline_kit.llamacpp import locate
from forgeline_kit.tinymodel import write_tiny_model

TYPES = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    toolchain = locate()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="converter-bench-") as scratch:
        root = Path(scratch)
        model = write_tiny_model(root / "tiny").path
        by_hand: list[float] = []
        service: list[float] = []
        for round_index in range(args.rounds):
            out = root / f"hand-{round_index}"
            out.mkdir()
            started = time.perf_counter()
            convert_hf_to_gguf(toolchain, model, out / "f16.gguf", "f16", env)
            quantize(toolchain, out / "f16.gguf", out / "q4_k_m.gguf", "Q4_K_M", env)
            by_hand.append(time.perf_counter() - started)
            started = time.perf_counter()
            convert_model(
                model, root / f"svc-{round_index}", ConversionPlan(quantizations=["Q4_K_M"]),
                toolchain, env,
            )  # fmt: skip
            service.append(time.perf_counter() - started)
        hand_median, service_median = statistics.median(by_hand), statistics.median(service)
        print(f"rounds: {args.rounds}; llama.cpp {toolchain.version}")
        print(f"by hand   (convert f16 + quantize Q4_K_M): median {hand_median:.2f} s {by_hand}")
        print(f"converter (same, verified, hashed):       median {service_median:.2f} s {service}")
        print(f"overhead: {100 * (service_median / hand_median - 1):+.1f} %")

        text = Path(str(files("forgeline_kit.tinymodel.data").joinpath("pretrain.txt")))
        plan = ConversionPlan(quantizations=TYPES, evaluation_text=text)
        result = convert_model(model, root / "table", plan, toolchain, env)
        print("\n| type | size (KiB) | bits/weight vs f16 | perplexity (pretrain.txt, ctx 128) |")
        print("|---|---:|---:|---:|")
        f16_size = result.files[0].info.size_bytes
        for item in result.files:
            ratio = 16 * item.info.size_bytes / f16_size
            print(
                f"| {item.quantization} | {item.info.size_bytes / 1024:.0f} | {ratio:.2f} "
                f"| {item.perplexity:.2f} |"
            )


if __name__ == "__main__":
    main()
