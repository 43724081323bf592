"""Turn a failed ``llamafactory-cli`` run into an error a user can act on.

A traceback is no use to someone who set a batch size, and the trainer's paths are none of an API
caller's business: the few failures with a known fix are recognised in the run's output and
explained; the rest are told by the exception the run ended with (its last ``SomeError: ...``
line), every host path cut down to its file name. The whole output stays in the job's log, for
admins (``forgeline jobs logs JOB``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

FailureCode = Literal["out_of_memory", "training_failed"]

#: A Python exception as a traceback ends: ``ValueError: ...``, ``torch.OutOfMemoryError: ...``.
_EXCEPTION: Final = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b:?.*$")
#: An absolute path (POSIX), up to a quote, space, comma or closing bracket.
_PATH: Final = re.compile(r"(?<![\w.])/(?:[^\s'\",:()\[\]{}]+/)*([^\s'\",:()\[\]{}/]*)")
_OUT_OF_MEMORY: Final = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError|"
    r"DefaultCPUAllocator: can't allocate memory|CUBLAS_STATUS_ALLOC_FAILED"
)


@dataclass(frozen=True)
class TrainingFailure:
    """Why a run failed: the contract's ``OperationError.code`` and a message."""

    code: FailureCode
    message: str


def explain_failure(exit_status: int, output_tail: str, *, tail_lines: int = 20) -> TrainingFailure:
    """The failure of a run that exited with ``exit_status`` after writing ``output_tail``."""
    if _OUT_OF_MEMORY.search(output_tail):
        return TrainingFailure(
            "out_of_memory",
            "training ran out of memory. Lower per_device_train_batch_size (raising "
            "gradient_accumulation_steps keeps the effective batch), lower cutoff_len, or set "
            "gradient_checkpointing: true; on a GPU, QLoRA (quantization_bit: 4) needs far less.",
        )
    if exit_status < 0:
        return TrainingFailure(
            "training_failed",
            f"llamafactory-cli train was killed by signal {-exit_status} "
            "(an out-of-memory kill by the system looks like this: signal 9)",
        )
    lines = [line.strip() for line in output_tail.splitlines() if line.strip()]
    raised = [line for line in lines if _EXCEPTION.match(line)]
    said = raised[-1] if raised else (lines[-1] if lines else "it wrote nothing")
    return TrainingFailure(
        "training_failed",
        f"llamafactory-cli train exited with {exit_status}: {without_paths(said)} "
        "(the whole output is in the job's log)",
    )


def without_paths(text: str) -> str:
    """`text` with every absolute path cut down to its last part (``.../adapter_config.json``)."""
    return _PATH.sub(lambda match: f".../{match.group(1)}" if match.group(1) else "...", text)
