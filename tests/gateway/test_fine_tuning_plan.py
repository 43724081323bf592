"""How an OpenAI fine-tuning request becomes the trainer's job, and what the request refuses."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from forgeline_gateway.api.fine_tuning.convert import job_request
from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate
from forgeline_gateway.fine_tuning.auto import resolve
from forgeline_gateway.fine_tuning.pipeline import fine_tuned_model_name
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_gateway.fine_tuning.quality import check_requirement
from forgeline_gateway.fine_tuning.records import ArtifactQuality, DeployGate, EvalSettings
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2

TRAINING = DatasetFile(
    file_id="file-1",
    source=common_pb2.ArtifactRef(version=common_pb2.VersionRef(model="files/file-1", version=1)),
    format=trainer_pb2.DATASET_FORMAT_OPENAI_CHAT,
    ranking=False,
)


def _arguments(
    body: dict[str, Any], *, examples: int | None = None, model_bytes: int = 0
) -> dict[str, Any]:
    request = job_request(
        FineTuningJobCreate.model_validate({"model": "tiny", "training_file": "f"} | body)
    )
    spec = trainer_spec(
        request,
        job_id="ftjob-1",
        seed=3,
        base=common_pb2.VersionRef(model="tiny", version=1),
        template="chatml",
        hyperparameters=resolve(
            request.hyperparameters,
            finetuning_type=request.finetuning_type,
            examples=examples,
            model_bytes=model_bytes,
        ),
        training=TRAINING,
        validation=None,
        metadata={},
    )
    arguments: dict[str, Any] = MessageToDict(spec.arguments)
    return arguments


def test_openai_hyperparameters_become_llamafactory_arguments() -> None:
    arguments = _arguments(
        {
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 7,
                        "batch_size": 2,
                        "learning_rate_multiplier": 3,
                    }
                },
            }
        }
    )
    assert arguments["num_train_epochs"] == 7
    assert arguments["per_device_train_batch_size"] == 2
    assert arguments["learning_rate"] == pytest.approx(3e-4)
    assert arguments["template"] == "chatml"
    assert arguments["seed"] == 3


def test_auto_and_the_deprecated_field_are_accepted() -> None:
    # Nothing known of the data or the model: the old constants.
    auto = _arguments({})
    assert auto["num_train_epochs"] == 3
    assert auto["per_device_train_batch_size"] == 4
    assert auto["learning_rate"] == pytest.approx(1e-4)
    old = _arguments({"hyperparameters": {"n_epochs": 5}})
    assert old["num_train_epochs"] == 5


GIB = 1024**3


@pytest.mark.parametrize(
    ("examples", "model_bytes", "epochs", "device_batch", "accumulation", "learning_rate"),
    [
        # A handful of examples on a tiny model: repeated to 100 passes, one a step, big steps.
        (8, 10_000_000, 13, 1, None, 3.7e-3),
        (100, int(0.99 * GIB), 3, 1, None, 3.6e-4),  # Qwen2.5-0.5B in bf16
        (10_000, 14 * 10**9, 2, 4, 4, 1e-4),  # a 7B model in bf16; batch 16 = 4 x 4
        (100_000, 140 * 10**9, 1, 4, 8, 3.2e-5),  # 70B: batch capped at 32
    ],
)
def test_auto_hyperparameters_fit_the_data_and_the_model(
    examples: int,
    model_bytes: int,
    epochs: int,
    device_batch: int,
    accumulation: int | None,
    learning_rate: float,
) -> None:
    arguments = _arguments({}, examples=examples, model_bytes=model_bytes)
    assert arguments["num_train_epochs"] == epochs
    assert arguments["per_device_train_batch_size"] == device_batch
    assert arguments.get("gradient_accumulation_steps") == accumulation
    assert arguments["learning_rate"] == pytest.approx(learning_rate, rel=0.03)


def test_what_the_user_sets_is_kept_whatever_the_size() -> None:
    arguments = _arguments(
        {"hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 0.5}},
        examples=8,
        model_bytes=10_000_000,
    )
    assert arguments["num_train_epochs"] == 2
    assert arguments["per_device_train_batch_size"] == 16
    assert "gradient_accumulation_steps" not in arguments
    assert arguments["learning_rate"] == pytest.approx(5e-5)


def test_dpo_beta_and_forgeline_arguments() -> None:
    arguments = _arguments(
        {
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
            "forgeline": {
                "finetuning_type": "full",
                "arguments": {"cutoff_len": 256, "learning_rate": 2e-5},
            },
        }
    )
    assert arguments["pref_beta"] == pytest.approx(0.3)
    assert arguments["cutoff_len"] == 256
    assert arguments["learning_rate"] == pytest.approx(2e-5), "forgeline.arguments win"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"suffix": "x" * 65}, "at most 64 characters"),
        ({"method": {"type": "supervised", "dpo": {}}}, "give only the 'supervised' block"),
        (
            {"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 1}},
            "not both",
        ),
        ({"forgeline": {"quantizations": ["q4_k_m"]}}, "not among quantizations"),
        ({"forgeline": {"no_such_option": 1}}, "Extra inputs are not permitted"),
        ({"hyperparameters": {"n_epochs": 0}}, "greater than or equal to 1"),
        (
            {"forgeline": {"deploy": {"require": {"grader": "rouge_l", "min": 0.3}}}},
            "names the grader 'rouge_l', which this job does not score",
        ),
        (
            {
                "validation_file": "file-v",
                "forgeline": {"deploy": {"require": {"grader": "exact", "min": 0.3}}},
            },
            "does not score",  # the default graders are rouge_l and bleu
        ),
        (
            {
                "validation_file": "file-v",
                "forgeline": {"deploy": {"require": {"grader": "bleu"}}},
            },
            "takes one of 'min' or 'beat_base_by'",
        ),
        ({"forgeline": {"eval": {"graders": ["cosine"]}}}, "Input should be 'exact'"),
    ],
)
def test_requests_that_cannot_run_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FineTuningJobCreate.model_validate({"model": "tiny", "training_file": "f"} | body)


def test_fine_tuned_model_names_follow_openai() -> None:
    name = fine_tuned_model_name("tiny-llama", "acme corp", "demo", "ftjob-abcdef0123456789")
    assert name == "ft:tiny-llama:acme-corp:demo:abcdef01"
    assert fine_tuned_model_name("tiny", "me", None, "ftjob-12345678") == "ft:tiny:me::12345678"


def _line(artifact: str, **scores: float) -> ArtifactQuality:
    return ArtifactQuality(artifact=artifact, scores=scores, rows=8)


@pytest.mark.parametrize(
    ("require", "met", "says"),
    [
        ({"grader": "rouge_l", "min": 0.5}, True, "rouge_l of q8_0 is 0.6000, at least"),
        (
            {"grader": "rouge_l", "min": 0.7},
            False,
            "rouge_l of q8_0 is 0.6000, below the required 0.7 (short by 0.1000)",
        ),
        ({"grader": "rouge_l", "beat_base_by": 0.25}, True, "ahead by 0.3000"),
        (
            {"grader": "rouge_l", "beat_base_by": 0.5},
            False,
            "ahead by 0.3000 where 0.5 is required (short by 0.2000)",
        ),
        ({"grader": "bleu", "min": 0.1}, False, "bleu of the served q8_0 GGUF could not be"),
    ],
)
def test_deploy_require_is_checked_on_the_served_gguf(
    require: dict[str, Any], met: bool, says: str
) -> None:
    card = [_line("base", rouge_l=0.3), _line("f16", rouge_l=0.9), _line("q8_0", rouge_l=0.6)]
    verdict, reason = check_requirement(DeployGate.model_validate(require), card, "q8_0")
    assert verdict is met
    assert says in reason


def test_a_job_with_a_validation_file_is_evaluated_unless_switched_off() -> None:
    def request(**body: Any) -> FineTuningJobCreate:
        return FineTuningJobCreate.model_validate({"model": "t", "training_file": "f"} | body)

    assert request().evaluation() is None
    evaluation = request(validation_file="v").evaluation()
    assert evaluation is not None
    assert evaluation.graders == ["rouge_l", "bleu"]
    assert request(validation_file="v", forgeline={"eval": {"enabled": False}}).evaluation() is None
    assert request(forgeline={"eval": {"graders": ["exact"]}}).evaluation() is not None
    # The job stores the decision, with the graders and limits it scores with.
    assert job_request(request()).evaluation is None
    assert job_request(request(validation_file="v")).evaluation == EvalSettings()
    stored = job_request(request(forgeline={"eval": {"graders": ["exact"], "max_rows": 4}}))
    assert stored.evaluation == EvalSettings(graders=("exact",), max_rows=4)
