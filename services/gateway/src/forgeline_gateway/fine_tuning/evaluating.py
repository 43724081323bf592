"""The evaluating stage: the job's quality card, and its deployment gate (`deploy.require`).

The base model and each artifact the job made (its adapter on the base's deployment, each GGUF
file on a deployment made for the evaluation and removed after) are scored on the job's own
validation (else training) rows by the Evals API (`quality.py`). Each artifact's scores become
labels of its registry version, so they travel with it; a gate that is missed keeps the job
from being deployed, not from succeeding.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.protobuf import field_mask_pb2

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec
from forgeline_gateway.fine_tuning.job_deployments import (
    JobSpec,
    adapter_version,
    create_deployment,
)
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.quality import QualityCheck, check_requirement, quality_labels
from forgeline_gateway.fine_tuning.records import ArtifactQuality, EvalSettings, JobRecord, Stage
from forgeline_gateway.fine_tuning.serving_choice import ServingChoice
from forgeline_gateway.fine_tuning.stage_support import (
    INTERACTIVE_TIMEOUT,
    StageFailedError,
    version_ref,
)
from forgeline_kit.errors import NotFound
from forgeline_proto.registry.v1 import registry_pb2
from forgeline_registry_client.client import RegistryClient
from forgeline_registry_client.figures import CONVERSION_FIGURES

__all__ = ["EvaluatingStage"]


class EvaluatingStage:
    """Scores what jobs made and checks their deployment gate."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        registry: RegistryClient,
        deployments: DeploymentManager,
        serving: ServingChoice,
        quality: QualityCheck | None = None,
    ) -> None:
        """
        Args:
            serving: finds the base deployment an adapter is scored on, as it would be served.
            quality: the Evals API runs a job's evaluation on; without it no job is evaluated
                (and `deploy.require` cannot be met).
        """
        self.journal = journal
        self.registry = registry
        self.deployments = deployments
        self.serving = serving
        self.quality = quality

    async def run(self, job: JobRecord) -> JobRecord:
        """Score the base and every artifact (the quality card), then check `deploy.require`."""
        request = job.request
        options = request.evaluation
        assert options is not None
        quantization = request.deploy.quantization.lower()
        card: list[ArtifactQuality] = []
        if self.quality is None:
            await self.journal.event(job, "warn", "Not evaluated: this gateway has no Evals API")
        else:
            file_id = request.validation_file or request.training_file
            rows = await self.quality.rows(file_id, options.max_rows)
            source = "validation" if request.validation_file else "training"
            if not rows:
                await self.journal.event(
                    job,
                    "warn",
                    f"Not evaluated: the {source} file has no prompts with an answer to score "
                    "against (preference pairs and pre-training text have none)",
                )
            else:
                await self.journal.event(
                    job,
                    "info",
                    f"Evaluating the base model and each artifact on {len(rows)} rows of the "
                    f"{source} file ({', '.join(options.graders)})",
                )
                card = await self.quality_card(job, rows, options, quantization)
        outputs = job.outputs.model_copy(update={"quality": card})
        require = request.deploy.require
        if require is not None and request.deploy.enabled:
            met, reason = check_requirement(require, card, quantization)
            outputs = outputs.model_copy(
                update={"gate": "met" if met else "missed", "gate_reason": reason}
            )
            await self.journal.event(
                job,
                "info" if met else "warn",
                f"deploy.require met: {reason}"
                if met
                else f"deploy.require not met, so nothing is deployed: {reason}",
                data={"gate": "met" if met else "missed"},
            )
        return await self.journal.save(job, outputs=outputs, stage=Stage.DEPLOYING)

    async def quality_card(
        self, job: JobRecord, rows: list[dict[str, Any]], options: EvalSettings, quantization: str
    ) -> list[ArtifactQuality]:
        """Each artifact's line: the base on its deployment, the adapter on the base's
        deployment (`ServingChoice.adapter_spec`: on vLLM the HF/PEFT one) and each GGUF file on
        a deployment made for the evaluation (removed after)."""
        assert self.quality is not None
        quality = self.quality
        eval_id = await quality.open_eval(job.id, options)
        outputs = job.outputs
        base, no_base = await self.serving.base_deployment(job, quantization)
        candidates: list[tuple[str, str | None, JobSpec | None]] = []
        if base is not None:
            spec = self.deployments.get(base).spec
            version = (
                getattr(spec, "registry_gguf", None)
                or getattr(spec, "registry_model", None)
                or spec.metadata.version
            )
            candidates.append(("base", version, None))
            if outputs.gguf_adapter:
                adapter = self.serving.adapter_spec(job, base, f"{job.id}:eval-adapter")
                candidates.append(("adapter", adapter_version(adapter), adapter))
        for file_type, version in outputs.gguf.items():
            candidates.append(
                (
                    file_type,
                    version,
                    LlamaCppSpec(
                        name=f"{job.id}:eval-{file_type}",
                        backend="llamacpp",
                        registry_gguf=version,
                        context_size=job.request.deploy.context_size,
                    ),
                )
            )
        card: list[ArtifactQuality] = []
        if base is None:
            card.append(ArtifactQuality(artifact="base", error=no_base))
        for artifact, version, spec in candidates:
            model = base if spec is None else spec.name
            assert model is not None
            try:
                if spec is not None:
                    await create_deployment(self.deployments, spec)
                line = await quality.score(
                    eval_id,
                    artifact=artifact,
                    version=version,
                    model=model,
                    rows=rows,
                    options=options,
                )
            except StageFailedError as failure:
                line = ArtifactQuality(
                    artifact=artifact, version=version, error=failure.error.message
                )
            finally:
                if spec is not None:
                    with contextlib.suppress(NotFound):
                        await self.deployments.delete(spec.name)
            if spec is not None and version and artifact != "adapter":
                line = line.model_copy(update={"conversion": await self._measured(version)})
            card.append(line)
            await self.journal.event(
                job,
                "info" if line.error is None else "warn",
                f"Quality of {line.describe()}",
                data={"quality": line.model_dump(mode="json")},
            )
            if line.scores and version and artifact != "base":
                await self._label_quality(version, line)
        return card

    async def _measured(self, reference: str) -> dict[str, float]:
        """What the converter measured on the GGUF version `reference` (its lineage metrics
        that `forgeline_registry_client.figures` names); empty when it is out of reach."""
        ref = version_ref(reference)
        try:
            version = await self.registry.get_version(
                registry_pb2.GetVersionRequest(
                    model=ref.model, version=ref.version, view=registry_pb2.VERSION_VIEW_BASIC
                ),
                deadline=INTERACTIVE_TIMEOUT,
            )
        except NotFound:
            return {}
        metrics = version.lineage.metrics
        return {name: metrics[name] for name in CONVERSION_FIGURES if name in metrics}

    async def _label_quality(self, reference: str, line: ArtifactQuality) -> None:
        """Record `line`'s scores as labels of its registry version (``quality.rouge_l``)."""
        ref = version_ref(reference)
        version = await self.registry.get_version(
            registry_pb2.GetVersionRequest(
                model=ref.model, version=ref.version, view=registry_pb2.VERSION_VIEW_BASIC
            ),
            deadline=INTERACTIVE_TIMEOUT,
        )
        labels = dict(version.labels) | quality_labels(line)
        await self.registry.update_version(
            registry_pb2.UpdateVersionRequest(
                version=registry_pb2.Version(model=ref.model, number=ref.version, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            deadline=INTERACTIVE_TIMEOUT,
        )
