"""Whether a fine-tuned model is served as an adapter on a base deployment or merged, and the
adapter's deployment when it is (`deploy.serve`).

An adapter shares one process and one copy of the base with every other fine-tune of it, so it
is preferred, but only on evidence that it holds the merged model's quality: the job's quality
card where it scored both (`quality.adapter_verdict`), else greedy answers of the adapter and the
merged GGUF compared on the job's own prompts (`agreement.py`). The base is a ready deployment of
the job's base version on llama.cpp, Ollama (both with the GGUF adapter) or vLLM (with the
trainer's HF/PEFT adapter, loaded as it is).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec, ModelMetadata, OllamaSpec, VllmSpec
from forgeline_gateway.fine_tuning.agreement import PROMPTS, Agreement, Messages, compare
from forgeline_gateway.fine_tuning.job_deployments import (
    JobSpec,
    adapter_check_name,
    adapter_version,
    create_deployment,
    quality_scores,
)
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.quality import adapter_verdict
from forgeline_gateway.fine_tuning.records import JobRecord
from forgeline_gateway.fine_tuning.stage_support import (
    INTERACTIVE_TIMEOUT,
    StageFailedError,
    fully_trained_modules,
    ref_text,
)
from forgeline_kit.errors import InvalidArgument, NotFound
from forgeline_proto.registry.v1 import registry_pb2
from forgeline_registry_client.client import RegistryClient

__all__ = ["AdapterCheck", "ServingChoice"]


class AdapterCheck(Protocol):
    """What the check of an adapter against its merged model reads and asks
    (`fine_tuning/answers.py`)."""

    async def prompts(self, file_id: str, limit: int) -> list[Messages]:
        """Up to `limit` distinct prompts of the uploaded file `file_id`."""
        ...

    async def answer(self, model: str, messages: Messages) -> str:
        """The deployment `model`'s greedy answer to `messages`."""
        ...


class ServingChoice:
    """Chooses how each job's model is served, and deploys its adapter on a base."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        registry: RegistryClient,
        deployments: DeploymentManager,
        adapter_check: AdapterCheck | None = None,
    ) -> None:
        """
        Args:
            adapter_check: prompts and answers for checking an adapter against its merged
                model; without it a job whose quality card has no verdict is served merged.
        """
        self.journal = journal
        self.registry = registry
        self.deployments = deployments
        self.adapter_check = adapter_check

    async def choose(self, job: JobRecord, merged: str, quantization: str) -> JobRecord:
        """Decide how the job's model is served (`deploy.serve`, on evidence), and record it.
        Served as an adapter, its deployment is placed here; merged, it is placed by the
        caller.

        The evidence is the job's quality card where it scored both the adapter and the merged
        GGUF (`adapter_verdict`); else the greedy-agreement check (`agreement.py`)."""
        options = job.request.deploy
        outputs = job.outputs
        base: str | None = None
        reason: str | None
        if options.serve == "merged":
            reason = "deploy.serve is 'merged'"
        elif not outputs.gguf_adapter:
            full = fully_trained_modules(job.request)
            reason = (
                f"its adapter trains {full} in full (additional_target), which a GGUF adapter "
                "cannot hold"
                if outputs.adapter and full
                else f"the job made no GGUF adapter (finetuning_type {job.request.finetuning_type})"
            )
        else:
            base, reason = await self.base_deployment(job, quantization)
        agreement: Agreement | None = None
        evidence = ""
        if base is not None:
            verdict = adapter_verdict(outputs.quality, quantization)
            if verdict is not None:
                holds, evidence = verdict
                reason = (
                    await self._place_adapter(job, base)
                    if holds
                    else f"the adapter does not hold the merged model's quality: {evidence}"
                )
            elif self.adapter_check is None:
                reason = "this gateway cannot compare the adapter's answers with the merged model's"
            else:
                agreement, reason = await self._check_adapter(job, base, merged, quantization)
                evidence = agreement.describe() if agreement is not None else ""
        if base is not None and reason is None:
            job = await self.journal.save(
                job,
                outputs=outputs.model_copy(
                    update={
                        "served_as": "adapter",
                        "base_deployment": base,
                        "agreement": agreement.text if agreement is not None else None,
                    }
                ),
            )
            await self.journal.event(
                job,
                "info",
                f"Serving {job.fine_tuned_model} as an adapter on the base deployment "
                f"'{base}' (one process and one copy of the base for all its fine-tunes): "
                f"{evidence}",
            )
            return job
        job = await self.journal.save(
            job,
            outputs=outputs.model_copy(
                update={
                    "served_as": "merged",
                    "agreement": agreement.text if agreement is not None else None,
                }
            ),
        )
        await self.journal.event(
            job,
            "info",
            f"Serving {job.fine_tuned_model} merged (its {quantization} GGUF on a process of "
            f"its own), not as an adapter: {reason}",
        )
        return job

    async def base_deployment(
        self, job: JobRecord, quantization: str
    ) -> tuple[str | None, str | None]:
        """The ready deployment of the job's base version that its adapter can be served on,
        or None and why there is none. Preferred in this order: llama.cpp (processes the gateway
        starts) or Ollama serving a GGUF converted from the base version (by its
        `registry_gguf` or `metadata.version`), one of `quantization` first; then a vLLM
        container the gateway started from the base version itself (`registry_model`) with
        `enable_lora`, on which the job's HF/PEFT adapter is loaded (no conversion); the
        oldest of equals."""
        found: list[tuple[int, bool, int, str]] = []
        for state in self.deployments.list():
            spec = state.spec
            if isinstance(spec, VllmSpec):
                if (
                    state.ready
                    and job.outputs.adapter
                    and spec.base is None
                    and spec.enable_lora
                    and spec.registry_model == job.base_version
                    and spec.name != job.fine_tuned_model
                ):
                    found.append((2, False, state.created, spec.name))
                continue
            if (
                not state.ready
                or not isinstance(spec, LlamaCppSpec | OllamaSpec)
                or spec.base is not None
                or spec.embeddings
                or (isinstance(spec, LlamaCppSpec) and spec.urls)
                or spec.name == job.fine_tuned_model
            ):
                continue
            version = spec.registry_gguf or spec.metadata.version
            if version and await self._converted_from(version, job.base_version):
                other = (spec.metadata.quantization or "").lower() != quantization
                rank = 1 if isinstance(spec, OllamaSpec) else 0
                found.append((rank, other, state.created, spec.name))
        if found:
            return min(found)[3], None
        return None, (
            f"no llama.cpp or Ollama deployment serves a GGUF of the base model "
            f"{job.base_version} (one whose registry_gguf or metadata.version names a GGUF "
            f"converted from it), and no vLLM deployment serves it with enable_lora (one whose "
            f"registry_model is {job.base_version}); deploy one (forgeline deploy "
            f"{job.base_version} --backend llamacpp --quantization {quantization}; or on vLLM, "
            f"POST /v1/deployments with backend vllm, registry_model {job.base_version} and "
            "enable_lora true) to serve fine-tunes on it as adapters"
        )

    async def _converted_from(self, reference: str, base: str) -> bool:
        """Whether the registry version `reference` was converted from the version `base`."""
        model, _, number = reference.rpartition(":")
        if not model or not number.isdigit():
            return False
        try:
            version = await self.registry.get_version(
                registry_pb2.GetVersionRequest(
                    model=model, version=int(number), view=registry_pb2.VERSION_VIEW_BASIC
                ),
                deadline=INTERACTIVE_TIMEOUT,
            )
        except (NotFound, InvalidArgument):
            return False
        return any(
            parent.relation == registry_pb2.RELATION_CONVERTED_FROM
            and ref_text(parent.version) == base
            for parent in version.lineage.parents
        )

    async def _place_adapter(self, job: JobRecord, base: str) -> str | None:
        """Deploy the job's adapter on `base` under the job's model name (`adapter_spec`):
        None once it is served there, else why it is not."""
        name = job.fine_tuned_model
        request = job.request
        base_spec = self.deployments.get(base).spec
        adapter = self.adapter_spec(job, base, name)
        metadata = ModelMetadata(
            base=request.model,
            version=adapter_version(adapter),
            quantization=base_spec.metadata.quantization,
            quality=quality_scores(job, "adapter"),
        )
        adapter = adapter.model_copy(update={"metadata": metadata})
        try:
            if not await create_deployment(self.deployments, adapter):
                existing = self.deployments.get(name).spec
                if getattr(existing, "base", None) != base:
                    return f"{name} is already deployed otherwise"
        except StageFailedError as failure:
            return f"the adapter could not be served on '{base}': {failure.error.message}"
        return None

    def adapter_spec(self, job: JobRecord, base: str, name: str) -> JobSpec:
        """The adapter deployment `name` of the job's adapter on the deployment `base`, for its
        backend: the GGUF adapter loaded into the base's llama-server processes, or an Ollama
        model made from the base's with it (`ADAPTER`); on vLLM the HF/PEFT adapter the trainer
        registered, loaded into the base's running server (vLLM serves PEFT adapters as they
        are, so nothing is converted)."""
        base_spec = self.deployments.get(base).spec
        if isinstance(base_spec, VllmSpec):
            assert job.outputs.adapter is not None  # `base_deployment` asks for it
            return VllmSpec(
                name=name, backend="vllm", base=base, registry_adapter=job.outputs.adapter
            )
        assert job.outputs.gguf_adapter is not None
        fields: dict[str, Any] = {
            "name": name,
            "base": base,
            "registry_lora": [job.outputs.gguf_adapter],
        }
        if isinstance(base_spec, OllamaSpec):
            return OllamaSpec(backend="ollama", **fields)
        return LlamaCppSpec(backend="llamacpp", **fields)

    async def _check_adapter(
        self, job: JobRecord, base: str, merged: str, quantization: str
    ) -> tuple[Agreement | None, str | None]:
        """Deploy the job's adapter on `base` and compare its greedy answers with the merged
        GGUF's (deployed for the check, then removed): the comparison, and None if the adapter
        stays deployed, else why it was removed."""
        assert self.adapter_check is not None
        placed = await self._place_adapter(job, base)
        if placed is not None:
            return None, placed
        name = job.fine_tuned_model
        request = job.request
        source = "validation" if request.validation_file else "training"
        prompts = await self.adapter_check.prompts(
            request.validation_file or request.training_file, PROMPTS
        )
        agreement = None
        if prompts:
            check = adapter_check_name(job)
            await create_deployment(
                self.deployments,
                LlamaCppSpec(
                    name=check,
                    backend="llamacpp",
                    registry_gguf=merged,
                    context_size=request.deploy.context_size,
                    parallel=1,
                    metadata=ModelMetadata(
                        base=request.model, version=merged, quantization=quantization
                    ),
                ),
            )
            try:
                agreement = await compare(self.adapter_check.answer, name, check, prompts)
            finally:
                with contextlib.suppress(NotFound):
                    await self.deployments.delete(check)
            if agreement.holds:
                return agreement, None
            reason = (
                f"on the {source} file's prompts the adapter does not hold the merged model's "
                f"quality: {agreement.describe()}"
            )
        else:
            reason = f"the {source} file has no chat prompts to compare the adapter's answers on"
        with contextlib.suppress(NotFound):
            await self.deployments.delete(name)
        return agreement, reason
