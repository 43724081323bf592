"""The GPUs a job is given drive how ``llamafactory-cli train`` is launched (torchrun above one),
and SubmitJob refuses counts the trainer cannot give.

The torchrun path is run for real on the CPU: LLaMA-Factory's own launcher starts two gloo workers
on the tiny model (what NCCL workers do on a multi-GPU host, same environment variables).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from forgeline_kit.datasets import DatasetFormat, DatasetSpec, write_dataset_info
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.arguments import TrainArguments
from forgeline_trainer.llamafactory.cli import launch_environment, start_training
from forgeline_trainer.submission import plan_job

BIN = str(Path(sys.executable).parent)


def test_one_process_keeps_llamafactorys_own_launch() -> None:
    env = launch_environment({"PATH": "/usr/bin"}, gpus=(), device="cpu")
    assert env == {"PATH": f"{BIN}:/usr/bin"}


def test_several_gpus_run_torchrun_on_exactly_those() -> None:
    env = launch_environment({"PATH": "/usr/bin"}, gpus=("2", "3"), device="cuda")
    assert env["FORCE_TORCHRUN"] == "1"
    assert env["NPROC_PER_NODE"] == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["PATH"].split(":")[0] == BIN  # where torchrun is


def test_a_job_sees_only_the_gpus_it_was_given() -> None:
    operator = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    one = launch_environment(operator, gpus=("6",), device="cuda")
    assert one["CUDA_VISIBLE_DEVICES"] == "6"
    assert "FORCE_TORCHRUN" not in one  # one visible GPU: LLaMA-Factory runs it in-process


def test_deepspeed_runs_under_torchrun_even_on_one_gpu() -> None:
    env = launch_environment({}, gpus=("0",), device="cuda", deepspeed=True)
    assert env["FORCE_TORCHRUN"] == "1"
    assert env["NPROC_PER_NODE"] == "1"


def _spec(gpu_count: int) -> pb.JobSpec:
    return pb.JobSpec(
        base_model=common_pb2.VersionRef(model="tiny-llama", version=1),
        datasets=[
            pb.DatasetInput(
                name="facts",
                source=common_pb2.ArtifactRef(
                    version=common_pb2.VersionRef(model="facts", version=1), path="facts.json"
                ),
                format=pb.DATASET_FORMAT_ALPACA,
            )
        ],
        stage=pb.STAGE_SFT,
        gpu_count=gpu_count,
    )


@pytest.mark.parametrize(
    ("gpu_count", "device", "available", "expected"),
    [
        (2, "cpu", 0, "this trainer runs on the CPU and has none"),
        (4, "cuda", 2, "more GPUs than this trainer has (2); ask for at most 2"),
        (-1, "cuda", 2, "is negative"),
    ],
)
def test_gpu_counts_the_trainer_cannot_give_are_refused(
    gpu_count: int, device: str, available: int, expected: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        plan_job(_spec(gpu_count), device=device, gpus_available=available)  # type: ignore[arg-type]
    assert refused.value.field == "gpu_count"
    assert expected in str(refused.value)


def test_gpu_counts_up_to_the_trainers_gpus_are_accepted() -> None:
    assert plan_job(_spec(2), device="cuda", gpus_available=2).arguments["stage"] == "sft"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_train_data_parallel_under_torchrun(
    tiny_model: TinyModel, offline_env: dict[str, str], tmp_path: Path
) -> None:
    records = [{"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}] * 8
    (tmp_path / "facts.json").write_text(json.dumps(records), encoding="utf-8")
    spec = DatasetSpec(name="facts", path=tmp_path / "facts.json", format=DatasetFormat.ALPACA)
    info = write_dataset_info(tmp_path / "data", [spec])
    output = tmp_path / "output"
    arguments = TrainArguments(
        model_name_or_path=str(tiny_model.path),
        dataset="facts",
        dataset_dir=str(info.parent),
        template=LLAMAFACTORY_TEMPLATE,
        output_dir=str(output),
        per_device_train_batch_size=2,
        max_steps=2,
        include_num_input_tokens_seen=True,
    )
    # The trainer's environment without the venv on PATH: torchrun is still found.
    env = {key: value for key, value in offline_env.items() if key != "PATH"} | {
        "PATH": "/usr/bin:/bin"
    }

    run = start_training(arguments, tmp_path, env, gpus=("0", "1"), device="cpu")
    deadline = time.monotonic() + 500
    while run.poll() is None:
        assert time.monotonic() < deadline, run.log_tail()
        time.sleep(0.2)

    log = run.log_tail(200_000)
    assert run.poll() == 0, log
    assert "Initializing 2 distributed tasks" in log
    assert "world size: 2" in log
    assert not run.group_alive()
    results = json.loads((output / "all_results.json").read_text())
    # 2 steps x 2 records x 2 processes = one epoch of the 8 records (one process: half).
    assert results["epoch"] == pytest.approx(0.5 * 2)
    assert (output / "adapter_model.safetensors").is_file()
