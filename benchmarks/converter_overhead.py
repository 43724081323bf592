"""Convert + quantize through the converter core, and through the converter service, against
the same two llama.cpp commands run by hand, on the tiny model; then size and perplexity per
quantization type.

    .venv/bin/python benchmarks/converter_overhead.py [--rounds 3]

Rounds alternate (by hand, core, service) so drift on a shared machine hits all alike. The
core's extra work is the source checks, the disk check, GGUF metadata read-back, sha256 of
each output and the move into place; perplexity and the smoke generation are off in the timed
runs (separate, optional measurements). The service runs in this process on real sockets with a
registry on an fs store: its time is reported whole and without the registry transfer (download
of the source, registration of the output), which the result's timings give separately.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from prometheus_client import CollectorRegistry

from forgeline_converter.__main__ import build as build_converter
from forgeline_converter.gguf_conversion import ConversionPlan, convert_model
from forgeline_converter.llamacpp.tools import convert_hf_to_gguf, quantize
from forgeline_converter.settings import ConverterSettings
from forgeline_kit.grpc.client import make_channel
from forgeline_kit.grpc.server import GrpcService
from forgeline_kit.llamacpp import locate
from forgeline_kit.sqlite import sqlite_url
from forgeline_kit.tinymodel import write_tiny_model
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.converter.v1 import converter_pb2_grpc
from forgeline_registry.__main__ import build as build_registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient

TYPES = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


class ServiceArm:
    """A registry and a converter served in this process, the tiny model pushed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: list[GrpcService] = []

    async def start(self, model: Path) -> float:
        """Start both services and push ``model``; the push's wall time."""
        registry_settings = RegistrySettings(
            storage="fs", fs_root=self.root / "registry", grpc_port=0, metrics_port=0
        )
        registry = GrpcService(
            registry_settings,
            await build_registry(registry_settings),
            collectors=CollectorRegistry(),
        )
        await registry.start()
        converter_settings = ConverterSettings(
            grpc_port=0,
            metrics_port=0,
            registry_target=f"127.0.0.1:{registry.grpc_port}",
            registry_local_files=True,
            work_dir=self.root / "converter" / "work",
            database_url=sqlite_url(self.root / "converter" / "state.db"),
        )
        converter = GrpcService(
            converter_settings,
            await build_converter(converter_settings),
            collectors=CollectorRegistry(),
        )
        await converter.start()
        self.services = [converter, registry]
        self.registry = RegistryClient(f"127.0.0.1:{registry.grpc_port}", accept_local_files=True)
        self.channel = make_channel(f"127.0.0.1:{converter.grpc_port}")
        self.stub = converter_pb2_grpc.ConverterServiceStub(self.channel)
        started = time.perf_counter()
        await self.registry.push(model, "tiny")
        return time.perf_counter() - started

    async def convert(self, round_index: int) -> tuple[float, dict[str, float]]:
        """F16 -> Q4_K_M through the service; its wall time and the result's step timings."""
        spec = pb.ConversionSpec(
            model=pb.ModelConversion(
                source=common_pb2.VersionRef(model="tiny", version=1),
                quantizations=[pb.QuantizationTarget(type="Q4_K_M")],
            ),
            verification=pb.VerificationOptions(
                skip_smoke_test=True, quality_metric=pb.QUALITY_METRIC_NONE
            ),
        )
        request = pb.ConvertRequest(spec=spec, request_id=f"bench-{round_index}")
        started = time.perf_counter()
        last = None
        async for event in self.stub.Convert(request):
            last = event
        wall = time.perf_counter() - started
        if last is None or last.WhichOneof("payload") != "result":
            raise RuntimeError(f"the conversion did not succeed: {last}")
        timings = {k: v.ToNanoseconds() / 1e9 for k, v in last.result.timings.items()}
        return wall, timings

    async def stop(self) -> None:
        await self.channel.close()
        await self.registry.close()
        for service in self.services:
            await service.stop(grace=0)


def main() -> None:
    asyncio.run(run())


async def run() -> None:
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
        arm = ServiceArm(root / "service")
        push_s = await arm.start(model)
        through: list[float] = []
        transfer: list[float] = []
        steps: list[dict[str, float]] = []
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
            wall, timings = await arm.convert(round_index)
            through.append(wall)
            transfer.append(timings["download"] + timings["register"])
            steps.append(timings)
        await arm.stop()
        hand_median, service_median = statistics.median(by_hand), statistics.median(service)
        print(f"rounds: {args.rounds}; llama.cpp {toolchain.version}")
        print(f"by hand   (convert f16 + quantize Q4_K_M): median {hand_median:.2f} s {by_hand}")
        print(f"converter (same, verified, hashed):       median {service_median:.2f} s {service}")
        print(f"overhead: {100 * (service_median / hand_median - 1):+.1f} %")
        tools = [t["convert"] + t["quantize:Q4_K_M"] for t in steps]
        extra = [w - x - t for w, x, t in zip(through, transfer, tools, strict=True)]
        share = [100 * e / t for e, t in zip(extra, tools, strict=True)]
        median = statistics.median
        print(f"\nregistry push of the source (once): {push_s:.2f} s")
        print(f"service, whole Convert call: median {median(through):.2f} s")
        print(f"  registry transfer (download + register): median {median(transfer):.2f} s")
        print(f"  the two tools' own wall time: median {median(tools):.2f} s")
        print(
            f"  service overhead (whole - transfer - tools, same run): median "
            f"{median(extra):.2f} s = {median(share):+.1f} % of the tools "
            f"{[round(x, 1) for x in share]}"
        )
        without = median(through) - median(transfer)
        print(
            f"  without transfer vs by hand (medians): {100 * (without / hand_median - 1):+.1f} %"
        )
        for index, timings in enumerate(steps):
            print(
                f"  round {index} steps: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
            )

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
