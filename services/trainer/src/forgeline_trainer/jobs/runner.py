"""One job from VALIDATING to SUCCEEDED: fetch, check, train, merge, register.

Each stage starts from what is persisted (the job record, its checkpoints, its work directory),
so a job found mid-way after a restart continues where it was: TRAINING resumes from its last
checkpoint, EXPORTING and REGISTERING are redone. A LLaMA-Factory run killed by a signal (the OOM
killer, a preempted node: not the run's own failure) is started again the same way, up to the
trainer's ``RUN_ATTEMPTS``, each retry an event with a ``retry`` payload. A failure ends the job
FAILED with an OperationError code of the contract and nothing registered. Cancellation (the
task is cancelled) stops the job's process group before the task ends; so does the job's time
limit, which covers VALIDATING, TRAINING and EXPORTING (counted from leaving the queue, so a
resumed job keeps its deadline), and the trainer's step cap, checked against the steps a running
training plans.

VALIDATING's work is in `validating`; the errors every stage raises are in `job_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from forgeline_kit.errors import ForgelineError
from forgeline_kit.operations import OperationFailure
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.jobs.hub import JobHub, now
from forgeline_trainer.jobs.job_errors import ProcessKilledError, registry_failure
from forgeline_trainer.jobs.progress_events import (
    checkpoint_of,
    metrics_message,
    metrics_of,
    numeric,
    saved_checkpoints,
)
from forgeline_trainer.jobs.registration import register_results
from forgeline_trainer.jobs.validating import validate_inputs
from forgeline_trainer.jobs.workspace import (
    JobWorkspace,
    Validated,
    launch_arguments,
    text_argument,
)
from forgeline_trainer.llamafactory.arguments import ExportArguments, TrainArguments
from forgeline_trainer.llamafactory.cli import (
    LLAMAFACTORY_CLI,
    device_environment,
    start_training,
)
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.llamafactory.failure import explain_failure
from forgeline_trainer.llamafactory.policy import MAX_JOB_SECONDS_SETTING, MAX_STEPS_CAP_SETTING
from forgeline_trainer.llamafactory.process import TrainingProcess, group_record
from forgeline_trainer.llamafactory.progress import ProgressReader
from forgeline_trainer.settings import TrainerSettings

__all__ = ["JobRunner", "OperationFailure", "ProcessKilledError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Share of a job's progress taken by training; export and registering share the rest.
_TRAINING_SHARE = 90.0


@dataclass(frozen=True)
class RunnerContext:
    """What every job run needs from the service."""

    hub: JobHub
    settings: TrainerSettings
    device_kind: DeviceKind
    device: str
    env: dict[str, str]
    registry: Callable[[], RegistryClient]


class JobRunner:
    """Runs jobs, one :meth:`run` call per job."""

    def __init__(self, context: RunnerContext) -> None:
        self.context = context
        self.hub = context.hub

    async def run(self, job_id: str, gpus: tuple[str, ...] = ()) -> None:
        """Take the job from its current state to a terminal one (or until cancelled), its
        processes on ``gpus`` alone (the GPUs the queue gave it; none on a CPU trainer)."""
        job = self.hub.load(job_id)
        self.hub.attach(job)
        workspace = JobWorkspace(self.context.settings.state_dir, job.id)
        try:
            await self._advance(job, workspace, gpus)
        except OperationFailure as failure:
            log.warning("job %s failed: %s", job.id, failure.code)
            self.hub.fail(
                job,
                failure.code,
                failure.message,
                field=failure.field,
                retryable=failure.retryable,
            )
        except asyncio.CancelledError:
            if job.state != pb.JOB_STATE_CANCELLING:
                raise  # the service is stopping: the job stays where it is, to be resumed
            self.hub.transition(job, pb.JOB_STATE_CANCELLED, "Job cancelled")
        except Exception as error:  # a bug must not leave the job running forever
            log.exception("job %s failed unexpectedly", job.id)
            self.hub.fail(job, "internal", f"the trainer failed unexpectedly: {error}")
        finally:
            self.hub.detach(job.id)

    async def _advance(self, job: pb.Job, workspace: JobWorkspace, gpus: tuple[str, ...]) -> None:
        # A job resumed after a restart may be given other GPUs than before.
        job.device = self._device_name(gpus)
        if job.state == pb.JOB_STATE_QUEUED:
            job.start_time.CopyFrom(now())
            self.hub.transition(job, pb.JOB_STATE_VALIDATING, "Validating training files")
        if job.state != pb.JOB_STATE_REGISTERING:
            # Registering is outside the limit: stopping it half-way would leave versions behind,
            # and it holds no GPU.
            await self._within_time_limit(job, self._work(job, workspace, gpus))
        if job.state == pb.JOB_STATE_REGISTERING:
            lora = text_argument(job, "finetuning_type") == "lora"
            merged = workspace.merged if lora and not job.spec.merge.skip else None
            await self._register(job, workspace, _validated(workspace), merged)
            self._set_percent(job, 100.0)
            self.hub.transition(job, pb.JOB_STATE_SUCCEEDED, "The job has successfully completed")

    async def _work(self, job: pb.Job, workspace: JobWorkspace, gpus: tuple[str, ...]) -> None:
        """VALIDATING, TRAINING and EXPORTING: what the time limit covers."""
        if job.state == pb.JOB_STATE_VALIDATING:
            await validate_inputs(
                job,
                workspace,
                hub=self.hub,
                registry=self.context.registry,
                device=self.context.device_kind,
                policy=self.context.settings.job_policy(),
            )
            self.hub.transition(job, pb.JOB_STATE_TRAINING, "Training started")
        _validated(workspace)  # what training and the merge read must still be there
        lora = text_argument(job, "finetuning_type") == "lora"
        if job.state == pb.JOB_STATE_TRAINING:
            metrics = await self._retrying(job, lambda: self._train(job, workspace, gpus))
            job.result.metrics.clear()
            job.result.metrics.update(metrics)
            merge = lora and not job.spec.merge.skip
            self._set_percent(job, _TRAINING_SHARE)
            if merge:
                self.hub.transition(job, pb.JOB_STATE_EXPORTING, "Merging the adapter")
            else:
                self.hub.transition(job, pb.JOB_STATE_REGISTERING, "Registering the results")
        if job.state == pb.JOB_STATE_EXPORTING:
            await self._retrying(job, lambda: self._export(job, workspace, gpus))
            self._set_percent(job, 95.0)
            self.hub.transition(job, pb.JOB_STATE_REGISTERING, "Registering the results")

    async def _retrying(self, job: pb.Job, run: Callable[[], Awaitable[T]]) -> T:
        """``run()``, started again while its LLaMA-Factory process is killed by a signal, up to
        ``RUN_ATTEMPTS`` runs in all; each retry is an event. A training run started again
        resumes from its last checkpoint (``_train`` does so whenever ``job.attempt`` > 0)."""
        settings = self.context.settings
        attempts = settings.run_attempts
        attempt = 1
        while True:
            try:
                return await run()
            except ProcessKilledError as killed:
                if attempt >= attempts:
                    if attempts > 1:
                        killed.message += f" ({attempts} attempts, each killed)"
                    raise
                delay = settings.run_retry_seconds * 2 ** (attempt - 1)
                attempt += 1
                after = " from the last checkpoint" if killed.tool == "training" else ""
                message = (
                    f"The {killed.tool} process was killed (signal {killed.signum}); retrying"
                    f"{after} (attempt {attempt} of {attempts}) in {delay:g} s"
                )
                log.warning("job %s: %s", job.id, message)
                duration = Duration()
                duration.FromNanoseconds(int(delay * 1e9))
                self.hub.emit(
                    job,
                    message,
                    level=pb.EVENT_LEVEL_WARNING,
                    retry=common_pb2.Retry(
                        error=common_pb2.OperationError(
                            code=killed.code, message=killed.message, retryable=True
                        ),
                        attempt=attempt,
                        max_attempts=attempts,
                        delay=duration,
                    ),
                )
                await asyncio.sleep(delay)

    @contextlib.contextmanager
    def _recorded(self, job: pb.Job, process: TrainingProcess, tool: str) -> Iterator[None]:
        """Keep ``process``'s group in the job's record while it may run, so a trainer started
        after this one dies can stop it if the parent-death signal did not
        (``Trainer.recover``)."""
        store = self.hub.store
        record = group_record(process.pid)
        if record is not None:  # None: it ended already, or no /proc to recognise it by
            store.record_run_process(job.id, tool, record)
        try:
            yield
        finally:
            # Left in place while any of the group still runs (a cancel that could not stop
            # it): the next start looks again.
            if record is not None and not process.group_alive():
                store.clear_run_process(job.id)

    def _time_limit_seconds(self, job: pb.Job) -> float:
        """The job's time limit: its own, at most the trainer's (which an operator may have
        lowered since the job was submitted)."""
        trainer = self.context.settings.max_job_seconds
        asked = job.spec.time_limit.ToTimedelta().total_seconds()
        return min(asked, trainer) if asked > 0 else trainer

    async def _within_time_limit(self, job: pb.Job, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` until the job's deadline (its start time plus its limit). Past it the
        work is cancelled, which stops the job's process group as CancelJob does, and the job
        fails ``time_limit_exceeded``."""
        limit = self._time_limit_seconds(job)
        if not job.HasField("start_time"):  # every job that left the queue has one; be safe
            job.start_time.CopyFrom(now())
        deadline = job.start_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=limit)
        left = (deadline - datetime.now(UTC)).total_seconds()
        try:
            async with asyncio.timeout(left) as scope:
                await work
        except TimeoutError as error:
            if not scope.expired():
                raise  # a TimeoutError of the work itself, not the deadline
            raise OperationFailure(
                "time_limit_exceeded",
                f"the job ran past its time limit of {limit:g} s (counted from leaving the queue "
                f"to the end of its merge) and was stopped while "
                f"{pb.JobState.Name(job.state).removeprefix('JOB_STATE_').lower()}; raise the "
                f"job's time_limit (at most the trainer's "
                f"{self.context.settings.max_job_seconds:g} s, {MAX_JOB_SECONDS_SETTING}) or "
                "train less (max_steps, num_train_epochs, max_samples)",
            ) from error

    def _device_name(self, gpus: tuple[str, ...]) -> str:
        if self.context.device_kind == "cuda" and gpus:
            return "cuda:" + ",".join(gpus)
        return self.context.device

    def _set_percent(self, job: pb.Job, percent: float) -> None:
        job.progress.percent = percent
        self.hub.save(job)

    # --- TRAINING

    async def _train(
        self, job: pb.Job, workspace: JobWorkspace, gpus: tuple[str, ...]
    ) -> dict[str, float]:
        arguments: dict[str, Any] = MessageToDict(job.effective_arguments)
        if job.attempt > 0:
            saved = saved_checkpoints(workspace.output)
            if saved:
                step, directory = saved[-1]
                arguments["resume_from_checkpoint"] = str(directory)
                note = f"Resuming training from the checkpoint at step {step}"
            else:
                shutil.rmtree(workspace.output, ignore_errors=True)
                note = "No checkpoint was saved before the run stopped: training restarts"
            self.hub.emit(job, note, level=pb.EVENT_LEVEL_WARNING)
        job.attempt += 1
        self.hub.save(job)
        try:
            train_arguments = TrainArguments(**launch_arguments(arguments, workspace))
        except ValueError as error:  # a job record from before the policy, or tampered with
            raise OperationFailure("invalid_argument", str(error)) from error
        # TensorBoard (report_to: tensorboard) writes into the job's output, whatever the
        # trainer's own environment says; runs/ is not registered with the results.
        env = self.context.env | {"TENSORBOARD_LOGGING_DIR": str(workspace.output / "runs")}
        started = time.monotonic()
        process = await asyncio.to_thread(
            start_training,
            train_arguments,
            workspace.root,
            env,
            gpus=gpus,
            device=self.context.device_kind,
        )
        reader = ProgressReader(workspace.output)
        # A thread blocks on the process's exit, so the job moves on the moment training ends
        # (not at the next poll) and the tool's own run time is exact.
        exited = asyncio.ensure_future(asyncio.to_thread(process.wait))
        with self._recorded(job, process, "training"):
            try:
                while not exited.done():
                    self._collect(job, reader, workspace)
                    await asyncio.wait(
                        {exited}, timeout=self.context.settings.poll_interval_seconds
                    )
            except (asyncio.CancelledError, OperationFailure):
                # Cancelled (CancelJob, the time limit, the service stopping) or past the step
                # cap.
                await asyncio.to_thread(process.cancel)
                raise
        process_seconds = time.monotonic() - started
        self._collect(job, reader, workspace)
        status = process.poll()
        if status != 0:
            failure = explain_failure(status or 0, process.log_tail())
            if status is not None and status < 0:
                raise ProcessKilledError(
                    failure.code, failure.message, tool="training", signum=-status
                )
            raise OperationFailure(failure.code, failure.message)
        results = workspace.output / "all_results.json"
        metrics = numeric(json.loads(results.read_text())) if results.is_file() else {}
        metrics["train_process_seconds"] = process_seconds
        tokens = int(metrics.get("num_input_tokens_seen", 0))
        job.result.trained_tokens = tokens or job.progress.metrics.trained_tokens
        return metrics

    def _collect(self, job: pb.Job, reader: ProgressReader, workspace: JobWorkspace) -> None:
        last_step = job.progress.metrics.step if job.progress.HasField("metrics") else 0
        for record in reader.read():
            if record.loss is None and record.eval_loss is None:
                continue  # the end-of-training summary line
            if record.step <= last_step and record.eval_loss is None:
                continue  # a resumed run logs again from its checkpoint
            metrics = metrics_of(record)
            self._check_step_cap(metrics.total_steps)
            last_step = record.step
            job.progress.metrics.CopyFrom(metrics)
            if metrics.total_steps:
                job.progress.percent = _TRAINING_SHARE * metrics.step / metrics.total_steps
            if record.remaining_s is not None:
                finish = now()
                finish.FromDatetime(finish.ToDatetime() + timedelta(seconds=record.remaining_s))
                job.progress.estimated_finish_time.CopyFrom(finish)
            self.hub.emit(job, metrics_message(metrics), metrics=metrics)
        store = self.hub.store
        for step, directory in saved_checkpoints(workspace.output):
            try:
                checkpoint = checkpoint_of(job.id, step, directory)
            except (OSError, ValueError):
                continue  # removed by save_total_limit's rotation meanwhile
            if store.add_checkpoint(job.id, checkpoint, directory):
                self.hub.emit(job, f"Checkpoint saved at step {step}", checkpoint=checkpoint)

    def _check_step_cap(self, total_steps: int) -> None:
        # max_steps above the cap is refused at submission; epochs become steps only once
        # LLaMA-Factory has counted the data, so a run that plans too many is stopped here.
        cap = self.context.settings.max_steps_cap
        if total_steps > cap:
            raise OperationFailure(
                "step_limit_exceeded",
                f"the run plans {total_steps} steps, more than this trainer's cap of {cap} "
                f"({MAX_STEPS_CAP_SETTING}), and was stopped; lower num_train_epochs (or set "
                f"max_steps to at most {cap}), or ask the operator to raise the cap",
                field="arguments.num_train_epochs",
            )

    # --- EXPORTING

    async def _export(self, job: pb.Job, workspace: JobWorkspace, gpus: tuple[str, ...]) -> None:
        merge = job.spec.merge
        shutil.rmtree(workspace.merged, ignore_errors=True)
        arguments = ExportArguments(
            model_name_or_path=str(workspace.base),
            adapter_name_or_path=str(workspace.output),
            template=text_argument(job, "template") or None,
            export_dir=str(workspace.merged),
            export_size=merge.export_size or 5,
            export_device="auto" if merge.export_device == pb.EXPORT_DEVICE_AUTO else "cpu",
            export_legacy_format=merge.export_legacy_format,
        )
        config = arguments.write_yaml(workspace.root / "export.yaml")
        started = time.monotonic()
        process = await asyncio.to_thread(
            TrainingProcess,
            [LLAMAFACTORY_CLI, "export", config],
            log_path=workspace.root / "export.log",
            # export_device "auto" spreads the merge over the GPUs it sees: only the job's own.
            env=device_environment(self.context.env, gpus=gpus, device=self.context.device_kind),
        )
        with self._recorded(job, process, "merge"):
            try:
                await asyncio.to_thread(process.wait)
            except asyncio.CancelledError:
                await asyncio.to_thread(process.cancel)
                raise
        status = process.poll()
        if status is not None and status < 0:
            raise ProcessKilledError(
                "export_failed",
                f"llamafactory-cli export was killed by signal {-status}",
                tool="merge",
                signum=-status,
            )
        if status != 0:
            lines = [line for line in process.log_tail().splitlines() if line.strip()][-20:]
            raise OperationFailure(
                "export_failed",
                f"llamafactory-cli export exited with {status}; its last output:\n"
                + "\n".join(lines),
            )
        job.result.metrics["export_process_seconds"] = time.monotonic() - started
        self.hub.emit(job, "Merged the adapter into the base model")

    # --- REGISTERING

    async def _register(
        self, job: pb.Job, workspace: JobWorkspace, validated: Validated, merged: Path | None
    ) -> None:
        metrics = dict(job.result.metrics)
        async with self.context.registry() as client:
            try:
                registered = await register_results(
                    client,
                    job,
                    workspace,
                    validated,
                    metrics,
                    merged_dir=merged,
                    checkpoints=(
                        saved_checkpoints(workspace.output)
                        if job.spec.output.register_checkpoints
                        else []
                    ),
                )
            except (grpc.RpcError, ForgelineError) as error:
                raise registry_failure(error, "registering the results") from error
        for field, ref in (
            ("adapter", registered.adapter),
            ("merged", registered.merged),
            ("trained_model", registered.trained_model),
        ):
            if ref is not None:
                getattr(job.result, field).CopyFrom(ref)
                what = field.replace("_", " ")
                self.hub.emit(job, f"Registered {what} {ref.model}:{ref.version}")
        for step, ref in registered.checkpoints.items():
            self.hub.store.set_checkpoint_version(job.id, step, ref)
        if registered.checkpoints:
            self.hub.emit(job, f"Registered {len(registered.checkpoints)} checkpoint(s)")


def _validated(workspace: JobWorkspace) -> Validated:
    """What VALIDATING recorded; a job whose work directory is gone cannot continue."""
    validated = workspace.load_validated()
    if validated is None:
        raise OperationFailure(
            "resume_impossible",
            f"the job's work directory {workspace.root} is gone or incomplete, so it cannot "
            "continue; submit it again",
        )
    return validated


def arguments_struct(arguments: dict[str, Any]) -> Struct:
    """Arguments as a Struct (what ``Job.effective_arguments`` holds)."""
    struct = Struct()
    struct.update(arguments)
    return struct
