"""The trainer's job commands: ``forgeline jobs list|show|cancel|logs``.

They talk to a running trainer (``--trainer HOST:PORT``, or ``FORGELINE_CLI_TRAINER``; default
``127.0.0.1:50052``). ``--json`` prints the API's JSON instead of text. ``logs --follow`` streams
a job's events until it ends, exiting 0 only when the job succeeded. ``forgeline train`` reuses the
follower defined here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from forgeline_cli.console import (
    EXIT_INTERRUPTED,
    add_json_option,
    fail,
    one_line,
    print_json,
    print_listing,
    print_result,
)
from forgeline_cli.services import TRAINER, run_command
from forgeline_kit.grpc.client import make_channel
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_proto.trainer.v1 import trainer_pb2_grpc

if TYPE_CHECKING:
    # The asynchronous stub type exists only in the generated type stubs.
    from forgeline_proto.trainer.v1.trainer_pb2_grpc import (
        TrainerServiceAsyncStub as TrainerStub,
    )

__all__ = [
    "JobFollower",
    "add_trainer_option",
    "follow_hint",
    "job_outcome",
    "register",
    "run_with_trainer",
    "state_name",
]

TERMINAL_STATES: Final = frozenset(
    {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
)
#: Bound on pages read from one listing (1000 items each).
MAX_PAGES: Final = 10_000


def state_name(state: pb.JobState.ValueType) -> str:
    """``JOB_STATE_TRAINING`` as ``training``."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def add_trainer_option(parser: argparse.ArgumentParser) -> None:
    """``--trainer`` and ``--json``, shared by every command that talks to the trainer."""
    TRAINER.add_option(parser)
    add_json_option(parser)


def run_with_trainer(
    args: argparse.Namespace, action: Callable[[TrainerStub], Awaitable[int]]
) -> int:
    """Run ``action`` with a stub on ``args.trainer``; a refused call is one line on stderr and
    a non-zero exit."""

    async def main() -> int:
        # Fail fast when nothing listens: a command line should not wait out a deadline.
        async with make_channel(args.trainer, wait_for_ready=False) as channel:
            return await action(trainer_pb2_grpc.TrainerServiceStub(channel))

    return run_command(TRAINER, args, main())


def _ref(ref: Any) -> str:
    if ref.WhichOneof("selector") == "version":
        return f"{ref.model}:{ref.version}"
    return f"{ref.model}@{ref.alias or 'latest'}"


def result_lines(job: pb.Job) -> list[str]:
    """What a succeeded job registered, one line each."""
    result = job.result
    rows = [
        (label, _ref(ref))
        for label, present, ref in (
            ("adapter", result.HasField("adapter"), result.adapter),
            ("merged", result.HasField("merged"), result.merged),
            ("model", result.HasField("trained_model"), result.trained_model),
        )
        if present
    ]
    rows += [(key, f"{value:.6g}") for key, value in sorted(result.metrics.items())]
    width = max((len(label) for label, _ in rows), default=0)
    return [f"  {label:<{width}}  {value}" for label, value in rows]


def job_outcome(job: pb.Job, *, as_json: bool) -> int:
    """Print how a finished job ended; 0 only when it succeeded."""
    if as_json:
        print_json(job)
    if job.state == pb.JOB_STATE_SUCCEEDED:
        if not as_json:
            print(f"job {job.id} succeeded; registered:")
            print("\n".join(result_lines(job)))
        return 0
    if job.state == pb.JOB_STATE_FAILED:
        where = f" while {state_name(job.failed_state)}" if job.failed_state else ""
        code = f" ({job.error.code})" if job.error.code else ""
        return fail(f"job {job.id} failed{where}{code}: {job.error.message}")
    return fail(f"job {job.id} ended {state_name(job.state)}")


def _event_line(event: pb.JobEvent) -> str:
    kind = event.WhichOneof("payload")
    text = event.message or (event.log.text if kind == "log" else "")
    return f"{event.time.ToDatetime().strftime('%H:%M:%S')} {text}"


def _summary(job: pb.Job) -> str:
    created = job.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    base = job.spec.base_model.model and _ref(job.spec.base_model)
    progress = f"{job.progress.percent:5.1f}%"
    metrics = job.progress.metrics
    loss = f"  loss {metrics.loss:.4f}" if metrics.HasField("loss") else ""
    return f"{job.id}  {state_name(job.state):<11} {progress}  {created}  {base or ''}{loss}"


class JobFollower:
    """Streams a job's events to the terminal until it ends.

    With ``bar``, training steps drive a tqdm bar on stderr (loss as its postfix) and state
    changes are printed above it; otherwise each event's one-line message is printed (log lines
    of the service and LLaMA-Factory only with ``logs``).
    """

    def __init__(
        self, stub: TrainerStub, job_id: str, *, bar: bool, logs: bool, quiet: bool = False
    ) -> None:
        self._stub = stub
        self._job_id = job_id
        self._use_bar = bar and not quiet
        self._logs = logs and not self._use_bar
        self._quiet = quiet
        self._bar: Any = None

    def _write(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def _metrics(self, metrics: pb.TrainingMetrics) -> None:
        if not self._use_bar or metrics.total_steps <= 0:
            return
        if self._bar is None:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(
                total=metrics.total_steps, desc="training", unit="step", file=sys.stderr
            )
        self._bar.total = metrics.total_steps
        self._bar.update(max(0, metrics.step - self._bar.n))
        postfix = {"epoch": f"{metrics.epoch:.2f}"}
        if metrics.HasField("loss"):
            postfix["loss"] = f"{metrics.loss:.4f}"
        self._bar.set_postfix(postfix, refresh=True)

    def _event(self, event: pb.JobEvent) -> None:
        kind = event.WhichOneof("payload")
        if kind == "metrics" and self._use_bar:
            self._metrics(event.metrics)
        elif kind == "stage_change":
            self._write(f"[{state_name(event.stage_change.state)}] {event.message}".rstrip())
        elif kind == "log" and not self._logs:
            return  # `jobs logs` shows the tools' output; the summary events suffice here
        else:
            text = event.message or (event.log.text if kind == "log" else "")
            if text:
                self._write(text)

    async def follow(self, after_sequence: int = 0) -> pb.Job:
        """Stream events after ``after_sequence`` until the job ends; the finished job."""
        try:
            stream = self._stub.WatchJob(
                pb.WatchJobRequest(job_id=self._job_id, after_sequence=after_sequence)
            )
            async for event in stream:
                self._event(event)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        job: pb.Job = await self._stub.GetJob(pb.GetJobRequest(job_id=self._job_id))
        return job


def follow_hint(job_id: str, trainer: str) -> str:
    """How to pick a job up again after detaching."""
    return f"forgeline jobs logs {job_id} --follow --trainer {trainer}"


# --- commands


def _list(args: argparse.Namespace) -> int:
    async def action(stub: TrainerStub) -> int:
        states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
        jobs: list[pb.Job] = []
        token = ""
        for _ in range(MAX_PAGES):
            page = await stub.ListJobs(
                pb.ListJobsRequest(page_size=1000, page_token=token, states=states)
            )
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token or (args.limit and len(jobs) >= args.limit):
                break
        if args.limit:
            jobs = jobs[: args.limit]
        lines = (_summary(job) for job in jobs)
        return print_listing(jobs, lines, as_json=args.json, empty="no jobs")

    return run_with_trainer(args, action)


def _show(args: argparse.Namespace) -> int:
    async def action(stub: TrainerStub) -> int:
        job = await stub.GetJob(pb.GetJobRequest(job_id=args.job_id))
        checkpoints = await stub.ListCheckpoints(
            pb.ListCheckpointsRequest(job_id=args.job_id, page_size=1000)
        )
        if args.json:
            print_json({"job": job, "checkpoints": list(checkpoints.checkpoints)})
            return 0
        print(_summary(job))
        if job.device:
            print(f"  device   {job.device} (attempt {job.attempt})")
        if job.queue_position:
            print(f"  queued   position {job.queue_position}")
        metrics = job.progress.metrics
        if job.progress.HasField("metrics"):
            print(f"  step     {metrics.step}/{metrics.total_steps}  epoch {metrics.epoch:.2f}")
        if job.state == pb.JOB_STATE_FAILED:
            print(f"  error    {job.error.code}: {one_line(job.error.message)}")
        for line in result_lines(job):
            print(line)
        for checkpoint in checkpoints.checkpoints:
            print(f"  checkpoint {checkpoint.id} step {checkpoint.step}")
        return 0

    return run_with_trainer(args, action)


def _cancel(args: argparse.Namespace) -> int:
    async def action(stub: TrainerStub) -> int:
        job = await stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id))
        return print_result(job, f"job {job.id} {state_name(job.state)}", as_json=args.json)

    return run_with_trainer(args, action)


def _logs(args: argparse.Namespace) -> int:
    async def action(stub: TrainerStub) -> int:
        if args.follow:
            follower = JobFollower(stub, args.job_id, bar=False, logs=True, quiet=args.json)
            job = await follower.follow()
            return job_outcome(job, as_json=args.json)
        events: list[pb.JobEvent] = []
        after = 0
        for _ in range(MAX_PAGES):
            page = await stub.ListJobEvents(
                pb.ListJobEventsRequest(job_id=args.job_id, page_size=1000, after_sequence=after)
            )
            events.extend(page.events)
            if not page.has_more or not page.events:
                break
            after = page.events[-1].sequence
        return print_listing(events, (_event_line(e) for e in events), as_json=args.json)

    def detached() -> int:
        try:
            return run_with_trainer(args, action)
        except KeyboardInterrupt:
            print(f"\nstopped following; the job goes on: {follow_hint(args.job_id, args.trainer)}")
            return EXIT_INTERRUPTED

    return detached()


def register(subparsers: Any) -> None:
    """Add ``jobs list|show|cancel|logs`` to the ``forgeline`` command."""
    jobs = subparsers.add_parser(
        "jobs",
        help="list, inspect, cancel and follow the trainer's jobs",
        description="The trainer's jobs (the training stage of a fine-tuning job); the "
        "gateway's OpenAI fine-tuning jobs, which can also be retried, are `forgeline "
        "fine-tuning`.",
    )
    commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        choices=[state_name(s) for s in pb.JobState.values() if s != pb.JOB_STATE_UNSPECIFIED],
        help="only jobs in this state (repeatable)",
    )
    listing.add_argument("--limit", type=int, default=0, help="at most this many jobs")
    add_trainer_option(listing)
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", help="show one job, its result and checkpoints")
    show.add_argument("job_id", metavar="ID")
    add_trainer_option(show)
    show.set_defaults(run=_show)

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="ID")
    add_trainer_option(cancel)
    cancel.set_defaults(run=_cancel)

    logs = commands.add_parser("logs", help="print a job's events")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument(
        "--follow", action="store_true", help="keep printing new events until the job ends"
    )
    add_trainer_option(logs)
    logs.set_defaults(run=_logs)
