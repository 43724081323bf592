"""Why a conversion failed, as errors a user can act on.

Each carries the ``reason`` the converter contract names (``OperationError`` codes in
converter.proto), so the gRPC layer reports the same words the core raised.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from forgeline_kit.errors import ForgelineError


class ConversionError(ForgelineError):
    """A conversion cannot finish; nothing was produced and its temporary files are gone."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION
    http_status: ClassVar[int] = 400
    reason: ClassVar[str] = "internal"


class UnsupportedArchitecture(ConversionError):  # noqa: N818 (named after its reason code)
    """llama.cpp's converter has no implementation for the model's architecture."""

    reason = "unsupported_architecture"


class MissingTokenizer(ConversionError):  # noqa: N818 (named after its reason code)
    """The model directory has no tokenizer llama.cpp can read."""

    reason = "missing_tokenizer"


class InvalidQuantization(ConversionError):  # noqa: N818 (named after its reason code)
    """The quantization type is unknown, or the tensor shapes do not allow it."""

    reason = "invalid_quantization"


class InsufficientDisk(ConversionError):  # noqa: N818 (named after its reason code)
    """Not enough free space where the files would be written."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 507
    reason = "insufficient_disk"


class VerificationFailed(ConversionError):  # noqa: N818 (named after its reason code)
    """A written file does not read back as what was asked for."""

    code = grpc.StatusCode.INTERNAL
    http_status = 500
    reason = "verification_failed"


class RemoteCodeNotTrusted(ConversionError):  # noqa: N818 (named after its reason code)
    """The model needs its own Python code to load, and the operator has not allowed that."""

    reason = "remote_code_not_trusted"
