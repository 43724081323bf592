"""What a route may ask of each request before it is sent: to pass a gate.

Most routes have none. A deployment whose backend has to prepare something per model before a
request can use it (a LoRA adapter loaded on demand into a shared vLLM server,
`deployments/adapter_residency.py`) gives its route a gate: the proxy awaits `enter` before it
picks an instance and calls `leave` once the request is over, whatever its end. The proxy knows
nothing else about it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["RequestGate"]


class RequestGate(Protocol):
    """Admission of one request to a deployment, held until the request ends."""

    async def enter(self) -> None:
        """Return once the deployment can serve a request, which is then counted as in
        flight until `leave`. If cancelled (the client left), nothing is held.

        Raises:
            ForgelineError: the request cannot be served now (busy: `Overloaded`, a 429 with
                Retry-After; or unavailable, a 503).
        """
        ...

    def leave(self) -> None:
        """The request that entered has ended (answered, failed or abandoned)."""
        ...
