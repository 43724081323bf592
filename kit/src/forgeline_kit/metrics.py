"""The Prometheus ``/metrics`` listener every Forgeline service runs, on a port of its own.

Metrics live in a `prometheus_client.CollectorRegistry`: services use the process-wide default
(`prometheus_client.REGISTRY`, which also carries process and Python collectors); tests that run
several servers in one process give each a `CollectorRegistry` of its own. The gRPC services
(through `forgeline_kit.grpc.server`) and the HTTP gateway both serve these collectors with
`start_service_metrics`, never on their API port: an API published to clients does not publish
what ops graph.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from forgeline_kit.settings import ServiceSettings

__all__ = [
    "REGISTRY",
    "MetricsServer",
    "MetricsStartError",
    "start_metrics_server",
    "start_service_metrics",
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


class MetricsStartError(Exception):
    """The ``/metrics`` endpoint cannot listen where the service's settings say; the message
    names the address, the variables that set it and why."""


def start_metrics_server(
    host: str, port: int, collectors: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `collectors` at ``http://host:port/metrics``; port 0 picks a free port.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this host).
    """
    server, thread = start_http_server(port, addr=host, registry=collectors)
    return MetricsServer(host=host, port=server.server_port, _server=server, _thread=thread)


def start_service_metrics(
    settings: ServiceSettings, collectors: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `collectors` where a service's settings say (its ``METRICS_HOST`` and
    ``METRICS_PORT``), with the error an operator can act on when that fails.

    Raises:
        MetricsStartError: the address cannot be bound, naming the variables that set it.
    """
    try:
        return start_metrics_server(settings.metrics_host, settings.metrics_port, collectors)
    except OSError as exc:
        cls = type(settings)
        host, port = settings.metrics_host, settings.metrics_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise MetricsStartError(
            f"cannot serve /metrics on {address} (set by {cls.env_var('metrics_host')} and "
            f"{cls.env_var('metrics_port')}): {exc.strerror or exc}"
        ) from None
