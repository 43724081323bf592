"""How an OpenAI fine-tuning request becomes the trainer's job, and what the request refuses."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate
from forgeline_gateway.fine_tuning.pipeline import fine_tuned_model_name
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2

TRAINING = DatasetFile(
    file_id="file-1",
    source=common_pb2.ArtifactRef(version=common_pb2.VersionRef(model="files/file-1", version=1)),
    format=trainer_pb2.DATASET_FORMAT_OPENAI_CHAT,
    ranking=False,
)


def _arguments(body: dict[str, Any]) -> dict[str, Any]:
    request = FineTuningJobCreate.model_validate({"model": "tiny", "training_file": "f"} | body)
    spec = trainer_spec(
        request,
        job_id="ftjob-1",
        seed=3,
        base=common_pb2.VersionRef(model="tiny", version=1),
        template="chatml",
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
    auto = _arguments({})
    assert auto["num_train_epochs"] == 3
    assert auto["learning_rate"] == pytest.approx(1e-4)
    old = _arguments({"hyperparameters": {"n_epochs": 5}})
    assert old["num_train_epochs"] == 5


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
    ],
)
def test_requests_that_cannot_run_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FineTuningJobCreate.model_validate({"model": "tiny", "training_file": "f"} | body)


def test_fine_tuned_model_names_follow_openai() -> None:
    name = fine_tuned_model_name("tiny-llama", "acme corp", "demo", "ftjob-abcdef0123456789")
    assert name == "ft:tiny-llama:acme-corp:demo:abcdef01"
    assert fine_tuned_model_name("tiny", "me", None, "ftjob-12345678") == "ft:tiny:me::12345678"
