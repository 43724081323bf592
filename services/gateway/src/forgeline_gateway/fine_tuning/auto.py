"""What ``"auto"`` hyperparameters become: numbers that fit the dataset's size and the model's.

Constants were the old answer (3 epochs, batch 4, LoRA's 1e-4): eight examples then train for six
steps at a rate set for a 7B model, and a small model learns nothing, silently. The rule below
follows OpenAI's published behaviour for fine-tuning defaults and the scaling practice of the
LoRA literature:

- **Epochs** aim at three passes, but every job sees at least 100 examples (a small set is
  repeated, up to 25 epochs) and at most 25,000 (a large set gets fewer passes, at least one).
- **Batch size** (the effective batch: per-device batch x gradient accumulation) is about 0.2% of
  the examples, a power of two from 1 to 32; a small set takes one example a step, so it gets
  as many optimizer steps as it can. At most 4 examples go through the device at once, the rest
  is accumulated, so "auto" never asks a GPU for more memory than a batch of 4.
- **Learning rate**: the fine-tuning type's base rate (LLaMA-Factory's examples: 1e-4 for LoRA,
  1e-5 for full) is set for 7B models in 16-bit weights (14 GB). Smaller models take larger
  steps: the multiplier is ``sqrt(14 GB / model size)``, between 0.25 and 50 — about 3.7x for a
  0.5B model, 1x for 7B, 0.3x for 70B.

The gateway README ("auto" hyperparameters) shows what this gives for 8, 100 and 10,000
examples. A value the user sets is kept as given; an unknown size (a file uploaded before counts
were kept, a model whose size the registry does not know) falls back to the old constants.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BASE_LEARNING_RATES",
    "RequestedHyperparameters",
    "ResolvedHyperparameters",
    "auto_batch_size",
    "auto_epochs",
    "auto_learning_rate_multiplier",
    "resolve",
]

FinetuningType = Literal["lora", "qlora", "full", "freeze"]
Auto = Literal["auto"]

#: LLaMA-Factory's example configs: 1e-4 for adapters, 1e-5 when the weights themselves train.
BASE_LEARNING_RATES: Final[dict[str, float]] = {
    "lora": 1e-4,
    "qlora": 1e-4,
    "full": 1e-5,
    "freeze": 1e-5,
}
#: The model size the base rates are set for: 7B parameters in 16-bit weights.
REFERENCE_MODEL_BYTES: Final = 14_000_000_000
_TARGET_EPOCHS: Final = 3
_MIN_EXAMPLES_SEEN: Final = 100
_MAX_EXAMPLES_SEEN: Final = 25_000
_MAX_EPOCHS: Final = 25
_MAX_BATCH: Final = 32
#: Examples per device step when "auto" chooses the batch; the rest is gradient accumulation.
_MAX_DEVICE_BATCH: Final = 4
_MULTIPLIER_RANGE: Final = (0.25, 50.0)
_DPO_BETA: Final = 0.1
# The old constants, for what cannot be sized.
_FALLBACK_EPOCHS: Final = 3
_FALLBACK_BATCH: Final = 4


class RequestedHyperparameters(BaseModel):
    """A job's hyperparameters as the user asked for them, each a number or ``"auto"``; stored
    with the job (`JobRecord.request`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    #: DPO's beta; None for a job whose method takes none.
    beta: Auto | float | None = None


class ResolvedHyperparameters(BaseModel):
    """A job's hyperparameters with every ``"auto"`` decided, as stored with the job and shown
    on the job object (OpenAI shows the numbers it chose, never ``"auto"``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    n_epochs: int
    #: The effective batch: `device_batch_size` x `gradient_accumulation_steps`.
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    device_batch_size: int
    gradient_accumulation_steps: int = 1
    beta: float | None = None

    def arguments(self) -> dict[str, float | int]:
        """The LLaMA-Factory arguments these hyperparameters set."""
        arguments: dict[str, float | int] = {
            "num_train_epochs": self.n_epochs,
            "per_device_train_batch_size": self.device_batch_size,
            "learning_rate": self.learning_rate,
        }
        if self.gradient_accumulation_steps > 1:
            arguments["gradient_accumulation_steps"] = self.gradient_accumulation_steps
        if self.beta is not None:
            arguments["pref_beta"] = self.beta
        return arguments


def auto_epochs(examples: int | None) -> int:
    """Epochs for `examples` training examples (None: not known)."""
    if not examples:
        return _FALLBACK_EPOCHS
    if examples * _TARGET_EPOCHS < _MIN_EXAMPLES_SEEN:
        return min(_MAX_EPOCHS, math.ceil(_MIN_EXAMPLES_SEEN / examples))
    if examples * _TARGET_EPOCHS > _MAX_EXAMPLES_SEEN:
        return max(1, _MAX_EXAMPLES_SEEN // examples)
    return _TARGET_EPOCHS


def auto_batch_size(examples: int | None) -> int:
    """The effective batch for `examples` training examples: a power of two, 1 to 32."""
    if not examples:
        return _FALLBACK_BATCH
    target = examples * 0.002
    if target < 2:
        return 1
    return min(_MAX_BATCH, 1 << math.floor(math.log2(target)))


def auto_learning_rate_multiplier(model_bytes: int) -> float:
    """The multiplier of the base rate for a model whose weights take `model_bytes` (0: not
    known), rounded to two significant figures so the job shows a readable number."""
    if model_bytes <= 0:
        return 1.0
    low, high = _MULTIPLIER_RANGE
    value = min(high, max(low, math.sqrt(REFERENCE_MODEL_BYTES / model_bytes)))
    return float(f"{value:.2g}")


def resolve(
    hyper: RequestedHyperparameters,
    *,
    finetuning_type: FinetuningType,
    examples: int | None,
    model_bytes: int,
) -> ResolvedHyperparameters:
    """`hyper` with each ``"auto"`` decided for a dataset of `examples` records and a base model
    of `model_bytes`; values the user gave are kept."""
    if hyper.batch_size == "auto":
        batch = auto_batch_size(examples)
        device = min(batch, _MAX_DEVICE_BATCH)
        accumulation = batch // device
    else:
        batch, device, accumulation = hyper.batch_size, hyper.batch_size, 1
    multiplier = (
        auto_learning_rate_multiplier(model_bytes)
        if hyper.learning_rate_multiplier == "auto"
        else hyper.learning_rate_multiplier
    )
    beta: float | None = None
    if hyper.beta is not None:
        beta = _DPO_BETA if hyper.beta == "auto" else hyper.beta
    return ResolvedHyperparameters(
        n_epochs=auto_epochs(examples) if hyper.n_epochs == "auto" else hyper.n_epochs,
        batch_size=batch,
        learning_rate_multiplier=multiplier,
        learning_rate=BASE_LEARNING_RATES[finetuning_type] * multiplier,
        device_batch_size=device,
        gradient_accumulation_steps=accumulation,
        beta=beta,
    )
