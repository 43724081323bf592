"""What a deployment is: a public model name, the backend serving it, and how to place it there.

Specs are what the admin API accepts and what the SQLite store keeps, so a gateway restart places
every deployment again from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = [
    "DeploymentName",
    "DeploymentSpec",
    "LlamaCppSpec",
    "ModelMetadata",
    "OllamaSpec",
    "VllmLoraRank",
    "VllmSpec",
]

#: A public model name: what clients send as `model` (OpenAI's fine-tune form fits:
#: ``ft:tiny:acme:demo:abc123``).
DeploymentName = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
]

#: A registry version, ``MODEL:VERSION`` (a number: a deployment must not move under an alias).
RegistryReference = Annotated[
    str, Field(min_length=3, max_length=300, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*:[1-9][0-9]*$")
]

#: The ranks vLLM accepts for ``--max-lora-rank`` (its ``LoRAConfig.max_lora_rank``).
VllmLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]

#: An http(s) base URL of a backend server.
BackendUrl = Annotated[
    str,
    Field(
        pattern=r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/\-]*)?$", max_length=512
    ),
]


class ModelMetadata(BaseModel):
    """Where a served model comes from: shown by ``/v1/models``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | None = Field(None, max_length=256, description="The base model it derives from.")
    version: str | None = Field(None, max_length=128, description="The registry version.")
    quantization: str | None = Field(
        None, max_length=32, description="GGUF quantization (f16, q8_0, q4_K_M...)."
    )
    quality: dict[str, float] | None = Field(
        None,
        max_length=16,
        description="Its quality card: the mean score per grader its fine-tuning job's "
        "evaluation measured on what is served (rouge_l, bleu...).",
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: DeploymentName
    metadata: ModelMetadata = Field(default_factory=ModelMetadata)
    max_in_flight: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="In-flight requests per instance (default: the gateway's setting)."
    )


def _refuse_base_owned(spec: _Spec, fields: tuple[str, ...]) -> None:
    """Refuse an adapter deployment (`base`) that sets one of `fields`, which its base decides.

    Raises:
        ValueError: naming the fields set.
    """
    # Compared with the defaults, not by being set: a stored spec has every field written.
    owned = [
        f
        for f in fields
        if getattr(spec, f) != type(spec).model_fields[f].get_default(call_default_factory=True)
    ]
    if owned:
        raise ValueError(
            f"an adapter deployment ('base') takes {', '.join(repr(f) for f in owned)} from its "
            "base deployment: leave it out"
        )


#: What an adapter deployment (`LlamaCppSpec.base`) takes from its base deployment and so may not
#: set itself.
BASE_OWNED_FIELDS = ("replicas", "context_size", "parallel", "embeddings", "max_in_flight")


class LlamaCppSpec(_Spec):
    """A GGUF served by llama.cpp's ``llama-server``: processes the gateway starts (``gguf``),
    or servers already running elsewhere (``urls``); or LoRA adapters served on the processes
    of another llama.cpp deployment (``base``), shared with the base and its other adapters."""

    backend: Literal["llamacpp"]
    base: DeploymentName | None = Field(
        None,
        description="Serve this deployment's adapters (`lora`, `registry_lora`) on the "
        "llama-server processes of the llama.cpp deployment of this name instead of starting "
        "processes of its own: the base's processes are restarted (blue-green) with every "
        "adapter attached to it loaded, and each request for this deployment selects its "
        "adapters. Leave out `gguf`, `registry_gguf`, `urls` and what the base decides "
        "(`replicas`, `context_size`, `parallel`, `embeddings`, `max_in_flight`).",
    )
    gguf: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="Path of the GGUF file on the gateway host."
    )
    registry_gguf: RegistryReference | None = Field(
        None,
        description="A GGUF version in the registry (`MODEL:VERSION`), fetched into the "
        "gateway's model cache and served like `gguf`.",
    )
    lora: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=8, description="LoRA adapter GGUF files to apply."
    )
    registry_lora: list[RegistryReference] = Field(
        default_factory=list,
        max_length=8,
        description="GGUF adapter versions in the registry to apply, fetched like `registry_gguf`.",
    )
    urls: list[BackendUrl] = Field(
        default_factory=list, max_length=64, description="Running llama-server instances."
    )
    replicas: int = Field(1, ge=1, le=16, description="Processes to start (with `gguf`).")
    context_size: int = Field(2048, ge=128, le=1 << 20, description="Context of each process.")
    parallel: int = Field(4, ge=1, le=64, description="Slots per process; also the largest n.")
    embeddings: bool = Field(False, description="Serve /v1/embeddings instead of generation.")

    @model_validator(mode="after")
    def _one_source(self) -> LlamaCppSpec:
        if self.base is not None:
            return self._adapter_on_base()
        sources = [self.gguf is not None, self.registry_gguf is not None, bool(self.urls)]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one of 'gguf' or 'registry_gguf' (start llama-server) or 'urls' "
                "(attach)"
            )
        if (self.lora or self.registry_lora) and self.urls:
            raise ValueError(
                "'lora' and 'registry_lora' need 'gguf' or 'registry_gguf': adapters are "
                "applied to processes started here"
            )
        return self

    def _adapter_on_base(self) -> LlamaCppSpec:
        if self.gguf is not None or self.registry_gguf is not None or self.urls:
            raise ValueError(
                "an adapter deployment ('base') is served on its base's processes: leave out "
                "'gguf', 'registry_gguf' and 'urls'"
            )
        if not (self.lora or self.registry_lora):
            raise ValueError("an adapter deployment ('base') needs 'lora' or 'registry_lora'")
        if self.base == self.name:
            raise ValueError("a deployment cannot be its own base")
        _refuse_base_owned(self, BASE_OWNED_FIELDS)
        return self

    @property
    def adapter(self) -> bool:
        """Whether this deployment is adapters served on a shared base (`base`)."""
        return self.base is not None


#: What a vLLM adapter deployment (`VllmSpec.base`) takes from its base and so may not set.
VLLM_BASE_OWNED_FIELDS = (
    "urls",
    "base_model",
    "adapter",
    "registry_model",
    "tensor_parallel_size",
    "embeddings",
    "enable_lora",
    "max_loras",
    "max_lora_rank",
    "max_num_seqs",
    "max_loaded_adapters",
    "max_adapters",
    "max_in_flight",
)


class VllmSpec(_Spec):
    """A model on vLLM: on servers already running (``urls``), as the base they serve or a LoRA
    adapter loaded on top at runtime (``/v1/load_lora_adapter``); or an HF version of the
    registry (``registry_model``) on a vLLM container the gateway starts through the Docker API
    (``backends/vllm_container.py``); or an HF/PEFT adapter version of the registry
    (``registry_adapter``) loaded at runtime on the container of such a deployment (``base``)."""

    backend: Literal["vllm"]
    base: DeploymentName | None = Field(
        None,
        description="Serve `registry_adapter` on the vLLM container of the `registry_model` "
        "deployment of this name (started with `enable_lora`): the adapter is loaded into the "
        "running server (`/v1/load_lora_adapter`, no restart) and requests for this deployment "
        "select it. Past the base's `max_loaded_adapters`, the least recently used idle adapter "
        "is unloaded and loaded again when a request asks for it. Leave out everything the base "
        "decides.",
    )
    registry_adapter: RegistryReference | None = Field(
        None,
        description="With `base`: an HF/PEFT LoRA adapter version in the registry (a directory "
        "with `adapter_config.json`), fetched into the model cache the base's container mounts.",
    )
    urls: list[BackendUrl] = Field(
        default_factory=list,
        max_length=64,
        description="vLLM servers (default: the gateway's FORGELINE_GATEWAY_VLLM_URLS).",
    )
    base_model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="The model name the vLLM servers serve (their served name); with `urls`.",
    )
    adapter: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="LoRA adapter directory as the vLLM servers see it; loaded at runtime.",
    )
    registry_model: RegistryReference | None = Field(
        None,
        description="An HF version in the registry (`MODEL:VERSION`: a base, merged or fine-tuned "
        "model), fetched into the gateway's model cache and served by a vLLM container started "
        "for this deployment, under the deployment's name.",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="With `registry_model`: GPUs the container splits it over."
    )
    embeddings: bool = Field(False, description="The model is an embedding model.")
    enable_lora: bool = Field(
        False,
        description="With `registry_model`: start vLLM ready for adapter deployments (`base`): "
        "`--enable-lora`, `--max-loras`, `--max-lora-rank` and runtime loading "
        "(`VLLM_ALLOW_RUNTIME_LORA_UPDATING`). Off by default: LoRA slots take GPU memory and "
        "not every architecture supports LoRA in vLLM.",
    )
    max_loras: int = Field(
        4,
        ge=1,
        le=64,
        description="With `enable_lora`: adapters in one batch (`--max-loras`: vLLM's LoRA "
        "slots on the GPU, through which the loaded adapters are swapped as requests need "
        "them).",
    )
    max_lora_rank: VllmLoraRank = Field(
        16,
        description="With `enable_lora`: the largest adapter rank (`--max-lora-rank`; vLLM's "
        "default 16).",
    )
    max_num_seqs: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        None,
        description="Sequences each vLLM server runs at once (`--max-num-seqs`): the container "
        "is started with it (`registry_model`), or it is what the servers in `urls` were "
        "started with. The gateway then admits that many requests per server and "
        "FORGELINE_GATEWAY_QUEUE_PER_INSTANCE more, and answers 429 past them; unset, vLLM's "
        "own default and the gateway's FORGELINE_GATEWAY_MAX_IN_FLIGHT_PER_INSTANCE.",
    )
    max_loaded_adapters: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None,
        description="With `enable_lora`: adapter deployments the gateway keeps loaded in the "
        "base's vLLM server at once (default: `max_loras`). Past it, the least recently used "
        "adapter with no request in flight is unloaded (`/v1/unload_lora_adapter`) and loaded "
        "again when a request asks for it. At least `max_loras`; above it, vLLM is started "
        "with `--max-cpu-loras` of this value, so vLLM's CPU cache holds exactly what the "
        "gateway keeps loaded.",
    )
    max_adapters: int = Field(
        64,
        ge=1,
        le=4096,
        description="With `enable_lora`: adapter deployments that may be attached to the base "
        "(loaded or not); one more is refused.",
    )

    _model_directory: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> VllmSpec:
        if self.base is not None:
            return self._adapter_on_base()
        if self.registry_adapter is not None:
            raise ValueError("'registry_adapter' is served on a base deployment: give 'base'")
        # Compared with the defaults, not by being set: a stored spec has every field written.
        fields = type(self).model_fields
        lora_settings = ("max_loras", "max_lora_rank", "max_loaded_adapters", "max_adapters")
        if not self.enable_lora and any(
            getattr(self, f) != fields[f].get_default() for f in lora_settings
        ):
            raise ValueError(
                "'max_loras', 'max_lora_rank', 'max_loaded_adapters' and 'max_adapters' apply "
                "with 'enable_lora' only"
            )
        if self.max_loaded_adapters is not None and self.max_loaded_adapters < self.max_loras:
            # vLLM's own rule for --max-cpu-loras, which this sets.
            raise ValueError("'max_loaded_adapters' must be at least 'max_loras'")
        if self.registry_model is None:
            if self.enable_lora:
                # Servers run elsewhere were started by someone else, with their own flags.
                raise ValueError("'enable_lora' applies to 'registry_model' only")
            if self.base_model is None:
                raise ValueError(
                    "give 'base_model' (servers already running) or 'registry_model' "
                    "(a container started here)"
                )
            if self.tensor_parallel_size != 1:
                raise ValueError("'tensor_parallel_size' applies to 'registry_model' only")
            return self
        if self.urls or self.base_model is not None or self.adapter is not None:
            raise ValueError(
                "'registry_model' starts its own vLLM container: leave out 'urls', "
                "'base_model' and 'adapter'"
            )
        if self.embeddings:
            # The container is started for generation; vLLM's pooling runner flags differ
            # between its versions, so embedding models stay on servers run elsewhere (`urls`).
            raise ValueError(
                "'registry_model' serves generation models only: leave out 'embeddings'"
            )
        return self

    def _adapter_on_base(self) -> VllmSpec:
        if self.registry_adapter is None:
            raise ValueError("an adapter deployment ('base') needs 'registry_adapter'")
        if self.base == self.name:
            raise ValueError("a deployment cannot be its own base")
        _refuse_base_owned(self, VLLM_BASE_OWNED_FIELDS)
        return self

    @property
    def loaded_adapter_limit(self) -> int:
        """Adapters kept loaded at once on this base: `max_loaded_adapters`, or `max_loras`
        (vLLM's own default for ``--max-cpu-loras``)."""
        return self.max_loaded_adapters or self.max_loras

    @property
    def model_directory(self) -> Path | None:
        """Where `registry_model` (or `registry_adapter`) was fetched to on the gateway host
        (set by the manager before placing; never stored or shown)."""
        return self._model_directory

    def with_model_directory(self, directory: Path) -> VllmSpec:
        """A copy carrying the local directory of `registry_model`."""
        copy = self.model_copy()
        copy._model_directory = directory
        return copy


#: What an Ollama adapter deployment (`OllamaSpec.base`) takes from its base and so may not set.
OLLAMA_BASE_OWNED_FIELDS = ("url", "embeddings", "parallel", "max_in_flight")


class OllamaSpec(_Spec):
    """A GGUF pushed into Ollama (``/api/blobs``, ``/api/create``); or GGUF LoRA adapters on the
    Ollama model of another Ollama deployment (``base``): an Ollama model of their own, created
    ``from`` the base's with ``adapters`` (a Modelfile's ``ADAPTER``), so the base's weights are
    stored once for every fine-tune on it."""

    backend: Literal["ollama"]
    base: DeploymentName | None = Field(
        None,
        description="Serve this deployment's adapters (`lora`, `registry_lora`) on the Ollama "
        "model of the Ollama deployment of this name: an Ollama model is created from it with "
        "the adapters, on its server; the base and its other adapters are untouched. Leave out "
        "`gguf`, `registry_gguf` and what the base decides (`url`, `embeddings`, `parallel`, "
        "`max_in_flight`); `template`, `system` and `parameters` default to the base's.",
    )
    url: BackendUrl | None = Field(
        None, description="The Ollama server (default: FORGELINE_GATEWAY_OLLAMA_URL)."
    )
    gguf: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="Path of the GGUF file on the gateway host."
    )
    registry_gguf: RegistryReference | None = Field(
        None,
        description="A GGUF version in the registry (`MODEL:VERSION`), fetched into the "
        "gateway's model cache and pushed to Ollama like `gguf`.",
    )
    lora: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=8,
        description="With `base`: GGUF LoRA adapter files on the gateway host to apply.",
    )
    registry_lora: list[RegistryReference] = Field(
        default_factory=list,
        max_length=8,
        description="With `base`: GGUF adapter versions in the registry to apply, fetched like "
        "`registry_gguf`.",
    )
    template: str | None = Field(None, max_length=65536, description="Go chat template.")
    system: str | None = Field(None, max_length=65536, description="Default system prompt.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Modelfile parameters (stop, num_ctx, ...)."
    )
    embeddings: bool = Field(False, description="The model is an embedding model.")
    parallel: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None,
        description="Requests the Ollama server answers at once for this model (its "
        "OLLAMA_NUM_PARALLEL, which only the server's operator sets): the gateway then admits "
        "that many and FORGELINE_GATEWAY_QUEUE_PER_INSTANCE more, and answers 429 past them; "
        "unset, the gateway's FORGELINE_GATEWAY_MAX_IN_FLIGHT_PER_INSTANCE.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> OllamaSpec:
        if self.base is not None:
            return self._adapter_on_base()
        if (self.gguf is None) == (self.registry_gguf is None):
            raise ValueError("give exactly one of 'gguf' or 'registry_gguf'")
        if self.lora or self.registry_lora:
            raise ValueError(
                "'lora' and 'registry_lora' are served on a base deployment: give 'base' (an "
                "Ollama deployment of the base model) and leave out 'gguf' and 'registry_gguf'"
            )
        return self

    def _adapter_on_base(self) -> OllamaSpec:
        if self.gguf is not None or self.registry_gguf is not None:
            raise ValueError(
                "an adapter deployment ('base') is created from its base's Ollama model: leave "
                "out 'gguf' and 'registry_gguf'"
            )
        if not (self.lora or self.registry_lora):
            raise ValueError("an adapter deployment ('base') needs 'lora' or 'registry_lora'")
        if self.base == self.name:
            raise ValueError("a deployment cannot be its own base")
        _refuse_base_owned(self, OLLAMA_BASE_OWNED_FIELDS)
        return self


DeploymentSpec = Annotated[LlamaCppSpec | VllmSpec | OllamaSpec, Field(discriminator="backend")]
