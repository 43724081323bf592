"""The gateway's fine-tuning jobs: ``forgeline fine-tuning list|show|cancel|retry``.

These are the OpenAI fine-tuning jobs (``ftjob-...``) of the gateway's ``/v1/fine_tuning/jobs``:
the whole pipeline from training through conversion to the deployment. ``forgeline jobs`` lists
the trainer's own jobs, the training stage of one of them. ``retry`` is Forgeline's own (OpenAI's
API has none): a failed job runs again from the stage that failed, reusing what the stages before
it registered (``POST /v1/fine_tuning/jobs/{id}/retry``); with ``--follow`` the job's new events
are printed until it ends, exiting 0 only when it succeeded.

The gateway is reached as by ``forgeline deploy`` (``--gateway URL``, ``--api-key``, an admin key).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from forgeline_cli.console import EXIT_INTERRUPTED, fail, one_line, print_listing, print_result
from forgeline_cli.gateway_admin import GatewayAdmin, gateway_options, run_admin

__all__ = ["register"]

_TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
#: How often ``retry --follow`` asks the gateway for new events.
POLL_SECONDS: Final = 1.0


class _JobError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = ""
    message: str = ""


class _Job(BaseModel):
    """A ``fine_tuning.job`` as far as the CLI shows it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str
    model: str
    created_at: int
    fine_tuned_model: str | None = None
    error: _JobError | None = None
    forgeline: dict[str, Any] = Field(default_factory=dict)


class _JobList(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Job]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    created_at: int
    level: str
    message: str


class _EventList(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Event]


def _path(job_id: str, action: str = "") -> str:
    return f"/v1/fine_tuning/jobs/{job_id}" + (f"/{action}" if action else "")


def _job(admin: GatewayAdmin, job_id: str) -> _Job:
    return _Job.model_validate_json(admin.call("GET", _path(job_id)).content)


def _events(admin: GatewayAdmin, job_id: str) -> list[_Event]:
    """The job's newest events, oldest first."""
    page = admin.call("GET", _path(job_id, "events"), params={"limit": 100})
    return list(reversed(_EventList.model_validate_json(page.content).data))


def _time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stage(job: _Job) -> str:
    stage = str(job.forgeline.get("stage") or job.status)
    failed = job.forgeline.get("failed_stage")
    return f"{stage} (in {failed})" if failed else stage


def _line(job: _Job) -> str:
    return (
        f"{job.id}  {_stage(job):<22} {_time(job.created_at)}  {job.model}"
        f"  {job.fine_tuned_model or ''}".rstrip()
    )


def _details(job: _Job) -> str:
    lines = [_line(job)]
    if job.error is not None:
        lines.append(f"  error     {job.error.code}: {one_line(job.error.message)}")
    retries = job.forgeline.get("retries")
    if retries:
        lines.append(f"  retries   {retries}")
    outputs = job.forgeline.get("outputs") or {}
    for key in ("adapter", "merged", "trained_model", "gguf_adapter", "deployment"):
        if outputs.get(key):
            lines.append(f"  {key:<10}{outputs[key]}")
    for file_type, reference in sorted((outputs.get("gguf") or {}).items()):
        lines.append(f"  gguf      {reference} ({file_type})")
    return "\n".join(lines)


def _follow(admin: GatewayAdmin, job_id: str, seen: set[str]) -> _Job:
    """Print the job's events not in ``seen`` as they come, until it ends; the ended job."""
    while True:
        job = _job(admin, job_id)
        for event in _events(admin, job_id):
            if event.id not in seen:
                seen.add(event.id)
                print(f"{_time(event.created_at)[11:]} {event.message}", flush=True)
        if job.status in _TERMINAL:
            return job
        time.sleep(POLL_SECONDS)


def _outcome(job: _Job) -> int:
    if job.status == "succeeded":
        print(f"job {job.id} succeeded: {job.fine_tuned_model or 'nothing deployed'}")
        return 0
    if job.status == "failed" and job.error is not None:
        return fail(f"job {job.id} failed ({job.error.code}): {job.error.message}")
    return fail(f"job {job.id} ended {job.status}")


# --- commands


def _list(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        page = admin.call("GET", "/v1/fine_tuning/jobs", params={"limit": args.limit}).json()
        lines = (_line(job) for job in _JobList.model_validate(page).data)
        return print_listing(page["data"], lines, as_json=args.json, empty="no fine-tuning jobs")

    return run_admin(args, action)


def _show(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        body = admin.call("GET", _path(args.job_id)).json()
        job = _Job.model_validate(body)
        return print_result(body, _details(job), as_json=args.json)

    return run_admin(args, action)


def _cancel(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        body = admin.call("POST", _path(args.job_id, "cancel")).json()
        job = _Job.model_validate(body)
        return print_result(body, f"job {job.id} {job.status}", as_json=args.json)

    return run_admin(args, action)


def _retry(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        seen = {event.id for event in _events(admin, args.job_id)} if args.follow else set()
        body = admin.call("POST", _path(args.job_id, "retry")).json()
        job = _Job.model_validate(body)
        text = f"job {job.id} {job.status} again, from the {_stage(job)} stage"
        if not args.follow:
            return print_result(body, text, as_json=args.json)
        print(text, flush=True)
        try:
            return _outcome(_follow(admin, job.id, seen))
        except KeyboardInterrupt:
            print(f"\nstopped following; the job goes on: forgeline fine-tuning show {job.id}")
            return EXIT_INTERRUPTED

    return run_admin(args, action)


def register(subparsers: Any) -> None:
    """Add ``fine-tuning list|show|cancel|retry`` to the ``forgeline`` command."""
    group = subparsers.add_parser(
        "fine-tuning",
        help="list, inspect, cancel and retry the gateway's fine-tuning jobs",
        description="The OpenAI fine-tuning jobs of the gateway (training, conversion, "
        "deployment); `forgeline jobs` shows the trainer's jobs behind them.",
    )
    commands = group.add_subparsers(dest="fine_tuning_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (up to 100)")
    gateway_options(listing)
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", help="show one job: its stage, error and outputs")
    show.add_argument("job_id", metavar="ID")
    gateway_options(show)
    show.set_defaults(run=_show)

    cancel = commands.add_parser("cancel", help="cancel a running job (what it made is removed)")
    cancel.add_argument("job_id", metavar="ID")
    gateway_options(cancel)
    cancel.set_defaults(run=_cancel)

    retry = commands.add_parser(
        "retry",
        help="run a failed job again from the stage that failed",
        description="Run a failed job again from the stage that failed, reusing what the "
        "stages before it registered (a job that failed converting is not trained again). "
        "Forgeline's own: OpenAI's API has no retry.",
    )
    retry.add_argument("job_id", metavar="ID")
    retry.add_argument(
        "--follow",
        action="store_true",
        help="print the job's events until it ends; exit 0 only if it succeeds",
    )
    gateway_options(retry)
    retry.set_defaults(run=_retry)
