"""Validation of everything a caller names: models, aliases, artifact paths, digests, labels.

Every check raises `InvalidArgument` naming the request field at fault, so a user sees which
value to change. The rules are the ones stated at the top of ``registry.proto``; they also keep
names safe to use inside object keys and file paths (no traversal, no control characters).
"""

from __future__ import annotations

import re

from forgeline_kit.errors import InvalidArgument

__all__ = [
    "MAX_ALIAS_LENGTH",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "ParsedReference",
    "check_alias",
    "check_artifact_path",
    "check_labels",
    "check_model_name",
    "check_sha256",
    "parse_reference",
]

MAX_MODEL_NAME_LENGTH = 128
MAX_ALIAS_LENGTH = 63
MAX_PATH_LENGTH = 1024
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256
MAX_LABELS = 64

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[a-z][a-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shown(value: str, limit: int = 60) -> str:
    """A value as it may appear in a message: quoted, escaped, cut to `limit` characters."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def check_model_name(name: str, field: str = "model") -> str:
    """`name` if it is a valid model name (one or two segments separated by ``/``)."""
    if not name:
        raise InvalidArgument(
            f"{field} is empty: name a model, for example 'tiny-llama'", field=field
        )
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise InvalidArgument(
            f"{field} is {len(name)} characters long; a model name has at most "
            f"{MAX_MODEL_NAME_LENGTH}",
            field=field,
        )
    if _CONTROL.search(name):
        raise InvalidArgument(f"{field} {_shown(name)} contains a control character", field=field)
    segments = name.split("/")
    if len(segments) > 2 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidArgument(
            f"{field} {_shown(name)} is not a valid model name: use one or two segments separated "
            "by '/', each starting with a letter or digit and holding only letters, digits, "
            "'.', '_' and '-' (for example 'tiny-llama' or 'acme/llama-3-8b')",
            field=field,
        )
    return name


def check_alias(alias: str, field: str = "alias") -> str:
    """`alias` if it is a valid alias name."""
    if not alias:
        raise InvalidArgument(f"{field} is empty", field=field)
    if len(alias) > MAX_ALIAS_LENGTH or not _ALIAS.fullmatch(alias):
        raise InvalidArgument(
            f"{field} {_shown(alias)} is not a valid alias: 1-{MAX_ALIAS_LENGTH} lowercase "
            "letters, digits, '.', '_' and '-', starting with a letter (for example 'production')",
            field=field,
        )
    return alias


def check_artifact_path(path: str, field: str = "path") -> str:
    """`path` if it is a safe relative POSIX path inside a version."""
    problem = None
    if not path:
        problem = "is empty"
    elif len(path) > MAX_PATH_LENGTH:
        problem = f"is {len(path)} characters long; at most {MAX_PATH_LENGTH} are allowed"
    elif _CONTROL.search(path):
        problem = "contains a control character"
    elif "\\" in path:
        problem = "contains a backslash; use '/' to separate directories"
    elif path.startswith("/"):
        problem = "is absolute; give a path relative to the version's root"
    elif any(segment in ("", ".", "..") for segment in path.split("/")):
        problem = "has an empty, '.' or '..' segment"
    if problem:
        raise InvalidArgument(f"{field} {_shown(path)} {problem}", field=field)
    return path


def check_sha256(digest: str, field: str = "sha256") -> str:
    """`digest` if it is 64 lowercase hexadecimal characters."""
    if not _SHA256.fullmatch(digest):
        raise InvalidArgument(
            f"{field} {_shown(digest)} is not a SHA-256 digest: expected 64 lowercase "
            "hexadecimal characters",
            field=field,
        )
    return digest


def check_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    """`labels` if every key and value is acceptable."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{field} has {len(labels)} entries; at most {MAX_LABELS}", field=field
        )
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY_LENGTH or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"{field} key {_shown(key)} is not valid: up to {MAX_LABEL_KEY_LENGTH} letters, "
                "digits, '.', '_', '/' and '-', starting with a letter or digit",
                field=f"{field}[{key!r}]" if len(key) <= 80 else field,
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH or _CONTROL.search(value):
            raise InvalidArgument(
                f"{field}[{key!r}] is not valid: at most {MAX_LABEL_VALUE_LENGTH} characters "
                "and no control character",
                field=f"{field}[{key!r}]",
            )
    return labels


class ParsedReference:
    """A version reference in its text form ``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS``."""

    __slots__ = ("alias", "model", "version")

    def __init__(self, model: str, version: int | None = None, alias: str | None = None) -> None:
        self.model = model
        self.version = version
        self.alias = alias

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}:{self.version}"
        return f"{self.model}@{self.alias or 'latest'}"


def parse_reference(text: str, field: str = "reference") -> ParsedReference:
    """Parse ``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS`` (neither means ``@latest``)."""
    if "@" in text:
        model, _, alias = text.rpartition("@")
        return ParsedReference(check_model_name(model, field), alias=check_alias(alias, field))
    if ":" in text:
        model, _, number = text.rpartition(":")
        if not number.isdigit() or int(number) < 1 or len(number) > 9:
            raise InvalidArgument(
                f"{field} {_shown(text)}: the version after ':' must be a positive number",
                field=field,
            )
        return ParsedReference(check_model_name(model, field), version=int(number))
    return ParsedReference(check_model_name(text, field))
