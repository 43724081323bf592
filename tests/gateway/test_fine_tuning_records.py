"""The gateway's stored fine-tuning records: versioned, tolerant of what they do not know, and
the gateway's own (no API model inside), so jobs stored by an earlier gateway still load and
show the same job object.

The ``STORED_*`` literals are rows of ``fine_tuning_jobs.record`` exactly as the gateway wrote
them before records were versioned (a `JobRecord` holding the API's `FineTuningJobCreate` under
``request``); the ``VIEW_*`` literals are the job objects the API answered for them then.
"""

from __future__ import annotations

import ast
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest
from database_urls import database_url
from pydantic import ValidationError

import forgeline_gateway.fine_tuning
from forgeline_gateway.api.fine_tuning.convert import job_object, job_request
from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate
from forgeline_gateway.api.fine_tuning.serving import FineTuningServing
from forgeline_gateway.fine_tuning.auto import RequestedHyperparameters
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.records import (
    DeployGate,
    DeploySettings,
    EvalSettings,
    EventRecord,
    JobFailure,
    JobRecord,
    JobRequest,
    Stage,
)
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.databases import connect
from forgeline_kit.sqlite import sqlite_url

ORGANIZATION = "org-test"

#: A supervised job that failed converting: LoRA options, arguments, two quantizations,
#: deploy.require and eval options, its error, a quality line and its resolved hyperparameters.
STORED_FAILED_EVALUATED = (
    '{"id":"ftjob-0123456789abcdef01234567","created_at":1700000000,"owner":"acme",'
    '"request":{"model":"tiny-llama","training_file":"file-train","validation_file":"file-val",'
    '"suffix":"support-bot","seed":7,"metadata":{"team":"support"},'
    '"method":{"type":"supervised","supervised":{"hyperparameters":{"batch_size":"auto",'
    '"learning_rate_multiplier":"auto","n_epochs":2}},"dpo":null},"hyperparameters":null,'
    '"integrations":null,"forgeline":{"finetuning_type":"lora","stage":null,"lora":{"rank":16,'
    '"alpha":32.0,"dropout":null,"target":null,"additional_target":null},'
    '"arguments":{"cutoff_len":512},"quantizations":["q8_0","q4_k_m"],"deploy":{"enabled":true,'
    '"backend":"llamacpp","quantization":"q4_k_m","context_size":2048,"serve":"merged",'
    '"alias":"production","require":{"grader":"rouge_l","min":0.3,"beat_base_by":null}},'
    '"eval":{"enabled":true,"graders":["rouge_l","exact"],"max_rows":8,"max_tokens":64,'
    '"pass_threshold":0.5}}},"fine_tuned_model":"ft:tiny-llama:acme:support-bot:01234567",'
    '"seed":7,"base_version":"tiny-llama:1","template":"chatml","stage":"failed",'
    '"trainer_state":"SUCCEEDED","trainer_job_id":"tj-1","trainer_last_sequence":42,'
    '"cancel_requested":false,"outputs":{"adapter":"ft-adapter:1","merged":"ft-merged:1",'
    '"trained_model":null,"gguf":{"f16":"ft-gguf:1","q8_0":"ft-gguf:2"},"gguf_adapter":null,'
    '"deployment":null,"served_as":null,"base_deployment":null,"agreement":null,'
    '"quality":[{"artifact":"base","version":"tiny-llama:2","scores":{"rouge_l":0.25},'
    '"passed":{"rouge_l":2},"rows":8,"errored":0,"eval_id":"eval_1","run_id":"run_1",'
    '"error":null,"conversion":{}}],"gate":null,"gate_reason":null},"trained_tokens":1234,'
    '"estimated_finish":null,"finished_at":1700000500,"error":{"code":"conversion_failed",'
    '"message":"boom","param":null},"failed_stage":"converting","retries":1,'
    '"conversion_sequences":{"ftjob-x-gguf":3},"hyperparameters":{"n_epochs":2,"batch_size":1,'
    '"learning_rate_multiplier":3.7,"learning_rate":0.00037000000000000005,'
    '"device_batch_size":1,"gradient_accumulation_steps":1,"beta":null}}'
)

VIEW_FAILED_EVALUATED = (
    '{"id":"ftjob-0123456789abcdef01234567","object":"fine_tuning.job","created_at":1700000000,'
    '"error":{"code":"conversion_failed","message":"boom","param":null},'
    '"fine_tuned_model":null,"finished_at":1700000500,"hyperparameters":{"batch_size":1,'
    '"learning_rate_multiplier":3.7,"n_epochs":2},"model":"tiny-llama",'
    '"organization_id":"org-test","result_files":[],"seed":7,"status":"failed",'
    '"trained_tokens":null,"training_file":"file-train","validation_file":"file-val",'
    '"estimated_finish":null,"integrations":null,"metadata":{"team":"support"},'
    '"method":{"type":"supervised","supervised":{"hyperparameters":{"batch_size":1,'
    '"learning_rate_multiplier":3.7,"n_epochs":2}},"dpo":null},'
    '"user_provided_suffix":"support-bot","forgeline":{"stage":"failed",'
    '"trainer_job_id":"tj-1","trainer_state":"succeeded","outputs":{"adapter":"ft-adapter:1",'
    '"merged":"ft-merged:1","gguf":{"f16":"ft-gguf:1","q8_0":"ft-gguf:2"},'
    '"quality":[{"artifact":"base","version":"tiny-llama:2","scores":{"rouge_l":0.25},'
    '"passed":{"rouge_l":2},"rows":8,"errored":0,"eval_id":"eval_1","run_id":"run_1",'
    '"conversion":{}}]},"failed_stage":"converting","retries":1,"finetuning_type":"lora",'
    '"training_stage":"sft","evaluated":true}}'
)

#: A DPO job served merged, stored before resolved hyperparameters were kept (null).
STORED_DPO_SUCCEEDED = (
    '{"id":"ftjob-dpo","created_at":1690000000,"owner":"forgeline",'
    '"request":{"model":"tiny-llama","training_file":"file-pairs","validation_file":null,'
    '"suffix":null,"seed":null,"metadata":null,"method":{"type":"dpo","supervised":null,'
    '"dpo":{"hyperparameters":{"batch_size":"auto","learning_rate_multiplier":"auto",'
    '"n_epochs":"auto","beta":0.2}}},"hyperparameters":null,"integrations":null,'
    '"forgeline":{"finetuning_type":"lora","stage":null,"lora":{"rank":null,"alpha":null,'
    '"dropout":null,"target":null,"additional_target":null},"arguments":{},'
    '"quantizations":["q8_0"],"deploy":{"enabled":true,"backend":"llamacpp",'
    '"quantization":"q8_0","context_size":2048,"serve":"adapter","alias":null,"require":null},'
    '"eval":null}},"fine_tuned_model":"ft:tiny-llama:forgeline::dpo","seed":5,'
    '"base_version":"tiny-llama:1","template":null,"stage":"succeeded",'
    '"trainer_state":"SUCCEEDED","trainer_job_id":"","trainer_last_sequence":0,'
    '"cancel_requested":false,"outputs":{"adapter":"a:1","merged":"m:1","trained_model":null,'
    '"gguf":{"q8_0":"g:1"},"gguf_adapter":null,"deployment":"ft:tiny-llama:forgeline::dpo",'
    '"served_as":"merged","base_deployment":null,"agreement":null,"quality":[],"gate":null,'
    '"gate_reason":null},"trained_tokens":99,"estimated_finish":null,"finished_at":1690000100,'
    '"error":null,"failed_stage":null,"retries":0,"conversion_sequences":{},'
    '"hyperparameters":null}'
)

VIEW_DPO_SUCCEEDED = (
    '{"id":"ftjob-dpo","object":"fine_tuning.job","created_at":1690000000,"error":null,'
    '"fine_tuned_model":"ft:tiny-llama:forgeline::dpo","finished_at":1690000100,'
    '"hyperparameters":{"batch_size":4,"learning_rate_multiplier":1.0,"n_epochs":3},'
    '"model":"tiny-llama","organization_id":"org-test","result_files":[],"seed":5,'
    '"status":"succeeded","trained_tokens":99,"training_file":"file-pairs",'
    '"validation_file":null,"estimated_finish":null,"integrations":null,"metadata":null,'
    '"method":{"type":"dpo","supervised":null,"dpo":{"hyperparameters":{"batch_size":4,'
    '"learning_rate_multiplier":1.0,"n_epochs":3,"beta":0.2}}},"user_provided_suffix":null,'
    '"forgeline":{"stage":"succeeded","trainer_job_id":null,"trainer_state":"succeeded",'
    '"outputs":{"adapter":"a:1","merged":"m:1","gguf":{"q8_0":"g:1"},'
    '"deployment":"ft:tiny-llama:forgeline::dpo","served_as":"merged","quality":[]},'
    '"failed_stage":null,"retries":0,"finetuning_type":"lora","training_stage":"dpo",'
    '"evaluated":false}}'
)

#: A reward model training: the deprecated top-level hyperparameters, `forgeline.stage`, a
#: validation file with eval switched off, deploy switched off.
STORED_RM_TRAINING = (
    '{"id":"ftjob-rm","created_at":1680000000,"owner":"forgeline","request":{"model":"tiny",'
    '"training_file":"f","validation_file":"v","suffix":null,"seed":null,"metadata":null,'
    '"method":null,"hyperparameters":{"batch_size":"auto","learning_rate_multiplier":"auto",'
    '"n_epochs":4},"integrations":null,"forgeline":{"finetuning_type":"full","stage":"rm",'
    '"lora":{"rank":null,"alpha":null,"dropout":null,"target":null,"additional_target":null},'
    '"arguments":{},"quantizations":["q8_0"],"deploy":{"enabled":false,"backend":"llamacpp",'
    '"quantization":"q8_0","context_size":2048,"serve":"adapter","alias":null,"require":null},'
    '"eval":{"enabled":false,"graders":["rouge_l","bleu"],"max_rows":32,"max_tokens":64,'
    '"pass_threshold":0.5}}},"fine_tuned_model":"ft:tiny:forgeline::rm","seed":1,'
    '"base_version":"tiny:3","template":null,"stage":"training","trainer_state":"TRAINING",'
    '"trainer_job_id":"tj-3","trainer_last_sequence":0,"cancel_requested":false,'
    '"outputs":{"adapter":null,"merged":null,"trained_model":null,"gguf":{},'
    '"gguf_adapter":null,"deployment":null,"served_as":null,"base_deployment":null,'
    '"agreement":null,"quality":[],"gate":null,"gate_reason":null},"trained_tokens":null,'
    '"estimated_finish":1680000900,"finished_at":null,"error":null,"failed_stage":null,'
    '"retries":0,"conversion_sequences":{},"hyperparameters":null}'
)

VIEW_RM_TRAINING = (
    '{"id":"ftjob-rm","object":"fine_tuning.job","created_at":1680000000,"error":null,'
    '"fine_tuned_model":null,"finished_at":null,"hyperparameters":{"batch_size":4,'
    '"learning_rate_multiplier":1.0,"n_epochs":4},"model":"tiny","organization_id":"org-test",'
    '"result_files":[],"seed":1,"status":"running","trained_tokens":null,"training_file":"f",'
    '"validation_file":"v","estimated_finish":1680000900,"integrations":null,"metadata":null,'
    '"method":{"type":"supervised","supervised":{"hyperparameters":{"batch_size":4,'
    '"learning_rate_multiplier":1.0,"n_epochs":4}},"dpo":null},"user_provided_suffix":null,'
    '"forgeline":{"stage":"training","trainer_job_id":"tj-3","trainer_state":"training",'
    '"outputs":{"gguf":{},"quality":[]},"failed_stage":null,"retries":0,'
    '"finetuning_type":"full","training_stage":"rm","evaluated":false}}'
)

#: An event as the gateway stored it before records were versioned.
STORED_EVENT = (
    '{"job_id":"ftjob-rm","sequence":1,"created_at":1680000001,"level":"info","type":"metrics",'
    '"message":"Step 1/10","data":{"step":1,"total_steps":10,"train_loss":1.5}}'
)
VIEW_EVENT = {
    "id": "ftevent-rm-1",
    "object": "fine_tuning.job.event",
    "created_at": 1680000001,
    "level": "info",
    "message": "Step 1/10",
    "type": "metrics",
    "data": {"step": 1, "total_steps": 10, "train_loss": 1.5},
}

#: (stored row, job object then) of each job, newest first.
STORED_JOBS = [
    (STORED_FAILED_EVALUATED, VIEW_FAILED_EVALUATED),
    (STORED_DPO_SUCCEEDED, VIEW_DPO_SUCCEEDED),
    (STORED_RM_TRAINING, VIEW_RM_TRAINING),
]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "gateway.sqlite3"


@pytest.fixture
def store(database: Path) -> Iterator[JobStore]:
    opened = JobStore.open(database_url(database))
    yield opened
    opened.close()


#: The tables an earlier gateway kept its jobs in, before the operations layer adopted them.
EARLIER_TABLES = """
CREATE TABLE IF NOT EXISTS fine_tuning_jobs (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, terminal INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fine_tuning_events (
    job_id TEXT NOT NULL, sequence INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""


def _write_earlier_rows(database: Path, jobs: Sequence[str], events: Sequence[str] = ()) -> None:
    """Rows written as an earlier gateway wrote them, in its own tables."""
    with closing(sqlite3.connect(database)) as db:
        db.executescript(EARLIER_TABLES)
        for text in jobs:
            stored = json.loads(text)
            terminal = stored["stage"] in ("succeeded", "failed", "cancelled")
            db.execute(
                "INSERT INTO fine_tuning_jobs (id, created_at, terminal, record) "
                "VALUES (?, ?, ?, ?)",
                (stored["id"], stored["created_at"], int(terminal), text),
            )
        for text in events:
            stored = json.loads(text)
            db.execute(
                "INSERT INTO fine_tuning_events (job_id, sequence, record) VALUES (?, ?, ?)",
                (stored["job_id"], stored["sequence"], text),
            )
        db.commit()


def _write_operation_rows(database: Path, job: str, event: str) -> None:
    """A job and an event as a newer gateway would store them through the operations layer."""
    stored = json.loads(job)
    db = connect(database_url(database))
    try:
        db.execute(
            "INSERT INTO operations (kind, id, request_id, created, state, terminal, "
            "last_sequence, record) VALUES ('fine_tuning_job', ?, NULL, ?, ?, ?, 1, ?)",
            (stored["id"], stored["created_at"], stored["stage"], 1, job.encode()),
        )
        db.execute(
            "INSERT INTO operation_events (operation_id, sequence, kind, event) "
            "VALUES (?, 1, 'message', ?)",
            (json.loads(event)["job_id"], event.encode()),
        )
    finally:
        db.close()


def _serving(store: JobStore) -> FineTuningServing:
    pipeline = Pipeline(
        store,
        trainer=cast(Any, None),
        converter=cast(Any, None),
        registry=cast(Any, None),
        files=cast(Any, None),
        deployments=cast(Any, None),
        organization=ORGANIZATION,
    )
    return FineTuningServing(pipeline, ORGANIZATION)


async def test_jobs_stored_before_records_were_versioned_load_and_show_the_same_job(
    database: Path,
) -> None:
    _write_earlier_rows(database, [stored for stored, _ in STORED_JOBS], [STORED_EVENT])
    store = JobStore.open(sqlite_url(database))  # the earlier layout was SQLite's
    serving = _serving(store)
    views = [json.loads(view) for _, view in STORED_JOBS]

    listed = await serving.list(None, 20)
    assert [job.model_dump(mode="json") for job in listed.data] == views
    assert not listed.has_more
    for view in views:
        retrieved = await serving.retrieve(view["id"])
        assert retrieved.model_dump(mode="json") == view
    events = await serving.events("ftjob-rm", None, 20)
    assert [event.model_dump(mode="json") for event in events.data] == [VIEW_EVENT]
    # The running job is the one a restarted gateway resumes.
    assert [job.id for job in store.unfinished()] == ["ftjob-rm"]
    store.close()


def test_an_unversioned_job_becomes_the_pipelines_own_request(store: JobStore) -> None:
    """What the pipeline reads of an old job: its body's implicit choices decided as that body
    decided them (the method, the stage, the hyperparameters' place, the evaluation)."""
    failed = JobRecord.model_validate_json(STORED_FAILED_EVALUATED)
    request = failed.request
    assert (request.method, request.training_stage, request.finetuning_type) == (
        "supervised",
        "sft",
        "lora",
    )
    assert request.hyperparameters == RequestedHyperparameters(n_epochs=2)
    assert request.evaluation == EvalSettings(graders=("rouge_l", "exact"), max_rows=8)
    assert request.deploy.require == DeployGate(grader="rouge_l", min=0.3)
    assert (request.deploy.quantization, request.deploy.serve) == ("q4_k_m", "merged")
    assert request.quantizations == ("q8_0", "q4_k_m")
    assert (request.lora.rank, request.arguments) == (16, {"cutoff_len": 512})
    assert failed.error == JobFailure(code="conversion_failed", message="boom")
    assert failed.failed_stage is Stage.CONVERTING

    dpo = JobRecord.model_validate_json(STORED_DPO_SUCCEEDED).request
    assert (dpo.method, dpo.training_stage, dpo.evaluation) == ("dpo", "dpo", None)
    assert dpo.hyperparameters == RequestedHyperparameters(beta=0.2)

    reward = JobRecord.model_validate_json(STORED_RM_TRAINING).request
    # The deprecated top-level hyperparameters, and a validation file with eval switched off.
    assert (reward.method, reward.training_stage, reward.evaluation) == ("supervised", "rm", None)
    assert reward.hyperparameters == RequestedHyperparameters(n_epochs=4)
    assert not reward.deploy.enabled

    # Saved again (the pipeline saves after every step), it is written in the versioned form.
    store.put(failed)
    again = store.get(failed.id)
    assert again == failed
    assert again is not None
    assert job_object(again, ORGANIZATION).model_dump(mode="json") == json.loads(
        VIEW_FAILED_EVALUATED
    )
    written = json.loads(failed.model_dump_json())
    assert written["schema_version"] == 1
    assert written["request"]["schema_version"] == 1
    assert "forgeline" not in written["request"]


def test_records_ignore_fields_a_newer_gateway_added(database: Path, store: JobStore) -> None:
    job = json.loads(JobRecord.model_validate_json(STORED_FAILED_EVALUATED).model_dump_json())
    # Fields this gateway does not know, at every level a newer one might add them.
    job["priority"] = "high"
    job["request"]["integrations"] = [{"type": "wandb"}]
    job["request"]["deploy"]["replicas"] = 3
    job["request"]["evaluation"]["judge"] = {"model": "big"}
    job["request"]["hyperparameters"]["warmup"] = 0.1
    job["outputs"]["signature"] = "sha256:abc"
    job["outputs"]["quality"][0]["latency_ms"] = 12
    job["error"]["retryable"] = True
    event = json.loads(STORED_EVENT) | {"schema_version": 1, "span": "abc"}
    _write_operation_rows(database, json.dumps(job), json.dumps(event))

    loaded = store.get(job["id"])
    assert loaded == JobRecord.model_validate_json(STORED_FAILED_EVALUATED)
    assert loaded is not None
    assert job_object(loaded, ORGANIZATION).model_dump(mode="json") == json.loads(
        VIEW_FAILED_EVALUATED
    )
    [stored_event], _ = store.events(event["job_id"], None, 10)
    assert stored_event == EventRecord.model_validate_json(STORED_EVENT)

    # A record of a schema this gateway cannot read is refused, not misread.
    with pytest.raises(ValidationError, match="schema_version"):
        JobRecord.model_validate(job | {"schema_version": 2})


def test_a_new_job_stores_the_request_in_the_pipelines_terms(store: JobStore) -> None:
    body = FineTuningJobCreate.model_validate(
        {
            "model": "tiny-llama",
            "training_file": "file-train",
            "validation_file": "file-val",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}},
            "forgeline": {"deploy": {"require": {"grader": "bleu", "beat_base_by": 0.0}}},
        }
    )
    request = job_request(body)
    assert request == JobRequest(
        model="tiny-llama",
        training_file="file-train",
        validation_file="file-val",
        method="dpo",
        training_stage="dpo",
        hyperparameters=RequestedHyperparameters(n_epochs=2, beta="auto"),
        deploy=DeploySettings(require=DeployGate(grader="bleu", beat_base_by=0.0)),
        evaluation=EvalSettings(),
    )
    job = JobRecord(
        id="ftjob-new",
        created_at=1,
        owner="forgeline",
        request=request,
        fine_tuned_model="ft:tiny-llama:forgeline::new",
        seed=3,
        base_version="tiny-llama:1",
    )
    store.put(job)
    assert store.get(job.id) == job
    view = job_object(job, ORGANIZATION)
    assert (view.model, view.training_file, view.validation_file) == (
        "tiny-llama",
        "file-train",
        "file-val",
    )
    assert view.method.type == "dpo"
    assert view.forgeline["evaluated"] is True


def test_the_pipeline_never_imports_the_http_layer() -> None:
    """The pipeline's modules take the gateway's own records; the API translates (convert.py)."""
    package = Path(forgeline_gateway.fine_tuning.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [
                f"{path.name}: {name}" for name in names if name.startswith("forgeline_gateway.api")
            ]
    assert offenders == []
