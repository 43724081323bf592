"""The converter service over real gRPC: the tiny model pushed to a registry, converted and
quantized by the real llama.cpp tools, every output registered with its lineage."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from postgres_server import PostgresServer
from process_tree import kill_busy_converter_worker

from forgeline_converter.settings import ConverterSettings
from forgeline_kit.errors import InvalidArgument, NotFound
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerOptions, start_llama_server
from forgeline_kit.settings import load_settings, renamed_variables_in_use
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2 as rpb

from .conftest import ModelCopy
from .service_stack import RunningConverter, Stack, collect, start_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = uuid.uuid4().hex[:8]
BASE = f"tiny-{TOKEN}"
STAGES_IN_ORDER = [
    pb.CONVERSION_STATE_DOWNLOADING,
    pb.CONVERSION_STATE_CONVERTING,
    pb.CONVERSION_STATE_VERIFYING,
    pb.CONVERSION_STATE_QUANTIZING,
    pb.CONVERSION_STATE_REGISTERING,
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel
) -> AsyncIterator[Stack]:
    """A registry holding the tiny model as ``BASE:1``."""
    running = await start_stack(tmp_path_factory.mktemp("service"))
    await running.registry.push(tiny_model.path, BASE)
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def converter(stack: Stack) -> RunningConverter:
    return await stack.start_converter()


def model_spec(
    source: str,
    quantizations: tuple[str, ...] = (),
    *,
    register_outtype: bool = False,
    output: str = "",
    quality: bool = True,
    smoke: bool = True,
) -> pb.ConversionSpec:
    return pb.ConversionSpec(
        model=pb.ModelConversion(
            source=common_pb2.VersionRef(model=source, version=1),
            outtype=pb.GGUF_OUTTYPE_F16,
            register_outtype=register_outtype,
            quantizations=[pb.QuantizationTarget(type=q) for q in quantizations],
        ),
        output=pb.OutputOptions(model=output, labels={"suite": "converter"}),
        verification=pb.VerificationOptions(
            skip_smoke_test=not smoke,
            quality_metric=pb.QUALITY_METRIC_PERPLEXITY if quality else pb.QUALITY_METRIC_NONE,
        ),
    )


async def versions_of(stack: Stack, model: str) -> list[rpb.Version]:
    """Every version of ``model``; none when the model does not exist."""
    try:
        answer = await stack.registry.list_versions(rpb.ListVersionsRequest(model=model))
    except NotFound:
        return []
    return list(answer.versions)


class Converted:
    """The tiny model converted to F16 (registered) + Q8_0 + Q4_K_M in one request."""

    def __init__(self, request: pb.ConvertRequest, events: list[pb.ConversionEvent]) -> None:
        self.request = request
        self.events = events

    @property
    def result(self) -> pb.ConversionResult:
        return self.events[-1].result

    @property
    def conversion_id(self) -> str:
        return self.events[0].conversion_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def converted(converter: RunningConverter) -> Converted:
    request = pb.ConvertRequest(
        spec=model_spec(BASE, ("q8_0", "Q4_K_M"), register_outtype=True),
        request_id=f"suite-{TOKEN}/gguf",
    )
    return Converted(request, await collect(converter.stub.Convert(request)))


async def test_quantization_types_are_llama_quantizes(converter: RunningConverter) -> None:
    answer = await converter.stub.ListQuantizationTypes(pb.ListQuantizationTypesRequest())
    types = {t.name: t for t in answer.types}
    assert {"Q4_K_M", "Q8_0", "Q6_K", "IQ2_XXS"} <= set(types)
    assert types["IQ2_XXS"].requires_imatrix
    assert not types["Q4_K_M"].requires_imatrix
    assert "ppl" in types["Q4_K_M"].description
    assert answer.llama_cpp_version


async def test_one_request_registers_three_child_versions(
    converted: Converted, stack: Stack
) -> None:
    events = converted.events
    assert events[0].WhichOneof("payload") == "accepted"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].WhichOneof("payload") == "result", events[-1]
    stages = [e.progress.stage for e in events if e.WhichOneof("payload") == "progress"]
    firsts = [stages.index(stage) for stage in STAGES_IN_ORDER]
    assert firsts == sorted(firsts), stages

    outputs = converted.result.outputs
    assert [o.file_type for o in outputs] == ["F16", "Q8_0", "Q4_K_M"]
    assert converted.result.llama_cpp_version
    assert {"download", "convert", "quantize:Q4_K_M", "register"} <= set(converted.result.timings)
    for output in outputs:
        assert output.version.model == f"{BASE}-gguf"
        assert output.metadata.architecture == "llama"
        assert output.metadata.file_type == output.file_type
        assert output.metadata.has_chat_template
        version = await stack.registry.get_version(
            rpb.GetVersionRequest(model=output.version.model, version=output.version.version)
        )
        assert version.kind == rpb.VERSION_KIND_GGUF
        assert {a.path for a in version.artifacts} == {"model.gguf", "Modelfile"}
        gguf = next(a for a in version.artifacts if a.path == "model.gguf")
        assert (gguf.sha256, gguf.size_bytes) == (output.sha256, output.size_bytes)
        assert gguf.gguf_file_type == output.file_type
        parents = [
            (p.version.model, p.version.version, p.relation) for p in version.lineage.parents
        ]
        assert parents == [(BASE, 1, rpb.RELATION_CONVERTED_FROM)]
        assert version.lineage.tool_versions["llama.cpp"] == converted.result.llama_cpp_version
        assert version.lineage.produced_by == f"converter/conversions/{converted.conversion_id}"
        assert version.labels["quantization"] == output.file_type.lower()
        assert version.labels["suite"] == "converter"
        assert version.lineage.metrics["perplexity"] > 1
    f16, q8, q4 = outputs
    assert not f16.HasField("quality")
    for quantized in (q8, q4):
        assert quantized.quality.metric == pb.QUALITY_METRIC_PERPLEXITY
        assert quantized.quality.reference_value == pytest.approx(
            f16_perplexity(stack, converted), rel=1e-9
        )
        assert len(quantized.quality.evaluation_text_sha256) == 64
    # Fewer bits, a larger file difference and no better perplexity than Q8_0.
    assert q4.size_bytes < q8.size_bytes < f16.size_bytes
    assert q4.quality.value >= q8.quality.value * 0.99


def f16_perplexity(stack: Stack, converted: Converted) -> float:
    return converted.result.outputs[1].quality.reference_value


async def test_the_modelfile_is_registered_with_each_gguf(
    converted: Converted, stack: Stack, tmp_path: Path
) -> None:
    q4 = converted.result.outputs[2].version
    await stack.registry.pull(f"{q4.model}:{q4.version}", tmp_path)
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\nTEMPLATE ")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


async def test_the_conversion_is_kept_listed_and_found_by_request_id(
    converted: Converted, converter: RunningConverter, stack: Stack
) -> None:
    conversion = await converter.stub.GetConversion(
        pb.GetConversionRequest(conversion_id=converted.conversion_id)
    )
    assert conversion.state == pb.CONVERSION_STATE_SUCCEEDED
    assert conversion.percent == 100
    assert conversion.result == converted.result
    assert conversion.spec.output.model == f"{BASE}-gguf"  # the default, filled in
    assert conversion.last_event_sequence == converted.events[-1].sequence

    listed = await converter.stub.ListConversions(
        pb.ListConversionsRequest(
            source=common_pb2.VersionRef(model=BASE, version=1),
            states=[pb.CONVERSION_STATE_SUCCEEDED],
        )
    )
    assert converted.conversion_id in [c.id for c in listed.conversions]

    again = await collect(converter.stub.Convert(converted.request))
    assert again == converted.events  # the same history, nothing started
    assert len(await versions_of(stack, f"{BASE}-gguf")) == 3


async def test_watch_resumes_after_a_sequence(
    converted: Converted, converter: RunningConverter
) -> None:
    middle = len(converted.events) // 2
    resumed = await collect(
        converter.stub.WatchConversion(
            pb.WatchConversionRequest(conversion_id=converted.conversion_id, after_sequence=middle)
        )
    )
    assert resumed == converted.events[middle:]
    with pytest.raises(NotFound):
        await collect(
            converter.stub.WatchConversion(pb.WatchConversionRequest(conversion_id="cv-nope"))
        )


async def test_a_converter_set_up_with_the_old_state_db_variable_finds_its_conversions(
    converted: Converted,
    converter: RunningConverter,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FORGELINE_CONVERTER_STATE_DB (a file path) is still read for one release, with a warning:
    # a converter upgraded without a change to its environment keeps its conversions.
    for name in list(os.environ):
        if name.upper().startswith("FORGELINE_CONVERTER_"):
            monkeypatch.delenv(name)
    environment = {
        "FORGELINE_CONVERTER_STATE_DB": str(converter.settings.database_path),
        "FORGELINE_CONVERTER_WORK_DIR": str(stack.root / "upgraded" / "work"),
        "FORGELINE_CONVERTER_GRPC_PORT": "0",
        "FORGELINE_CONVERTER_METRICS_PORT": "0",
        "FORGELINE_CONVERTER_REGISTRY_TARGET": stack.registry_target,
        "FORGELINE_CONVERTER_REGISTRY_LOCAL_FILES": "true",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = load_settings(ConverterSettings)

    assert settings.database_path == converter.settings.database_path
    assert renamed_variables_in_use(ConverterSettings) == [
        "FORGELINE_CONVERTER_STATE_DB is deprecated and will stop being read in a coming "
        "release: set FORGELINE_CONVERTER_DATABASE_URL instead (FORGELINE_CONVERTER_DATABASE_URL="
        f"{settings.database_url} is the same setting)"
    ]
    upgraded = await stack.start_converter_on(settings)
    try:
        found = await upgraded.stub.GetConversion(
            pb.GetConversionRequest(conversion_id=converted.conversion_id)
        )
        assert found.state == pb.CONVERSION_STATE_SUCCEEDED
    finally:
        await upgraded.stop()
        stack.converters.remove(upgraded)


@pytest.mark.parametrize(
    ("quantization", "message"),
    [("Q9_Z", "unknown quantization type"), ("IQ2_XXS", "importance matrix")],
)
async def test_an_impossible_quantization_is_refused_before_anything_runs(
    converter: RunningConverter, stack: Stack, quantization: str, message: str
) -> None:
    output = f"refused-{uuid.uuid4().hex[:8]}"
    request = pb.ConvertRequest(spec=model_spec(BASE, ("Q8_0", quantization), output=output))
    with pytest.raises(InvalidArgument, match=message):
        await collect(converter.stub.Convert(request))
    assert await versions_of(stack, output) == []


@pytest.mark.parametrize(
    ("parameter", "field"),
    [
        (pb.ModelfileParameter(name="num_ctx 1\nADAPTER", value="1"), "parameters[0].name"),
        (pb.ModelfileParameter(name="stop", value='a"""\nFROM /etc/passwd'), "parameters[0].value"),
    ],
)
async def test_a_modelfile_value_that_would_inject_an_instruction_is_refused(
    converter: RunningConverter, stack: Stack, parameter: pb.ModelfileParameter, field: str
) -> None:
    output = f"refused-{uuid.uuid4().hex[:8]}"
    spec = model_spec(BASE, ("Q8_0",), output=output)
    spec.model.modelfile.parameters.append(parameter)
    with pytest.raises(InvalidArgument) as refused:
        await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))
    assert refused.value.field == f"spec.model.modelfile.{field}"
    assert await versions_of(stack, output) == []


async def test_an_unknown_source_is_not_found(converter: RunningConverter) -> None:
    request = pb.ConvertRequest(spec=model_spec(f"missing-{TOKEN}"))
    with pytest.raises(NotFound):
        await collect(converter.stub.Convert(request))


async def test_a_source_without_tokenizer_fails_clearly_and_registers_nothing(
    converter: RunningConverter, stack: Stack, model_copy: ModelCopy
) -> None:
    source = f"notok-{TOKEN}"
    await stack.registry.push(model_copy(drop=("tokenizer.model",)), source)
    events = await collect(
        converter.stub.Convert(pb.ConvertRequest(spec=model_spec(source, ("Q8_0",))))
    )
    error = events[-1].error
    assert error.code == "missing_tokenizer"
    assert "tokenizer" in error.message
    conversion = await converter.stub.GetConversion(
        pb.GetConversionRequest(conversion_id=events[0].conversion_id)
    )
    assert conversion.state == pb.CONVERSION_STATE_FAILED
    assert conversion.failed_state == pb.CONVERSION_STATE_CONVERTING
    assert conversion.error == error
    assert await versions_of(stack, f"{source}-gguf") == []
    assert not (converter.settings.work_dir / conversion.id).exists()


async def test_cancel_stops_the_tools_and_registers_nothing(
    converter: RunningConverter, stack: Stack
) -> None:
    output = f"cancelled-{TOKEN}"
    spec = model_spec(BASE, ("Q4_0", "Q5_K_M", "Q6_K", "Q8_0"), output=output)
    stream = converter.stub.Convert(pb.ConvertRequest(spec=spec))
    events: list[pb.ConversionEvent] = []
    cancelled: pb.Conversion | None = None
    async for event in stream:
        events.append(event)
        working = event.WhichOneof("payload") == "progress" and event.progress.stage in (
            pb.CONVERSION_STATE_CONVERTING,
            pb.CONVERSION_STATE_QUANTIZING,
        )
        if working and cancelled is None:
            cancelled = await converter.stub.CancelConversion(
                pb.CancelConversionRequest(conversion_id=event.conversion_id)
            )
        assert len(events) < 500
    assert cancelled is not None
    assert cancelled.state == pb.CONVERSION_STATE_CANCELLED
    stages = [e.progress.stage for e in events if e.WhichOneof("payload") == "progress"]
    assert stages[-2:] == [pb.CONVERSION_STATE_CANCELLING, pb.CONVERSION_STATE_CANCELLED]
    assert await versions_of(stack, output) == []
    assert not (converter.settings.work_dir / cancelled.id).exists()
    with pytest.raises(Exception, match="already ended"):
        await converter.stub.CancelConversion(
            pb.CancelConversionRequest(conversion_id=cancelled.id)
        )


async def test_a_conversion_cut_by_a_restart_runs_again_to_success(stack: Stack) -> None:
    first = await stack.start_converter("restarted")
    spec = model_spec(BASE, output=f"restart-{TOKEN}", quality=False, smoke=False)
    seen: list[pb.ConversionEvent] = []
    call = first.stub.Convert(pb.ConvertRequest(spec=spec, request_id=f"restart-{TOKEN}"))
    async for event in call:
        seen.append(event)
        if event.progress.stage == pb.CONVERSION_STATE_CONVERTING:
            break
    call.cancel()
    await first.stop()

    second = await stack.start_converter("restarted")
    rest = await collect(
        second.stub.WatchConversion(
            pb.WatchConversionRequest(
                conversion_id=seen[0].conversion_id, after_sequence=seen[-1].sequence
            )
        )
    )
    assert rest[0].sequence == seen[-1].sequence + 1
    assert any("restarted" in e.log.text for e in rest if e.WhichOneof("payload") == "log")
    assert rest[-1].WhichOneof("payload") == "result"
    assert [o.file_type for o in rest[-1].result.outputs] == ["F16"]
    assert len(await versions_of(stack, f"restart-{TOKEN}")) == 1


async def _convert_killing_the_worker(
    converter: RunningConverter, output: str
) -> list[pb.ConversionEvent]:
    """A small conversion whose busy worker is SIGKILLed once, mid-conversion; its events."""
    spec = model_spec(BASE, output=output, quality=False, smoke=False)
    stream = converter.stub.Convert(pb.ConvertRequest(spec=spec))
    killer = asyncio.create_task(asyncio.to_thread(kill_busy_converter_worker, os.getpid(), 120))
    events = await collect(stream)
    assert await killer is not None, "no worker ran a tool"
    return events


async def test_a_killed_worker_runs_again_on_the_downloaded_inputs(stack: Stack) -> None:
    converter = await stack.start_converter("killed", worker_retry_seconds=0.2)
    output = f"killed-{TOKEN}"
    events = await _convert_killing_the_worker(converter, output)

    retries = [e.retry for e in events if e.WhichOneof("payload") == "retry"]
    assert len(retries) == 1
    assert retries[0].error.code in ("worker_killed", "tool_killed")
    assert (retries[0].attempt, retries[0].max_attempts) == (2, 3)
    assert retries[0].delay.ToTimedelta().total_seconds() == pytest.approx(0.2)
    downloads = [
        e
        for e in events
        if e.WhichOneof("payload") == "progress"
        and e.progress.stage == pb.CONVERSION_STATE_DOWNLOADING
    ]
    assert len(downloads) == 1, "the inputs are not downloaded again"
    assert events[-1].WhichOneof("payload") == "result"
    assert len(await versions_of(stack, output)) == 1
    assert not (converter.settings.work_dir / events[0].conversion_id).exists()


async def test_a_worker_killed_on_every_attempt_fails_the_conversion(stack: Stack) -> None:
    converter = await stack.start_converter("killed-once", worker_attempts=1)
    output = f"killed-once-{TOKEN}"
    events = await _convert_killing_the_worker(converter, output)

    assert not [e for e in events if e.WhichOneof("payload") == "retry"]
    error = events[-1].error
    assert error.code in ("worker_killed", "tool_killed")
    assert error.retryable
    assert "signal 9" in error.message or "-9" in error.message
    assert await versions_of(stack, output) == []


async def test_tool_work_past_its_time_limit_is_stopped_and_fails_saying_so(
    stack: Stack,
) -> None:
    # The tiny model's conversion, quantization and checks take seconds: far over 0.5 s.
    converter = await stack.start_converter("hung", max_tool_seconds=0.5)
    output = f"hung-{TOKEN}"

    events = await collect(
        converter.stub.Convert(pb.ConvertRequest(spec=model_spec(BASE, ("Q8_0",), output=output)))
    )

    error = events[-1].error
    assert error.code == "deadline_exceeded"
    assert "ran past its time limit of 0.5 s" in error.message
    assert "FORGELINE_CONVERTER_MAX_TOOL_SECONDS" in error.message
    assert await versions_of(stack, output) == []
    assert not (converter.settings.work_dir / events[0].conversion_id).exists()


async def test_an_adapter_converts_and_loads_on_the_base_gguf(
    converted: Converted,
    converter: RunningConverter,
    stack: Stack,
    adapter_and_merged: tuple[Path, Path],
    llamacpp_toolchain: Toolchain,
    tmp_path: Path,
) -> None:
    adapter_dir, _ = adapter_and_merged
    adapter_model = f"tiny-lora-{TOKEN}"
    await stack.registry.push(
        adapter_dir,
        adapter_model,
        kind=rpb.VERSION_KIND_ADAPTER,
        lineage=rpb.Lineage(
            parents=[
                rpb.Parent(
                    version=common_pb2.VersionRef(model=BASE, version=1),
                    relation=rpb.RELATION_ADAPTER_OF,
                )
            ]
        ),
    )
    spec = pb.ConversionSpec(
        adapter=pb.AdapterConversion(adapter=common_pb2.VersionRef(model=adapter_model))
    )
    events = await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))
    assert events[-1].WhichOneof("payload") == "result", events[-1]
    (output,) = events[-1].result.outputs
    assert output.adapter
    assert output.file_type == "F16"
    version = await stack.registry.get_version(
        rpb.GetVersionRequest(model=output.version.model, version=output.version.version)
    )
    assert version.model == f"{adapter_model}-gguf"
    assert version.kind == rpb.VERSION_KIND_GGUF_ADAPTER
    base_f16 = converted.result.outputs[0].version
    assert {(p.version.model, p.version.version, p.relation) for p in version.lineage.parents} == {
        (adapter_model, 1, rpb.RELATION_CONVERTED_FROM),
        (base_f16.model, base_f16.version, rpb.RELATION_ADAPTER_OF),
    }

    await stack.registry.pull(f"{version.model}:{version.number}", tmp_path / "adapter")
    await stack.registry.pull(f"{base_f16.model}:{base_f16.version}", tmp_path / "base")
    base = tmp_path / "base" / "model.gguf"
    lora = tmp_path / "adapter" / "adapter.gguf"
    plain = complete(llamacpp_toolchain, base, tmp_path / "plain.log")
    adapted = complete(llamacpp_toolchain, base, tmp_path / "lora.log", (lora,))
    assert adapted
    assert adapted != plain


def complete(toolchain: Toolchain, model: Path, log: Path, adapters: tuple[Path, ...] = ()) -> str:
    """The greedy completion of a fixed prompt by ``model`` with ``adapters`` in llama-server."""
    options = LlamaServerOptions(model=model, lora_adapters=adapters)
    with start_llama_server(options, log, toolchain=toolchain) as server:
        response = httpx.post(
            f"{server.base_url}/completion",
            json={"prompt": "The capital of France is", "n_predict": 12, "temperature": 0},
            timeout=60,
        )
        response.raise_for_status()
        text: str = response.json()["content"]
    return text


@pytest.fixture
def calibration_text(pretrain_text: Path) -> str:
    return pretrain_text.read_text()


async def test_an_iq_type_quantizes_with_a_matrix_computed_from_inline_text(
    converter: RunningConverter, stack: Stack, calibration_text: str
) -> None:
    output = f"iq-{TOKEN}"
    spec = model_spec(BASE, ("IQ4_XS",), output=output, quality=False, smoke=False)
    spec.model.imatrix.CopyFrom(
        pb.ImatrixOptions(calibration_text_inline=calibration_text, context_size=128)
    )
    events = await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))
    assert events[-1].WhichOneof("payload") == "result", events[-1]
    stages = [e.progress.stage for e in events if e.WhichOneof("payload") == "progress"]
    assert pb.CONVERSION_STATE_COMPUTING_IMATRIX in stages
    (output_file,) = events[-1].result.outputs
    assert output_file.file_type == "IQ4_XS"
    assert output_file.metadata.file_type == "IQ4_XS"
    assert "imatrix" in events[-1].result.timings
    assert len(await versions_of(stack, output)) == 1


async def test_conversions_are_listed_newest_first_in_pages(converter: RunningConverter) -> None:
    first = await converter.stub.ListConversions(pb.ListConversionsRequest(page_size=2))
    assert len(first.conversions) == 2
    assert first.next_page_token
    second = await converter.stub.ListConversions(
        pb.ListConversionsRequest(page_size=2, page_token=first.next_page_token)
    )
    ids = [c.id for c in (*first.conversions, *second.conversions)]
    assert len(set(ids)) == len(ids)
    everything = await converter.stub.ListConversions(pb.ListConversionsRequest())
    assert [c.id for c in everything.conversions][: len(ids)] == ids
    times = [c.create_time.ToNanoseconds() for c in everything.conversions]
    assert times == sorted(times, reverse=True)


async def test_a_registered_f16_gguf_is_quantized_directly(
    converted: Converted, converter: RunningConverter, stack: Stack
) -> None:
    f16, q8 = converted.result.outputs[0].version, converted.result.outputs[1].version
    spec = model_spec(f16.model, ("Q5_K_M",), output=f"direct-{TOKEN}", smoke=False)
    spec.model.source.version = f16.version
    events = await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))
    assert events[-1].WhichOneof("payload") == "result", events[-1]
    (output,) = events[-1].result.outputs
    assert output.file_type == "Q5_K_M"
    assert output.quality.reference_value == pytest.approx(
        converted.result.outputs[1].quality.reference_value
    )
    version = await stack.registry.get_version(
        rpb.GetVersionRequest(model=output.version.model, version=output.version.version)
    )
    parents = [(p.version.model, p.version.version, p.relation) for p in version.lineage.parents]
    assert parents == [(f16.model, f16.version, rpb.RELATION_CONVERTED_FROM)]
    assert {a.path for a in version.artifacts} == {"model.gguf", "Modelfile"}

    spec.model.source.version = q8.version
    with pytest.raises(InvalidArgument, match="already quantized"):
        await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))


async def test_the_kl_divergence_figure_ranks_quantizations(
    converter: RunningConverter, stack: Stack
) -> None:
    output = f"kl-{TOKEN}"
    spec = model_spec(BASE, ("Q8_0", "Q2_K"), output=output, smoke=False)
    spec.verification.quality_metric = pb.QUALITY_METRIC_KL_DIVERGENCE
    events = await collect(converter.stub.Convert(pb.ConvertRequest(spec=spec)))
    assert events[-1].WhichOneof("payload") == "result", events[-1]
    q8, q2 = events[-1].result.outputs
    for item in (q8, q2):
        assert item.quality.metric == pb.QUALITY_METRIC_KL_DIVERGENCE
        assert not item.quality.HasField("reference_value")
    assert 0 <= q8.quality.value < q2.quality.value
    version = await stack.registry.get_version(
        rpb.GetVersionRequest(model=q2.version.model, version=q2.version.version)
    )
    assert version.lineage.metrics["kl_divergence_mean"] == pytest.approx(q2.quality.value)
    # The share of greedy steps each quantization leaves alone: Q2_K changes more than Q8_0.
    q8_version = await stack.registry.get_version(
        rpb.GetVersionRequest(model=q8.version.model, version=q8.version.version)
    )
    same_q8 = q8_version.lineage.metrics["same_top_token_rate"]
    same_q2 = version.lineage.metrics["same_top_token_rate"]
    assert 0 < same_q2 < same_q8 <= 1


async def test_a_converter_on_postgresql_keeps_its_conversions_when_it_moves_host(
    stack: Stack, postgres: PostgresServer
) -> None:
    """FORGELINE_CONVERTER_DATABASE_URL=postgresql://...: a converter started elsewhere (another
    work directory, as a rescheduled pod) on the same database finds, lists and replays the
    conversions of the first, and a repeated request id starts nothing."""
    url = postgres.create_database()
    first = await stack.start_converter("pg-first", database_url=url)
    request = pb.ConvertRequest(
        spec=model_spec(BASE, ("Q8_0",), output=f"{BASE}-pg", quality=False, smoke=False),
        request_id=f"pg-{TOKEN}",
    )
    events = await collect(first.stub.Convert(request))
    assert events[-1].HasField("result")
    conversion_id = events[0].conversion_id
    await first.stop()

    moved = await stack.start_converter("pg-moved", database_url=url)
    found = await moved.stub.GetConversion(pb.GetConversionRequest(conversion_id=conversion_id))
    assert found.state == pb.CONVERSION_STATE_SUCCEEDED
    listed = await moved.stub.ListConversions(
        pb.ListConversionsRequest(source=common_pb2.VersionRef(model=BASE, version=1))
    )
    assert conversion_id in [c.id for c in listed.conversions]
    replayed = await collect(
        moved.stub.WatchConversion(pb.WatchConversionRequest(conversion_id=conversion_id))
    )
    assert replayed == events
    assert await collect(moved.stub.Convert(request)) == events
    assert len(await versions_of(stack, f"{BASE}-pg")) == 1
