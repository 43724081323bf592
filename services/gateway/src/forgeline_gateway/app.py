"""The gateway's FastAPI application, built from its settings by `create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import BaseModel

from forgeline_gateway.api.chat import api_router as chat_api
from forgeline_gateway.api.chat.protocol import ChatCompletionRequest
from forgeline_gateway.api.chat.serving import ChatServing
from forgeline_gateway.api.common import body_schemas
from forgeline_gateway.api.completions import api_router as completions_api
from forgeline_gateway.api.completions.protocol import CompletionRequest
from forgeline_gateway.api.completions.serving import CompletionServing
from forgeline_gateway.api.deployments import api_router as deployments_api
from forgeline_gateway.api.deployments.serving import DeploymentServing
from forgeline_gateway.api.embeddings import api_router as embeddings_api
from forgeline_gateway.api.embeddings.protocol import EmbeddingRequest
from forgeline_gateway.api.embeddings.serving import EmbeddingServing
from forgeline_gateway.api.evals import api_router as evals_api
from forgeline_gateway.api.evals.serving import EvalServing, ProxySampler
from forgeline_gateway.api.files import api_router as files_api
from forgeline_gateway.api.files.serving import FileServing
from forgeline_gateway.api.fine_tuning import api_router as fine_tuning_api
from forgeline_gateway.api.fine_tuning.serving import FineTuningServing
from forgeline_gateway.api.keys import api_router as keys_api
from forgeline_gateway.api.keys.serving import KeyServing
from forgeline_gateway.api.models import api_router as models_api
from forgeline_gateway.api.models.serving import ModelServing
from forgeline_gateway.api.registry import api_router as registry_api
from forgeline_gateway.api.registry.serving import RegistryServing
from forgeline_gateway.api.responses import api_router as responses_api
from forgeline_gateway.api.responses.protocol import ResponsesRequest
from forgeline_gateway.api.responses.serving import ResponsesServing
from forgeline_gateway.backends.base import Backend
from forgeline_gateway.backends.llamacpp import LlamaCppBackend
from forgeline_gateway.backends.ollama import OllamaBackend
from forgeline_gateway.backends.vllm import VllmBackend
from forgeline_gateway.backends.vllm_container import VllmContainers, VllmContainerSettings
from forgeline_gateway.console import install_console
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_gateway.deployments.boundaries import DeploymentBoundaries
from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.sync import DeploymentSync
from forgeline_gateway.errors import install_error_handlers
from forgeline_gateway.fine_tuning.answers import METRICS_LABEL as ADAPTER_CHECK_LABEL
from forgeline_gateway.fine_tuning.setup import open_pipeline
from forgeline_gateway.metrics import GatewayMetrics
from forgeline_gateway.middleware import (
    BodyLimitMiddleware,
    KeyBeforeBodyMiddleware,
    TrustedHostMiddleware,
)
from forgeline_gateway.routing.proxy import Proxy, ProxySettings
from forgeline_gateway.routing.router import Router
from forgeline_gateway.routing.transport import PooledTransport
from forgeline_gateway.security.keys import Authenticator
from forgeline_gateway.settings import GatewaySettings
from forgeline_gateway.store import Store
from forgeline_kit.llamacpp import ToolchainError, locate
from forgeline_registry_client.client import RegistryClient

__all__ = ["BackendFactory", "create_app", "default_backends"]

log = logging.getLogger(__name__)

#: Builds the backend adapters, given the gateway's settings and its shared HTTP client.
BackendFactory = Callable[[GatewaySettings, httpx.AsyncClient], Mapping[str, Backend[Any]]]


def default_backends(
    settings: GatewaySettings, client: httpx.AsyncClient
) -> Mapping[str, Backend[Any]]:
    """llama.cpp (with the built toolchain's llama-server, if any), vLLM (servers, or containers
    started through the Docker API) and Ollama."""
    try:
        llama_server = locate().llama_server
    except ToolchainError as error:
        log.warning("llama-server is not available; only attached servers work", exc_info=error)
        llama_server = None
    llamacpp = LlamaCppBackend(
        client,
        llama_server,
        threads=settings.llama_server_threads,
        start_timeout=settings.llama_server_start_seconds,
    )
    containers = VllmContainers(
        VllmContainerSettings(
            image=settings.vllm_image,
            model_cache=settings.model_cache,
            model_mount=settings.vllm_model_mount,
            network=settings.vllm_network,
        )
    )
    vllm = VllmBackend(client, containers, start_timeout=settings.vllm_start_seconds)
    adapters: list[Backend[Any]] = [llamacpp, vllm, OllamaBackend(client)]
    return {adapter.kind: adapter for adapter in adapters}


def create_app(
    settings: GatewaySettings,
    *,
    collectors: CollectorRegistry = REGISTRY,
    backends: BackendFactory = default_backends,
) -> FastAPI:
    """The gateway application: state opens and deployments are restored when it starts
    (ASGI lifespan), and everything it started is stopped when it stops.

    Args:
        settings: the gateway's settings.
        collectors: where its metrics are registered (tests give each app its own). They are
            not served here: ``/metrics`` has a listener of its own (the kit's, started by
            ``forgeline-gateway``), so the public API port does not publish them.
        backends: builds the backend adapters.
    """
    metrics = GatewayMetrics(collectors)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.open(settings.database_url)
        # One pool of backend connections: the proxy sends inference through it directly, the
        # backend adapters' management calls go through an httpx client on top of it.
        transport = PooledTransport()
        timeout = httpx.Timeout(
            settings.request_timeout_seconds, connect=settings.connect_timeout_seconds
        )
        client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            # Backends are reached directly; an HTTP(S)_PROXY meant for the internet is not
            # for them.
            trust_env=False,
        )
        router = Router()
        registry = (
            RegistryClient(
                settings.registry_target, accept_local_files=settings.registry_local_files
            )
            if settings.registry_target
            else None
        )
        artifacts = RegistryArtifacts(registry, settings.model_cache) if registry else None
        manager = DeploymentManager(
            store,
            backends(settings, client),
            router,
            max_in_flight=settings.max_in_flight_per_instance,
            queue_per_instance=settings.queue_per_instance,
            vllm_urls=list(settings.vllm_urls),
            ollama_url=settings.ollama_url,
            artifacts=artifacts,
            boundaries=DeploymentBoundaries.of(settings),
            # Old processes of a base restarted for its adapters serve what is in flight on
            # them; no request runs longer than this.
            drain_seconds=settings.request_timeout_seconds,
            metrics=metrics,
            retry_after=settings.retry_after_seconds,
            adapter_wait_seconds=settings.adapter_wait_seconds,
        )
        metrics.watch_adapters(manager.adapters_per_base)
        metrics.watch_loaded_adapters(manager.loaded_adapters_per_base)
        authenticator = Authenticator(
            store, required=settings.auth_required, cache_seconds=settings.key_cache_seconds
        )
        proxy = Proxy(
            router,
            transport,
            metrics,
            ProxySettings(
                request_timeout=settings.request_timeout_seconds,
                timeout=timeout,
                retry_after=settings.retry_after_seconds,
                unhealthy_seconds=settings.unhealthy_seconds,
            ),
        )
        state = app.state
        state.settings = settings
        state.store = store
        state.router = router
        state.manager = manager
        state.authenticator = authenticator
        state.metrics = metrics
        state.chat = ChatServing(proxy)
        state.completions = CompletionServing(proxy)
        state.embeddings = EmbeddingServing(proxy)
        state.responses = ResponsesServing(proxy)
        state.models = ModelServing(router)
        state.deployments = DeploymentServing(manager)
        state.keys = KeyServing(store, authenticator)
        state.files = files = FileServing.open(settings, store)
        state.evals = evals = EvalServing.open(settings, proxy, router, files.service)
        state.registry = RegistryServing(registry)
        state.fine_tuning = None
        sync = DeploymentSync(manager, store, settings.deployment_sync_seconds)
        try:
            await manager.restore()
            sync.start()
            await evals.start()
            # The adapter check's greedy answers go through the proxy like a client's.
            answers = ProxySampler(proxy, router, label=ADAPTER_CHECK_LABEL)
            async with open_pipeline(
                settings, registry, files.service, manager, answers, evals.service
            ) as pipeline:
                if pipeline is not None:
                    state.fine_tuning = FineTuningServing(pipeline, settings.organization)
                yield
        finally:
            await sync.close()
            await evals.close()
            await manager.close()
            await files.close()
            if registry is not None:
                await registry.close()
            await client.aclose()
            store.close()

    app = FastAPI(
        title="Forgeline gateway",
        version="0.1.0",
        description="The OpenAI-compatible front door over vLLM, Ollama and llama.cpp.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (chat_api, completions_api, embeddings_api, responses_api, models_api):
        app.include_router(module.router)
    for module in (deployments_api, keys_api):
        app.include_router(module.router)
    app.include_router(files_api.router)
    app.include_router(fine_tuning_api.router)
    app.include_router(evals_api.router)
    app.include_router(registry_api.router)
    install_console(app)  # the web UI at /console/, a client of the API above

    @app.get("/health", tags=["ops"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        exempt=files_api.counts_its_own_body,
    )
    app.add_middleware(KeyBeforeBodyMiddleware)
    # Added last, so it runs first: nothing, not even a body, is read for a foreign host.
    app.add_middleware(TrustedHostMiddleware, allowed=settings.allowed_hosts())
    _document_bodies(
        app, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest
    )
    return app


def _document_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add the request bodies the inference endpoints parse themselves to the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in body_schemas(*models).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
