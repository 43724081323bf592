"""The one page-token codec: opaque to callers, versioned so the position it holds may change
form later, and refused with a message that says what to pass when it was not one we issued."""

from __future__ import annotations

import base64
import binascii

from forgeline_kit.errors import InvalidArgument

__all__ = ["decode_page_token", "encode_page_token"]

_VERSION = "v1:"


def encode_page_token(position: str | int) -> str:
    """The token that resumes a listing after ``position``."""
    text = f"{_VERSION}{position}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, *, field: str = "page_token") -> str:
    """The position ``token`` resumes after; ``""`` for no token (the first page).

    Raises:
        InvalidArgument: ``token`` is not one :func:`encode_page_token` made.
    """
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_VERSION):
        raise InvalidArgument(
            f"{field} is not a token this service issued; pass next_page_token as received, "
            "or leave it empty for the first page",
            field=field,
        )
    return text[len(_VERSION) :]


def decode_position(token: str, *, field: str = "page_token") -> int | None:
    """An integer position from ``token``; None for no token."""
    position = decode_page_token(token, field=field)
    if not position:
        return None
    if not position.isdigit():
        raise InvalidArgument(
            f"{field} is not a token this service issued; pass next_page_token as received",
            field=field,
        )
    return int(position)
