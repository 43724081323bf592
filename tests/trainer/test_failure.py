"""A failed training run is explained in terms a user can act on."""

from __future__ import annotations

from forgeline_trainer.llamafactory.failure import explain_failure

CUDA_OOM = """\
  File "/usr/lib/python3/site-packages/torch/nn/modules/linear.py", line 125, in forward
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.11 GiB of which 1.06 GiB is free.
"""


def test_out_of_memory_suggests_batch_size_cutoff_len_and_checkpointing() -> None:
    failure = explain_failure(1, CUDA_OOM)

    assert failure.code == "out_of_memory"
    for fix in ("per_device_train_batch_size", "cutoff_len", "gradient_checkpointing"):
        assert fix in failure.message


def test_a_kill_by_signal_is_named() -> None:
    failure = explain_failure(-9, "")

    assert failure.code == "training_failed"
    assert "killed by signal 9" in failure.message


def test_other_failures_keep_the_end_of_the_output() -> None:
    output = "\n".join(f"line {i}" for i in range(100)) + "\nValueError: Cannot find dataset."

    failure = explain_failure(1, output)

    assert failure.code == "training_failed"
    assert failure.message.startswith("llamafactory-cli train exited with 1")
    assert failure.message.endswith("ValueError: Cannot find dataset.")
    assert "line 80" not in failure.message
