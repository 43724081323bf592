"""``forgeline convert MODEL[:VERSION] --to q4_k_m,q8_0``: GGUF files through the converter.

The source version is converted to one GGUF intermediate (``--outtype``, f16 by default) and
quantized to every ``--to`` type; each result is registered by the converter. Progress shows as a
bar on a terminal; at the end each registered output is printed with its file type, size and
quality figure. ``--adapter`` converts a LoRA adapter version to a GGUF adapter instead. Talks to
``--converter HOST:PORT`` (or ``FORGELINE_CLI_CONVERTER``; default ``127.0.0.1:50053``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any, Final

from forgeline_cli.console import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_json_option,
    fail,
    human_size,
    one_line,
    print_json,
)
from forgeline_cli.services import CONVERTER, run_command
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.grpc.client import make_channel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.converter.v1 import converter_pb2_grpc
from forgeline_registry_client.names import parse_reference

__all__ = ["register"]

_OUTTYPES: Final = {
    "f32": pb.GGUF_OUTTYPE_F32,
    "f16": pb.GGUF_OUTTYPE_F16,
    "bf16": pb.GGUF_OUTTYPE_BF16,
    "q8_0": pb.GGUF_OUTTYPE_Q8_0,
}
_METRICS: Final = {
    "perplexity": pb.QUALITY_METRIC_PERPLEXITY,
    "kl-divergence": pb.QUALITY_METRIC_KL_DIVERGENCE,
    "none": pb.QUALITY_METRIC_NONE,
}


def _stage(state: pb.ConversionState.ValueType) -> str:
    return pb.ConversionState.Name(state).removeprefix("CONVERSION_STATE_").lower()


def _quality(output: pb.ConvertedOutput) -> str:
    if not output.HasField("quality"):
        return ""
    quality = output.quality
    name = {
        pb.QUALITY_METRIC_PERPLEXITY: "perplexity",
        pb.QUALITY_METRIC_KL_DIVERGENCE: "KL divergence",
    }.get(quality.metric, "quality")
    reference = (
        f" (unquantized {quality.reference_value:.4g})"
        if quality.HasField("reference_value")
        else ""
    )
    return f"  {name} {quality.value:.4g}{reference}"


def output_line(output: pb.ConvertedOutput) -> str:
    """One registered output: reference, file type, size and quality figure."""
    ref = f"{output.version.model}:{output.version.version}"
    kind = "adapter " if output.adapter else ""
    return f"  {ref}  {kind}{output.file_type}  {human_size(output.size_bytes)}{_quality(output)}"


def build_request(args: argparse.Namespace) -> pb.ConvertRequest:
    """The ConvertRequest the command line asks for.

    Raises:
        InvalidArgument: a malformed source reference.
    """
    parsed = parse_reference(args.source, "MODEL[:VERSION]")
    source = common_pb2.VersionRef(model=parsed.model)
    if parsed.version is not None:
        source.version = parsed.version
    else:
        source.alias = parsed.alias or "latest"
    outtype = _OUTTYPES[args.outtype]
    spec = pb.ConversionSpec(
        output=pb.OutputOptions(model=args.output_model),
        verification=pb.VerificationOptions(
            skip_smoke_test=args.skip_smoke_test, quality_metric=_METRICS[args.quality]
        ),
    )
    targets = [t.strip() for t in args.to.split(",") if t.strip()] if args.to else []
    if args.adapter:
        if targets:
            raise InvalidArgument("--to does not apply to --adapter: use --outtype", field="--to")
        spec.adapter.CopyFrom(pb.AdapterConversion(adapter=source, outtype=outtype))
    else:
        spec.model.CopyFrom(
            pb.ModelConversion(
                source=source,
                outtype=outtype,
                register_outtype=args.register_outtype or not targets,
                quantizations=[pb.QuantizationTarget(type=t.upper()) for t in targets],
            )
        )
    return pb.ConvertRequest(spec=spec, request_id=str(uuid.uuid4()))


class _Progress:
    """A 0-100 tqdm bar on stderr whose description is the stage (and target); stage changes are
    printed as lines when there is no terminal."""

    def __init__(self, enabled: bool, quiet: bool) -> None:
        self._enabled = enabled and not quiet
        self._quiet = quiet
        self._bar: Any = None
        self._last = ""

    def update(self, progress: pb.Progress) -> None:
        label = _stage(progress.stage) + (f" {progress.target}" if progress.target else "")
        if self._enabled:
            if self._bar is None:
                from tqdm import tqdm  # type: ignore[import-untyped]

                self._bar = tqdm(
                    total=100,
                    file=sys.stderr,
                    bar_format="{desc:<20} {percentage:3.0f}%|{bar}| {elapsed}",
                )
            self._bar.set_description(label)
            self._bar.update(max(0.0, progress.percent - self._bar.n))
        elif label != self._last and not self._quiet:
            print(f"[{label}] {progress.percent:.0f}%", flush=True)
        self._last = label

    def note(self, text: str) -> None:
        """A line above the bar (or on its own without one)."""
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


async def _convert(args: argparse.Namespace, request: pb.ConvertRequest, seen: list[str]) -> int:
    progress = _Progress(sys.stderr.isatty(), quiet=args.json)
    async with make_channel(args.converter, wait_for_ready=False) as channel:
        stub = converter_pb2_grpc.ConverterServiceStub(channel)
        try:
            async for event in stub.Convert(request):
                kind = event.WhichOneof("payload")
                if kind == "accepted":
                    seen.append(event.accepted.id)
                    if not args.json:
                        print(f"conversion {event.accepted.id} of {args.source}", flush=True)
                elif kind == "progress":
                    progress.update(event.progress)
                elif kind == "retry":
                    retry = event.retry
                    delay = retry.delay.ToTimedelta().total_seconds()
                    progress.note(
                        f"{one_line(retry.error.message)}; retrying (attempt {retry.attempt} of "
                        f"{retry.max_attempts}) in {delay:g} s"
                    )
                elif kind == "result":
                    progress.close()
                    if args.json:
                        print_json(event.result)
                    else:
                        print(f"registered (llama.cpp {event.result.llama_cpp_version}):")
                        for output in event.result.outputs:
                            print(output_line(output))
                    return 0
                elif kind == "error":
                    progress.close()
                    code = f" ({event.error.code})" if event.error.code else ""
                    return fail(f"conversion failed{code}: {event.error.message}")
        finally:
            progress.close()
    return fail("the converter ended the stream without a result")


def _run(args: argparse.Namespace) -> int:
    try:
        request = build_request(args)
    except InvalidArgument as exc:
        return fail(exc.message, EXIT_USAGE)
    seen: list[str] = []
    try:
        return run_command(CONVERTER, args, _convert(args, request, seen))
    except KeyboardInterrupt:
        which = f"conversion {seen[0]}" if seen else "the conversion"
        print(f"\nstopped following; {which} goes on in the converter", file=sys.stderr)
        return EXIT_INTERRUPTED


def register(subparsers: Any) -> None:
    """Add ``convert`` to the ``forgeline`` command."""
    convert = subparsers.add_parser(
        "convert",
        help="convert a registered model to GGUF and quantize it",
        description="Convert a registered HF model (or LoRA adapter, with --adapter) to GGUF "
        "through the converter service; every result is registered.",
    )
    convert.add_argument("source", metavar="MODEL[:VERSION]", help="the version to convert")
    convert.add_argument(
        "--to",
        default="",
        metavar="TYPES",
        help="llama-quantize types, comma-separated (for example q4_k_m,q8_0); none: only the "
        "--outtype file",
    )
    convert.add_argument(
        "--outtype",
        choices=sorted(_OUTTYPES),
        default="f16",
        help="file type convert_hf_to_gguf.py writes, the intermediate of --to (default f16)",
    )
    convert.add_argument(
        "--register-outtype",
        action="store_true",
        help="also register the --outtype file when it only serves as the intermediate",
    )
    convert.add_argument("--adapter", action="store_true", help="the source is a LoRA adapter")
    convert.add_argument(
        "--output-model", default="", help="registry model of the results (default: the source's)"
    )
    convert.add_argument(
        "--quality",
        choices=sorted(_METRICS),
        default="perplexity",
        help="quality figure measured for each quantized file (default perplexity)",
    )
    convert.add_argument(
        "--skip-smoke-test", action="store_true", help="skip the smoke generation check"
    )
    CONVERTER.add_option(convert)
    add_json_option(convert)
    convert.set_defaults(run=_run)
