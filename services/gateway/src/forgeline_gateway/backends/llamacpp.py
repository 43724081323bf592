"""llama.cpp's ``llama-server``: the embedded default's backend (CPU, GGUF).

The gateway starts one ``llama-server`` process per replica (``llama-server -m GGUF [--lora
ADAPTER]`` on a free loopback port, healthy once ``/health`` says so), or attaches to servers
already running elsewhere (a container). Inference goes to the server's OpenAI API; the server's
own parameter schema (tools/server/server-schema.cpp at the pinned commit) is what the
capabilities below declare.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from forgeline_gateway.backends.base import Backend, Capabilities, Endpoint, Placement
from forgeline_gateway.backends.llamacpp_process import LlamaServerProcess
from forgeline_gateway.deployments.spec import LlamaCppSpec
from forgeline_kit.errors import FailedPrecondition
from forgeline_kit.llamacpp.server import LlamaServerOptions

__all__ = ["LlamaCppBackend"]

log = logging.getLogger(__name__)

ATTACH_TIMEOUT_S = 10.0

# Sampling parameters llama-server reads besides OpenAI's (its own names).
_LLAMA_SAMPLING = frozenset(
    {
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "dynatemp_range",
        "dynatemp_exponent",
        "xtc_probability",
        "xtc_threshold",
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "dry_penalty_last_n",
        "grammar",
        "json_schema",
        "cache_prompt",
        "ignore_eos",
    }
)

_COMMON = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
    }
)

_CHAT = (
    _COMMON
    | _LLAMA_SAMPLING
    | {
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "chat_template_kwargs",
    }
)
# Not `logprobs`, `echo`, `best_of` or `suffix`: llama-server's /v1/completions answers
# logprobs in the chat shape, not the completions one, and neither echoes nor ranks.
_COMPLETIONS = _COMMON | _LLAMA_SAMPLING | {"prompt"}
_EMBEDDINGS = frozenset({"input", "encoding_format"})


class LlamaCppBackend(Backend[LlamaCppSpec]):
    """Places GGUF models on llama-server processes it manages (or on running servers)."""

    kind = "llamacpp"

    def __init__(
        self,
        client: httpx.AsyncClient,
        llama_server: Path | None,
        *,
        threads: int = 2,
        start_timeout: float = 120.0,
    ) -> None:
        """
        Args:
            client: the gateway's shared HTTP client (for attached servers).
            llama_server: the binary (``forgeline_kit.llamacpp.locate().llama_server``); None
                when no toolchain is built, so only attaching to running servers works.
            threads: CPU threads per process.
            start_timeout: how long a process may take to become healthy.
        """
        self.client = client
        # Slow answers are normal here (loading weights); an unreachable server is not.
        self._timeout = httpx.Timeout(ATTACH_TIMEOUT_S, connect=client.timeout.connect)
        self.llama_server = llama_server
        self.threads = threads
        self.start_timeout = start_timeout
        self._processes: dict[str, list[LlamaServerProcess]] = {}

    def capabilities(self, spec: LlamaCppSpec) -> Capabilities:
        if spec.embeddings:
            return Capabilities({Endpoint.EMBEDDINGS: _EMBEDDINGS})
        return Capabilities(
            {Endpoint.CHAT: _CHAT, Endpoint.COMPLETIONS: _COMPLETIONS},
            # Attached servers' slot counts are unknown: let them refuse a too-large n.
            max_n=spec.parallel if spec.gguf is not None else 128,
        )

    async def place(self, name: str, spec: LlamaCppSpec) -> Placement:
        if spec.gguf is None:
            urls = [url.rstrip("/") for url in spec.urls]
            return Placement(urls=urls, upstream_model=await self._served_name(urls))
        if self.llama_server is None:
            raise FailedPrecondition(
                "llama-server is not built on the gateway host: run `make toolchain`, or deploy "
                "with 'urls' pointing at running llama-server instances"
            )
        options = LlamaServerOptions(
            model=Path(spec.gguf),
            alias=name,
            lora_adapters=tuple(Path(p) for p in spec.lora),
            context_size=spec.context_size,
            parallel=spec.parallel,
            threads=self.threads,
            embeddings=spec.embeddings,
        )
        binary = self.llama_server
        processes = [LlamaServerProcess(options, binary) for _ in range(spec.replicas)]
        results = await asyncio.gather(
            *(p.start(self.start_timeout) for p in processes), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(p.stop() for p in processes))
            raise failures[0]
        self._processes[name] = processes
        return Placement(
            urls=[p.url for p in processes], upstream_model=name, handles=list(processes)
        )

    async def release(self, name: str, spec: LlamaCppSpec, placement: Placement) -> None:
        processes = self._processes.pop(name, [])
        await asyncio.gather(*(p.stop() for p in processes))

    async def _served_name(self, urls: list[str]) -> str:
        """The model name an attached llama-server reports, read from its ``/v1/models``."""
        for url in urls:
            try:
                response = await self.client.get(f"{url}/v1/models", timeout=self._timeout)
                response.raise_for_status()
                data = response.json().get("data") or []
                if data and isinstance(data[0].get("id"), str):
                    return str(data[0]["id"])
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as error:
                log.warning("attached llama-server did not list its model", exc_info=error)
        # The admin can fix this (start the server, correct the URL): a 400, not the gateway's.
        raise FailedPrecondition(
            "none of the llama-server instances given in 'urls' answered /v1/models", field="urls"
        )

    def processes(self, name: str) -> list[LlamaServerProcess]:
        """The processes serving deployment `name` (empty when attached or unknown)."""
        return list(self._processes.get(name, []))

    async def close(self) -> None:
        names = list(self._processes)
        await asyncio.gather(*(p.stop() for n in names for p in self._processes.pop(n, [])))
