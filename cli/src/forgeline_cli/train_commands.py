"""``forgeline train CONFIG.yaml``: submit a LLaMA-Factory YAML as its examples write it; follow.

The YAML's ``model_name_or_path`` is a registry reference (``tiny-llama:1``); its ``dataset`` (and
``eval_dataset``) name files given with ``--data NAME=PATH``. Every data file is checked record by
record here first, so a bad record is named before anything is uploaded; then each is pushed to
the registry as a DATASET version of ``datasets/NAME`` and the job is submitted to the trainer.
The command follows the job with a progress bar (loss as its postfix) and exits 0 only when the
job succeeded; ``--detach`` returns once the job is queued, and Ctrl-C detaches too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from forgeline_cli.console import EXIT_INTERRUPTED, EXIT_USAGE, fail, print_result
from forgeline_cli.jobs_commands import (
    JobFollower,
    add_trainer_option,
    follow_hint,
    job_outcome,
    run_with_trainer,
)
from forgeline_cli.services import REGISTRY
from forgeline_kit.datasets import DatasetFormat, DatasetSpec, detect_dataset, validate_dataset
from forgeline_kit.errors import ForgelineError, InvalidArgument, Unavailable
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as registry_pb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.llamafactory.settings import parse_yaml

if TYPE_CHECKING:
    from forgeline_proto.trainer.v1.trainer_pb2_grpc import (
        TrainerServiceAsyncStub as TrainerStub,
    )

__all__ = ["DATASET_MODEL_PREFIX", "check_data", "dataset_input", "job_spec", "register"]

#: Registry model of a dataset given as ``--data NAME=PATH``: ``datasets/NAME``.
DATASET_MODEL_PREFIX: Final = "datasets/"

_FORMATS: Final = {
    DatasetFormat.ALPACA: pb.DATASET_FORMAT_ALPACA,
    DatasetFormat.SHAREGPT: pb.DATASET_FORMAT_SHAREGPT,
    DatasetFormat.PRETRAIN_TEXT: pb.DATASET_FORMAT_PRETRAIN_TEXT,
    DatasetFormat.OPENAI_CHAT: pb.DATASET_FORMAT_OPENAI_CHAT,
    DatasetFormat.OPENAI_PREFERENCE: pb.DATASET_FORMAT_OPENAI_PREFERENCE,
}


class UsageError(Exception):
    """Bad command line or input files; the message is for the user."""


@dataclass(frozen=True)
class DataFile:
    """One ``--data`` file, checked, and whether it is an evaluation dataset."""

    spec: DatasetSpec
    records: int
    evaluation: bool


def _names(value: Any, key: str) -> list[str]:
    """A YAML ``dataset`` value (``a,b`` or a list) as names."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return [name.strip() for name in value]
    raise UsageError(f"the YAML's '{key}' must be dataset names separated by commas")


def _data_options(pairs: list[str]) -> dict[str, Path]:
    given: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--data {pair!r}: use NAME=PATH")
        if name in given:
            raise UsageError(f"--data {name} is given twice")
        given[name] = Path(path)
    return given


def check_data(yaml_text: str, pairs: list[str]) -> list[DataFile]:
    """The ``--data`` files the YAML names, each validated record by record.

    Raises:
        UsageError: a name the YAML uses has no ``--data``, or the other way round, or a file
            is missing.
        InvalidArgument: a file's layout is unknown or a record is malformed (named).
    """
    arguments = parse_yaml(yaml_text)
    training = _names(arguments.get("dataset"), "dataset")
    evaluation = _names(arguments.get("eval_dataset"), "eval_dataset")
    given = _data_options(pairs)
    if not training:
        raise UsageError("the YAML names no 'dataset': add 'dataset: NAME' and --data NAME=PATH")
    for name in training + evaluation:
        if name not in given:
            hint = f" (given: {', '.join(sorted(given))})" if given else ""
            raise UsageError(
                f"the YAML uses dataset '{name}' but no --data {name}=PATH was given{hint}"
            )
    unused = sorted(set(given) - set(training) - set(evaluation))
    if unused:
        raise UsageError(
            f"--data {unused[0]} is not used: the YAML's dataset/eval_dataset do not name it"
        )
    files = []
    for name in training + evaluation:
        path = given[name]
        if not path.is_file():
            raise UsageError(f"--data {name}: no such file {path}")
        if arguments.get("stage") == "pt":
            # Pre-training text has no layout to detect: .txt lines or records with 'text'.
            spec = DatasetSpec(name=name, path=path, format=DatasetFormat.PRETRAIN_TEXT)
        else:
            spec = detect_dataset(path, name)
        files.append(DataFile(spec, validate_dataset(spec), name in evaluation))
    return files


def _push_key(path: Path) -> str:
    """Digest of a file's name and bytes: what makes a re-push the same version."""
    digest = hashlib.sha256(path.name.encode() + b"\0")
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def push_dataset(registry: RegistryClient, data: DataFile) -> pb.DatasetInput:
    """Push one checked file as a DATASET version; its DatasetInput."""
    spec = data.spec
    with tempfile.TemporaryDirectory(prefix="forgeline-data-") as scratch:
        # A version is a directory: this one holds the single file, under its own name.
        copy = Path(scratch) / spec.path.name
        shutil.copyfile(spec.path, copy)
        version = await registry.push(
            Path(scratch),
            f"{DATASET_MODEL_PREFIX}{spec.name}",
            kind=registry_pb.VERSION_KIND_DATASET,
            description=f"training data '{spec.name}' ({data.records} records)",
            # The same file pushed again is the same version.
            request_id=f"dataset-{spec.name}-{_push_key(copy)}",
        )
    return dataset_input(data, common_pb2.VersionRef(model=version.model, version=version.number))


def dataset_input(data: DataFile, version: common_pb2.VersionRef) -> pb.DatasetInput:
    """The trainer's input for a checked file pushed as `version`."""
    spec = data.spec
    return pb.DatasetInput(
        name=spec.name,
        source=common_pb2.ArtifactRef(version=version, path=spec.path.name),
        format=_FORMATS[spec.format],
        ranking=spec.ranking,
        columns={k: v for k, v in spec.columns.model_dump().items() if v is not None},
        tags={k: v for k, v in spec.tags.model_dump().items() if v is not None},
    )


def job_spec(
    yaml_text: str,
    files: list[DataFile],
    inputs: list[pb.DatasetInput],
    *,
    output_model: str = "",
    no_merge: bool = False,
) -> pb.JobSpec:
    """The trainer job ``forgeline train`` submits: the YAML, and the pushed `files` (`inputs`,
    in the same order) as training or evaluation datasets."""
    pairs = list(zip(inputs, files, strict=True))
    spec = pb.JobSpec(
        llamafactory_yaml=yaml_text,
        datasets=[entry for entry, data in pairs if not data.evaluation],
        eval_datasets=[entry for entry, data in pairs if data.evaluation],
    )
    if output_model:
        spec.output.model = output_model
    if no_merge:
        spec.merge.skip = True
    return spec


def _push_all(args: argparse.Namespace, files: list[DataFile]) -> list[pb.DatasetInput]:
    async def push() -> list[pb.DatasetInput]:
        # The CLI runs beside a `forgeline up` stack's filesystem registry, or talks to an S3
        # one, which grants URLs whatever is asked.
        async with RegistryClient(
            args.registry, accept_local_files=True, wait_for_ready=False
        ) as registry:
            inputs = []
            for data in files:
                entry = await push_dataset(registry, data)
                if not args.json:
                    ref = entry.source.version
                    print(
                        f"pushed {data.spec.path} ({data.spec.format.value}, {data.records} "
                        f"records) as {ref.model}:{ref.version}",
                        flush=True,
                    )
                inputs.append(entry)
            return inputs

    return asyncio.run(push())


def _train(args: argparse.Namespace) -> int:
    config = Path(args.config)
    try:
        yaml_text = config.read_text(encoding="utf-8")
        files = check_data(yaml_text, args.data)
    except OSError as exc:
        return fail(f"cannot read {config}: {exc.strerror or exc}", EXIT_USAGE)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except InvalidArgument as exc:
        return fail(f"{exc.message}; nothing was uploaded", EXIT_USAGE)

    try:
        inputs = _push_all(args, files)
    except KeyboardInterrupt:
        print("\nforgeline: interrupted while pushing data; no job was submitted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ForgelineError as exc:
        hint = f" (is it running? {REGISTRY.hint})" if isinstance(exc, Unavailable) else ""
        return fail(
            f"pushing the data to the registry at {args.registry} failed{hint}: {exc.message}"
        )

    spec = job_spec(
        yaml_text, files, inputs, output_model=args.output_model, no_merge=args.no_merge
    )
    submitted: list[str] = []

    async def action(stub: TrainerStub) -> int:
        job = await stub.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id=str(uuid.uuid4())))
        submitted.append(job.id)
        if args.detach:
            text = f"submitted job {job.id}; follow it with {follow_hint(job.id, args.trainer)}"
            return print_result(job, text, as_json=args.json)
        if not args.json:
            print(f"submitted job {job.id}", flush=True)
        follower = JobFollower(
            stub, job.id, bar=sys.stderr.isatty(), logs=args.verbose, quiet=args.json
        )
        return job_outcome(await follower.follow(), as_json=args.json)

    try:
        return run_with_trainer(args, action)
    except KeyboardInterrupt:
        if not submitted:
            print("\nforgeline: interrupted before the job was submitted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"\ndetached; job {submitted[0]} goes on: {follow_hint(submitted[0], args.trainer)}")
        return EXIT_INTERRUPTED


def register(subparsers: Any) -> None:
    """Add ``train`` to the ``forgeline`` command."""
    train = subparsers.add_parser(
        "train",
        help="fine-tune from a LLaMA-Factory YAML and follow the job",
        description="Submit a LLaMA-Factory training YAML (model_name_or_path a registry "
        "reference such as tiny-llama:1; dataset naming --data files) and follow the job.",
    )
    train.add_argument("config", metavar="CONFIG.yaml", help="the LLaMA-Factory training YAML")
    train.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a data file the YAML's dataset or eval_dataset names (repeatable)",
    )
    REGISTRY.add_option(train)
    train.add_argument(
        "--output-model", default="", help="registry model of the results (default: BASE-ft)"
    )
    train.add_argument(
        "--no-merge", action="store_true", help="register the adapter only, without merging"
    )
    train.add_argument(
        "--verbose", action="store_true", help="also print the service's and LLaMA-Factory's log"
    )
    train.add_argument(
        "--detach", action="store_true", help="return once the job is queued, without following"
    )
    add_trainer_option(train)
    train.set_defaults(run=_train)
