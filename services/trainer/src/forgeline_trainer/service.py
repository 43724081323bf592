"""The trainer's domain logic (`Trainer`), independent of gRPC.

Submitting checks a spec without fetching anything and queues the job; the queue runs each job
through :class:`~forgeline_trainer.jobs.runner.JobRunner`. At start, jobs a previous trainer left
unfinished are taken up again: running ones ahead of the queue, from where they were; a
LLaMA-Factory run the previous trainer left behind (its parent-death signal lost) is stopped
first, so a job never trains twice at once.
"""

from __future__ import annotations

import logging
import secrets
import socket
import string
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Final

from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from forgeline_kit.operations.page_tokens import decode_position, encode_page_token
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.jobs.gpus import GpuPool
from forgeline_trainer.jobs.hub import TERMINAL, JobHub, now
from forgeline_trainer.jobs.queue import JobQueue
from forgeline_trainer.jobs.registration import output_model
from forgeline_trainer.jobs.runner import JobRunner, RunnerContext, arguments_struct
from forgeline_trainer.jobs.store import JobStore
from forgeline_trainer.jobs.workspace import JobWorkspace, effective_arguments
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.llamafactory.process import stop_stale_group
from forgeline_trainer.metrics import TrainerMetrics
from forgeline_trainer.settings import TrainerSettings
from forgeline_trainer.submission import plan_job

__all__ = ["Trainer"]

log = logging.getLogger(__name__)

#: Deadline of the reference checks SubmitJob makes (a down registry answers UNAVAILABLE).
SUBMIT_REGISTRY_TIMEOUT_S: Final = 15.0
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_ACTIVE: Final = (
    pb.JOB_STATE_VALIDATING,
    pb.JOB_STATE_TRAINING,
    pb.JOB_STATE_EXPORTING,
    pb.JOB_STATE_REGISTERING,
)
_STAGE_ENUM: Final = {
    "sft": pb.STAGE_SFT,
    "pt": pb.STAGE_PT,
    "dpo": pb.STAGE_DPO,
    "kto": pb.STAGE_KTO,
    "rm": pb.STAGE_RM,
    "ppo": pb.STAGE_PPO,
}
_TYPE_ENUM: Final = {
    "lora": pb.FINETUNING_TYPE_LORA,
    "full": pb.FINETUNING_TYPE_FULL,
    "freeze": pb.FINETUNING_TYPE_FREEZE,
}


def _page_size(requested: int, default: int) -> int:
    return default if requested <= 0 else min(requested, 1000)


def _base_model_name(base: str) -> str:
    """``tiny-llama`` of a text reference ``tiny-llama:3`` or ``tiny-llama@prod``."""
    return base.split("@", 1)[0].split(":", 1)[0]


def _reference(ref: common_pb2.VersionRef) -> str:
    if ref.WhichOneof("selector") == "version":
        return f"{ref.model}:{ref.version}"
    return f"{ref.model}@{ref.alias or 'latest'}"


async def _resolve(
    client: RegistryClient, reference: str, field: str, *, full: bool = False
) -> rpb.Version:
    view = rpb.VERSION_VIEW_FULL if full else rpb.VERSION_VIEW_BASIC
    try:
        version: rpb.Version = await client.resolve_version(
            rpb.ResolveVersionRequest(reference=reference, view=view)
        )
    except (NotFound, InvalidArgument) as error:
        # The kit's client interceptor raises the registry's status as a domain error.
        raise InvalidArgument(
            f"'{reference}' is not in the registry ({error}); register it first or fix the "
            "reference",
            field=field,
        ) from error
    return version


class Trainer:
    """Fine-tuning jobs: submit, inspect, cancel, watch."""

    def __init__(
        self,
        settings: TrainerSettings,
        store: JobStore,
        *,
        device_kind: DeviceKind,
        device: str,
        env: dict[str, str],
        registry: Callable[[], RegistryClient],
        metrics: TrainerMetrics | None = None,
        gpus: int | None = None,
    ) -> None:
        self.settings = settings
        #: GPUs this trainer may use (``None``: unknown, not checked at submission).
        self.gpus = gpus
        self.store = store
        self.device_kind = device_kind
        self.hub = JobHub(store, metrics)
        self.runner = JobRunner(
            RunnerContext(
                hub=self.hub,
                settings=settings,
                device_kind=device_kind,
                device=device,
                env=env,
                registry=registry,
            )
        )
        self.queue = JobQueue(
            self.runner.run,
            settings.max_concurrent_jobs,
            GpuPool.visible(env, gpus or 0),
            gpu_count=lambda job_id: self.store.get(job_id).spec.gpu_count,
        )

    def recover(self) -> None:
        """Take up the jobs a previous trainer left unfinished (call once, in the event loop,
        before serving: stopping a run left behind can take a few seconds)."""
        self._stop_stale_runs()
        for job in self.store.in_states([pb.JOB_STATE_CANCELLING]):
            # Its processes ended with the trainer that ran them (or were stopped just above).
            self.hub.transition(job, pb.JOB_STATE_CANCELLED, "Job cancelled")
        for job in reversed(self.store.in_states(_ACTIVE)):
            log.info("resuming job %s (%s)", job.id, pb.JobState.Name(job.state))
            self.queue.put(job.id, front=True)
        for job in self.store.in_states([pb.JOB_STATE_QUEUED]):
            self.queue.put(job.id)

    def _stop_stale_runs(self) -> None:
        """Stop every LLaMA-Factory process group recorded for a job that is still running.

        The parent-death signal normally ends a run with the trainer that started it, but not
        always (the group outlived a container's init, or was reparented): such a run would
        train beside the one the job starts now, on the same GPUs and output directory. Only a
        group recorded on this host, boot and pid namespace whose leader is still the recorded
        process (same start time) is signalled; a pid given to another process is left alone.
        """
        for job_id, tool, record in self.store.run_processes():
            found = stop_stale_group(record)
            self.store.clear_run_process(job_id)
            if found.outcome == "reused":
                log.info(
                    "job %s: pid %d is no longer its %s run (another process has it); left alone",
                    job_id,
                    record.pgid,
                    tool,
                )
            elif found.outcome == "elsewhere" and record.hostname != socket.gethostname():
                # A state directory moved to another host: the run cannot be seen from here.
                log.warning(
                    "job %s: its %s run was recorded on host %s (process group %d); if that "
                    "host still runs it, stop it there",
                    job_id,
                    tool,
                    record.hostname,
                    record.pgid,
                )
            if found.outcome != "stopped":
                continue
            how = "killed (SIGKILL)" if found.killed else "stopped (SIGTERM)"
            message = (
                f"The {tool} run a previous trainer left running (process group {record.pgid}, "
                f"{len(found.members)} processes) was {how} before the job runs again"
            )
            log.warning("job %s: %s", job_id, message)
            try:
                job = self.store.get(job_id)
            except NotFound:
                continue
            if job.state not in TERMINAL:
                self.hub.emit(job, message, level=pb.EVENT_LEVEL_WARNING)

    async def stop(self) -> None:
        """End watches and stop running jobs (they resume at the next start)."""
        self.hub.close()
        await self.queue.stop()

    # --- jobs

    def _check_queue_room(self) -> None:
        waiting = self.store.count_by_state().get(pb.JOB_STATE_QUEUED, 0)
        cap = self.settings.max_queued_jobs
        if waiting >= cap:
            raise ResourceExhausted(
                f"the trainer already has {waiting} jobs waiting for a slot, its limit "
                f"(FORGELINE_TRAINER_MAX_QUEUED_JOBS={cap}): submit again once some have started, "
                "or cancel jobs you no longer need"
            )

    async def submit(self, spec: pb.JobSpec, request_id: str, validate_only: bool) -> pb.Job:
        """Check ``spec`` and queue it (or only check it).

        Raises:
            InvalidArgument: naming the field at fault and the fix.
            Unavailable: the registry cannot be reached to check the references.
            ResourceExhausted: as many jobs as the settings allow are waiting already.
        """
        if request_id and not validate_only:
            existing = self.store.find_by_request(request_id)
            if existing is not None:
                return self._view(existing)
        # Checked on validate_only too: the gateway asks it before it accepts a job, so a full
        # queue is a 429 at creation rather than a job that fails later.
        self._check_queue_room()
        plan = plan_job(
            spec,
            device=self.device_kind,
            gpus_available=self.gpus,
            policy=self.settings.job_policy(),
        )
        spec = await self._pin_references(spec, plan.base_model)
        job_id = (
            ""
            if validate_only
            else "ftjob-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        )
        workspace = JobWorkspace(self.settings.state_dir, job_id or "validate-only")
        arguments = effective_arguments(
            plan.arguments,
            workspace,
            checkpoint_interval=self.settings.checkpoint_interval_steps,
        )
        filled = pb.JobSpec()
        filled.CopyFrom(spec)
        filled.stage = _STAGE_ENUM[arguments["stage"]]
        if spec.finetuning_type != pb.FINETUNING_TYPE_QLORA:
            filled.finetuning_type = _TYPE_ENUM[arguments["finetuning_type"]]
        if filled.time_limit.ToTimedelta() <= timedelta(0):  # unset or zero
            # The job shows the limit that applies to it.
            filled.time_limit.FromTimedelta(timedelta(seconds=self.settings.max_job_seconds))
        if arguments["stage"] == "rm":
            # LLaMA-Factory's export merges into a plain causal LM and drops the value head: a
            # merged reward model would score nothing. The adapter (value head included) is it.
            filled.merge.skip = True
        base = (
            plan.base_model.model
            if not isinstance(plan.base_model, str)
            else _base_model_name(plan.base_model)
        )
        created = now()
        job = pb.Job(
            id=job_id,
            request_id=request_id,
            spec=filled,
            state=pb.JOB_STATE_QUEUED,
            effective_arguments=arguments_struct(arguments),
            create_time=created,
            update_time=created,
        )
        job.spec.output.model = output_model(job, base)
        if validate_only:
            return job
        stored = self.store.create(job)
        if stored.id != job.id:
            return self._view(stored)  # the same request_id won a race
        self.hub.emit(
            job,
            "Created fine-tuning job",
            stage_change=pb.StageChange(
                previous_state=pb.JOB_STATE_UNSPECIFIED, state=pb.JOB_STATE_QUEUED
            ),
        )
        self.queue.put(job.id)
        return self._view(job)

    async def _pin_references(
        self, spec: pb.JobSpec, yaml_base_model: common_pb2.VersionRef | str
    ) -> pb.JobSpec:
        """``spec`` with the base model and dataset versions resolved to numbers, so the job
        (and a resumed one) uses what existed at submission; unknown references refused."""
        pinned = pb.JobSpec()
        pinned.CopyFrom(spec)
        async with RegistryClient(
            self.settings.registry_target,
            timeout=SUBMIT_REGISTRY_TIMEOUT_S,
            wait_for_ready=False,
        ) as client:
            if isinstance(yaml_base_model, str):
                await _resolve(client, yaml_base_model, "model_name_or_path", full=False)
            else:
                base = await _resolve(client, _reference(spec.base_model), "base_model")
                pinned.base_model.CopyFrom(
                    common_pb2.VersionRef(model=base.model, version=base.number)
                )
            inputs = [("datasets", d) for d in pinned.datasets]
            inputs += [("eval_datasets", d) for d in pinned.eval_datasets]
            counters: dict[str, int] = {}
            for group, dataset in inputs:
                index = counters.get(group, 0)
                counters[group] = index + 1
                field = f"{group}[{index}].source"
                version = await _resolve(
                    client, _reference(dataset.source.version), f"{field}.version", full=True
                )
                paths = [artifact.path for artifact in version.artifacts]
                if dataset.source.path and dataset.source.path not in paths:
                    raise InvalidArgument(
                        f"{version.model}:{version.number} has no file "
                        f"'{dataset.source.path}' (it holds {', '.join(paths)})",
                        field=f"{field}.path",
                    )
                dataset.source.version.CopyFrom(
                    common_pb2.VersionRef(model=version.model, version=version.number)
                )
        return pinned

    def get(self, job_id: str) -> pb.Job:
        """One job, with its queue position.

        Raises:
            NotFound: no such job.
        """
        return self._view(self.hub.load(job_id))

    def _view(self, job: pb.Job) -> pb.Job:
        view = pb.Job()
        view.CopyFrom(job)
        view.queue_position = self.queue.position(job.id)
        return view

    def list_jobs(
        self,
        page_size: int,
        page_token: str,
        states: Sequence[pb.JobState.ValueType],
        metadata: dict[str, str],
    ) -> tuple[list[pb.Job], str]:
        """A page of jobs, newest first, and the token of the next page."""
        jobs, position = self.store.page(
            before=decode_position(page_token),
            states=states,
            metadata=metadata,
            limit=_page_size(page_size, 50),
        )
        views = [self.get(job.id) for job in jobs]
        return views, "" if position is None else encode_page_token(position)

    def cancel(self, job_id: str) -> pb.Job:
        """Cancel a job: at once when queued; a running one goes CANCELLING until its processes
        are gone.

        Raises:
            NotFound: no such job.
            FailedPrecondition: the job already ended (other than cancelled).
        """
        job = self.hub.load(job_id)
        if job.state in (pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED):
            return self._view(job)
        if job.state in TERMINAL:
            raise FailedPrecondition(
                f"job '{job_id}' already ended ({pb.JobState.Name(job.state)}); only a queued or "
                "running job can be cancelled",
                field="job_id",
            )
        if self.queue.remove(job_id):
            self.hub.transition(job, pb.JOB_STATE_CANCELLED, "Job cancelled")
            return self._view(job)
        self.hub.transition(job, pb.JOB_STATE_CANCELLING, "Cancelling the job")
        if not self.queue.cancel(job_id):
            # Not running in this trainer (it was between slots): nothing to stop.
            self.hub.transition(job, pb.JOB_STATE_CANCELLED, "Job cancelled")
        return self._view(job)

    # --- events and checkpoints

    def watch(
        self, job_id: str, after: int, kinds: Sequence[pb.JobEventKind.ValueType]
    ) -> AsyncIterator[pb.JobEvent]:
        """The job's events after ``after``, then live ones, until it ends."""
        self.hub.load(job_id)
        return self.hub.watch(job_id, after, kinds)

    def list_events(
        self,
        job_id: str,
        page_size: int,
        after: int,
        descending: bool,
        kinds: Sequence[pb.JobEventKind.ValueType],
    ) -> tuple[list[pb.JobEvent], bool]:
        """A page of past events and whether more follow."""
        self.hub.load(job_id)
        limit = _page_size(page_size, 20)
        events = self.store.events(
            job_id, after=after, limit=limit + 1, descending=descending, kinds=kinds
        )
        return events[:limit], len(events) > limit

    def list_checkpoints(
        self, job_id: str, page_size: int, page_token: str
    ) -> tuple[list[pb.Checkpoint], str]:
        """A page of checkpoints, highest step first, and the next page's token."""
        self.hub.load(job_id)
        limit = _page_size(page_size, 50)
        found = self.store.checkpoints(
            job_id, before_step=decode_position(page_token), limit=limit + 1
        )
        page = [checkpoint for checkpoint, _ in found[:limit]]
        token = encode_page_token(page[-1].step) if len(found) > limit else ""
        return page, token
