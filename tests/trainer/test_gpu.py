"""Fine-tuning on a CUDA GPU through the trainer service: LoRA in bf16, and QLoRA (the base
quantized to 4 bits by bitsandbytes), each trained, merged into the full-precision base and
registered.

These need a GPU, so they are skipped elsewhere (CI has none); everything they share with the
CPU path is tested in test_service.py. On a GPU host:

    .venv/bin/python -m pytest tests/trainer/test_gpu.py
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb

from .service_helpers import Stack, Trainer, dataset_input, struct

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FACT = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}
#: Enough steps on one repeated fact for the loss to fall clearly, in seconds on any GPU.
GPU_RUN: dict[str, Any] = {
    "template": LLAMAFACTORY_TEMPLATE,
    "per_device_train_batch_size": 4,
    "max_steps": 30,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "bf16": True,
}


class GpuWorld:
    """A registry and a CUDA trainer, with the tiny base model and one dataset registered."""

    def __init__(self, stack: Stack, trainer: Trainer, base: rpb.Version) -> None:
        self.stack = stack
        self.trainer = trainer
        self.base = base
        self.facts = stack.push_dataset(stack.root / "facts", "facts", [FACT] * 8)

    def run(self, arguments: dict[str, Any], request_id: str) -> tuple[pb.Job, list[pb.JobEvent]]:
        """Submit a one-GPU SFT job and follow it to its end."""
        spec = pb.JobSpec(
            base_model=common_pb2.VersionRef(model=self.base.model, version=self.base.number),
            datasets=[dataset_input(self.facts)],
            arguments=struct(arguments),
            stage=pb.STAGE_SFT,
            gpu_count=1,
        )
        job = self.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id=request_id))
        events = list(self.trainer.watch(job.id, timeout=600))
        return self.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id)), events


@pytest.fixture(scope="module")
def gpu_world(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GpuWorld]:
    root: Path = tmp_path_factory.mktemp("trainer-gpu")
    stack = Stack(root)
    base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
    trainer = stack.start_trainer(root / "trainer", device="cuda")
    yield GpuWorld(stack, trainer, base)
    trainer.stop()
    stack.close()


@pytest.mark.parametrize(
    ("name", "extra"),
    [("lora-bf16", {}), ("qlora-4bit", {"quantization_bit": 4})],
)
def test_a_job_trains_on_the_gpu_and_registers_adapter_and_merged_model(
    gpu_world: GpuWorld, name: str, extra: dict[str, Any]
) -> None:
    job, events = gpu_world.run(GPU_RUN | extra, request_id=name)

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert job.device == "cuda:0"
    losses = [e.metrics.loss for e in events if e.HasField("metrics")]
    assert len(losses) == GPU_RUN["max_steps"]
    assert losses[-1] < losses[0] / 2, f"the loss did not fall: {losses}"

    versions = {v.number: v for v in gpu_world.stack.versions(job.result.adapter.model)}
    adapter = versions[job.result.adapter.version]
    merged = versions[job.result.merged.version]
    assert adapter.kind == rpb.VERSION_KIND_ADAPTER
    assert "adapter_model.safetensors" in {a.path for a in adapter.artifacts}
    assert adapter.lineage.training_config.fields["bf16"].bool_value
    if "quantization_bit" in extra:
        assert adapter.lineage.training_config.fields["quantization_bit"].number_value == 4
    # Merged into the full-precision base: a model transformers and llama.cpp load as is.
    assert merged.kind == rpb.VERSION_KIND_MERGED
    assert any(a.path.endswith(".safetensors") for a in merged.artifacts)
