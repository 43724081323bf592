"""The ``forgeline.converter.v1.ConverterService`` servicer: protobuf in, `Converter` calls out.

Handlers stay thin: each translates its request into the converter's own types (`convert`), calls
the `Converter`, and translates the answer back; the kit's error interceptor turns a raised
`ForgelineError` into its gRPC status. A Convert stream that the client leaves only stops the
stream: the conversion goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from forgeline_converter.convert import (
    conversion_to_pb,
    event_to_pb,
    page_to_pb,
    quantization_types_to_pb,
    spec_from_pb,
    state_from_pb,
    version_ref_from_pb,
)
from forgeline_converter.service import Converter
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.converter.v1 import converter_pb2_grpc

__all__ = ["ConverterServicer"]

Context = grpc.aio.ServicerContext[object, object]


class ConverterServicer(converter_pb2_grpc.ConverterServiceServicer):
    """Serves a `Converter` over gRPC."""

    def __init__(self, converter: Converter) -> None:
        self.converter = converter

    async def Convert(  # noqa: N802 (generated name)
        self, request: pb.ConvertRequest, context: Context
    ) -> AsyncIterator[pb.ConversionEvent]:
        conversion = await self.converter.submit(spec_from_pb(request.spec), request.request_id)
        async for event in self.converter.watch(conversion.id):
            yield event_to_pb(event)

    async def WatchConversion(  # noqa: N802 (generated name)
        self, request: pb.WatchConversionRequest, context: Context
    ) -> AsyncIterator[pb.ConversionEvent]:
        async for event in self.converter.watch(request.conversion_id, request.after_sequence):
            yield event_to_pb(event)

    async def GetConversion(  # noqa: N802 (generated name)
        self, request: pb.GetConversionRequest, context: Context
    ) -> pb.Conversion:
        return conversion_to_pb(self.converter.get(request.conversion_id))

    async def ListConversions(  # noqa: N802 (generated name)
        self, request: pb.ListConversionsRequest, context: Context
    ) -> pb.ListConversionsResponse:
        page = self.converter.list(
            page_size=request.page_size,
            page_token=request.page_token,
            states=[
                state_from_pb(state, f"states[{index}]")
                for index, state in enumerate(request.states)
            ],
            source=version_ref_from_pb(request.source) if request.HasField("source") else None,
        )
        return page_to_pb(page)

    async def CancelConversion(  # noqa: N802 (generated name)
        self, request: pb.CancelConversionRequest, context: Context
    ) -> pb.Conversion:
        return conversion_to_pb(await self.converter.cancel(request.conversion_id))

    async def ListQuantizationTypes(  # noqa: N802 (generated name)
        self, request: pb.ListQuantizationTypesRequest, context: Context
    ) -> pb.ListQuantizationTypesResponse:
        return quantization_types_to_pb(await self.converter.list_quantization_types())
