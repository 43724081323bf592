"""Run the converter service: ``forgeline-converter`` or ``python -m forgeline_converter``
(settings from FORGELINE_CONVERTER_*)."""

from __future__ import annotations

import asyncio

from forgeline_converter.grpc_api import ConverterServicer
from forgeline_converter.registry_access import RegistryAccess
from forgeline_converter.service import Converter
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.store import open_store
from forgeline_kit.grpc.server import Service, run_grpc_service
from forgeline_kit.state_lock import StateDirLock, hold_state_dir
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_registry_client.client import RegistryClient

__all__ = ["build", "main"]


async def build(settings: ConverterSettings) -> list[Service]:
    """The converter service, with the conversions a previous run left unfinished restarted.

    Raises:
        ToolchainNotBuiltError: llama.cpp is not built where the settings point.
    """
    toolchain = await asyncio.to_thread(settings.toolchain)
    # Before restarting what a previous run left: two converters here would run it twice.
    ownership = hold_state_dir(settings.work_dir, "forgeline-converter")
    registry = RegistryAccess(
        RegistryClient(
            settings.registry_target,
            accept_local_files=settings.registry_local_files,
            timeout=settings.registry_timeout_seconds,
        )
    )
    converter = Converter(settings, open_store(settings.database_url), registry, toolchain)
    await converter.start()
    descriptor = converter_pb2.DESCRIPTOR.services_by_name["ConverterService"]
    return [
        Service.of(
            ConverterServicer(converter),
            converter_pb2_grpc.add_ConverterServiceServicer_to_server,
            descriptor,
            on_draining=converter.drain,
            on_stopped=lambda: _close(converter, ownership),
        )
    ]


async def _close(converter: Converter, ownership: StateDirLock) -> None:
    await converter.close()
    ownership.release()


def main() -> None:
    """Entry point of the ``forgeline-converter`` console script."""
    run_grpc_service(ConverterSettings, build)


if __name__ == "__main__":
    main()
