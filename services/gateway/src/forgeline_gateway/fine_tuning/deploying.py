"""The deploying stage, the pipeline's last: the job's model served under its `fine_tuned_model`
name, as an adapter on a base deployment or merged (`serving_choice.py`), and the registry alias
`deploy.alias` moved to the GGUF it serves.

A choice once recorded in the job is kept, and deployments are keyed by their names
(`job_deployments.py`), so running the stage again after a restart finds what it had already
deployed instead of deploying it twice.
"""

from __future__ import annotations

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec, ModelMetadata
from forgeline_gateway.fine_tuning.finishing import JobFinisher
from forgeline_gateway.fine_tuning.job_deployments import create_deployment, quality_scores
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.records import JobFailure, JobRecord, Stage
from forgeline_gateway.fine_tuning.serving_choice import ServingChoice
from forgeline_gateway.fine_tuning.stage_support import (
    INTERACTIVE_TIMEOUT,
    StageFailedError,
    version_ref,
)
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from forgeline_proto.registry.v1 import registry_pb2
from forgeline_registry_client.client import RegistryClient

__all__ = ["DeployingStage"]


class DeployingStage:
    """Serves what jobs made, then ends them (succeeded)."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        registry: RegistryClient,
        deployments: DeploymentManager,
        serving: ServingChoice,
        finisher: JobFinisher,
    ) -> None:
        self.journal = journal
        self.registry = registry
        self.deployments = deployments
        self.serving = serving
        self.finisher = finisher

    async def run(self, job: JobRecord) -> JobRecord:
        options = job.request.deploy
        if options.enabled and job.outputs.gate == "missed":
            return await self.finisher.finish(job, Stage.SUCCEEDED, None)
        if options.enabled:
            quantization = options.quantization.lower()
            version = job.outputs.gguf.get(quantization)
            if version is None:
                raise StageFailedError(
                    JobFailure(
                        code="deployment_failed",
                        message=f"no {quantization} GGUF was made to deploy (made: "
                        f"{sorted(job.outputs.gguf)})",
                    )
                )
            if job.outputs.served_as is None:
                job = await self.serving.choose(job, version, quantization)
            if job.outputs.served_as == "merged":
                await create_deployment(
                    self.deployments,
                    LlamaCppSpec(
                        name=job.fine_tuned_model,
                        backend="llamacpp",
                        registry_gguf=version,
                        context_size=options.context_size,
                        metadata=ModelMetadata(
                            base=job.request.model,
                            version=version,
                            quantization=quantization,
                            quality=quality_scores(job, quantization),
                        ),
                    ),
                )
            outputs = job.outputs.model_copy(update={"deployment": job.fine_tuned_model})
            job = await self.journal.save(job, outputs=outputs)
            if options.alias:
                await self._move_alias(job, options.alias, version)
        return await self.finisher.finish(job, Stage.SUCCEEDED, None)

    async def _move_alias(self, job: JobRecord, alias: str, reference: str) -> None:
        """Point the registry alias `alias` of the served GGUF's model at its version."""
        ref = version_ref(reference)
        try:
            await self.registry.set_alias(
                registry_pb2.SetAliasRequest(model=ref.model, alias=alias, version=ref.version),
                deadline=INTERACTIVE_TIMEOUT,
            )
        except (InvalidArgument, FailedPrecondition, NotFound) as error:
            await self.journal.event(
                job, "warn", f"The alias '{alias}' was not moved to {reference}: {error.message}"
            )
            return
        await self.journal.event(
            job, "info", f"Moved the registry alias {ref.model}@{alias} to {reference}"
        )
