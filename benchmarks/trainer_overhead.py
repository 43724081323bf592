"""The same LLaMA-Factory run (tiny model, LoRA SFT, a fixed number of steps, merge off) started
by ``llamafactory-cli train YAML`` directly and through the trainer service, alternated.

    .venv/bin/python benchmarks/trainer_overhead.py [--rounds 3] [--steps 100] [--threads 1]

Both arms train from one set of arguments (the service's own additions, such as
``include_num_input_tokens_seen`` and ``plot_loss``, are set in the direct arm's YAML too, and
the checkpoint interval is past the last step in both), on the same records; the run checks
that the two ``train.yaml`` files are equal but for their paths. The service runs in
this process on real sockets (gRPC), with an in-process registry on the filesystem store; its
job pulls the model and data from that registry, trains, and registers the adapter.

Figures per arm (medians over the rounds):

- tokens/s: ``num_input_tokens_seen / train_runtime`` from LLaMA-Factory's own
  ``all_results.json``, in both arms (training loop only; the tool's start-up is not in it);
- train process s: wall time of the ``llamafactory-cli train`` process (start to exit): measured
  here for the direct arm, the job's ``train_process_seconds`` for the service arm;
- peak RSS: the largest sum, over the training process group, of each process's own peak
  resident memory (``VmHWM``), read every 100 ms from ``/proc`` (the same sampler for both arms:
  the service's run is found by its YAML's path);
- peak GPU memory: the largest sum of ``nvidia-smi``'s per-process memory over that group, when
  a GPU exists (``n/a`` on the CPU);
- job s (service only): SubmitJob to SUCCEEDED, for what the service adds around the run (pull,
  validation, registering).

- CPU s of the train process tree: user + system time of ``llamafactory-cli train`` and its
  children (``RUSAGE_CHILDREN`` of this process, which reaps them in both arms);
- CPU s of the calling process: user + system time of this process during the round; in the
  direct arm that is the sampler and an idle event loop, in the service arm also the whole
  service (gRPC, the job's event loop work, validation in threads, the registry's work on both
  ends of the pull and push). Its overhead is the extra CPU over the train process tree's: what
  the service takes from the cores the training could use.

Overhead = service / direct - 1 (for tokens/s: direct / service - 1, so positive is slower).

``--threads 1`` (the default) sets ``OMP_NUM_THREADS=1`` for both arms: on a small machine shared
with other work, torch's default of one OpenMP thread per core makes the run 20-40x slower and
its timing meaningless (measured on 2 loaded cores: 38-78 against 1,600 tokens/s); ``0`` keeps
torch's default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from forgeline_kit.grpc.server import GrpcService
from forgeline_kit.subprocesses import offline_env
from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, write_tiny_model
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_proto.trainer.v1 import trainer_pb2_grpc
from forgeline_registry.__main__ import build as build_registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.__main__ import build as build_trainer
from forgeline_trainer.llamafactory.arguments import TrainArguments
from forgeline_trainer.llamafactory.cli import LLAMAFACTORY_CLI
from forgeline_trainer.llamafactory.process import group_members
from forgeline_trainer.settings import TrainerSettings

RECORDS = 32


def run_arguments(steps: int) -> dict[str, Any]:
    """The LLaMA-Factory arguments both arms train with (paths apart)."""
    return {
        "stage": "sft",
        "finetuning_type": "lora",
        "template": LLAMAFACTORY_TEMPLATE,
        "cutoff_len": 128,
        "per_device_train_batch_size": 4,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "save_strategy": "steps",
        "save_steps": steps * 10,  # no checkpoint inside the run, in either arm
        "include_num_input_tokens_seen": True,
        "plot_loss": True,
        "report_to": "none",
        "seed": 42,
    }


@dataclass
class Sample:
    """One arm's figures of one round."""

    tokens_per_second: float
    process_seconds: float
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    job_seconds: float | None = None
    config: dict[str, Any] | None = None
    #: CPU seconds of the training process tree (children of this process, once reaped).
    train_cpu: float = 0.0
    #: CPU seconds of this process during the round (the service's work, plus the sampler that
    #: both arms have).
    own_cpu: float = 0.0


class CpuClock:
    """CPU time spent by this process and by its reaped children while the block ran."""

    def __enter__(self) -> CpuClock:
        self._self = _cpu(resource.RUSAGE_SELF)
        self._children = _cpu(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *_: object) -> None:
        self.own = _cpu(resource.RUSAGE_SELF) - self._self
        self.children = _cpu(resource.RUSAGE_CHILDREN) - self._children


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class GroupSampler:
    """Peak memory of the process group whose leader's command line holds ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.peak_rss = 0
        self.peak_gpu: int | None = 0 if shutil.which("nvidia-smi") else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GroupSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _find(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if self.marker.encode() in command and b"train" in command:
                return os.getpgid(int(entry.name))
        return None

    def _run(self) -> None:
        group: int | None = None
        members: list[int] = []
        tick = 0
        while not self._stop.is_set():
            if group is None:
                try:
                    group = self._find()
                except ProcessLookupError:
                    group = None
            if group is not None:
                # Listing a group scans all of /proc: once a second is enough to see workers
                # come and go, and keeps the sampler's own CPU small beside the run's.
                if tick % 10 == 0:
                    members = group_members(group)
                tick += 1
                self.peak_rss = max(self.peak_rss, sum(_rss(pid) for pid in members))
                if self.peak_gpu is not None and members:
                    self.peak_gpu = max(self.peak_gpu, _gpu_bytes(set(members)))
            self._stop.wait(0.1)


def _rss(pid: int) -> int:
    """The process's own peak resident memory (VmHWM): exact, whatever the sampling missed."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _gpu_bytes(pids: set[int]) -> int:
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    done = subprocess.run(query, capture_output=True, text=True, check=False)  # noqa: S603
    total = 0
    for line in done.stdout.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids:
            total += int(used.strip()) * 1024 * 1024
    return total


def _without_paths(config: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(config.read_text())
    for key in ("model_name_or_path", "dataset_dir", "output_dir"):
        values.pop(key)
    return values


def tokens_per_second(output_dir: Path) -> float:
    """LLaMA-Factory's own figures: tokens seen over the training loop's run time."""
    results = json.loads((output_dir / "all_results.json").read_text())
    return float(results["num_input_tokens_seen"]) / float(results["train_runtime"])


def write_inputs(root: Path) -> tuple[Path, Path]:
    """The tiny model and a dataset file of ``RECORDS`` records."""
    model = write_tiny_model(root / "model").path
    record = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}
    data = root / "facts"
    data.mkdir()
    (data / "facts.json").write_text(json.dumps([record] * RECORDS), encoding="utf-8")
    return model, data


def direct_round(root: Path, model: Path, data: Path, steps: int, env: dict[str, str]) -> Sample:
    """``llamafactory-cli train YAML`` by hand; dataset_info.json written as a user would."""
    work = Path(tempfile.mkdtemp(prefix="direct-", dir=root))
    dataset_dir = work / "data"
    dataset_dir.mkdir()
    shutil.copy(data / "facts.json", dataset_dir / "facts.json")
    info = {"facts": {"file_name": "facts.json"}}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    arguments = TrainArguments(
        **run_arguments(steps),
        model_name_or_path=str(model),
        dataset="facts",
        dataset_dir=str(dataset_dir),
        output_dir=str(work / "output"),
    )
    config = arguments.write_yaml(work / "train.yaml")
    with GroupSampler(str(config)) as sampler, (work / "train.log").open("wb") as log:
        started = time.perf_counter()
        status = subprocess.run(  # noqa: S603 - an argument list
            [str(LLAMAFACTORY_CLI), "train", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            check=False,
        ).returncode
        seconds = time.perf_counter() - started
    if status != 0:
        sys.exit(f"llamafactory-cli train failed ({status}); see {work / 'train.log'}")
    return Sample(
        tokens_per_second(work / "output"),
        seconds,
        sampler.peak_rss,
        sampler.peak_gpu,
        config=_without_paths(config),
    )


class ServiceArm:
    """A registry (fs store) and a trainer served in this process, inputs pushed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: list[GrpcService] = []

    async def start(self, model: Path, data: Path) -> None:
        registry_settings = RegistrySettings(
            storage="fs", fs_root=self.root / "registry", grpc_port=0, metrics_port=0
        )
        registry = GrpcService(
            registry_settings,
            await build_registry(registry_settings),
            collectors=CollectorRegistry(),
        )
        await registry.start()
        target = f"127.0.0.1:{registry.grpc_port}"
        self.state_dir = self.root / "trainer"
        settings = TrainerSettings(
            registry_target=target,
            registry_local_files=True,
            state_dir=self.state_dir,
            grpc_port=0,
            metrics_port=0,
            device="auto",
        )
        collectors = CollectorRegistry()
        trainer = GrpcService(
            settings, await build_trainer(settings, collectors), collectors=collectors
        )
        await trainer.start()
        self.services = [trainer, registry]
        async with RegistryClient(target, accept_local_files=True) as client:
            self.base = await client.push(model, "tiny-llama", kind=rpb.VERSION_KIND_BASE)
            self.data = await client.push(data, "facts", kind=rpb.VERSION_KIND_DATASET)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{trainer.grpc_port}")
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    async def round(self, steps: int) -> Sample:
        arguments = Struct()
        arguments.update(run_arguments(steps))
        spec = pb.JobSpec(
            base_model=common_pb2.VersionRef(model=self.base.model, version=self.base.number),
            datasets=[
                pb.DatasetInput(
                    name="facts",
                    source=common_pb2.ArtifactRef(
                        version=common_pb2.VersionRef(
                            model=self.data.model, version=self.data.number
                        ),
                        path="facts.json",
                    ),
                    format=pb.DATASET_FORMAT_ALPACA,
                )
            ],
            stage=pb.STAGE_SFT,
            arguments=arguments,
            merge=pb.MergeOptions(skip=True),
        )
        started = time.perf_counter()
        job = await self.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        config = self.state_dir / "jobs" / job.id / "train.yaml"
        with GroupSampler(str(config)) as sampler:
            async for _ in self.stub.WatchJob(pb.WatchJobRequest(job_id=job.id)):
                pass
            job = await self.stub.GetJob(pb.GetJobRequest(job_id=job.id))
        job_seconds = time.perf_counter() - started
        if job.state != pb.JOB_STATE_SUCCEEDED:
            sys.exit(f"the service's job ended {pb.JobState.Name(job.state)}: {job.error}")
        output = self.state_dir / "jobs" / job.id / "output"
        return Sample(
            tokens_per_second(output),
            job.result.metrics["train_process_seconds"],
            sampler.peak_rss,
            sampler.peak_gpu,
            job_seconds,
            config=_without_paths(config),
        )

    async def stop(self) -> None:
        await self.channel.close()
        for service in self.services:
            await service.stop(grace=1)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _secs(value: float) -> str:
    return f"{value:.2f}"


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def table(direct: list[Sample], service: list[Sample]) -> str:
    """The markdown table of medians and overheads."""

    def row(name: str, a: float, b: float, show: Any, overhead: float) -> str:
        return f"| {name} | {show(a)} | {show(b)} | {overhead:+.1%} |"

    d_tps = _median([s.tokens_per_second for s in direct])
    s_tps = _median([s.tokens_per_second for s in service])
    d_wall = _median([s.process_seconds for s in direct])
    s_wall = _median([s.process_seconds for s in service])
    d_rss = _median([float(s.peak_rss_bytes) for s in direct])
    s_rss = _median([float(s.peak_rss_bytes) for s in service])
    lines = [
        "| median over rounds | llamafactory-cli train | through TrainerService | overhead |",
        "|---|---|---|---|",
        row("training tokens/s", d_tps, s_tps, lambda v: f"{v:,.0f}", d_tps / s_tps - 1),
        row("train process wall s", d_wall, s_wall, lambda v: f"{v:.2f}", s_wall / d_wall - 1),
        row("peak RSS of the process tree", d_rss, s_rss, _mib, s_rss / d_rss - 1),
    ]
    gpu = [s.peak_gpu_bytes for s in direct + service]
    if all(value is not None for value in gpu):
        d_gpu = _median([float(s.peak_gpu_bytes or 0) for s in direct])
        s_gpu = _median([float(s.peak_gpu_bytes or 0) for s in service])
        ratio = s_gpu / d_gpu - 1 if d_gpu else 0.0
        lines.append(row("peak GPU memory", d_gpu, s_gpu, _mib, ratio))
    else:
        lines.append("| peak GPU memory | n/a (no GPU) | n/a (no GPU) | n/a |")
    d_cpu = _median([s.train_cpu for s in direct])
    s_cpu = _median([s.train_cpu for s in service])
    lines.append(row("CPU s of the train process tree", d_cpu, s_cpu, _secs, s_cpu / d_cpu - 1))
    d_own = _median([s.own_cpu for s in direct])
    s_own = _median([s.own_cpu for s in service])
    lines.append(
        row("CPU s of the calling process (service)", d_own, s_own, _secs, (s_own - d_own) / s_cpu)
    )
    job = _median([s.job_seconds or 0.0 for s in service])
    lines.append(f"| job wall s (submit → SUCCEEDED) | | {job:.2f} | |")
    return "\n".join(lines)


async def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    if options.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(options.threads)  # both arms inherit it
    root = Path(tempfile.mkdtemp(prefix="trainer-overhead-"))
    try:
        model, data = write_inputs(root)
        env = offline_env(root / "hf-home")
        arm = ServiceArm(root)
        await arm.start(model, data)
        direct: list[Sample] = []
        service: list[Sample] = []
        try:
            for index in range(options.rounds):
                # Alternate which arm goes first, so drift on a shared machine hits both alike.
                order = ("direct", "service") if index % 2 == 0 else ("service", "direct")
                for which in order:
                    with CpuClock() as clock:
                        if which == "direct":
                            sample = await asyncio.to_thread(
                                direct_round, root, model, data, options.steps, env
                            )
                        else:
                            sample = await arm.round(options.steps)
                    sample.train_cpu, sample.own_cpu = clock.children, clock.own
                    (direct if which == "direct" else service).append(sample)
                    print(
                        f"round {index + 1} {which}: {sample.tokens_per_second:,.0f} tokens/s, "
                        f"process {sample.process_seconds:.2f} s, "
                        f"peak RSS {_mib(sample.peak_rss_bytes)}, "
                        f"CPU s train {clock.children:.2f} / this process {clock.own:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            await arm.stop()
        # Compared as values: the service's arguments pass through a protobuf Struct, where
        # every number is a double (100 and 100.0 are one setting to LLaMA-Factory).
        configs = [s.config for s in direct + service]
        if any(config != configs[0] for config in configs):
            sys.exit(f"the arms trained with different arguments: {configs}")
        device = "cuda" if direct[0].peak_gpu_bytes is not None else "cpu"
        print(
            f"LoRA SFT, tiny model, {options.steps} steps x batch 4 (cutoff 128), merge off, "
            f"{options.rounds} rounds alternated, {os.cpu_count()} CPUs, device {device}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        )
        print(table(direct, service))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
