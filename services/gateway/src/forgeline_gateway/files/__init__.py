"""Uploaded files (the Files API): records in the gateway's store, bytes in the registry.

Fine-tuning resolves a file id with `FileService.resolve` (``app.state.files.service``).
"""

from forgeline_gateway.files.blobs import RegistryFiles, RegistryUnavailable, file_model
from forgeline_gateway.files.service import (
    EVALS,
    FINE_TUNE,
    EvalRowsLayout,
    FileLayout,
    FileService,
    InvalidFile,
    ResolvedFile,
    Upload,
)

__all__ = [
    "EVALS",
    "FINE_TUNE",
    "EvalRowsLayout",
    "FileLayout",
    "FileService",
    "InvalidFile",
    "RegistryFiles",
    "RegistryUnavailable",
    "ResolvedFile",
    "Upload",
    "file_model",
]
