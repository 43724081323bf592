"""Storage drivers: one `ObjectStore` interface, a filesystem driver and an S3 driver."""

from forgeline_registry.storage.base import (
    DownloadGrantSpec,
    HttpRequestSpec,
    ObjectNotFound,
    ObjectStore,
    PartSpec,
    PreconditionFailed,
    UploadedPart,
    UploadGrantSpec,
)

__all__ = [
    "DownloadGrantSpec",
    "HttpRequestSpec",
    "ObjectNotFound",
    "ObjectStore",
    "PartSpec",
    "PreconditionFailed",
    "UploadGrantSpec",
    "UploadedPart",
    "open_store",
]


def open_store(settings: object) -> ObjectStore:
    """The driver `settings` (a `RegistrySettings`) select."""
    from forgeline_registry.settings import RegistrySettings

    assert isinstance(settings, RegistrySettings)
    if settings.storage == "s3":
        from forgeline_registry.storage.s3 import S3Store

        return S3Store.from_settings(settings)
    from forgeline_registry.storage.fs import FsStore

    return FsStore(settings.fs_root)
