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


def test_other_failures_say_the_exception_the_run_ended_with() -> None:
    output = "\n".join(f"line {i}" for i in range(100)) + "\nValueError: Cannot find dataset."

    failure = explain_failure(1, output)

    assert failure.code == "training_failed"
    assert failure.message == (
        "llamafactory-cli train exited with 1: ValueError: Cannot find dataset. "
        "(the whole output is in the job's log)"
    )


def test_a_failure_shows_no_traceback_and_no_host_path() -> None:
    output = """Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 72, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/var/lib/forgeline/trainer/jobs/job-1/work/peft/tuners/tuners_utils.py", line 3, in x
ValueError: Target modules {'no_such_module'} not found in the base model. Please check them.
[rank0]: some teardown noise
"""

    message = explain_failure(1, output).message

    assert "ValueError: Target modules {'no_such_module'} not found in the base model." in message
    assert "Traceback" not in message
    assert "/opt" not in message
    assert "/var/lib" not in message
    assert "tuner.py" not in message  # only the exception line, not the frames


def test_a_path_in_the_exception_is_cut_to_its_file_name() -> None:
    output = "OSError: Can't load /var/lib/forgeline/trainer/jobs/j/base/config.json, check it\n"

    message = explain_failure(1, output).message

    assert "OSError: Can't load .../config.json, check it" in message
    assert "/var" not in message
