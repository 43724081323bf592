"""One conversion's tool work, run as a child process of the service.

The service starts ``python -m forgeline_converter.worker_process JOB.json`` in its own process
group, so cancelling a conversion stops the worker and every llama.cpp tool it started with one
signal.
The worker reports on stdout, one JSON :class:`WorkerMessage` per line (stages, log lines, the
error), and writes a :class:`WorkerResult` to ``job.result_file`` when every output is ready:
a directory per output holding the GGUF (and its Modelfile).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_converter.errors import ConversionError
from forgeline_converter.gguf_conversion import ConversionPlan, Stage, convert_model, quantize_model
from forgeline_converter.llamacpp.adapter import convert_adapter
from forgeline_converter.llamacpp.gguf_info import GgufInfo, special_tokens
from forgeline_converter.llamacpp.smoke import DEFAULT_PROMPT, smoke_generate
from forgeline_converter.llamacpp.source import supported_architectures
from forgeline_converter.llamacpp.tools import OutType
from forgeline_converter.modelfile import (
    ModelfileParameter,
    derive_chat_format,
    ollama_template,
    render_modelfile,
)
from forgeline_kit.llamacpp import Toolchain, locate
from forgeline_kit.llamacpp.gguf_py import import_gguf
from forgeline_kit.llamacpp.toolchain import toolchain_at
from forgeline_kit.subprocesses import ToolFailed

MODEL_FILE = "model.gguf"
ADAPTER_FILE = "adapter.gguf"
MODELFILE = "Modelfile"
EXIT_FAILED = 3


class ModelfileSpec(BaseModel):
    """What the Modelfile of each GGUF model says (converter.proto's ModelfileOptions)."""

    skip: bool = False
    system: str = ""
    parameters: list[ModelfileParameter] = Field(default_factory=list)
    template_override: str = ""


class SmokeSpec(BaseModel):
    """The smoke generation of each output."""

    skip: bool = False
    prompt: str = DEFAULT_PROMPT


class ModelJob(BaseModel):
    """An HF directory to an intermediate GGUF and its quantizations."""

    kind: Literal["model"] = "model"
    source_dir: Path
    plan: ConversionPlan
    register_outtype: bool
    source_gguf: Path | None = None
    """A GGUF to quantize instead of converting ``source_dir`` (which then holds it)."""
    allow_requantize: bool = False
    modelfile: ModelfileSpec = Field(default_factory=ModelfileSpec)


class AdapterJob(BaseModel):
    """A PEFT LoRA adapter to a GGUF adapter."""

    kind: Literal["adapter"] = "adapter"
    adapter_dir: Path
    base_dir: Path
    outtype: OutType = "f16"
    base_gguf: Path | None = None
    """The base as GGUF, for the smoke generation; None skips it."""


class WorkerJob(BaseModel):
    """Everything the worker needs, written by the service as JSON."""

    task: Annotated[ModelJob | AdapterJob, Field(discriminator="kind")]
    output_dir: Path
    work_root: Path
    result_file: Path
    llamacpp_home: Path | None = None
    smoke: SmokeSpec = Field(default_factory=SmokeSpec)
    trust_remote_code: bool = False
    """The operator's ``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``: convert a model that needs its
    own Python code (refused before any tool runs otherwise)."""


class WorkerOutput(BaseModel):
    """One verified output, ready to push: ``directory`` holds the GGUF (and a Modelfile)."""

    model_config = ConfigDict(frozen=True)

    file_type: str
    """``F16``, ``Q8_0``, ``Q4_K_M`` ..."""
    adapter: bool
    directory: Path
    sha256: str
    size_bytes: int
    info: GgufInfo
    perplexity: float | None = None
    kl_divergence: float | None = None
    """Mean KL divergence against the intermediate, when asked for."""
    same_top_token: float | None = None
    """Share of tokens whose most likely next token is the intermediate's, with the KL."""
    reference_perplexity: float | None = None
    """Perplexity of the intermediate on the same text, for quantized outputs."""
    smoke_output: str | None = None


class WorkerResult(BaseModel):
    """What the worker made."""

    llamacpp_version: str
    architecture: str
    outputs: list[WorkerOutput]
    timings: dict[str, float]


class WorkerMessage(BaseModel):
    """One line of the worker's stdout."""

    type: Literal["stage", "log", "error"]
    stage: Stage | None = None
    target: str = ""
    text: str = ""
    code: str = ""
    field: str = ""


def _emit(message: WorkerMessage) -> None:
    sys.stdout.write(message.model_dump_json(exclude_defaults=True) + "\n")
    sys.stdout.flush()


class _Clock:
    """Wall time of each stage, keyed as converter.proto's ``ConversionResult.timings``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._key: str | None = None
        self._started = 0.0

    def stage(self, stage: Stage, target: str) -> None:
        self.stop()
        self._key = _stage_key(stage, target)
        self._started = time.monotonic()
        _emit(WorkerMessage(type="stage", stage=stage, target=target.upper()))

    def stop(self) -> None:
        if self._key is not None:
            elapsed = time.monotonic() - self._started
            self.timings[self._key] = self.timings.get(self._key, 0.0) + elapsed
            self._key = None


def _stage_key(stage: Stage, target: str) -> str:
    if stage == "CONVERTING":
        return "convert"
    if stage == "COMPUTING_IMATRIX":
        return "imatrix"
    return f"{'quantize' if stage == 'QUANTIZING' else 'verify'}:{target.upper()}"


def _special_tokens(tokenizer_config: dict[str, object]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for name in ("bos_token", "eos_token"):
        value = tokenizer_config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def modelfile_text(source_dir: Path, gguf_name: str, spec: ModelfileSpec) -> str:
    """The Modelfile of a GGUF converted from ``source_dir``, its TEMPLATE derived from the
    source's chat template (raises TemplateNotDerivable when that cannot be done)."""
    config_path = source_dir / "tokenizer_config.json"
    config: dict[str, object] = {}
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    chat_template = config.get("chat_template")
    return modelfile_for(
        chat_template if isinstance(chat_template, str) else None,
        _special_tokens(config),
        gguf_name,
        spec,
    )


def modelfile_for(
    chat_template: str | None, special: dict[str, str], gguf_name: str, spec: ModelfileSpec
) -> str:
    """The Modelfile of ``gguf_name`` whose model has ``chat_template`` and ``special`` tokens."""
    eos = special.get("eos_token")
    if spec.template_override:
        template = spec.template_override
        stops = [eos] if eos else []
    elif chat_template is not None:
        chat = derive_chat_format(chat_template, special)
        template = ollama_template(chat)
        stops = chat.stop_sequences(eos)
    else:
        # No chat template: the model completes raw text.
        template = "{{ .Prompt }}"
        stops = [eos] if eos else []
    return render_modelfile(
        gguf_name, template, stops, system=spec.system or None, parameters=spec.parameters
    )


def _run_model(job: WorkerJob, task: ModelJob, toolchain: Toolchain, clock: _Clock) -> WorkerResult:
    env = dict(os.environ)
    files_dir = job.work_root / "files"
    if task.source_gguf is not None:
        converted = quantize_model(
            task.source_gguf,
            files_dir,
            task.plan,
            toolchain,
            env,
            allow_requantize=task.allow_requantize,
            work_root=job.work_root,
            progress=clock.stage,
        )
    else:
        converted = convert_model(
            task.source_dir,
            files_dir,
            task.plan,
            toolchain,
            env,
            work_root=job.work_root,
            progress=clock.stage,
            trust_remote_code=job.trust_remote_code,
        )
    clock.stop()
    intermediate = converted.files[0]
    # The tools' own wall times, so the service's cost over them can be measured; the stage
    # clock keeps the rest (read-back, perplexity, smoke generation) under verify:<type>.
    for item in converted.files:
        key = "convert" if item.role == "intermediate" else f"quantize:{item.quantization.upper()}"
        clock.timings[key] = item.tool_wall_s
    chosen = [
        f
        for f in converted.files
        if f.role == "quantized"
        or (task.source_gguf is None and (task.register_outtype or len(converted.files) == 1))
    ]
    special: dict[str, str] = {}
    if task.source_gguf is not None and not task.modelfile.skip:
        special = special_tokens(task.source_gguf, toolchain)
    outputs = []
    for item in chosen:
        file_type = item.quantization.upper()
        clock.stage("VERIFYING", file_type)
        smoke = None
        if not job.smoke.skip:
            smoke = smoke_generate(
                toolchain,
                item.path,
                job.work_root / f"smoke-{file_type}.log",
                prompt=job.smoke.prompt,
            )
        directory = job.output_dir / file_type
        directory.mkdir(parents=True, exist_ok=True)
        shutil.move(item.path, directory / MODEL_FILE)
        if not task.modelfile.skip:
            text = (
                modelfile_for(item.info.chat_template, special, MODEL_FILE, task.modelfile)
                if task.source_gguf is not None
                else modelfile_text(task.source_dir, MODEL_FILE, task.modelfile)
            )
            (directory / MODELFILE).write_text(text, encoding="utf-8")
        clock.stop()
        quantized = item.role == "quantized"
        outputs.append(
            WorkerOutput(
                file_type=file_type,
                adapter=False,
                directory=directory,
                sha256=item.sha256,
                size_bytes=item.info.size_bytes,
                info=item.info.model_copy(update={"path": directory / MODEL_FILE}),
                perplexity=item.perplexity,
                kl_divergence=item.kl_divergence,
                same_top_token=item.same_top_token,
                reference_perplexity=intermediate.perplexity if quantized else None,
                smoke_output=smoke,
            )
        )
    return WorkerResult(
        llamacpp_version=converted.llamacpp_version,
        architecture=converted.architecture,
        outputs=outputs,
        timings=clock.timings,
    )


def _run_adapter(
    job: WorkerJob, task: AdapterJob, toolchain: Toolchain, clock: _Clock
) -> WorkerResult:
    env = dict(os.environ)
    file_type = task.outtype.upper()
    clock.stage("CONVERTING", file_type)
    converted = convert_adapter(
        task.adapter_dir,
        task.base_dir,
        job.work_root / "files",
        toolchain,
        env,
        outtype=task.outtype,
        work_root=job.work_root,
        trust_remote_code=job.trust_remote_code,
    )
    clock.stage("VERIFYING", file_type)
    clock.timings["convert"] = converted.tool_wall_s
    smoke = None
    if task.base_gguf is not None and not job.smoke.skip:
        smoke = smoke_generate(
            toolchain,
            task.base_gguf,
            job.work_root / "smoke-adapter.log",
            prompt=job.smoke.prompt,
            adapters=(converted.path,),
        )
    directory = job.output_dir / file_type
    directory.mkdir(parents=True, exist_ok=True)
    shutil.move(converted.path, directory / ADAPTER_FILE)
    clock.stop()
    output = WorkerOutput(
        file_type=file_type,
        adapter=True,
        directory=directory,
        sha256=converted.sha256,
        size_bytes=converted.info.size_bytes,
        info=converted.info.model_copy(update={"path": directory / ADAPTER_FILE}),
        smoke_output=smoke,
    )
    return WorkerResult(
        llamacpp_version=converted.llamacpp_version,
        architecture=converted.info.architecture,
        outputs=[output],
        timings=clock.timings,
    )


def run_job(job: WorkerJob) -> WorkerResult:
    """Do the work of ``job``; raises what the core raises."""
    toolchain = _toolchain(job.llamacpp_home)
    clock = _Clock()
    if isinstance(job.task, ModelJob):
        return _run_model(job, job.task, toolchain, clock)
    return _run_adapter(job, job.task, toolchain, clock)


def _toolchain(home: Path | None) -> Toolchain:
    return (toolchain_at(home) if home is not None else None) or locate()


def prewarm(home: Path | None) -> None:
    """Load what every job needs (gguf-py, the convert script's architecture table) so a job
    handed to a waiting worker starts with its tools at once."""
    toolchain = _toolchain(home)
    import_gguf(toolchain)
    supported_architectures(toolchain.convert_hf_to_gguf)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one job: ``JOB.json``, or with ``--stdin [LLAMACPP_HOME]`` get ready first, then read
    the job file's path from stdin (a spare worker the service keeps waiting). 0 when the result
    file is written (or no job came)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[0] == "--stdin":
        prewarm(Path(args[1]) if len(args) > 1 else None)
        line = sys.stdin.readline().strip()
        if not line:
            return 0  # the service stopped without using this worker
        args = [line]
    job = WorkerJob.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
    try:
        result = run_job(job)
    except ConversionError as error:
        _emit(
            WorkerMessage(
                type="error", code=error.reason, text=error.message, field=error.field or ""
            )
        )
        return EXIT_FAILED
    except ToolFailed as error:
        # A tool killed by a signal (the OOM killer) did not fail on the input: the service
        # runs the work again (code tool_killed, as a killed worker).
        killed = error.returncode is not None and error.returncode < 0
        code = "tool_killed" if killed else "tool_failed"
        _emit(WorkerMessage(type="error", code=code, text=str(error)[-4000:]))
        return EXIT_FAILED
    except OSError as error:
        code = "insufficient_disk" if error.errno == 28 else "internal"  # ENOSPC
        _emit(WorkerMessage(type="error", code=code, text=f"{type(error).__name__}: {error}"))
        return EXIT_FAILED
    job.result_file.write_text(result.model_dump_json(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
