"""Run ``llama-server`` as a child process on loopback and know when it is ready.

One implementation for everyone who needs a local llama-server: the gateway's embedded backend, the
converter's smoke generation, the demo and the tests. Readiness is llama-server's own ``/health``
answer (200 once the model is loaded), never a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from forgeline_kit.llamacpp.toolchain import Toolchain, ToolchainError, locate
from forgeline_kit.subprocesses import die_with_parent

DEFAULT_START_DEADLINE_S = 120.0
_POLL_INTERVAL_S = 0.1
#: glibc's initial mmap threshold (128 KiB), fixed. llama-server rebuilds its compute graph
#: whenever a batch's set of LoRA adapters changes, freeing and reallocating its buffers; glibc
#: then raises its threshold to the size of the freed buffer and serves the next ones from the
#: heap, which does not shrink. With 8 adapters of the tiny model in turn that grew the heap by
#: 7 MiB (benchmarks/adapter_serving_results.md); mmap'd buffers go back to the system when freed.
_ADAPTER_MMAP_THRESHOLD = str(128 * 1024)


class LlamaServerError(ToolchainError):
    """llama-server exited or never became healthy; the message carries the end of its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class LlamaServerOptions:
    """What one llama-server serves and how: the one definition of its command line, used by the
    synchronous :class:`LlamaServerProcess` here and the gateway's asynchronous one.

    Attributes:
        model: the GGUF file.
        alias: the model name the server reports (defaults to the file name).
        lora_adapters: LoRA adapter GGUF files applied on top of ``model``.
        context_size: total context (``--ctx-size``), shared by the slots.
        parallel: slots (``--parallel``): requests decoded together, and the largest ``n``.
        threads: CPU threads for generation.
        embeddings: serve ``/v1/embeddings`` (mean pooling) instead of generation.
        extra_args: appended last, so they can override the defaults.
    """

    model: Path
    alias: str | None = None
    lora_adapters: tuple[Path, ...] = ()
    context_size: int = 512
    parallel: int = 1
    threads: int = 2
    embeddings: bool = False
    extra_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The served model name."""
        return self.alias or self.model.name

    def environment(self, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server's environment: `inherited` (default: this process's), and for a server
        that loads LoRA adapters a fixed malloc mmap threshold unless one is set already."""
        environment = dict(os.environ if inherited is None else inherited)
        if self.lora_adapters:
            environment.setdefault("MALLOC_MMAP_THRESHOLD_", _ADAPTER_MMAP_THRESHOLD)
        return environment

    def arguments(self, binary: Path, host: str, port: int) -> list[str]:
        """The llama-server command line for serving on ``host:port``."""
        command = [
            str(binary),
            "--model", str(self.model),
            "--alias", self.name,
            "--host", host,
            "--port", str(port),
            "--ctx-size", str(self.context_size),
            "--parallel", str(self.parallel),
            "--threads", str(self.threads),
            "--threads-http", "2",
            "--no-webui",
            "--metrics",
            # The model's own Jinja chat template (the default of this llama.cpp, said so that
            # LLAMA_ARG_JINJA cannot turn it off): tool calling needs it.
            "--jinja",
        ]  # fmt: skip
        for adapter in self.lora_adapters:
            command += ["--lora", str(adapter)]
        if self.embeddings:
            command += ["--embeddings", "--pooling", "mean"]
        return [*command, *self.extra_args]


@dataclass
class LlamaServerProcess:
    """A running llama-server; use as a context manager or call :meth:`stop`."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    started_s: float = field(default=0.0)

    @property
    def base_url(self) -> str:
        """``http://host:port``; the OpenAI API is under ``/v1``."""
        return f"http://{self.host}:{self.port}"

    def output(self, last_chars: int = 6000) -> str:
        """The end of what the server printed, for error messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-last_chars:]

    def wait_healthy(self, deadline_s: float = DEFAULT_START_DEADLINE_S) -> LlamaServerProcess:
        """Block until ``/health`` answers 200 (model loaded).

        Raises:
            LlamaServerError: the process exited, or the deadline passed; with its output.
        """
        started = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - started < deadline_s:
                if self.process.poll() is not None:
                    raise LlamaServerError(
                        f"llama-server exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        self.started_s = time.monotonic() - started
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(_POLL_INTERVAL_S)
        self.stop()
        raise LlamaServerError(
            f"llama-server not healthy after {deadline_s:.0f} s:\n{self.output()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)

    def __enter__(self) -> LlamaServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_llama_server(
    options: LlamaServerOptions,
    log_path: Path,
    *,
    toolchain: Toolchain | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    deadline_s: float = DEFAULT_START_DEADLINE_S,
) -> LlamaServerProcess:
    """Start llama-server and return once it is healthy; its output goes to ``log_path``.

    Raises:
        ToolchainNotBuiltError: llama.cpp is not built (run ``make toolchain``).
        LlamaServerError: it exited or did not become healthy in time.
    """
    chosen_port = port if port is not None else free_port(host)
    command = options.arguments((toolchain or locate()).llama_server, host, chosen_port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - an argument list built above, no shell
            # SIGKILL: a llama-server can hang in its graceful shutdown, and starts no children.
            die_with_parent(command, signal.SIGKILL),
            env=options.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = LlamaServerProcess(process=process, host=host, port=chosen_port, log_path=log_path)
    return server.wait_healthy(deadline_s)
