"""The servicer's translation of requests into the converter's types: what a request leaves
unset stays unset (the validation fills in defaults), an enum number this build does not know
is INVALID_ARGUMENT naming the field, and a spec reads back as the message it came from."""

from __future__ import annotations

import pytest

from forgeline_converter.conversions import (
    AdapterConversion,
    ConversionSpec,
    ConversionState,
    ImatrixOptions,
    ModelConversion,
    VerificationOptions,
    VersionRef,
)
from forgeline_converter.convert import spec_from_pb, spec_to_pb, state_from_pb
from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb


def test_what_a_request_leaves_unset_stays_unset() -> None:
    spec = spec_from_pb(
        pb.ConversionSpec(
            model=pb.ModelConversion(
                source=common_pb2.VersionRef(model="acme/base", alias="prod"),
                imatrix=pb.ImatrixOptions(chunks=2),
            )
        )
    )
    assert spec == ConversionSpec(
        task=ModelConversion(
            source=VersionRef(model="acme/base", alias="prod"),
            imatrix=ImatrixOptions(chunks=2),
        )
    )
    assert isinstance(spec.task, ModelConversion)
    assert spec.task.outtype is None
    assert spec.task.imatrix is not None
    assert spec.task.imatrix.source is None
    assert spec.verification == VerificationOptions()
    assert spec_from_pb(pb.ConversionSpec()).task is None


def test_an_inline_calibration_text_is_set_even_when_empty() -> None:
    options = pb.ImatrixOptions(calibration_text_inline="")
    spec = spec_from_pb(
        pb.ConversionSpec(
            model=pb.ModelConversion(source=common_pb2.VersionRef(model="m"), imatrix=options)
        )
    )
    assert isinstance(spec.task, ModelConversion)
    assert spec.task.imatrix is not None
    assert spec.task.imatrix.source == "calibration_text_inline"


@pytest.mark.parametrize(
    "message",
    [
        pb.ConversionSpec(
            model=pb.ModelConversion(
                source=common_pb2.VersionRef(model="acme/base", version=0),
                outtype=pb.GGUF_OUTTYPE_Q8_0,
                quantizations=[pb.QuantizationTarget(type="q4_k_m", leave_output_tensor=True)],
            ),
            output=pb.OutputOptions(labels={"a": "b"}),
        ),
        pb.ConversionSpec(
            adapter=pb.AdapterConversion(adapter=common_pb2.VersionRef(model="acme/lora")),
            verification=pb.VerificationOptions(
                skip_smoke_test=True, quality_metric=pb.QUALITY_METRIC_NONE
            ),
        ),
    ],
)
def test_a_spec_reads_back_as_the_message_it_came_from(message: pb.ConversionSpec) -> None:
    assert spec_to_pb(spec_from_pb(message)) == message


def test_an_adapter_spec_keeps_what_it_names() -> None:
    spec = spec_from_pb(
        pb.ConversionSpec(
            adapter=pb.AdapterConversion(
                adapter=common_pb2.VersionRef(model="acme/lora", version=2),
                base_gguf=common_pb2.VersionRef(model="acme/base-gguf"),
            )
        )
    )
    assert spec.task == AdapterConversion(
        adapter=VersionRef(model="acme/lora", version=2),
        base_gguf=VersionRef(model="acme/base-gguf"),
    )
    assert spec.source == VersionRef(model="acme/lora", version=2)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            pb.ConversionSpec(
                model=pb.ModelConversion(outtype=99)  # type: ignore[arg-type]
            ),
            "spec.model.outtype",
        ),
        (
            pb.ConversionSpec(
                adapter=pb.AdapterConversion(outtype=42)  # type: ignore[arg-type]
            ),
            "spec.adapter.outtype",
        ),
        (
            pb.ConversionSpec(
                verification=pb.VerificationOptions(quality_metric=7)  # type: ignore[arg-type]
            ),
            "spec.verification.quality_metric",
        ),
    ],
)
def test_an_unknown_enum_number_is_an_invalid_argument(
    message: pb.ConversionSpec, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        spec_from_pb(message)
    assert caught.value.field == field


def test_a_listing_filter_names_a_known_state() -> None:
    assert state_from_pb(pb.CONVERSION_STATE_COMPUTING_IMATRIX, "states[0]") == (
        ConversionState.COMPUTING_IMATRIX
    )
    for value in (pb.CONVERSION_STATE_UNSPECIFIED, 64):
        with pytest.raises(InvalidArgument) as caught:
            state_from_pb(value, "states[1]")  # type: ignore[arg-type]
        assert caught.value.field == "states[1]"
