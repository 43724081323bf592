"""The gRPC contracts: stubs current, every RPC reachable, conventions kept, key messages intact."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "proto" / "forgeline_proto"

# The public surface of each service. Removing or renaming an RPC breaks every client of the
# contract, so a change here must be deliberate (see proto/README.md).
SERVICES: dict[str, tuple[ModuleType, ModuleType, set[str]]] = {
    "forgeline.registry.v1.RegistryService": (
        registry_pb2,
        registry_pb2_grpc,
        {
            "CreateModel",
            "GetModel",
            "ListModels",
            "UpdateModel",
            "DeleteModel",
            "BeginVersion",
            "RenewUploadGrants",
            "CommitVersion",
            "AbortVersion",
            "GetVersion",
            "ListVersions",
            "ResolveVersion",
            "UpdateVersion",
            "DeleteVersion",
            "SetAlias",
            "DeleteAlias",
            "GetLineage",
            "GetDownloadGrants",
        },
    ),
    "forgeline.trainer.v1.TrainerService": (
        trainer_pb2,
        trainer_pb2_grpc,
        {
            "SubmitJob",
            "GetJob",
            "ListJobs",
            "CancelJob",
            "WatchJob",
            "ListJobEvents",
            "ListCheckpoints",
        },
    ),
    "forgeline.converter.v1.ConverterService": (
        converter_pb2,
        converter_pb2_grpc,
        {
            "Convert",
            "WatchConversion",
            "GetConversion",
            "ListConversions",
            "CancelConversion",
            "ListQuantizationTypes",
        },
    ),
}

# List RPCs that deliberately do not page with page_token, and why.
UNPAGED_LISTS = {
    "ListJobEvents": "pages by event sequence number, which OpenAI's `after` cursor maps onto",
    "ListQuantizationTypes": "a short, fixed list from the converter's llama-quantize",
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forgeline_generate", REPO / "proto/generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def contracts(generator: ModuleType) -> descriptor_pb2.FileDescriptorSet:
    descriptors: descriptor_pb2.FileDescriptorSet = generator.descriptor_set()
    return descriptors


# --- `make proto` / `make proto-check`


def test_committed_stubs_match_the_contracts(
    generator: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generator.main(["--check"]) == 0
    assert "is current" in capsys.readouterr().out


def test_check_names_every_stale_file_and_says_how_to_fix_it(
    generator: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "forgeline_proto"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "registry/v1/registry_pb2.py"
    edited.write_text(edited.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    (copy / "trainer/v1/trainer_pb2.pyi").unlink()
    (copy / "registry/v1/old_pb2.py").write_text("", encoding="utf-8")

    assert generator.main(["--check", "--target", str(copy)]) == 1

    err = capsys.readouterr().err
    assert "registry/v1/registry_pb2.py: differs" in err
    assert "trainer/v1/trainer_pb2.pyi: missing" in err
    assert "registry/v1/old_pb2.py: not generated" in err
    assert "run `make proto`" in err


def test_generate_repairs_a_stale_tree(generator: ModuleType, tmp_path: Path) -> None:
    copy = tmp_path / "forgeline_proto"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "converter/v1/converter_pb2_grpc.py").write_text("# stale\n", encoding="utf-8")
    (copy / "gone/v1").mkdir(parents=True)
    (copy / "gone/v1/gone_pb2.py").write_text("", encoding="utf-8")

    assert generator.main(["--target", str(copy)]) == 0

    assert not (copy / "gone").exists()
    assert generator.main(["--check", "--target", str(copy)]) == 0


# --- The services over a real socket


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A server on loopback with every service registered but nothing implemented."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for full_name, (_, grpc_module, _) in SERVICES.items():
        service = full_name.rsplit(".", 1)[1]
        base_servicer: Any = getattr(grpc_module, f"{service}Servicer")
        getattr(grpc_module, f"add_{service}Servicer_to_server")(base_servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as client:
        grpc.channel_ready_future(client).result(timeout=10)
        yield client
    server.stop(grace=None)


@pytest.mark.parametrize("full_name", sorted(SERVICES))
def test_service_offers_exactly_the_documented_rpcs(full_name: str) -> None:
    pb2, grpc_module, expected = SERVICES[full_name]
    service = pb2.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
    assert service.full_name == full_name
    assert {method.name for method in service.methods} == expected
    servicer = getattr(grpc_module, f"{service.name}Servicer")
    assert all(callable(getattr(servicer, name)) for name in expected)


def _invoke(call: Any, request: Message, *, streaming: bool) -> None:
    response = call(request, timeout=10)
    if streaming:
        list(response)  # a stream reports its status only once read


@pytest.mark.parametrize("full_name", sorted(SERVICES))
def test_every_rpc_reaches_the_server(full_name: str, channel: grpc.Channel) -> None:
    pb2, grpc_module, _ = SERVICES[full_name]
    service = pb2.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
    stub = getattr(grpc_module, f"{service.name}Stub")(channel)
    for method in service.methods:
        request = getattr(pb2, method.input_type.name)()
        with pytest.raises(grpc.RpcError) as caught:
            _invoke(getattr(stub, method.name), request, streaming=method.server_streaming)
        # UNIMPLEMENTED comes from the generated base servicer: the path and codecs line up.
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.full_name


def test_streaming_rpcs_are_the_watches() -> None:
    streaming = {
        method.full_name
        for pb2, _, _ in SERVICES.values()
        for service in pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.server_streaming or method.client_streaming
    }
    assert streaming == {
        "forgeline.trainer.v1.TrainerService.WatchJob",
        "forgeline.converter.v1.ConverterService.Convert",
        "forgeline.converter.v1.ConverterService.WatchConversion",
    }


# --- Conventions

_MESSAGE, _ENUM, _SERVICE = 4, 5, 6  # FileDescriptorProto field numbers
_FIELD, _NESTED, _NESTED_ENUM, _ONEOF = 2, 3, 4, 8  # DescriptorProto field numbers
_VALUE, _METHOD = 2, 2  # EnumDescriptorProto.value, ServiceDescriptorProto.method


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    documented = {
        tuple(location.path)
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }
    missing: list[str] = []

    def need(path: tuple[int, ...], name: str) -> None:
        if path not in documented:
            missing.append(f"{file.name}: {name}")

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        need(path, f"{scope}{proto.name}")
        for i, value in enumerate(proto.value):
            need((*path, _VALUE, i), f"{scope}{proto.name}.{value.name}")

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, scope: str) -> None:
        if proto.options.map_entry:
            return
        name = f"{scope}{proto.name}"
        need(path, name)
        for i, field in enumerate(proto.field):
            need((*path, _FIELD, i), f"{name}.{field.name}")
        for i, oneof in enumerate(proto.oneof_decl):
            if not oneof.name.startswith("_"):  # synthetic oneofs of `optional` fields
                need((*path, _ONEOF, i), f"{name}.{oneof.name}")
        for i, nested in enumerate(proto.nested_type):
            message((*path, _NESTED, i), nested, f"{name}.")
        for i, nested_enum in enumerate(proto.enum_type):
            enum((*path, _NESTED_ENUM, i), nested_enum, f"{name}.")

    for i, msg in enumerate(file.message_type):
        message((_MESSAGE, i), msg, "")
    for i, top_enum in enumerate(file.enum_type):
        enum((_ENUM, i), top_enum, "")
    for i, service in enumerate(file.service):
        need((_SERVICE, i), service.name)
        for j, method in enumerate(service.method):
            need((_SERVICE, i, _METHOD, j), f"{service.name}.{method.name}")
    return missing


def test_every_element_of_every_contract_is_documented(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    missing = [name for file in contracts.file for name in _undocumented(file)]
    assert missing == []


def _upper_snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


def test_enums_are_prefixed_and_start_unspecified(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    for file in contracts.file:
        for proto in file.enum_type:
            prefix = _upper_snake(proto.name)
            assert proto.value[0].name == f"{prefix}_UNSPECIFIED"
            assert proto.value[0].number == 0
            assert all(value.name.startswith(f"{prefix}_") for value in proto.value), proto.name


def test_rpcs_follow_request_naming_and_list_pagination(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    messages = {
        f".{file.package}.{msg.name}": msg for file in contracts.file for msg in file.message_type
    }
    for file in contracts.file:
        for service in file.service:
            for method in service.method:
                request = messages[method.input_type]
                assert request.name == f"{method.name}Request"
                if not method.name.startswith("List") or method.name in UNPAGED_LISTS:
                    continue
                assert {"page_size", "page_token"} <= {f.name for f in request.field}
                response = messages[method.output_type]
                assert response.name == f"{method.name}Response"
                assert "next_page_token" in {f.name for f in response.field}


# --- Messages survive the wire and JSON


def _round_trips(message: Message) -> None:
    assert type(message).FromString(message.SerializeToString()) == message
    parsed = type(message)()
    json_format.Parse(json_format.MessageToJson(message), parsed)
    assert parsed == message


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def test_a_fine_tuned_version_keeps_its_artifacts_and_lineage() -> None:
    base = common_pb2.VersionRef(model="tiny-llama", version=1)
    version = registry_pb2.Version(
        model="tiny-llama-ft",
        number=3,
        kind=registry_pb2.VERSION_KIND_GGUF,
        state=registry_pb2.VERSION_STATE_READY,
        artifacts=[
            registry_pb2.Artifact(
                path="model-Q4_K_M.gguf",
                kind=registry_pb2.ARTIFACT_KIND_GGUF,
                sha256="ab" * 32,
                size_bytes=5 * 2**30,  # past 32 bits: sizes are int64
                media_type="application/octet-stream",
                gguf_file_type="Q4_K_M",
                annotations={"architecture": "llama"},
            ),
            registry_pb2.Artifact(
                path="Modelfile", kind=registry_pb2.ARTIFACT_KIND_OLLAMA_MODELFILE, sha256="cd" * 32
            ),
        ],
        lineage=registry_pb2.Lineage(
            parents=[
                registry_pb2.Parent(
                    version=common_pb2.VersionRef(model="tiny-llama-ft", version=2),
                    relation=registry_pb2.RELATION_CONVERTED_FROM,
                ),
                registry_pb2.Parent(version=base, relation=registry_pb2.RELATION_BASE),
            ],
            datasets=[registry_pb2.DatasetDigest(name="alpaca_demo", sha256="ef" * 32)],
            training_config=_struct({"learning_rate": 5e-3, "lora_target": "all", "bf16": False}),
            template="chatml",
            metrics={"train_loss": 1.5e-5, "perplexity": 12.25},
            tool_versions={"llama.cpp": "b6500"},
        ),
        labels={"quantization": "q4_k_m"},
        create_time=timestamp_pb2.Timestamp(seconds=1_795_000_000),
        aliases=["latest"],
    )
    _round_trips(version)
    as_json = json_format.MessageToDict(version)
    assert as_json["kind"] == "VERSION_KIND_GGUF"
    assert as_json["artifacts"][0]["sizeBytes"] == str(5 * 2**30)  # int64 travels as a string


def test_version_selector_and_compare_and_swap_keep_presence() -> None:
    by_alias = common_pb2.VersionRef(model="tiny-llama", alias="production")
    assert by_alias.WhichOneof("selector") == "alias"
    assert common_pb2.VersionRef(model="tiny-llama").WhichOneof("selector") is None  # = @latest

    create_only = registry_pb2.SetAliasRequest(
        model="m", alias="production", version=4, expected_version=0
    )
    unconditional = registry_pb2.SetAliasRequest(model="m", alias="production", version=4)
    assert create_only.HasField("expected_version")
    assert not unconditional.HasField("expected_version")
    _round_trips(create_only)
    assert registry_pb2.SetAliasRequest.FromString(create_only.SerializeToString()).HasField(
        "expected_version"
    )


def test_a_job_spec_carries_llamafactory_arguments_or_yaml() -> None:
    spec = trainer_pb2.JobSpec(
        base_model=common_pb2.VersionRef(model="tiny-llama", alias="latest"),
        datasets=[
            trainer_pb2.DatasetInput(
                name="alpaca_demo",
                source=common_pb2.ArtifactRef(
                    version=common_pb2.VersionRef(model="datasets", version=1),
                    path="alpaca_demo.json",
                ),
                format=trainer_pb2.DATASET_FORMAT_ALPACA,
            )
        ],
        stage=trainer_pb2.STAGE_SFT,
        finetuning_type=trainer_pb2.FINETUNING_TYPE_LORA,
        arguments=_struct({"learning_rate": 5e-3, "num_train_epochs": 150, "template": "chatml"}),
        merge=trainer_pb2.MergeOptions(export_size=2, export_device=trainer_pb2.EXPORT_DEVICE_CPU),
        output=trainer_pb2.OutputOptions(model="tiny-llama-ft"),
        metadata={"suffix": "demo"},
    )
    _round_trips(trainer_pb2.SubmitJobRequest(spec=spec, request_id="req-1"))
    assert spec.WhichOneof("config") == "arguments"
    # Struct numbers are doubles: the trainer must coerce integral values for int arguments.
    assert spec.arguments["num_train_epochs"] == 150.0

    spec.llamafactory_yaml = "stage: sft\nmodel_name_or_path: tiny-llama@latest\n"
    assert spec.WhichOneof("config") == "llamafactory_yaml"
    assert not spec.HasField("arguments")


def test_job_events_tell_missing_figures_from_zero() -> None:
    event = trainer_pb2.JobEvent(
        job_id="ftjob-1",
        sequence=41,
        level=trainer_pb2.EVENT_LEVEL_INFO,
        metrics=trainer_pb2.TrainingMetrics(step=40, total_steps=150, epoch=40.0, loss=0.0),
    )
    decoded = trainer_pb2.JobEvent.FromString(event.SerializeToString())
    assert decoded.WhichOneof("payload") == "metrics"
    assert decoded.metrics.HasField("loss")  # a loss of exactly 0 is still a reported loss
    assert not decoded.metrics.HasField("eval_loss")
    _round_trips(decoded)

    failed = trainer_pb2.JobEvent(
        job_id="ftjob-1",
        sequence=42,
        level=trainer_pb2.EVENT_LEVEL_ERROR,
        error=common_pb2.OperationError(
            code="invalid_dataset", message="record 17: 'output' is missing", field="datasets[0]"
        ),
    )
    assert failed.WhichOneof("payload") == "error"
    _round_trips(failed)


def test_one_conversion_request_asks_for_several_quantizations() -> None:
    request = converter_pb2.ConvertRequest(
        request_id="pipeline-7/gguf",
        spec=converter_pb2.ConversionSpec(
            model=converter_pb2.ModelConversion(
                source=common_pb2.VersionRef(model="tiny-llama-ft", version=2),
                outtype=converter_pb2.GGUF_OUTTYPE_F16,
                quantizations=[
                    converter_pb2.QuantizationTarget(type="Q4_K_M"),
                    converter_pb2.QuantizationTarget(type="Q8_0"),
                    converter_pb2.QuantizationTarget(
                        type="IQ3_XXS",
                        tensor_types=[
                            converter_pb2.TensorTypeOverride(pattern="attn_v", type="Q6_K")
                        ],
                    ),
                ],
                imatrix=converter_pb2.ImatrixOptions(
                    calibration_text_inline="The quick brown fox."
                ),
                modelfile=converter_pb2.ModelfileOptions(
                    system="You are terse.",
                    parameters=[converter_pb2.ModelfileParameter(name="temperature", value="0.2")],
                ),
            ),
            verification=converter_pb2.VerificationOptions(
                quality_metric=converter_pb2.QUALITY_METRIC_KL_DIVERGENCE
            ),
        ),
    )
    _round_trips(request)
    assert request.spec.WhichOneof("task") == "model"
    assert [t.type for t in request.spec.model.quantizations] == ["Q4_K_M", "Q8_0", "IQ3_XXS"]
    assert request.spec.model.imatrix.WhichOneof("source") == "calibration_text_inline"

    result = converter_pb2.ConversionEvent(
        conversion_id="cv-1",
        sequence=9,
        result=converter_pb2.ConversionResult(
            outputs=[
                converter_pb2.ConvertedOutput(
                    version=common_pb2.VersionRef(model="tiny-llama-ft", version=4),
                    file_type="Q4_K_M",
                    size_bytes=4_200_000,
                    sha256="12" * 32,
                    quality=converter_pb2.QualityFigure(
                        metric=converter_pb2.QUALITY_METRIC_KL_DIVERGENCE, value=0.031
                    ),
                )
            ],
            llama_cpp_version="b6500",
        ),
    )
    _round_trips(result)
    assert result.WhichOneof("payload") == "result"
