"""Turn a failed ``llamafactory-cli`` run into an error a user can act on.

A traceback is no use to someone who set a batch size; the few failures with a known fix are
recognised in the run's output and explained, the rest keep the end of the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

FailureCode = Literal["out_of_memory", "training_failed"]

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
    lines = [line for line in output_tail.splitlines() if line.strip()][-tail_lines:]
    return TrainingFailure(
        "training_failed",
        f"llamafactory-cli train exited with {exit_status}; its last output:\n" + "\n".join(lines),
    )
