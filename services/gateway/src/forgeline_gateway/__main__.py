"""``forgeline-gateway``: serve the gateway, or manage its API keys.

    forgeline-gateway [serve]                       serve (settings from FORGELINE_GATEWAY_*)
    forgeline-gateway keys create NAME --scope inference [--scope admin]
    forgeline-gateway keys list
    forgeline-gateway keys revoke KEY_ID

Serving binds two ports: the API (``HTTP_HOST``/``HTTP_PORT``) and, apart from it, Prometheus's
``/metrics`` (``METRICS_HOST``/``METRICS_PORT``, the kit's listener, as every service has).
Key commands work on the gateway's database (FORGELINE_GATEWAY_DATABASE_URL) directly, so the first
admin key can be made before any key exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import uvicorn

from forgeline_gateway.app import create_app
from forgeline_gateway.security.keys import Scope, create_key, revoke_key
from forgeline_gateway.settings import GatewaySettings
from forgeline_gateway.store import Store
from forgeline_kit.databases import DatabaseUnavailableError, connect
from forgeline_kit.errors import ForgelineError
from forgeline_kit.grpc.internal_token import InternalTokenError, internal_token
from forgeline_kit.logging import configure_logging
from forgeline_kit.metrics import MetricsServer, MetricsStartError, start_service_metrics
from forgeline_kit.settings import SettingsError, load_settings, renamed_variables_in_use
from forgeline_kit.state_lock import StateDirInUseError, hold_state_dir

__all__ = ["main"]

log = logging.getLogger("forgeline_gateway")

EXIT_BAD_SETTINGS = 2
EXIT_UNAVAILABLE = 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgeline-gateway", description="The OpenAI-compatible Forgeline gateway."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve the HTTP API (the default)")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name", help="who or what uses the key")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=[s.value for s in Scope],
        required=True,
        help="repeat for several scopes",
    )
    keys.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forgeline-gateway`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(GatewaySettings)
        internal_token()  # the gateway calls the services with it: checked before it starts
    except (SettingsError, InternalTokenError) as error:
        print(f"forgeline-gateway: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, settings.log_format)
    for warning in renamed_variables_in_use(GatewaySettings):
        log.warning("%s", warning)
    try:
        # Fail at once, naming the database, rather than in the middle of starting.
        connect(settings.database_url).close()
    except DatabaseUnavailableError as error:
        log.error("%s (FORGELINE_GATEWAY_DATABASE_URL)", error)
        return EXIT_UNAVAILABLE
    if args.command == "keys":
        return _keys(settings, args)
    try:
        # The model cache holds the files the gateway's llama-servers run on; a second gateway
        # restoring the same deployments there would start a second set.
        ownership = hold_state_dir(settings.model_cache, "forgeline-gateway")
    except StateDirInUseError as error:
        log.error("%s", error)
        return 1
    with ownership, asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(settings))


def _keys(settings: GatewaySettings, args: argparse.Namespace) -> int:
    store = Store.open(settings.database_url)
    try:
        if args.keys_command == "create":
            key, record = create_key(store, args.name, {Scope(s) for s in args.scopes})
            print(json.dumps({"id": record.id, "key": key, "scopes": sorted(record.scopes)}))
        elif args.keys_command == "list":
            for record in store.list_keys():
                state = "revoked" if record.revoked_at else "active"
                print(f"{record.id}\t{record.prefix}...\t{','.join(sorted(record.scopes))}"
                      f"\t{state}\t{record.name}")  # fmt: skip
        else:
            revoke_key(store, args.key_id)
    except ForgelineError as error:
        print(f"forgeline-gateway: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, logging the addresses of the API and of the metrics listener once it
    serves (port 0 picks one), and ending with status 0 after a graceful shutdown on SIGTERM or
    SIGINT, as the kit's services do (uvicorn re-raises the signal, which reads as a crash to a
    supervisor). A second signal stops waiting for in-flight requests."""

    def __init__(self, config: uvicorn.Config, metrics: MetricsServer) -> None:
        super().__init__(config)
        self.metrics = metrics

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            # The app, its schemas and the imported libraries are long-lived: moved out of the
            # collector's sight, a full collection no longer walks them while requests wait
            # (it stalled the event loop for ~15 ms: p99 latency, benchmarks/gateway_results.md).
            gc.freeze()
            log.info(
                "gateway serving",
                extra={
                    "http_host": host,
                    "http_port": port,
                    "metrics_url": self.metrics.url,
                    "metrics_port": self.metrics.port,
                },
            )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (it comes with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(settings: GatewaySettings) -> int:
    try:
        # Bound before anything starts (state, deployments, the API port), as the gRPC services
        # bind theirs: a port that is taken stops the gateway at once, naming the variables.
        metrics = start_service_metrics(settings)
    except MetricsStartError as error:
        log.error("%s", error)
        return 1
    try:
        return await _serve_api(settings, metrics)
    finally:
        metrics.close()


async def _serve_api(settings: GatewaySettings, metrics: MetricsServer) -> int:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # the kit's logging is configured already
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        lifespan="on",
    )
    server = _Server(config, metrics)
    await server.serve()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
