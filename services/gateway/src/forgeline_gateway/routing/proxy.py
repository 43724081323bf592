"""Sending one inference request to a backend instance and the answer back to the client.

* The request is checked against the deployment's capabilities before anything is sent.
* A route with a gate (`routing/gate.py`: an adapter loaded on demand) is passed first, and
  left when the request is counted.
* Instances are chosen by `Route.acquire` (least in flight, bounded); a connection failure or a
  5xx before the first byte moves on to another instance; once bytes of a stream went to the
  client, nothing is retried.
* A client that goes away cancels the upstream call (`ClientWatch`): the connection to the
  backend is closed, which llama-server, vLLM and Ollama all take as a cancellation.
* Streams pass through event by event (`forgeline_gateway.sse`); nothing is buffered whole.
* Another API served over an endpoint's backends (the Responses API over chat) gives a
  `Translation`: routed, watched and counted the same, only its answers and events differ.
* The gateway's own work (eval runs) asks for answers with `Proxy.complete`: routed, failed over
  and counted the same, with no client connection to watch.

This is the gateway's hot path, so requests go straight to the pooled transport rather than
through `httpx.AsyncClient.send`, whose redirect, cookie, auth and logging layers cost more per
request than the transport itself and do nothing for a backend call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.api.common import OpenAIRequest
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.errors import BadGateway, Overloaded
from forgeline_gateway.metrics import UNKNOWN_MODEL, GatewayMetrics
from forgeline_gateway.routing.client_watch import ClientDisconnectedError, ClientWatch
from forgeline_gateway.routing.event_stream import EventStreamResponse
from forgeline_gateway.routing.gate import RequestGate
from forgeline_gateway.routing.router import Instance, Route, Router
from forgeline_gateway.routing.translation import StreamTranslator, Translation
from forgeline_gateway.routing.transport import PooledTransport
from forgeline_gateway.sse import StreamRelay
from forgeline_kit.errors import (
    DeadlineExceeded,
    ForgelineError,
    InvalidArgument,
    Unavailable,
    http_status_for,
)

__all__ = ["Proxy", "ProxySettings"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: The status logged and counted for a request whose client went away (nginx's convention).
CLIENT_CLOSED = 499

_URL = re.compile(r"\b(?:https?|tcp|unix)://\S+")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_UPSTREAM_HEADERS = httpx.Headers(
    {"Content-Type": "application/json", "Accept": "*/*", "Accept-Encoding": "identity"}
)


@dataclass(frozen=True)
class ProxySettings:
    request_timeout: float
    #: Per-operation timeouts of a backend call (the shared HTTP client's own).
    timeout: httpx.Timeout
    retry_after: int
    unhealthy_seconds: float


@dataclass
class _Call:
    """One request's bookkeeping, for metrics and logs."""

    route: Route
    endpoint: Endpoint
    metrics: GatewayMetrics
    started: float
    #: The ``endpoint`` label of its metrics.
    label: str
    #: The route's gate once the request passed it; left when the request is counted.
    gate: RequestGate | None = None

    async def admit(self) -> None:
        """Pass the route's gate, if it has one (an adapter loaded on demand)."""
        gate = self.route.gate
        if gate is not None:
            await gate.enter()
            self.gate = gate

    def finish(self, status: int, prompt: int = 0, completion: int = 0) -> None:
        if self.gate is not None:
            self.gate.leave()
            self.gate = None
        labels = (self.route.name, self.route.backend_kind)
        self.metrics.observe(*labels, self.label, status, time.perf_counter() - self.started)
        self.metrics.tokens(*labels, prompt, completion)
        self.metrics.in_flight.labels(*labels).dec()

    def upstream_error(self, reason: str) -> None:
        self.metrics.upstream_errors.labels(self.route.name, self.route.backend_kind, reason).inc()


class Proxy:
    """Serves inference requests over the routing table, through the gateway's one pool of
    backend connections (the transport its shared HTTP client uses too)."""

    def __init__(
        self,
        router: Router,
        transport: PooledTransport,
        metrics: GatewayMetrics,
        settings: ProxySettings,
    ) -> None:
        self.router = router
        self.transport = transport
        self.metrics = metrics
        self.settings = settings
        self._timeout = settings.timeout.as_dict()

    async def serve(
        self,
        request: Request,
        endpoint: Endpoint,
        body: OpenAIRequest,
        response_model: type[BaseModel],
        translation: Translation | None = None,
    ) -> Response:
        """Answer `body` (already validated against OpenAI's schema) from a backend; with a
        `translation`, the client gets its answers and events instead of the endpoint's."""
        started = time.perf_counter()
        label = translation.label if translation is not None else endpoint.label
        params = body.upstream_params()
        route = self._route(endpoint, params, label, started)
        call = _Call(route, endpoint, self.metrics, started, label)
        self.metrics.in_flight.labels(route.name, route.backend_kind).inc()
        stream = bool(params.get("stream"))
        content = self._upstream_body(route, endpoint, params, stream)
        # From here to the answer's last byte, a client that leaves cancels the work.
        watch = ClientWatch(request.receive)
        opened = False
        try:
            with watch.guard():
                await call.admit()
                if not stream:
                    return await self._complete(call, content, response_model, translation)
                instance, upstream = await self._open(call, content)
                opened = True  # the stream's response takes the watch over
        except ClientDisconnectedError:
            call.finish(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        except BaseException as error:
            call.finish(http_status_for(error))
            raise
        finally:
            if not opened:
                watch.stop()
        relay: StreamTranslator
        if translation is not None:
            relay = translation.events()
        else:
            options = params.get("stream_options") or {}
            relay = StreamRelay(
                include_usage=bool(options.get("include_usage")),
                n=int(params.get("n") or 1),
                model=route.name if route.rewrite_model else None,
            )
        events = _Relay(call, instance, upstream, relay, self.settings.request_timeout)
        return EventStreamResponse(events, watch, headers=_SSE_HEADERS)

    async def complete(
        self, endpoint: Endpoint, body: OpenAIRequest, response_model: type[M], *, label: str
    ) -> M:
        """The backend's non-streamed answer to `body`, for the gateway's own work (eval runs):
        checked, routed, failed over and counted (its metrics under the endpoint `label`) as a
        client's request is, with no client connection to watch.

        Raises:
            ForgelineError: as `serve` answers them (unknown model, overloaded, bad gateway...).
        """
        started = time.perf_counter()
        params = body.upstream_params()
        params.pop("stream", None)
        route = self._route(endpoint, params, label, started)
        call = _Call(route, endpoint, self.metrics, started, label)
        self.metrics.in_flight.labels(route.name, route.backend_kind).inc()
        content = self._upstream_body(route, endpoint, params, False)
        try:
            await call.admit()
            answer = await self._answer(call, content, response_model)
        except asyncio.CancelledError:
            call.finish(CLIENT_CLOSED)
            raise
        except BaseException as error:
            call.finish(http_status_for(error))
            raise
        usage = getattr(answer, "usage", None)
        call.finish(
            200,
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
        )
        return answer

    def _route(
        self, endpoint: Endpoint, params: dict[str, Any], label: str, started: float
    ) -> Route:
        """The route of the request's model, once the request is checked against it."""
        route: Route | None = None
        try:
            route = self.router.get(str(params.get("model")))
            route.capabilities.check(endpoint, route.name, route.backend_kind, params)
            route.backend.check(endpoint, route.name, params)
        except ForgelineError as error:
            self.metrics.observe(
                route.name if route else UNKNOWN_MODEL,
                route.backend_kind if route else "none",
                label,
                http_status_for(error),
                time.perf_counter() - started,
            )
            raise
        return route

    @staticmethod
    def _upstream_body(
        route: Route, endpoint: Endpoint, params: dict[str, Any], stream: bool
    ) -> bytes:
        body = route.capabilities.upstream_params(endpoint, params)
        body.pop("user", None)
        body["model"] = route.upstream_model
        # What the placement asks of every request (llama.cpp: which adapters of a shared base
        # apply). Clients cannot set these fields: they are not among the capabilities.
        body.update(route.placement.request_fields)
        if stream:
            # Always ask for usage: the gateway counts tokens; the client gets the usage chunk
            # only if it asked (see StreamRelay).
            body["stream_options"] = {"include_usage": True}
        return json.dumps(route.backend.prepare(endpoint, route.name, body)).encode()

    async def _open(self, call: _Call, content: bytes) -> tuple[Instance, httpx.Response]:
        """Send the request to an instance and return once its status line is in, failing over
        on connection errors and 5xx answers."""
        route = call.route
        tried: set[Instance] = set()
        failure: ForgelineError | None = None
        while True:
            instance = route.acquire(tried)
            if instance is None:
                if failure is not None and not route.has_untried(tried):
                    raise failure
                raise Overloaded(
                    f"The model '{route.name}' is at capacity; retry after "
                    f"{self.settings.retry_after} s.",
                    retry_after=self.settings.retry_after,
                )
            tried.add(instance)
            request = httpx.Request(
                "POST",
                instance.endpoint_url(call.endpoint.value),
                content=content,
                headers=_UPSTREAM_HEADERS,
                extensions={"timeout": self._timeout},
            )
            try:
                upstream = await self.transport.handle_async_request(request)
            except (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
                # Nothing came back: the request can go to another instance.
                instance.release()
                instance.mark_down(self.settings.unhealthy_seconds)
                call.upstream_error("connect")
                log.warning(
                    "backend instance unreachable",
                    extra={"model": route.name, "instance": instance.url, "error": repr(error)},
                )
                failure = Unavailable(
                    f"The model '{route.name}' is unavailable: no instance could be reached; "
                    "retry later."
                )
                continue
            except httpx.TimeoutException:
                instance.release()
                call.upstream_error("timeout")
                raise self._timed_out(call) from None
            except BaseException:
                instance.release()
                raise
            if upstream.status_code >= 500:
                await _close(upstream)
                instance.release()
                call.upstream_error("status_5xx")
                log.warning(
                    "backend instance failed",
                    extra={"model": route.name, "instance": instance.url,
                           "status": upstream.status_code},
                )  # fmt: skip
                failure = BadGateway(
                    f"The backend serving '{route.name}' failed (status {upstream.status_code})."
                )
                continue
            if upstream.status_code >= 400:
                try:
                    raise await self._client_error(call, upstream)
                finally:
                    await _close(upstream)
                    instance.release()
            return instance, upstream

    def _timed_out(self, call: _Call) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"The model '{call.route.name}' did not answer within "
            f"{self.settings.request_timeout:g} s."
        )

    async def _client_error(self, call: _Call, upstream: httpx.Response) -> ForgelineError:
        """The error to give the client for a backend's 4xx answer."""
        raw = await upstream.aread()
        message, param = _upstream_message(raw)
        status = upstream.status_code
        name = call.route.name
        if status == 429:
            retry = upstream.headers.get("retry-after", "")
            return Overloaded(
                f"The model '{name}' is busy; retry later. ({message})",
                retry_after=int(retry) if retry.isdigit() else self.settings.retry_after,
            )
        if status in (401, 403, 404, 405):
            # Nothing the client can fix: the gateway and the backend disagree.
            call.upstream_error("invalid_response")
            log.error(
                "backend refused the gateway's request",
                extra={"model": name, "status": status, "backend_message": message},
            )
            return BadGateway(f"The backend serving '{name}' refused the request.")
        if status == 413:
            return InvalidArgument(f"The request is too large for the model '{name}': {message}")
        return InvalidArgument(message or f"The model '{name}' refused the request.", field=param)

    async def _complete(
        self,
        call: _Call,
        content: bytes,
        response_model: type[BaseModel],
        translation: Translation | None,
    ) -> Response:
        """A non-streamed request, start to end, within the request timeout."""
        answer = await self._answer(call, content, response_model)
        usage = getattr(answer, "usage", None)
        prompt = getattr(usage, "prompt_tokens", 0) or 0
        completion = getattr(usage, "completion_tokens", 0) or 0
        if translation is not None:
            out = translation.answer(answer)
        else:
            out = answer.model_dump_json(exclude_unset=True).encode()
        call.finish(200, prompt, completion)
        return Response(out, media_type="application/json")

    async def _answer(self, call: _Call, content: bytes, response_model: type[M]) -> M:
        """A non-streamed answer, within the request timeout, validated as `response_model`."""
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                instance, upstream = await self._open(call, content)
                try:
                    raw = await upstream.aread()
                finally:
                    await _close(upstream)
                    instance.release()
        except (TimeoutError, httpx.TimeoutException):
            call.upstream_error("timeout")
            raise self._timed_out(call) from None
        except httpx.HTTPError:
            call.upstream_error("broken_stream")
            raise BadGateway(
                f"The backend serving '{call.route.name}' broke off its answer."
            ) from None
        try:
            answer = response_model.model_validate_json(raw)
        except ValidationError as error:
            call.upstream_error("invalid_response")
            log.error(
                "backend answered outside OpenAI's schema",
                extra={"model": call.route.name, "errors": error.errors()[:3]},
            )
            raise BadGateway(
                f"The backend serving '{call.route.name}' gave an answer that is not valid."
            ) from None
        if call.route.rewrite_model and hasattr(answer, "model"):
            answer.model = call.route.name
        return answer


@dataclass(eq=False)
class _Relay:
    """A backend's event stream on its way to the client: the events, and the clean-up that
    follows whether the stream ran to its end, broke off, or was never started (a client that
    left between the status line and the first event).

    The clean-up is `aclose`, which the response calls once the stream's last byte is sent:
    counting the request and returning the connection can wait until the client has its answer.
    """

    call: _Call
    instance: Instance
    upstream: httpx.Response
    relay: StreamTranslator
    request_timeout: float
    #: Counted as the client's departure unless the stream reaches its end.
    status: int = CLIENT_CLOSED
    _closed: bool = field(default=False)

    async def __aiter__(self) -> AsyncGenerator[bytes, None]:
        call, relay = self.call, self.relay
        body = self.upstream.stream
        assert isinstance(body, httpx.AsyncByteStream)  # the transport streams every body
        first = True
        try:
            async for data in body:
                out = relay.feed(data)
                if out:
                    if first:
                        first = False
                        call.metrics.ttft.labels(
                            call.route.name, call.route.backend_kind, call.label
                        ).observe(time.perf_counter() - call.started)
                    yield out
            tail = relay.finish()
            if tail:
                yield tail
            self.status = 200
        except httpx.TimeoutException:
            call.upstream_error("timeout")
            self.status = 200
            yield relay.fail(
                f"The model '{call.route.name}' sent nothing for "
                f"{self.request_timeout:.0f} s; the response is incomplete.",
                "server_error",
                "backend_timeout",
            )
        except httpx.HTTPError:
            call.upstream_error("broken_stream")
            self.status = 200
            yield relay.fail(
                f"The backend serving '{call.route.name}' broke off the stream; "
                "the response is incomplete.",
                "server_error",
                "bad_gateway",
            )

    async def aclose(self) -> None:
        """Hang up on the backend unless its answer was read to the end, give the instance
        back, and count the request. Runs once, however often it is called."""
        if self._closed:
            return
        self._closed = True
        await _close(self.upstream)
        self.instance.release()
        self.call.finish(self.status, self.relay.prompt_tokens, self.relay.completion_tokens)


async def _close(upstream: httpx.Response) -> None:
    # Nothing here waits on the network (a finished body goes back to the pool, any other is
    # closed), so a task being cancelled for its client's departure still gets it done.
    await upstream.aclose()


def _upstream_message(raw: bytes) -> tuple[str, str | None]:
    """The message (without addresses) and parameter of a backend's error body."""
    message, param = "", None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or "")
            param = error.get("param") if isinstance(error.get("param"), str) else None
        elif isinstance(error, str):
            message = error
    elif raw:
        message = raw[:500].decode(errors="replace")
    return _URL.sub("<backend>", message).strip()[:1000], param
