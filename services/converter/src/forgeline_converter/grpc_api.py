"""The ``forgeline.converter.v1.ConverterService`` servicer: protobuf in, `Converter` calls out.

Handlers stay thin; the kit's error interceptor turns a raised `ForgelineError` into its gRPC
status. A Convert stream that the client leaves only stops the stream: the conversion goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

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
        conversion = await self.converter.submit(request)
        async for event in self.converter.watch(conversion.id):
            yield event

    async def WatchConversion(  # noqa: N802 (generated name)
        self, request: pb.WatchConversionRequest, context: Context
    ) -> AsyncIterator[pb.ConversionEvent]:
        async for event in self.converter.watch(request.conversion_id, request.after_sequence):
            yield event

    async def GetConversion(  # noqa: N802 (generated name)
        self, request: pb.GetConversionRequest, context: Context
    ) -> pb.Conversion:
        return self.converter.get(request.conversion_id)

    async def ListConversions(  # noqa: N802 (generated name)
        self, request: pb.ListConversionsRequest, context: Context
    ) -> pb.ListConversionsResponse:
        return self.converter.list(request)

    async def CancelConversion(  # noqa: N802 (generated name)
        self, request: pb.CancelConversionRequest, context: Context
    ) -> pb.Conversion:
        return await self.converter.cancel(request.conversion_id)

    async def ListQuantizationTypes(  # noqa: N802 (generated name)
        self, request: pb.ListQuantizationTypesRequest, context: Context
    ) -> pb.ListQuantizationTypesResponse:
        return await self.converter.list_quantization_types()
