"""The converting stage: the trained model to GGUF files (f16 and the job's quantizations) and
its LoRA adapter to a GGUF adapter, on the converter.

Each conversion is keyed by a request id made from the job's, so running the stage again after
a restart re-attaches to the conversion already under way; what a conversion made is saved in
the job before the next one starts, so it is not converted again.
"""

from __future__ import annotations

from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.records import JobFailure, JobRecord, Stage
from forgeline_gateway.fine_tuning.stage_support import (
    StageFailedError,
    fully_trained_modules,
    job_error,
    ref_text,
    retry_message,
    rpc_stream,
    version_ref,
)
from forgeline_kit.errors import Unavailable
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc

__all__ = ["ConvertingStage"]


class ConvertingStage:
    """Converts what jobs trained to GGUF."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        converter: converter_pb2_grpc.ConverterServiceAsyncStub,
        conversions: dict[str, str],
    ) -> None:
        """
        Args:
            conversions: where the converter's id of each job's conversion in progress is
                recorded, for cancelling the job to stop it (`JobFinisher`).
        """
        self.journal = journal
        self.converter = converter
        self.conversions = conversions

    async def run(self, job: JobRecord) -> JobRecord:
        request = job.request
        source = job.outputs.merged or job.outputs.trained_model
        if source is None:
            raise StageFailedError(
                JobFailure(
                    code="conversion_failed",
                    message="training registered no full model to convert; do not skip the merge",
                )
            )
        outputs = job.outputs
        if not outputs.gguf:
            spec = converter_pb2.ConversionSpec(
                model=converter_pb2.ModelConversion(
                    source=version_ref(source),
                    outtype=converter_pb2.GGUF_OUTTYPE_F16,
                    register_outtype=True,
                    quantizations=[
                        converter_pb2.QuantizationTarget(type=q) for q in request.quantizations
                    ],
                ),
                output=converter_pb2.OutputOptions(labels={"fine_tuning_job": job.id}),
                # KL divergence measures perplexity too, and the share of unchanged top tokens:
                # the quality card's line for each quantization.
                verification=converter_pb2.VerificationOptions(
                    quality_metric=converter_pb2.QUALITY_METRIC_KL_DIVERGENCE
                ),
            )
            job, result = await self._conversion(job, spec, job.request_id("gguf"))
            gguf = {
                output.file_type.lower(): ref_text(output.version)
                for output in result.outputs
                if not output.adapter
            }
            outputs = outputs.model_copy(update={"gguf": gguf})
            job = await self.journal.save(job, outputs=outputs)
            sizes = ", ".join(sorted(gguf))
            await self.journal.event(job, "info", f"Converted to GGUF: {sizes}")
        full_modules = fully_trained_modules(job.request)
        if outputs.adapter and not outputs.gguf_adapter and full_modules:
            await self.journal.event(
                job,
                "info",
                f"The adapter also trains {full_modules} in full (additional_target); llama.cpp's "
                "LoRA format holds only low-rank tensors, so it is served merged, not as a GGUF "
                "adapter",
            )
        elif outputs.adapter and not outputs.gguf_adapter:
            spec = converter_pb2.ConversionSpec(
                adapter=converter_pb2.AdapterConversion(
                    adapter=version_ref(outputs.adapter),
                    base=version_ref(job.base_version),
                    # llama.cpp applies an adapter as B·(A·x) with A·x cast to the adapter's type:
                    # in F16 a strongly trained adapter overflows it (NaN logits) where the merged
                    # weights do not. F32 costs a few hundred KB on a LoRA.
                    outtype=converter_pb2.GGUF_OUTTYPE_F32,
                ),
                output=converter_pb2.OutputOptions(labels={"fine_tuning_job": job.id}),
            )
            job, result = await self._conversion(job, spec, job.request_id("lora"))
            adapters = [ref_text(o.version) for o in result.outputs if o.adapter]
            outputs = outputs.model_copy(update={"gguf_adapter": adapters[0] if adapters else None})
            job = await self.journal.save(job, outputs=outputs)
            await self.journal.event(job, "info", "Converted the LoRA adapter to a GGUF adapter")
        evaluated = job.request.evaluation is not None
        return await self.journal.save(
            job, stage=Stage.EVALUATING if evaluated else Stage.DEPLOYING
        )

    async def _conversion(
        self, job: JobRecord, spec: converter_pb2.ConversionSpec, request_id: str
    ) -> tuple[JobRecord, converter_pb2.ConversionResult]:
        """Run (or re-attach to) one conversion; the job (with the converter's retries
        mirrored as events) and the result, or `StageFailedError`.

        A conversion that failed because the converter could not reach the registry is run
        afresh (a new request id) by the pipeline's retries: `Unavailable` is raised."""
        stream = self.converter.Convert(
            converter_pb2.ConvertRequest(spec=spec, request_id=request_id)
        )
        event: converter_pb2.ConversionEvent
        async for event in rpc_stream(stream):
            kind = event.WhichOneof("payload")
            if kind == "accepted":
                self.conversions[job.id] = event.accepted.id
            elif kind == "result":
                return job, event.result
            elif kind == "retry" and event.sequence > job.conversion_sequences.get(request_id, 0):
                await self.journal.event(job, "warn", retry_message(event.retry))
                sequences = job.conversion_sequences | {request_id: event.sequence}
                job = await self.journal.save(job, conversion_sequences=sequences)
            elif kind == "error":
                if (await self.journal.get(job.id)).cancel_requested:
                    break
                if event.error.code == "registry_unavailable":
                    await self.journal.save(job, retries=job.retries + 1)
                    raise Unavailable(f"the conversion failed: {event.error.message}")
                raise StageFailedError(job_error(event.error, "conversion_failed"))
        conversion_id = self.conversions.get(job.id, "")
        if conversion_id:
            conversion = await self.converter.GetConversion(
                converter_pb2.GetConversionRequest(conversion_id=conversion_id)
            )
            if conversion.state == converter_pb2.CONVERSION_STATE_SUCCEEDED:
                return job, conversion.result
        raise ConnectionError("the conversion stream ended without a result")
