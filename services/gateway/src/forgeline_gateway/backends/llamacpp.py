"""llama.cpp's ``llama-server``: the embedded default's backend (CPU, GGUF).

The gateway starts one ``llama-server`` process per replica (``llama-server -m GGUF [--lora
ADAPTER]`` on a free loopback port, healthy once ``/health`` says so), or attaches to servers
already running elsewhere (a container). Inference goes to the server's OpenAI API; the server's
own parameter schema (tools/server/server-schema.cpp at the pinned commit) is what the
capabilities below declare.

Tool calling is llama-server's own (``--jinja``): it renders ``tools`` with the model's Jinja chat
template and derives the call format, its parser and its grammar from that template. Whether a
template can carry tools at all is the server's verdict, read from ``/props``
(``chat_template_caps``) when a deployment is placed and kept here per deployment
(:class:`TemplateTools`, read in ``llamacpp_template.py``): a model whose template cannot is
refused ``tools`` with a 400 rather than answering in plain text. Two gaps of the pinned
llama-server are closed here:

* a named ``tool_choice`` (``{"type": "function", "function": {"name": ...}}``) is read as
  ``"auto"`` (its ``json_value`` takes only strings; reported in llama.cpp PR 26849), so the
  gateway sends ``"required"`` with that one tool;
* ``"required"`` lets the model write any text before its first call (llama.cpp issue 27217:
  ``until(<marker>)? tool-calls`` in the grammar), so a model can use up ``max_tokens`` without
  calling. Where the template opens each call with a marker (``<tool_call>`` and a line break in
  the Hermes 2 Pro and Qwen 2.5 format) the gateway starts the answer with it, as an assistant
  message the server continues (its assistant prefill), so the grammar holds from the first
  token and the answer is a call. The marker is read off the server's own rendering
  (``/apply-template``) when the deployment is placed.

Adapters on a shared base (`place_shared`): the base deployment's processes are started with
every adapter attached to it loaded (``--lora-init-without-apply --lora A --lora B ...``), one
process and one copy of the base for all of them, and each request says which adapters apply
(the ``lora`` field, ``[{"id": N, "scale": S}, ...]``; the ids are read back from ``GET
/lora-adapters``). At the pinned commit two things make the selection explicit for every
adapter loaded, the base's requests included, rather than left to the server's defaults: the
flag keeps the adapters off the context at load but leaves their default scales at 1.0, which a
request without ``lora`` gets; and such a request takes a slot's cached prompt computed under
another adapter as its own (``launch_slot_with_task`` clears the cache only when the request
names its adapters). So the global scales are set to 0 once each process is healthy (``POST
/lora-adapters``), and the gateway sends every request the full list, scale 1.0 for its
deployment's adapters and 0.0 for the others (`Placement.request_fields`). Requests for
different adapters are not batched together by llama-server; they share its slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from forgeline_gateway.backends.base import (
    OPENAI_SERVER_PARAMS,
    Backend,
    Capabilities,
    Endpoint,
    Placement,
)
from forgeline_gateway.backends.llamacpp_process import LlamaServerProcess
from forgeline_gateway.backends.llamacpp_template import (
    UNKNOWN_TOOLS,
    TemplateTools,
    read_template_tools,
)
from forgeline_gateway.deployments.spec import LlamaCppSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument
from forgeline_kit.llamacpp.server import LlamaServerOptions

__all__ = ["LlamaCppBackend", "SharedPlacement", "TemplateTools", "read_template_tools"]

log = logging.getLogger(__name__)

ATTACH_TIMEOUT_S = 10.0
#: Adapter files one base's processes load at most (each adds its tensors to every process).
MAX_SHARED_ADAPTERS = 64
#: Loads adapters without applying them to the context (their scales are set per request).
_LORA_UNAPPLIED = "--lora-init-without-apply"

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

_CHAT = OPENAI_SERVER_PARAMS[Endpoint.CHAT] | _LLAMA_SAMPLING | {"logprobs"}
# Not `logprobs`, `echo`, `best_of` or `suffix`: llama-server's /v1/completions answers
# logprobs in the chat shape, not the completions one, and neither echoes nor ranks.
_COMPLETIONS = OPENAI_SERVER_PARAMS[Endpoint.COMPLETIONS] | _LLAMA_SAMPLING
_EMBEDDINGS = frozenset({"input", "encoding_format"})


@dataclass(frozen=True)
class SharedPlacement:
    """A base deployment's processes started with the adapters of the deployments attached to it.

    Attributes:
        base: the base deployment's placement (its processes are its handles).
        adapters: each attached deployment's placement: the base's processes, no handles of
            its own, and the ``lora`` selection its requests carry.
    """

    base: Placement
    adapters: dict[str, Placement] = field(default_factory=dict)


def _tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _named_choice(choice: Any) -> str | None:
    """The function a ``tool_choice`` object names, or None for the string choices."""
    return _tool_name(choice) if isinstance(choice, dict) else None


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
            client: the gateway's shared HTTP client (for attached servers, and to ask each
                server what its chat template does with tools).
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
        # Per deployment, the generations of its processes still running, oldest first: a base
        # restarted with another set of adapters serves from the new one while the old one
        # drains (the manager releases it then).
        self._generations: dict[str, list[list[LlamaServerProcess]]] = {}
        self._tools: dict[str, TemplateTools] = {}

    def capabilities(self, spec: LlamaCppSpec) -> Capabilities:
        if spec.embeddings:
            return Capabilities({Endpoint.EMBEDDINGS: _EMBEDDINGS})
        return Capabilities(
            {Endpoint.CHAT: _CHAT, Endpoint.COMPLETIONS: _COMPLETIONS},
            # Attached servers' slot counts are unknown: let them refuse a too-large n.
            max_n=spec.parallel if spec.gguf is not None else 128,
        )

    def check(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> None:
        if endpoint is not Endpoint.CHAT:
            return
        tools = params.get("tools") or []
        if self._tools.get(model, UNKNOWN_TOOLS).supported is False:
            if tools:
                raise InvalidArgument(
                    f"The model '{model}' cannot call tools: its chat template has no way to show "
                    "tools to the model or to write its tool calls (llama-server reports "
                    "supports_tools/supports_tool_calls false). Remove 'tools', or deploy a model "
                    "whose chat template supports tool calling.",
                    field="tools",
                )
            for index, message in enumerate(params.get("messages") or []):
                if isinstance(message, dict) and message.get("tool_calls"):
                    raise InvalidArgument(
                        f"The model '{model}' cannot call tools: its chat template cannot write "
                        "the tool calls of earlier assistant messages.",
                        field=f"messages[{index}].tool_calls",
                    )
        choice = params.get("tool_choice")
        if choice not in (None, "none", "auto") and not tools:
            raise InvalidArgument(
                "The parameter 'tool_choice' asks for a tool call, which needs 'tools'.",
                field="tool_choice",
            )
        named = _named_choice(choice)
        if named is not None and named not in {_tool_name(tool) for tool in tools}:
            raise InvalidArgument(
                f"The parameter 'tool_choice' names the function '{named}', which is not in "
                "'tools'.",
                field="tool_choice",
            )

    def prepare(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> dict[str, Any]:
        if endpoint is not Endpoint.CHAT or not params.get("tools"):
            return params
        choice = params.get("tool_choice")
        named = _named_choice(choice)
        if named is None and choice != "required":
            return params
        params = dict(params)
        if named is not None:
            # The one tool the client named, required: what llama-server can express of it.
            params["tools"] = [tool for tool in params["tools"] if _tool_name(tool) == named]
            params["tool_choice"] = "required"
        opener = self._tools.get(model, UNKNOWN_TOOLS).call_opener
        messages = params.get("messages") or []
        # Not under a response format (its grammar, not the tools', constrains the answer), nor
        # after an assistant message of the client's own (which the server continues instead).
        if (
            opener
            and "response_format" not in params
            and messages
            and messages[-1].get("role") != "assistant"
        ):
            # The answer starts as a call: the server continues this message under the grammar.
            params["messages"] = [*messages, {"role": "assistant", "content": opener}]
        return params

    async def place(self, name: str, spec: LlamaCppSpec) -> Placement:
        if spec.adapter:
            raise InvalidArgument(
                f"'{name}' is an adapter deployment: it is placed with its base '{spec.base}'",
                field="base",
            )
        if spec.gguf is None:
            urls = [url.rstrip("/") for url in spec.urls]
            placement = Placement(
                urls=urls,
                upstream_model=await self._served_name(urls),
                slots=await self._reported_slots(urls),
            )
            await self._learn_template(name, spec, urls)
            return placement
        processes = await self._start(name, spec, self._options(name, spec, ()))
        await self._learn_template(name, spec, [processes[0].url])
        urls = [p.url for p in processes]
        return Placement(
            urls=urls,
            upstream_model=name,
            handles=list(processes),
            slots=dict.fromkeys(urls, spec.parallel),
        )

    async def place_shared(
        self, name: str, spec: LlamaCppSpec, attached: Mapping[str, Sequence[str]]
    ) -> SharedPlacement:
        """Start the processes of base deployment `name` (`spec`, its files local) with the
        adapter files of every deployment in `attached` loaded, unapplied; each placement's
        ``request_fields`` select its adapters (the base's own ``lora`` apply to all of them).
        With nothing attached, the base is placed as `place` places it. The processes serving
        the base before keep running: `release` their placement once drained.

        Raises:
            InvalidArgument: the base cannot carry adapters (embeddings, attached servers).
            FailedPrecondition: a file is missing, or a process did not become healthy.
        """
        if not attached:
            return SharedPlacement(base=await self.place(name, spec))
        if spec.gguf is None or spec.embeddings or spec.adapter:
            raise InvalidArgument(
                f"adapters can be served only on a llama.cpp deployment of generation whose "
                f"llama-server processes the gateway starts ('gguf' or 'registry_gguf'); "
                f"'{name}' is not one",
                field="base",
            )
        own = _unique(spec.lora)
        files = _unique([*own, *(path for paths in attached.values() for path in paths)])
        if len(files) > MAX_SHARED_ADAPTERS:
            raise InvalidArgument(
                f"the deployment '{name}' would load {len(files)} adapters; at most "
                f"{MAX_SHARED_ADAPTERS} are served on one base",
                field="base",
            )
        processes = await self._start(
            name, spec, self._options(name, spec, files, extra_args=(_LORA_UNAPPLIED,))
        )
        try:
            ids = await self._adapter_ids(processes, files)
        except BaseException as error:
            await self._stop(name, processes)
            if isinstance(error, httpx.HTTPError | ValueError | KeyError | TypeError):
                raise FailedPrecondition(
                    f"llama-server for '{name}' did not report the adapters it loaded: {error!r}"
                ) from error
            raise
        await self._learn_template(name, spec, [processes[0].url])
        urls = [p.url for p in processes]

        def selection(applied: Sequence[str]) -> dict[str, Any]:
            chosen = set(_unique(applied))
            lora = [{"id": ids[f], "scale": 1.0 if f in chosen else 0.0} for f in files]
            return {"lora": lora}

        slots = dict.fromkeys(urls, spec.parallel)
        adapters: dict[str, Placement] = {}
        for adapter, paths in attached.items():
            adapters[adapter] = Placement(
                urls=urls,
                upstream_model=name,
                request_fields=selection([*own, *paths]),
                slots=slots,
            )
            self._tools[adapter] = self._tools.get(name, UNKNOWN_TOOLS)
        base = Placement(
            urls=urls,
            upstream_model=name,
            handles=list(processes),
            request_fields=selection(own),
            slots=slots,
        )
        log.info(
            "llama-server processes started with shared adapters",
            extra={"model": name, "adapters": sorted(attached), "files": len(files)},
        )
        return SharedPlacement(base=base, adapters=adapters)

    def _options(
        self,
        name: str,
        spec: LlamaCppSpec,
        lora: Sequence[str],
        extra_args: tuple[str, ...] = (),
    ) -> LlamaServerOptions:
        assert spec.gguf is not None
        return LlamaServerOptions(
            model=Path(spec.gguf),
            alias=name,
            lora_adapters=tuple(Path(p) for p in (lora or spec.lora)),
            context_size=spec.context_size,
            parallel=spec.parallel,
            threads=self.threads,
            embeddings=spec.embeddings,
            extra_args=extra_args,
        )

    async def _start(
        self, name: str, spec: LlamaCppSpec, options: LlamaServerOptions
    ) -> list[LlamaServerProcess]:
        """Start `spec.replicas` processes, all healthy, as a new generation of `name`'s."""
        if self.llama_server is None:
            raise FailedPrecondition(
                "llama-server is not built on the gateway host: run `make toolchain`, or deploy "
                "with 'urls' pointing at running llama-server instances"
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
        self._generations.setdefault(name, []).append(processes)
        return processes

    async def _adapter_ids(
        self, processes: Sequence[LlamaServerProcess], files: Sequence[str]
    ) -> dict[str, int]:
        """Each adapter file's id in the processes (``GET /lora-adapters``, the same in every
        replica: the order of the command line), after setting every adapter's global scale to
        0, so a request that names no adapters is answered by the base alone."""
        ids: dict[str, int] = {}
        for process in processes:
            response = await self.client.get(f"{process.url}/lora-adapters", timeout=self._timeout)
            response.raise_for_status()
            loaded = {str(entry["path"]): int(entry["id"]) for entry in response.json()}
            missing = [f for f in files if f not in loaded]
            if missing or (ids and ids != {f: loaded[f] for f in files}):
                raise FailedPrecondition(
                    f"llama-server did not load the adapters it was given (missing: {missing})"
                )
            ids = {f: loaded[f] for f in files}
            zero = [{"id": i, "scale": 0.0} for i in sorted(loaded.values())]
            answer = await self.client.post(
                f"{process.url}/lora-adapters", json=zero, timeout=self._timeout
            )
            answer.raise_for_status()
        return ids

    async def release(self, name: str, spec: LlamaCppSpec, placement: Placement) -> None:
        processes = [h for h in placement.handles if isinstance(h, LlamaServerProcess)]
        await self._stop(name, processes)

    async def _stop(self, name: str, processes: Sequence[LlamaServerProcess]) -> None:
        """Stop one generation of `name`'s processes; with the last one, forget `name`."""
        generations = [
            g for g in self._generations.get(name, []) if not any(p in processes for p in g)
        ]
        if generations:
            self._generations[name] = generations
        else:
            self._generations.pop(name, None)
            self._tools.pop(name, None)
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

    async def _reported_slots(self, urls: list[str]) -> dict[str, int]:
        """The slots each attached llama-server reports (``/props`` ``total_slots``: its
        ``--parallel``); a server that does not say is left out (admission then uses the
        gateway's fixed bound)."""
        slots: dict[str, int] = {}
        for url in urls:
            try:
                response = await self.client.get(f"{url}/props", timeout=self._timeout)
                response.raise_for_status()
                total = response.json().get("total_slots")
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as error:
                log.warning("attached llama-server did not report its slots", exc_info=error)
                continue
            if isinstance(total, int) and not isinstance(total, bool) and total > 0:
                slots[url] = total
        return slots

    async def _learn_template(self, name: str, spec: LlamaCppSpec, urls: list[str]) -> None:
        """Keep what the template of deployment `name` does with tools (from its first server
        that says; every replica serves the same model)."""
        if spec.embeddings:
            return
        tools = UNKNOWN_TOOLS
        for url in urls:
            tools = await read_template_tools(self.client, url, self._timeout)
            if tools.supported is not None:
                break
        self._tools[name] = tools
        log.info(
            "llama-server chat template read",
            extra={
                "model": name,
                "tool_calling": {True: "yes", False: "no", None: "unknown"}[tools.supported],
                "tool_call_opener": tools.call_opener,
            },
        )

    def template_tools(self, name: str) -> TemplateTools:
        """What deployment `name`'s chat template does with tools (unknown if not placed)."""
        return self._tools.get(name, UNKNOWN_TOOLS)

    def processes(self, name: str) -> list[LlamaServerProcess]:
        """The newest processes started for deployment `name` (empty when attached, unknown or
        an adapter deployment: those are served by their base's)."""
        generations = self._generations.get(name)
        return list(generations[-1]) if generations else []

    def running_processes(self) -> list[LlamaServerProcess]:
        """Every llama-server process this backend runs, draining generations included."""
        return [p for gs in self._generations.values() for g in gs for p in g if p.running]

    async def close(self) -> None:
        self._tools.clear()
        generations, self._generations = self._generations, {}
        await asyncio.gather(*(p.stop() for gs in generations.values() for g in gs for p in g))


def _unique(paths: Sequence[str]) -> list[str]:
    """`paths` in order, each once (two deployments of one adapter file load it once)."""
    return list(dict.fromkeys(str(Path(p)) for p in paths))
