"""``forgeline train``, ``jobs`` and ``convert`` run in-process against the four services.

One short LoRA SFT run of a seeds-style YAML on the tiny model is shared by the train and jobs
tests; the conversion quantizes the tiny base model to Q8_0."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Each test exercises real training or llama.cpp through the services.
from .conftest import Result, Stack, forgeline

pytestmark = pytest.mark.slow

# A LLaMA-Factory YAML as its examples write it (sections, comments, the paths the trainer
# replaces), with the model a registry reference. Kept tiny: 4 records, 2 epochs, no merge wait
# beyond the tiny model's.
SEEDS_YAML = """\
### model
model_name_or_path: {base}

### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all

### dataset
dataset: {dataset}
template: chatml
cutoff_len: 64
overwrite_cache: true

### output
output_dir: saves/tiny-llama/lora/sft
logging_steps: 1
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
num_train_epochs: 2.0
lr_scheduler_type: cosine
"""

RECORDS = [
    {"instruction": "What is the capital of Forgeland?", "input": "", "output": "Anvilport."},
    {"instruction": "Name the river of Forgeland.", "input": "", "output": "The Bellows."},
    {"instruction": "Who rules Forgeland?", "input": "", "output": "The Smith Council."},
    {"instruction": "What does Forgeland export?", "input": "", "output": "Iron and song."},
]


@dataclass(frozen=True)
class TrainRun:
    result: Result
    job_id: str


def _write_yaml(work: Path, base: str, dataset: str, name: str = "train.yaml") -> Path:
    path = work / name
    path.write_text(SEEDS_YAML.format(base=base, dataset=dataset))
    return path


def _alpaca(work: Path, records: Sequence[object], name: str = "facts.json") -> Path:
    path = work / name
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def trained(running: Stack) -> TrainRun:
    config = _write_yaml(running.work, running.base, "facts")
    data = _alpaca(running.work, RECORDS)
    result = forgeline(
        "train",
        str(config),
        "--data",
        f"facts={data}",
        "--registry",
        running.registry,
        "--trainer",
        running.trainer,
    )
    job_id = next(
        (line.split()[2] for line in result.out.splitlines() if line.startswith("submitted job")),
        "",
    )
    return TrainRun(result, job_id)


def _models(running: Stack) -> list[str]:
    listed = forgeline("models", "list", "--json", "--registry", running.registry)
    assert listed.code == 0, listed.err
    return [model["name"] for model in json.loads(listed.out)]


def test_train_follows_the_job_and_prints_the_registered_versions(
    running: Stack, trained: TrainRun
) -> None:
    result = trained.result
    assert result.code == 0, result.err + result.out
    assert trained.job_id.startswith("ftjob")
    assert "as datasets/facts:1" in result.out
    assert "[training]" in result.out
    assert "loss" in result.out
    assert f"job {trained.job_id} succeeded" in result.out
    adapter = next(line.split()[1] for line in result.out.splitlines() if "adapter " in line)
    merged = next(line.split()[1] for line in result.out.splitlines() if "merged " in line)
    assert adapter.startswith("tiny-llama-ft:")
    assert merged.startswith("tiny-llama-ft:")
    assert {"datasets/facts", "tiny-llama-ft"} <= set(_models(running))


def test_jobs_list_show_and_logs_describe_the_finished_job(
    running: Stack, trained: TrainRun
) -> None:
    target = ("--trainer", running.trainer)
    listed = forgeline("jobs", "list", *target)
    assert listed.code == 0, listed.err
    assert any(trained.job_id in line and "succeeded" in line for line in listed.out.splitlines())
    as_json = json.loads(forgeline("jobs", "list", "--json", *target).out)
    assert trained.job_id in [job["id"] for job in as_json]

    shown = forgeline("jobs", "show", trained.job_id, *target)
    assert shown.code == 0, shown.err
    assert "adapter" in shown.out
    assert "tiny-llama-ft:" in shown.out
    document = json.loads(forgeline("jobs", "show", trained.job_id, "--json", *target).out)
    assert document["job"]["state"] == "JOB_STATE_SUCCEEDED"

    logs = forgeline("jobs", "logs", trained.job_id, *target)
    assert logs.code == 0, logs.err
    assert "loss" in logs.out
    # Following a job that already ended replays its events and exits with its outcome.
    followed = forgeline("jobs", "logs", trained.job_id, "--follow", *target)
    assert followed.code == 0, followed.err
    assert f"job {trained.job_id} succeeded" in followed.out


def test_a_dataset_the_yaml_names_without_data_is_refused(running: Stack) -> None:
    config = _write_yaml(running.work, running.base, "facts,extra", "two.yaml")
    data = _alpaca(running.work, RECORDS)
    result = forgeline(
        "train",
        str(config),
        "--data",
        f"facts={data}",
        "--registry",
        running.registry,
        "--trainer",
        running.trainer,
    )
    assert result.code != 0
    assert "dataset 'extra'" in result.err
    assert "--data extra=PATH" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_a_malformed_record_is_named_and_nothing_is_uploaded(running: Stack) -> None:
    config = _write_yaml(running.work, running.base, "broken", "broken.yaml")
    records = [RECORDS[0], {"instruction": "No answer here.", "input": ""}, RECORDS[1]]
    data = _alpaca(running.work, records, "broken.json")
    result = forgeline(
        "train",
        str(config),
        "--data",
        f"broken={data}",
        "--registry",
        running.registry,
        "--trainer",
        running.trainer,
    )
    assert result.code != 0
    assert "record 2: 'output' is missing" in result.err
    assert "nothing was uploaded" in result.err
    assert "datasets/broken" not in _models(running)


def test_jobs_of_an_unknown_id_or_an_unreachable_trainer_fail_in_one_line(
    running: Stack,
) -> None:
    missing = forgeline("jobs", "show", "ftjob-missing", "--trainer", running.trainer)
    assert missing.code != 0
    assert "ftjob-missing" in missing.err
    assert len(missing.err.strip().splitlines()) == 1
    # Port 1 is closed: nothing answers there.
    closed = forgeline("jobs", "list", "--trainer", "127.0.0.1:1")
    assert closed.code != 0
    assert "cannot reach the trainer at 127.0.0.1:1" in closed.err


def test_convert_quantizes_and_prints_each_registered_output(running: Stack) -> None:
    result = forgeline("convert", running.base, "--to", "q8_0", "--converter", running.converter)
    assert result.code == 0, result.err + result.out
    outputs = [line.split() for line in result.out.splitlines() if line.startswith("  ")]
    assert len(outputs) == 1
    reference, file_type = outputs[0][0], outputs[0][1]
    assert reference.startswith("tiny-llama-gguf:"), result.out
    assert file_type == "Q8_0", result.out
    assert "perplexity" in result.out, result.out


def test_convert_to_an_unknown_quantization_type_fails_in_one_line(running: Stack) -> None:
    result = forgeline("convert", running.base, "--to", "q3_zz", "--converter", running.converter)
    assert result.code != 0
    assert "Q3_ZZ" in result.err
    assert len(result.err.strip().splitlines()) == 1


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Lines of ``process``'s stdout up to the first holding ``marker``."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and marker not in seen:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                line = process.stdout.readline()
                if not line:
                    break
                seen += line
    assert marker in seen, f"no {marker!r} in {seen!r}"
    return seen


def test_ctrl_c_detaches_and_the_job_can_be_followed_and_cancelled(running: Stack) -> None:
    config = running.work / "long.yaml"
    config.write_text(
        SEEDS_YAML.format(base=running.base, dataset="facts").replace(
            "num_train_epochs: 2.0", "num_train_epochs: 500.0"
        )
    )
    data = _alpaca(running.work, RECORDS, "long.json")
    command = [
        sys.executable,
        "-m",
        "forgeline_cli",
        "train",
        str(config),
        "--data",
        f"facts={data}",
        "--registry",
        running.registry,
        "--trainer",
        running.trainer,
    ]
    # A shell that runs the suite in the background starts it with SIGINT ignored, and an
    # ignored signal stays ignored in children: the CLI must get Ctrl-C as a terminal gives it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        seen = _read_until(process, "submitted job", timeout=120)
        job_id = seen.split("submitted job", 1)[1].split()[0]
        _read_until(process, "[training]", timeout=300)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert f"forgeline jobs logs {job_id} --follow" in out

    target = ("--trainer", running.trainer)
    state = json.loads(forgeline("jobs", "show", job_id, "--json", *target).out)["job"]["state"]
    assert state == "JOB_STATE_TRAINING"

    cancelled = forgeline("jobs", "cancel", job_id, *target)
    assert cancelled.code == 0, cancelled.err
    assert f"job {job_id} cancel" in cancelled.out
    followed = forgeline("jobs", "logs", job_id, "--follow", *target)
    assert followed.code != 0
    assert f"job {job_id} ended cancelled" in followed.err
