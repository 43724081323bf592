"""Run the registry service: ``forgeline-registry`` (settings from FORGELINE_REGISTRY_*)."""

from __future__ import annotations

import asyncio
import logging

from forgeline_kit.errors import Unavailable
from forgeline_kit.grpc.server import Service, run_grpc_service
from forgeline_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from forgeline_registry.grpc_api import RegistryServicer
from forgeline_registry.service import Registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry.storage import open_store

__all__ = ["build", "main"]

log = logging.getLogger("forgeline_registry")


async def build(settings: RegistrySettings) -> list[Service]:
    """The registry service on the store `settings` select, with its janitor running."""
    store = open_store(settings)
    try:
        await store.ensure_ready()
    except Unavailable as exc:
        # Serve anyway: calls answer UNAVAILABLE until the store is back, then work.
        log.warning("%s", exc)
    registry = Registry(store, settings)
    stop = asyncio.Event()
    janitor = asyncio.create_task(registry.run_janitor(stop))

    async def on_stopped() -> None:
        stop.set()
        await janitor
        await store.close()

    descriptor = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
    servicer = RegistryServicer(registry)
    return [
        Service.of(
            servicer,
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            descriptor,
            on_stopped=on_stopped,
        )
    ]


def main() -> None:
    """Entry point of the ``forgeline-registry`` console script."""
    run_grpc_service(RegistrySettings, build)


if __name__ == "__main__":
    main()
