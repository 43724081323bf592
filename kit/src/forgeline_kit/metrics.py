"""Prometheus helpers shared by the gRPC services and the HTTP gateway.

Metrics live in a `prometheus_client.CollectorRegistry`: services use the process-wide default
(`prometheus_client.REGISTRY`, which also carries process and Python collectors); tests that run
several servers in one process give each its own registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "CONTENT_TYPE_LATEST",
    "REGISTRY",
    "MetricsServer",
    "metrics_asgi_app",
    "render_metrics",
    "start_metrics_server",
]


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (served from a daemon thread)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Where Prometheus scrapes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `registry` at ``http://host:port/metrics``; port 0 picks a free port.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this host).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host=host, port=server.server_port, _server=server, _thread=thread)


def render_metrics(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The body and content type of a scrape of `registry`."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_asgi_app(registry: CollectorRegistry = REGISTRY) -> object:
    """An ASGI app answering scrapes of `registry`, for mounting at ``/metrics`` in FastAPI."""
    return make_asgi_app(registry=registry)
