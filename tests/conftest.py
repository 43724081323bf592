"""Fixtures every test area may use: the tiny model, the llama.cpp toolchain, llama-server.

They are generic on purpose: a test asks for ``tiny_model`` or starts a server with
``start_llama_server`` and gets real files and real processes, never fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from database_urls import shared_postgres
from gguf_adapters import hf_to_gguf
from postgres_server import PostgresServer

from forgeline_kit.llamacpp import Toolchain, ToolchainNotBuiltError, locate
from forgeline_kit.llamacpp.server import (
    LlamaServerError,
    LlamaServerOptions,
    LlamaServerProcess,
)
from forgeline_kit.llamacpp.server import start_llama_server as start_server
from forgeline_kit.subprocesses import offline_env as offline_env_for
from forgeline_kit.tinymodel import DEFAULT_SEED, TinyModel, write_tiny_model


@pytest.fixture(scope="session", autouse=True)
def no_local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The CLI finds a running `forgeline up` stack by itself; tests must not find a developer's
    (a test that wants one points ``FORGELINE_STACK_DIR`` at its own), and the stacks tests start
    name themselves in a state directory of the session's, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORGELINE_STACK_DIR", str(tmp_path_factory.mktemp("no-stack")))
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
        yield


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One real PostgreSQL server for the session (stopped when the tests end); each test takes a
    database of its own (``postgres.create_database()``)."""
    return shared_postgres()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny Llama model (default seed), written once per session; treat it as read-only."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=DEFAULT_SEED)


@pytest.fixture(scope="session")
def llamacpp_toolchain() -> Toolchain:
    """The cached llama.cpp build. `make test` builds it first, so a missing build fails."""
    try:
        return locate()
    except ToolchainNotBuiltError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def tiny_gguf(
    tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model converted to an f16 GGUF with the pinned llama.cpp (once per session; the
    gateway's and the console's tests serve it)."""
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    return hf_to_gguf(llamacpp_toolchain, tiny_model.path, out)


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment for tool subprocesses (LLaMA-Factory, transformers) that never reaches a
    model hub and keeps their caches inside the test session."""
    return offline_env_for(tmp_path_factory.mktemp("hf-home"))


StartLlamaServer = Callable[..., LlamaServerProcess]


@pytest.fixture
def start_llama_server(llamacpp_toolchain: Toolchain, tmp_path: Path) -> Iterator[StartLlamaServer]:
    """Start ``llama-server`` on a GGUF file and wait until it is healthy; every server started
    is stopped at teardown. Extra command-line arguments go after the defaults."""
    servers: list[LlamaServerProcess] = []

    def start(model: Path, extra_args: Sequence[str] = ()) -> LlamaServerProcess:
        log_path = tmp_path / f"llama-server-{len(servers)}.log"
        options = LlamaServerOptions(model=model, extra_args=tuple(extra_args))
        try:
            server = start_server(options, log_path, toolchain=llamacpp_toolchain)
        except LlamaServerError as error:
            pytest.fail(str(error))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
