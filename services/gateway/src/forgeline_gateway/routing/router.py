"""Model name → deployment → instance: the routing table and the choice of instance.

Each instance has a bound on requests in flight. `Route.acquire` picks, among instances not yet
tried for this request, the one with the fewest requests in flight (ties rotate), preferring
instances that have not recently refused a connection. Past every bound the caller gets nothing,
and answers 429.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from forgeline_gateway.backends.base import Backend, Capabilities, Placement
from forgeline_gateway.deployments.spec import ModelMetadata
from forgeline_gateway.routing.gate import RequestGate
from forgeline_kit.errors import NotFound, Unavailable

__all__ = ["Instance", "ModelNotFound", "Route", "Router"]


class ModelNotFound(NotFound):
    """No deployment has the requested model name."""

    openai_code: ClassVar[str] = "model_not_found"


@dataclass(eq=False)
class Instance:
    """One backend server a deployment is served from.

    Attributes:
        url: its base URL; OpenAI's API lives under ``/v1``.
        limit: requests it may have in flight.
        in_flight: requests sent to it and not finished.
        down_until: monotonic time before which it is skipped when another is available
            (set when it refused a connection).
    """

    url: str
    limit: int
    in_flight: int = 0
    down_until: float = 0.0
    _urls: dict[str, httpx.URL] = field(default_factory=dict)

    def endpoint_url(self, path: str) -> httpx.URL:
        """The parsed URL of `path` on this instance (parsed once, reused)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.url + path)
        return url

    def release(self) -> None:
        """One request sent to this instance has finished."""
        self.in_flight -= 1

    def mark_down(self, seconds: float) -> None:
        """Skip this instance for `seconds` while others can serve."""
        self.down_until = time.monotonic() + seconds

    @property
    def healthy(self) -> bool:
        return self.down_until <= time.monotonic()


@dataclass(eq=False)
class Route:
    """A served deployment as routing sees it."""

    name: str
    backend: Backend[Any]
    spec: Any
    capabilities: Capabilities
    upstream_model: str
    instances: list[Instance]
    metadata: ModelMetadata
    created: int
    placement: Placement
    #: What each request must pass before it is sent (an adapter loaded on demand), if any.
    gate: RequestGate | None = None
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    @property
    def rewrite_model(self) -> bool:
        """Whether the backend reports another model name than the public one."""
        return self.upstream_model != self.name

    def acquire(self, tried: set[Instance]) -> Instance | None:
        """Take a slot on the best untried instance with room, or None if none has room."""
        candidates = [i for i in self.instances if i not in tried and i.in_flight < i.limit]
        if not candidates:
            return None
        # Rotate the starting point so equal loads spread instead of piling on the first.
        start = next(self._turn) % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        best = min(ordered, key=lambda i: (not i.healthy, i.in_flight))
        best.in_flight += 1
        return best

    def has_untried(self, tried: set[Instance]) -> bool:
        return any(i not in tried for i in self.instances)


class Router:
    """The routing table: public model name → route."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._unavailable: dict[str, str] = {}

    def get(self, model: str) -> Route:
        """The route for `model`.

        Raises:
            ModelNotFound: no deployment has that name.
            Unavailable: the deployment exists but could not be placed.
        """
        route = self._routes.get(model)
        if route is None:
            if model in self._unavailable:
                # The reason may name hosts or paths: it is for admins (GET /v1/deployments).
                raise Unavailable(
                    f"The model '{model}' is deployed but could not be started; "
                    "an administrator can see why in GET /v1/deployments."
                )
            raise ModelNotFound(
                f"The model '{model}' does not exist; GET /v1/models lists the deployed models.",
                field="model",
            )
        return route

    def add(self, route: Route) -> None:
        self._routes[route.name] = route

    def remove(self, name: str) -> Route | None:
        return self._routes.pop(name, None)

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Answer 503 with `reason` for `name` (a stored deployment that could not be placed)."""
        self._unavailable[name] = reason

    def clear_unavailable(self, name: str) -> None:
        self._unavailable.pop(name, None)

    def routes(self) -> Iterable[Route]:
        return list(self._routes.values())
