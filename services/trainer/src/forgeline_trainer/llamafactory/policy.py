"""Which LLaMA-Factory arguments a job may set: one table, every argument in it.

An admin key submits jobs, but must not get code execution, host paths or the network through
them (the design's trust boundary). So each of LLaMA-Factory's training arguments is classified
here, in :data:`POLICY`, as one of:

- **allowed**: taken as given. Hyperparameters and switches that read no path, run no code and
  reach no network (learning rate, batch sizes, LoRA, precision, logging and saving intervals...).
- **owned**: set by the trainer (the paths of the job's own work directory; a resume checkpoint).
- **special**: allowed under a rule of its own (:data:`SPECIAL_RULES`): ``deepspeed`` (a shipped
  config's name or a checked object, see :mod:`.deepspeed`), ``report_to`` and the SwanLab and
  Trackio settings (loggers that leave the host only when the operator allows them),
  ``trust_remote_code`` (only when the operator allows it), ``max_steps`` (at most the operator's
  cap), and four settings that take an object or else a file path (the object only).
- **refused**: with the reason and what to do instead: tokens, model-hub publishing, paths,
  other models, the process launch, inference engines, export options.

An argument missing from the table is refused (:data:`UNCLASSIFIED`): a LLaMA-Factory upgrade that
adds one cannot open a hole; a test fails until it is classified. What the operator decides is a
:class:`JobPolicy`, built from the trainer's settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Literal, get_args

from forgeline_trainer.llamafactory.deepspeed import normalize_deepspeed

__all__ = [
    "DEFAULT_MAX_JOB_SECONDS",
    "DEFAULT_MAX_STEPS_CAP",
    "LOCAL_REPORTERS",
    "NETWORK_REPORTERS",
    "POLICY",
    "SPECIAL_RULES",
    "TRAINER_OWNED",
    "UNCLASSIFIED",
    "JobPolicy",
    "NetworkReporter",
    "Rule",
    "Treatment",
    "apply_rule",
    "rule_for",
]

#: The settings named in refusals (``TrainerSettings``; a test keeps the names in step).
ALLOWED_REPORTERS_SETTING: Final = "FORGELINE_TRAINER_ALLOWED_REPORTERS"
TRUST_REMOTE_CODE_SETTING: Final = "FORGELINE_TRAINER_TRUST_REMOTE_CODE"
MAX_STEPS_CAP_SETTING: Final = "FORGELINE_TRAINER_MAX_STEPS_CAP"
MAX_JOB_SECONDS_SETTING: Final = "FORGELINE_TRAINER_MAX_JOB_SECONDS"

#: A day: longer than any job of the embedded default, short enough to free a stuck GPU.
DEFAULT_MAX_JOB_SECONDS: Final = 86_400.0
#: Far above real fine-tuning runs (thousands of steps), far below "forever".
DEFAULT_MAX_STEPS_CAP: Final = 1_000_000

#: The loggers transformers can report to that send a run's data to a service (or write where
#: the trainer does not look): a job uses one only when the operator lists it.
NetworkReporter = Literal[
    "azure_ml",
    "clearml",
    "codecarbon",
    "comet_ml",
    "dagshub",
    "dvclive",
    "flyte",
    "kubeflow",
    "mlflow",
    "neptune",
    "swanlab",
    "trackio",
    "wandb",
]
NETWORK_REPORTERS: Final = frozenset(get_args(NetworkReporter))
#: Loggers that stay on the host: ``none``, and TensorBoard (its event files go to the job's
#: output directory, ``TENSORBOARD_LOGGING_DIR`` set by the trainer).
LOCAL_REPORTERS: Final = frozenset({"none", "tensorboard"})


@dataclass(frozen=True)
class JobPolicy:
    """What the operator lets a job do (the trainer's settings); the defaults are the safe
    choices."""

    trust_remote_code: bool = False
    allowed_reporters: frozenset[str] = field(default_factory=frozenset)
    max_steps_cap: int = DEFAULT_MAX_STEPS_CAP
    max_job_seconds: float = DEFAULT_MAX_JOB_SECONDS


class Treatment(StrEnum):
    """How the trainer treats an argument a job sets."""

    ALLOWED = "allowed"
    OWNED = "owned"
    SPECIAL = "special"
    REFUSED = "refused"


@dataclass(frozen=True)
class Rule:
    """The treatment of a group of arguments, and why (shown in refusals)."""

    treatment: Treatment
    why: str
    #: What to do instead (refused and owned arguments).
    fix: str = ""

    def with_fix(self, fix: str) -> Rule:
        """The same rule with advice of its own."""
        return replace(self, fix=fix)


def _table(*groups: tuple[Rule, str]) -> dict[str, Rule]:
    table: dict[str, Rule] = {}
    for rule, names in groups:
        for name in names.split():
            if name in table:
                raise ValueError(f"'{name}' is classified twice")  # a slip in the table below
            table[name] = rule
    return table


_ALLOWED: Final = Treatment.ALLOWED
_REFUSED: Final = Treatment.REFUSED
_OWNED: Final = Treatment.OWNED
_SPECIAL: Final = Treatment.SPECIAL

_PATH = Rule(
    _REFUSED,
    "it names a path on the trainer's disk, and a job reads only what the trainer pulled from "
    "the registry for it and writes only into its own work directory",
    "remove it",
)
_EXPORT = Rule(
    _REFUSED,
    "the trainer merges adapters in an export step of its own, after training",
    "set the job's merge options instead (merge.export_size, merge.export_device, "
    "merge.export_legacy_format)",
)
_OWNED_PATH = Rule(
    _OWNED,
    "the job's results are written to its own work directory and then registered",
    "choose the registered model with output.model",
)

#: Every LLaMA-Factory 0.9.5 training argument (transformers 5.6), by group.
POLICY: Final[Mapping[str, Rule]] = _table(
    # --- allowed: hyperparameters and switches that read no path, run no code, reach no network
    (
        Rule(_ALLOWED, "how long and how fast the model learns"),
        "learning_rate num_train_epochs per_device_train_batch_size per_device_eval_batch_size "
        "gradient_accumulation_steps auto_find_batch_size weight_decay adam_beta1 adam_beta2 "
        "adam_epsilon max_grad_norm lr_scheduler_type warmup_ratio warmup_steps optim optim_args "
        "optim_target_modules label_smoothing_factor neftune_noise_alpha seed data_seed "
        "full_determinism average_tokens_across_devices train_sampling_strategy "
        "length_column_name label_names include_for_metrics remove_unused_columns "
        "ignore_data_skip torch_empty_cache_steps",
    ),
    (
        # use_unsloth and use_liger_kernel only switch to kernels of packages installed with the
        # trainer (or fail the run when they are not); flash_attn picks an attention kernel.
        Rule(_ALLOWED, "precision, memory and speed switches"),
        "fp16 bf16 fp16_full_eval bf16_full_eval tf32 fp8 fp8_backend "
        "fp8_enable_fsdp_float8_all_gather pure_bf16 gradient_checkpointing "
        "disable_gradient_checkpointing use_reentrant_gc use_unsloth_gc flash_attn "
        "enable_liger_kernel use_liger_kernel liger_kernel_config use_unsloth use_v1_kernels "
        "torch_compile torch_compile_backend torch_compile_mode upcast_layernorm "
        "upcast_lmhead_output low_cpu_mem_usage shift_attn rope_scaling mixture_of_depths "
        "use_cache use_kv_cache use_cpu moe_aux_loss_coef",
    ),
    (
        # The trainer starts the processes (torchrun on the job's GPUs); these only tune how
        # they talk to each other.
        Rule(_ALLOWED, "how the job's own processes work together"),
        "ddp_timeout ddp_backend ddp_broadcast_buffers ddp_bucket_cap_mb "
        "ddp_find_unused_parameters ddp_static_graph fsdp use_hyper_parallel "
        "data_shared_file_system",
    ),
    (
        # Everything these write goes to output_dir, which the trainer owns (profiler traces to
        # its profiler/ directory); run_name is a label.
        Rule(_ALLOWED, "what the run logs and saves in its own output directory"),
        "logging_steps logging_strategy logging_first_step logging_nan_inf_filter log_level "
        "log_level_replica log_on_each_node disable_tqdm skip_memory_metrics "
        "include_num_input_tokens_seen include_effective_tokens_per_second plot_loss run_name "
        "save_steps save_strategy save_total_limit save_only_model save_on_each_node "
        "overwrite_output_dir restore_callback_states_from_checkpoint enable_jit_checkpoint "
        "print_param_status debug enable_torch_profiler profiler_wait_steps "
        "profiler_warmup_steps profiler_active_steps profiler_repeat profiler_record_shapes "
        "profiler_profile_memory profiler_with_stack profile_modules",
    ),
    (
        Rule(_ALLOWED, "evaluation, prediction and generation settings"),
        "do_train do_eval do_predict eval_strategy eval_steps eval_delay eval_accumulation_steps "
        "eval_do_concat_batches eval_on_start eval_use_gather_object batch_eval_metrics "
        "prediction_loss_only predict_with_generate generation_max_length generation_num_beams "
        "metric_for_best_model greater_is_better load_best_model_at_end early_stopping_steps "
        "compute_accuracy sortish_sampler eval_on_each_dataset eval_num_beams val_size do_sample "
        "temperature top_p top_k num_beams max_length max_new_tokens repetition_penalty "
        "length_penalty skip_special_tokens",
    ),
    (
        # dataset and eval_dataset are names of the job's own datasets (checked with the
        # combinations); template and tool_format name LLaMA-Factory's built-in formats.
        Rule(_ALLOWED, "how the job's datasets become training batches"),
        "dataset eval_dataset template cutoff_len max_samples packing neat_packing "
        "train_on_prompt mask_history streaming buffer_size mix_strategy interleave_probs "
        "overwrite_cache preprocessing_batch_size preprocessing_num_workers "
        "dataloader_num_workers dataloader_drop_last dataloader_persistent_workers "
        "dataloader_pin_memory dataloader_prefetch_factor ignore_pad_token_for_loss tool_format "
        "default_system enable_thinking preserve_thinking disable_shuffling",
    ),
    (
        Rule(_ALLOWED, "tokenizer and image, video and audio processing"),
        "use_fast_tokenizer split_special_tokens resize_vocab add_tokens add_special_tokens "
        "init_special_tokens image_max_pixels image_min_pixels image_do_pan_and_scan "
        "crop_to_patches video_max_pixels video_min_pixels video_fps video_maxlen "
        "use_audio_in_video audio_sampling_rate",
    ),
    (
        # reward_model_type "api" would call a URL, but only the refused reward_model gives one.
        Rule(_ALLOWED, "the training stage, the fine-tuning method and their hyperparameters"),
        "stage finetuning_type train_from_scratch quantization_bit quantization_method "
        "quantization_type double_quantization quantization_device_map lora_rank lora_alpha "
        "lora_dropout lora_target additional_target loraplus_lr_ratio loraplus_lr_embedding "
        "use_rslora use_dora pissa_init pissa_iter pissa_convert create_new_adapter oft_rank "
        "oft_block_size oft_target module_dropout freeze_trainable_layers "
        "freeze_trainable_modules freeze_extra_modules freeze_vision_tower "
        "freeze_multi_modal_projector freeze_language_model use_llama_pro pref_beta pref_ftx "
        "pref_bco_weight pref_loss dpo_label_smoothing simpo_gamma ld_alpha kto_chosen_weight "
        "kto_rejected_weight ref_model_quantization_bit reward_model_quantization_bit "
        "reward_model_type ppo_buffer_size ppo_epochs ppo_score_norm ppo_target "
        "ppo_whiten_rewards use_dft_loss use_asft_loss asft_alpha use_eaft_loss eaft_alpha",
    ),
    (
        Rule(_ALLOWED, "alternative optimizers and their settings"),
        "use_galore galore_target galore_rank galore_update_interval galore_scale "
        "galore_proj_type galore_layerwise use_apollo apollo_target apollo_rank "
        "apollo_update_interval apollo_scale apollo_proj apollo_proj_type apollo_scale_type "
        "apollo_layerwise apollo_scale_front use_badam badam_mode badam_start_block "
        "badam_switch_mode badam_switch_interval badam_update_ratio badam_mask_mode "
        "badam_verbose use_adam_mini use_muon",
    ),
    # --- special: allowed under a rule of their own (SPECIAL_RULES)
    (
        Rule(_SPECIAL, "one of the trainer's DeepSpeed configs by name, or a checked object"),
        "deepspeed",
    ),
    (
        Rule(_SPECIAL, "none and tensorboard; loggers that leave the host if the operator allows"),
        "report_to",
    ),
    (
        Rule(_SPECIAL, "runs the model's own Python code: only if the operator allows"),
        "trust_remote_code",
    ),
    (Rule(_SPECIAL, "at most the operator's step cap"), "max_steps"),
    (
        # transformers reads a text value of these as a JSON file's path.
        Rule(_SPECIAL, "an object, never a file path"),
        "accelerator_config fsdp_config gradient_checkpointing_kwargs lr_scheduler_kwargs",
    ),
    (
        Rule(_SPECIAL, "SwanLab's settings: only if the operator allows the swanlab logger"),
        "use_swanlab swanlab_project swanlab_workspace swanlab_run_name swanlab_mode",
    ),
    (
        Rule(_SPECIAL, "Trackio's settings: only if the operator allows the trackio logger"),
        "project trackio_space_id trackio_bucket_id trackio_static_space_id",
    ),
    # --- owned: the trainer sets them
    (
        _OWNED_PATH.with_fix(
            "name the base model with base_model (or, in a YAML, model_name_or_path: NAME:VERSION)"
        ),
        "model_name_or_path",
    ),
    (_OWNED_PATH, "output_dir logging_dir export_dir"),
    (
        Rule(
            _OWNED,
            "the job's datasets are pulled from the registry into its own work directory",
            "give them in datasets and name them in dataset",
        ),
        "dataset_dir",
    ),
    (
        Rule(_OWNED, "the adapter is what the job trains, in its own work directory", "remove it"),
        "adapter_name_or_path",
    ),
    (Rule(_OWNED, "the trainer keeps its caches in its state directory", "remove it"), "cache_dir"),
    (
        Rule(
            _OWNED,
            "the trainer resumes a job from the job's own last checkpoint after a restart",
            "remove it",
        ),
        "resume_from_checkpoint",
    ),
    # --- refused
    (
        Rule(
            _REFUSED,
            "tokens are never accepted in job arguments (they would be kept in the job record "
            "and in the registered versions' lineage)",
            "an operator gives a logger its credentials through the trainer's environment",
        ),
        "hub_token hf_hub_token ms_hub_token om_hub_token swanlab_api_key swanlab_lark_secret",
    ),
    (
        Rule(
            _REFUSED,
            "the trainer publishes results to the registry only, never to a model hub",
            "remove it, and publish a registered version from the registry yourself",
        ),
        "push_to_hub hub_model_id hub_strategy hub_private_repo hub_always_push hub_revision "
        "export_hub_model_id",
    ),
    (
        Rule(
            _REFUSED,
            "the base model is a registry version, not a model-hub revision",
            "pick the version with base_model (or model_name_or_path: NAME:VERSION)",
        ),
        "model_revision",
    ),
    (
        _PATH,
        "adapter_folder media_dir new_special_tokens_config hyper_parallel_args swanlab_logdir",
    ),
    (_PATH.with_fix("remove it: the trainer tokenizes each job's data itself"), "tokenized_path"),
    (
        _PATH.with_fix("remove it, or offload to the CPU with deepspeed: z3_offload"),
        "offload_folder",
    ),
    (_PATH.with_fix("remove it: traces go to the job's output directory"), "profiler_output_dir"),
    (
        _PATH.with_fix(
            "set the generation arguments (max_new_tokens, temperature, top_p, ...) directly"
        ),
        "generation_config",
    ),
    (
        Rule(
            _REFUSED,
            "it loads another model by path or model-hub id, and a job trains only from the base "
            "model the trainer pulled from the registry",
            "leave it unset: DPO and KTO then use the base model as their reference (PPO is not "
            "supported)",
        ),
        "ref_model ref_model_adapters reward_model reward_model_adapters",
    ),
    (
        Rule(_REFUSED, "the trainer calls no address a job names", "remove it"),
        "swanlab_lark_webhook_url",
    ),
    (
        Rule(
            _REFUSED,
            "the trainer launches the job's processes itself (torchrun on the GPUs it gives the "
            "job); Ray, rendezvous addresses, process layouts and MCA are not a job's to choose",
            "remove it, and ask for GPUs with gpu_count",
        ),
        "local_rank master_addr master_port ray_num_workers ray_init_kwargs parallelism_config "
        "use_mca",
    ),
    (
        Rule(
            _REFUSED,
            "KTransformers' MoE backend loads expert weights from paths on the trainer's disk "
            "(kt_weight_path) and is not part of this trainer",
            "train with LoRA or full fine-tuning instead",
        ),
        "use_kt kt_weight_path kt_expert_checkpoint_path kt_use_lora_experts kt_lora_expert_num "
        "kt_lora_expert_intermediate_size",
    ),
    (
        Rule(
            _REFUSED,
            "it configures LLaMA-Factory's inference engines, which training does not use "
            "(vllm_config and sglang_config hand another program objects or paths)",
            "remove it: the gateway serves trained models (deployments)",
        ),
        "infer_backend infer_dtype vllm_maxlen vllm_gpu_util vllm_enforce_eager "
        "vllm_max_lora_rank vllm_config sglang_maxlen sglang_mem_fraction sglang_tp_size "
        "sglang_config sglang_lora_backend",
    ),
    (_EXPORT, "export_size export_device export_legacy_format"),
    (
        _EXPORT.with_fix("remove it: quantize the merged model with the converter"),
        "export_quantization_bit export_quantization_dataset export_quantization_nsamples "
        "export_quantization_maxlen",
    ),
)

#: The rule of an argument the table does not name (one a LLaMA-Factory upgrade added).
UNCLASSIFIED: Final = Rule(
    _REFUSED,
    "the trainer's argument policy does not classify it yet (LLaMA-Factory accepts it, but an "
    "argument stays refused until it has been checked to read no path, run no code and reach no "
    "network: forgeline_trainer/llamafactory/policy.py)",
    "leave it out, or ask the operator for a trainer that classifies it",
)

#: Arguments the trainer sets itself.
TRAINER_OWNED: Final = frozenset(
    name for name, rule in POLICY.items() if rule.treatment is Treatment.OWNED
)


def rule_for(name: str) -> Rule:
    """The rule of argument ``name`` (:data:`UNCLASSIFIED` when the table lacks it)."""
    return POLICY.get(name, UNCLASSIFIED)


def refusal(name: str, rule: Rule) -> str:
    """The message refusing ``name`` under an owned or refused ``rule``."""
    if rule.treatment is Treatment.OWNED:
        return f"'{name}' is set by the trainer: {rule.why}; {rule.fix}"
    return f"'{name}' is refused: {rule.why}; {rule.fix}"


# --- the special rules: each takes the value (already of the argument's type) and returns it
# (possibly normalized), or raises ValueError with the message a user sees.


def _trust_remote_code(name: str, value: Any, policy: JobPolicy) -> Any:
    if value and not policy.trust_remote_code:
        raise ValueError(
            f"'{name}' is refused: it runs Python code shipped with the base model on the "
            f"trainer, and this trainer does not allow that ({TRUST_REMOTE_CODE_SETTING} is "
            "off); remove it (models of the architectures transformers ships need no remote "
            "code), or ask the operator to turn it on"
        )
    return value


def _allowed_text(policy: JobPolicy) -> str:
    return ", ".join(sorted(policy.allowed_reporters)) or "none"


def _report_to(name: str, value: Any, policy: JobPolicy) -> Any:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(item, str) for item in names):
        raise ValueError(f"'{name}' must be a logger's name or a list of them; got {value!r}")
    for reporter in names:
        if reporter == "all":
            raise ValueError(
                f"'{name}: all' would turn on every logger installed with the trainer, some of "
                "which send the run's data off this host; name the loggers (none, tensorboard)"
            )
        if reporter in LOCAL_REPORTERS or reporter in policy.allowed_reporters:
            continue
        if reporter in NETWORK_REPORTERS:
            raise ValueError(
                f"'{name}' names '{reporter}', a logger that sends the run's data to a service "
                f"off this host, which this trainer does not allow ({ALLOWED_REPORTERS_SETTING} "
                f"lists those it does: {_allowed_text(policy)}); use none or tensorboard (its "
                f"logs stay in the job's output), or ask the operator to allow '{reporter}'"
            )
        known = ", ".join(sorted(LOCAL_REPORTERS | NETWORK_REPORTERS))
        raise ValueError(f"'{name}' names '{reporter}', which is not a logger ({known})")
    return value


def _needs_reporter(reporter: str) -> Callable[[str, Any, JobPolicy], Any]:
    def check(name: str, value: Any, policy: JobPolicy) -> Any:
        if reporter not in policy.allowed_reporters:
            raise ValueError(
                f"'{name}' is refused: it configures the {reporter} logger, which sends the "
                f"run's data off this host and which this trainer does not allow "
                f"({ALLOWED_REPORTERS_SETTING}: {_allowed_text(policy)}); remove it, or ask the "
                f"operator to allow '{reporter}'"
            )
        return value

    return check


def _max_steps(name: str, value: Any, policy: JobPolicy) -> Any:
    if value > policy.max_steps_cap:
        raise ValueError(
            f"'{name}' is {value}, above this trainer's cap of {policy.max_steps_cap} steps "
            f"({MAX_STEPS_CAP_SETTING}); ask for at most {policy.max_steps_cap}, or ask the "
            "operator to raise the cap"
        )
    return value


def _object_only(name: str, value: Any, policy: JobPolicy) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"'{name}' is not a valid JSON object: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(
            f"'{name}' must be an object here ({{...}}): other values are read as the path of "
            f"a file, and the trainer reads no file a job names; got {value!r}"
        )
    return value


def _deepspeed(name: str, value: Any, policy: JobPolicy) -> Any:
    return normalize_deepspeed(value)


#: The rule of each special argument.
SPECIAL_RULES: Final[Mapping[str, Callable[[str, Any, JobPolicy], Any]]] = {
    "deepspeed": _deepspeed,
    "report_to": _report_to,
    "trust_remote_code": _trust_remote_code,
    "max_steps": _max_steps,
    **dict.fromkeys(
        (
            "accelerator_config",
            "fsdp_config",
            "gradient_checkpointing_kwargs",
            "lr_scheduler_kwargs",
        ),
        _object_only,
    ),
    **dict.fromkeys(
        ("use_swanlab", "swanlab_project", "swanlab_workspace", "swanlab_run_name", "swanlab_mode"),
        _needs_reporter("swanlab"),
    ),
    **dict.fromkeys(
        ("project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id"),
        _needs_reporter("trackio"),
    ),
}


def apply_rule(name: str, value: Any, policy: JobPolicy) -> Any:
    """``value`` (of the argument's type) as a job may set ``name`` under ``policy``.

    Raises:
        ValueError: the argument is owned or refused, or breaks its special rule; the message
            names it, says why and what to do.
    """
    rule = rule_for(name)
    if rule.treatment is Treatment.ALLOWED:
        return value
    if rule.treatment is Treatment.SPECIAL:
        return SPECIAL_RULES[name](name, value, policy)
    raise ValueError(refusal(name, rule))
