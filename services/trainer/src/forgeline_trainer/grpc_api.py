"""The ``forgeline.trainer.v1.TrainerService`` servicer: protobuf in, `Trainer` calls, out.

Handlers stay thin; the kit's error interceptor turns a raised ``ForgelineError`` into its
gRPC status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_proto.trainer.v1 import trainer_pb2_grpc
from forgeline_trainer.service import Trainer

__all__ = ["TrainerServicer"]

Context = grpc.aio.ServicerContext[object, object]


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Serves a `Trainer` over gRPC."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Context) -> pb.Job:  # noqa: N802
        return await self.trainer.submit(request.spec, request.request_id, request.validate_only)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:  # noqa: N802
        return self.trainer.get(request.job_id)

    async def ListJobs(  # noqa: N802 (generated name)
        self, request: pb.ListJobsRequest, context: Context
    ) -> pb.ListJobsResponse:
        jobs, token = self.trainer.list_jobs(
            request.page_size, request.page_token, list(request.states), dict(request.metadata)
        )
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:  # noqa: N802
        return self.trainer.cancel(request.job_id)

    async def WatchJob(  # noqa: N802 (generated name)
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.JobEvent]:
        events = self.trainer.watch(request.job_id, request.after_sequence, list(request.kinds))
        async for event in events:
            yield event

    async def ListJobEvents(  # noqa: N802 (generated name)
        self, request: pb.ListJobEventsRequest, context: Context
    ) -> pb.ListJobEventsResponse:
        events, more = self.trainer.list_events(
            request.job_id,
            request.page_size,
            request.after_sequence,
            request.descending,
            list(request.kinds),
        )
        return pb.ListJobEventsResponse(events=events, has_more=more)

    async def ListCheckpoints(  # noqa: N802 (generated name)
        self, request: pb.ListCheckpointsRequest, context: Context
    ) -> pb.ListCheckpointsResponse:
        checkpoints, token = self.trainer.list_checkpoints(
            request.job_id, request.page_size, request.page_token
        )
        return pb.ListCheckpointsResponse(checkpoints=checkpoints, next_page_token=token)
