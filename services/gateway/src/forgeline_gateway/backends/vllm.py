"""vLLM: GPU serving through its OpenAI-compatible server, LoRA adapters loaded at runtime.

The contract followed (vLLM docs, "OpenAI-Compatible Server" and "LoRA Adapters → Dynamically
serving LoRA Adapters", https://docs.vllm.ai/en/latest/features/lora/):

* ``GET /v1/models`` lists the served base model and the loaded adapters;
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` loads an adapter, after which
  requests name it in ``model`` (the server runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``);
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` unloads it.

The bodies sent and read are the pydantic models below (vLLM's ``LoadLoRAAdapterRequest``,
``UnloadLoRAAdapterRequest``, ``ModelList``, ``ErrorResponse``). A loaded adapter keeps its
``lora_name`` until unloaded; loading a name vLLM already holds is its 400 "has already been
loaded", taken here as done when ``/v1/models`` shows the same path (a gateway that restarted
while the server kept running) and otherwise answered by unloading and loading again.

A base-model deployment only attaches to the servers; an adapter deployment loads the adapter
under the public model name on every server, so requests need no renaming. An adapter
deployment on a vLLM *base deployment* (``base`` + ``registry_adapter``, `load_adapter`) is
loaded, under its public name as ``lora_name``, on every instance of the base's container
(started with ``--enable-lora``, ``vllm_container.py``); its route leads to those instances
with ``model`` set to that ``lora_name``, so the base and all its adapters share them. Which of
a base's adapters are loaded at a time is decided by the gateway, not here: at most the base's
``max_loaded_adapters``, the least recently used idle one unloaded to make room and any loaded
again when a request needs it (``deployments/adapter_residency.py``).

A ``registry_model`` deployment gets a vLLM container of its own (``vllm_container.py``) serving
the model under the public name; it is placed once vLLM's ``GET /health`` answers 200 (vLLM's
server: 200 once the engine is up), polled until a deadline while the container runs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeline_gateway.backends.base import (
    OPENAI_SERVER_PARAMS,
    Backend,
    Capabilities,
    Endpoint,
    Placement,
)
from forgeline_gateway.backends.vllm_container import VllmContainers, stopped_message
from forgeline_gateway.deployments.spec import VllmSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "LoadLoraAdapterRequest",
    "ModelCard",
    "ModelList",
    "PeftAdapterConfig",
    "UnloadLoraAdapterRequest",
    "VllmBackend",
    "read_adapter_rank",
]

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 120.0  # loading an adapter reads it from disk onto the GPU
HEALTH_POLL_S = 0.5
HEALTH_TIMEOUT_S = 5.0

# vLLM's sampling parameters beyond OpenAI's ("Extra Parameters" in vLLM's server docs).
_VLLM_SAMPLING = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
    }
)
# Unlike llama-server, vLLM answers ``logprobs`` in each endpoint's own shape: both take it.
_CHAT = OPENAI_SERVER_PARAMS[Endpoint.CHAT] | _VLLM_SAMPLING | {"logprobs"}
_COMPLETIONS = (
    OPENAI_SERVER_PARAMS[Endpoint.COMPLETIONS] | _VLLM_SAMPLING | {"logprobs", "echo", "best_of"}
)
_EMBEDDINGS = frozenset({"input", "encoding_format", "dimensions"})
# vLLM runs the n sequences of a request as one group; OpenAI's own bound is 128.
MAX_N = 128


class LoadLoraAdapterRequest(BaseModel):
    """The body of vLLM's ``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_name: str = Field(min_length=1, description="The name requests give as `model`.")
    lora_path: str = Field(min_length=1, description="The adapter directory as vLLM sees it.")


class UnloadLoraAdapterRequest(BaseModel):
    """The body of vLLM's ``POST /v1/unload_lora_adapter``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_name: str = Field(min_length=1)


class ModelCard(BaseModel):
    """One entry of vLLM's ``GET /v1/models``: the base model (``parent`` null) or a loaded
    adapter (``root`` its path, ``parent`` its base model)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    """vLLM's ``GET /v1/models`` answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    data: list[ModelCard]


class _ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    message: str


class _WrappedError(BaseModel):
    # vLLM's current ErrorResponse: {"error": {"message", "type", "param", "code"}}.
    model_config = ConfigDict(extra="ignore", frozen=True)

    error: _ErrorDetail


class PeftAdapterConfig(BaseModel):
    """What the gateway reads of a PEFT adapter's ``adapter_config.json``: its rank."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    r: int = Field(ge=1, description="The rank of every adapted module...")
    rank_pattern: dict[str, int] = Field(
        default_factory=dict, description="...but for the modules given their own rank."
    )

    @property
    def rank(self) -> int:
        """The largest rank in the adapter: what vLLM compares with ``--max-lora-rank``."""
        return max([self.r, *self.rank_pattern.values()])


def read_adapter_rank(directory: Path, field: str = "registry_adapter") -> int:
    """The rank of the PEFT adapter in `directory`.

    Raises:
        InvalidArgument: naming `field`, when its ``adapter_config.json`` is missing or gives
            no rank.
    """
    try:
        text = (directory / "adapter_config.json").read_text(encoding="utf-8")
        return PeftAdapterConfig.model_validate_json(text).rank
    except (OSError, ValidationError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it gives no valid rank 'r'"
        raise InvalidArgument(
            f"the adapter's adapter_config.json cannot be read: {reason}", field=field
        ) from None


class VllmBackend(Backend[VllmSpec]):
    """Attaches to vLLM servers; loads and unloads LoRA adapters on them."""

    kind = "vllm"

    def __init__(
        self,
        client: httpx.AsyncClient,
        containers: VllmContainers | None = None,
        *,
        start_timeout: float = 1800.0,
    ) -> None:
        self.client = client
        self.containers = containers
        self.start_timeout = start_timeout
        # Slow answers are normal here (loading weights); an unreachable server is not.
        self._timeout = httpx.Timeout(ADMIN_TIMEOUT_S, connect=client.timeout.connect)

    def capabilities(self, spec: VllmSpec) -> Capabilities:
        if spec.embeddings:
            return Capabilities({Endpoint.EMBEDDINGS: _EMBEDDINGS})
        return Capabilities({Endpoint.CHAT: _CHAT, Endpoint.COMPLETIONS: _COMPLETIONS}, MAX_N)

    async def place(self, name: str, spec: VllmSpec) -> Placement:
        if spec.registry_model is not None:
            return await self._place_container(name, spec)
        base_model = spec.base_model
        assert base_model is not None  # the spec's validator asks for it without registry_model
        urls = [url.rstrip("/") for url in spec.urls]
        await asyncio.gather(*(self._check_base(url, base_model) for url in urls))
        slots = _slots(urls, spec)
        if spec.adapter is None:
            return Placement(urls=urls, upstream_model=base_model, slots=slots)
        await self._load_everywhere(urls, name, spec.adapter, "adapter")
        return Placement(urls=urls, upstream_model=name, slots=slots)

    @staticmethod
    def adapter_placement(name: str, base: Placement) -> Placement:
        """Where requests for the adapter deployment `name` on the base placed at `base` go:
        the base's instances, with `name` (its ``lora_name``) as ``model``."""
        return Placement(urls=list(base.urls), upstream_model=name)

    async def load_adapter(self, name: str, adapter: VllmSpec, base: Placement) -> None:
        """Load the adapter deployment `adapter` (localized: `model_directory` set) as
        ``lora_name`` `name` on every instance of its base's placement `base`: loaded on all or,
        on a failure, on none. Nothing is restarted, so requests in flight go on.

        Raises:
            FailedPrecondition: vLLM refused or could not be reached (the message says why).
        """
        directory = adapter.model_directory
        assert directory is not None  # the manager fetches registry_adapter before attaching
        if self.containers is None:
            raise FailedPrecondition(
                "this gateway does not start vLLM containers", field="registry_adapter"
            )
        path = self.containers.mounted_path(directory)
        await self._load_everywhere(base.urls, name, path, "registry_adapter")

    async def unload_adapter(self, name: str, base: Placement) -> None:
        """Unload the adapter ``lora_name`` `name` from every instance of `base` (one that does
        not hold it is fine)."""
        await asyncio.gather(*(self._unload(url, name) for url in base.urls))

    async def loaded_adapters(self, base: Placement) -> set[str]:
        """The adapters (``lora_name``) loaded on every instance of `base`, as their
        ``/v1/models`` lists them (an entry with a ``parent`` is a LoRA adapter).

        Raises:
            FailedPrecondition: an instance did not list its models.
        """
        held: set[str] | None = None
        for url in base.urls:
            names = {card.id for card in (await self._models(url)).data if card.parent}
            held = names if held is None else held & names
        return held or set()

    async def release(self, name: str, spec: VllmSpec, placement: Placement) -> None:
        if spec.registry_model is not None and self.containers is not None:
            await self.containers.remove(name)
        if spec.adapter is not None or spec.base is not None:
            await asyncio.gather(*(self._unload(url, name) for url in placement.urls))

    async def _load_everywhere(self, urls: list[str], name: str, path: str, field: str) -> None:
        loaded: list[str] = []
        try:
            for url in urls:
                await self._load(url, name, path, field)
                loaded.append(url)
        except BaseException:
            await asyncio.gather(*(self._unload(url, name) for url in loaded))
            raise

    async def _place_container(self, name: str, spec: VllmSpec) -> Placement:
        if self.containers is None:
            raise FailedPrecondition(
                "this gateway does not start vLLM containers", field="registry_model"
            )
        container_id, url = await self.containers.ensure(name, spec)
        try:
            await self._wait_healthy(url, container_id)
            await self._check_base(url, name)
        except BaseException:
            await self.containers.remove(name)
            raise
        return Placement(
            urls=[url], upstream_model=name, handles=[container_id], slots=_slots([url], spec)
        )

    async def _wait_healthy(self, url: str, container_id: str) -> None:
        """Until vLLM's ``/health`` answers 200; fails once the container stops or the
        deadline passes."""
        assert self.containers is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            try:
                response = await self.client.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
                if response.status_code == 200:
                    return
            except (httpx.HTTPError, httpx.InvalidURL):
                pass  # not listening yet
            state, exit_code = await self.containers.inspect(container_id)
            if state != "running":
                raise FailedPrecondition(
                    stopped_message(container_id, state, exit_code), field="registry_model"
                )
            if loop.time() >= deadline:
                raise FailedPrecondition(
                    f"vLLM in container {container_id[:12]} was not healthy within "
                    f"{self.start_timeout:.0f} s (FORGELINE_GATEWAY_VLLM_START_SECONDS)",
                    field="registry_model",
                )
            await asyncio.sleep(HEALTH_POLL_S)  # the pace of polling, not a readiness guess

    async def _models(self, url: str) -> ModelList:
        try:
            response = await self.client.get(f"{url}/v1/models", timeout=self._timeout)
            response.raise_for_status()
            return ModelList.model_validate_json(response.content)
        except (httpx.HTTPError, httpx.InvalidURL, ValidationError) as error:
            raise FailedPrecondition(
                f"the vLLM server {url} did not list its models: {error}", field="urls"
            ) from None

    async def _check_base(self, url: str, base_model: str) -> None:
        served = {card.id for card in (await self._models(url)).data}
        if base_model not in served:
            raise FailedPrecondition(
                f"the vLLM server {url} does not serve '{base_model}' (it serves "
                f"{', '.join(sorted(served)) or 'nothing'})",
                field="base_model",
            )

    async def _load(self, url: str, name: str, path: str, field: str) -> None:
        body = LoadLoraAdapterRequest(lora_name=name, lora_path=path)
        try:
            response = await self.client.post(
                f"{url}/v1/load_lora_adapter",
                content=body.model_dump_json(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise FailedPrecondition(
                f"the vLLM server {url} could not be reached: {error}", field="urls"
            ) from None
        if response.is_success:
            log.info("LoRA adapter loaded", extra={"model": name, "vllm": url})
            return
        message = _message(response)
        if response.status_code == 400 and "has already been loaded" in message:
            # Loaded before this gateway restarted, the server running on: kept if it is this
            # adapter, else replaced (nothing of this gateway's can be using that name yet).
            cards = {card.id: card for card in (await self._models(url)).data}
            current = cards.get(name)
            if current is not None and current.root == path:
                return
            await self._unload(url, name)
            await self._load(url, name, path, field)
            return
        raise FailedPrecondition(
            f"the vLLM server {url} refused to load the adapter {path}: {message}",
            field=field,
        )

    async def _unload(self, url: str, name: str) -> None:
        body = UnloadLoraAdapterRequest(lora_name=name)
        try:
            response = await self.client.post(
                f"{url}/v1/unload_lora_adapter",
                content=body.model_dump_json(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            log.warning(
                "could not unload a LoRA adapter", extra={"model": name, "error": repr(error)}
            )
            return
        # 404: vLLM does not hold it (already unloaded, or the server restarted): done.
        if not response.is_success and response.status_code != 404:
            log.warning(
                "vLLM refused to unload a LoRA adapter",
                extra={"model": name, "status": response.status_code, "error": _message(response)},
            )


def _message(response: httpx.Response) -> str:
    """The message of a vLLM error answer: ``{"error": {"message"}}`` (current vLLM) or
    ``{"message"}`` (its older, flat ErrorResponse); else the text."""
    for shape in (_WrappedError, _ErrorDetail):
        try:
            parsed = shape.model_validate_json(response.content)
        except ValidationError:
            continue
        return parsed.error.message if isinstance(parsed, _WrappedError) else parsed.message
    return response.text[:500]


def _slots(urls: list[str], spec: VllmSpec) -> dict[str, int]:
    """Each server's `max_num_seqs`, where the deployment states it (vLLM does not report it)."""
    return dict.fromkeys(urls, spec.max_num_seqs) if spec.max_num_seqs else {}
