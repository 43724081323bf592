"""The deployments a fine-tuning job makes, and their names: its model (merged or as an adapter),
those made only to evaluate an artifact, and the merged GGUF an adapter check compares with.

A job's deployments are keyed by their names, never by an id the gateway hands out, so a stage
run again after a restart finds what it had already deployed instead of deploying it twice.
"""

from __future__ import annotations

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.fine_tuning.records import JobFailure, JobRecord
from forgeline_gateway.fine_tuning.stage_support import StageFailedError
from forgeline_kit.errors import AlreadyExists, DeadlineExceeded, ForgelineError, Unavailable

__all__ = [
    "JobSpec",
    "adapter_check_name",
    "adapter_version",
    "create_deployment",
    "quality_scores",
]

#: The deployments a job makes: its GGUF files, and its adapter on a base of any of the three
#: backends (the GGUF adapter on llama.cpp or Ollama, the HF/PEFT adapter on vLLM).
JobSpec = LlamaCppSpec | OllamaSpec | VllmSpec


async def create_deployment(deployments: DeploymentManager, spec: JobSpec) -> bool:
    """Deploy `spec`; False when a deployment of its name already exists (placed before a
    restart: the deployments of a job are keyed by their names)."""
    try:
        await deployments.create(spec)
    except AlreadyExists:
        return False
    except (Unavailable, DeadlineExceeded):
        raise  # the registry out of reach: the pipeline's retries run the stage again
    except ForgelineError as error:
        raise StageFailedError(
            JobFailure(code="deployment_failed", message=error.message)
        ) from error
    return True


def adapter_version(spec: JobSpec) -> str | None:
    """The registry version of the adapter that the adapter deployment `spec` serves."""
    if isinstance(spec, VllmSpec):
        return spec.registry_adapter
    return spec.registry_lora[0] if spec.registry_lora else None


def adapter_check_name(job: JobRecord) -> str:
    """The deployment of the merged GGUF an adapter check compares the adapter with."""
    return f"{job.id}:adapter-check-merged"


def quality_scores(job: JobRecord, artifact: str) -> dict[str, float] | None:
    """The quality card's scores of `artifact`, for the deployment's metadata; None unscored."""
    line = next((q for q in job.outputs.quality if q.artifact == artifact), None)
    return dict(line.scores) if line is not None and line.scores else None
