"""A trainer stopped mid-training resumes the job from its last checkpoint after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb

from .service_helpers import Stack, dataset_input, struct

FACT = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}


def _llamafactory_processes(job_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if job_id.encode() in command and b"train.yaml" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_restarted_trainer_resumes_from_the_last_checkpoint(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    stack = Stack(tmp_path)
    try:
        base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
        facts = stack.push_dataset(tmp_path / "facts", "facts", [FACT] * 4)
        spec = pb.JobSpec(
            base_model=common_pb2.VersionRef(model=base.model, version=base.number),
            datasets=[dataset_input(facts)],
            stage=pb.STAGE_SFT,
            arguments=struct(
                {
                    "template": LLAMAFACTORY_TEMPLATE,
                    "per_device_train_batch_size": 2,
                    "max_steps": 24,
                    "save_steps": 3,
                    "learning_rate": 5e-3,
                }
            ),
            merge=pb.MergeOptions(skip=True),
        )
        state_dir = tmp_path / "trainer"
        first = stack.start_trainer(state_dir)
        job = first.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id="resume-me"))
        stream = first.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=300)
        for event in stream:
            assert not event.HasField("error"), event.error.message
            if event.HasField("checkpoint"):
                break
        stream.cancel()
        first.stop()
        assert _llamafactory_processes(job.id) == []

        second = stack.start_trainer(state_dir)
        try:
            events = list(second.watch(job.id, timeout=600))
            final = second.stub.GetJob(pb.GetJobRequest(job_id=job.id))
            assert final.state == pb.JOB_STATE_SUCCEEDED, final.error.message
            assert final.attempt == 2
            resumed = [i for i, e in enumerate(events) if "Resuming training" in e.message]
            assert len(resumed) == 1
            resumed_at = int(events[resumed[0]].message.rsplit(" ", 1)[1])
            assert resumed_at >= 3
            before = [e.metrics for e in events[: resumed[0]] if e.HasField("metrics")]
            later = [e.metrics for e in events[resumed[0] :] if e.HasField("metrics")]
            # Nothing before the checkpoint is trained (or reported) again. The checkpoint's own
            # step may come after the note: the first run logged it, then was stopped before
            # the trainer read that line.
            steps = [m.step for m in later]
            assert steps[0] >= resumed_at
            assert steps == sorted(set(steps))
            assert later[-1].step == 24
            # Resumed, not restarted: the run goes on from the checkpoint's weights.
            assert later[0].loss < before[0].loss
            assert final.result.adapter.model == "tiny-llama-ft"
            assert not final.result.HasField("merged")
            versions = stack.versions("tiny-llama-ft")
            assert [v.kind for v in versions] == [rpb.VERSION_KIND_ADAPTER]
            # The same request id still answers the same job after the restart.
            again = second.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id="resume-me"))
            assert again.id == job.id
        finally:
            second.stop()
    finally:
        stack.close()
