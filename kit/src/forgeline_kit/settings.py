"""Service settings from environment variables, validated at start with errors that name them.

Each service subclasses `ServiceSettings` with its own prefix and adds its own fields::

    class RegistrySettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="FORGELINE_REGISTRY_")

        bucket: str = Field("forgeline", description="Bucket that holds blobs and manifests.")

    settings = load_settings(RegistrySettings)  # reads FORGELINE_REGISTRY_GRPC_PORT, ...

`load_settings` turns pydantic's validation report into one line per problem, each naming the
variable the operator has to change, and refuses unknown variables under the service's prefix
(a typo such as ``FORGELINE_REGISTRY_GRPC_PROT`` would otherwise be ignored without a word).

A setting whose variable was renamed lists the old name in ``renamed_settings``: for one release
the old variable is still read when the new one is not set, and `renamed_variables_in_use` gives
the warnings a service logs at start (``run_grpc_service`` and ``forgeline-gateway`` do).
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from forgeline_kit.sqlite import is_postgresql_url, sqlite_path

__all__ = [
    "DatabaseUrl",
    "LogFormat",
    "LogLevel",
    "Port",
    "RegistryLocalFiles",
    "RenamedSetting",
    "ServiceSettings",
    "SettingsError",
    "check_database_url",
    "load_settings",
    "redact_database_url",
    "renamed_variables_in_use",
    "settings_help",
]

#: Prefix shared by every Forgeline variable. Settings that use it bare are not checked for
#: unknown variables, since each service and tool owns a longer prefix under it.
ROOT_PREFIX = "FORGELINE_"


def _check_port(value: object) -> object:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise PydanticCustomError(
        "port", "is not a valid port: expected an integer 0-65535 (0 picks a free port)"
    )


#: A TCP port; 0 asks the operating system for a free one (the service logs the port it got).
Port = Annotated[int, BeforeValidator(_check_port)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


#: A stdlib logging level name, accepted in any case.
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]


#: The ``registry_local_files`` setting of every service that moves blobs through the registry
#: (one definition, so the three services say the same thing).
RegistryLocalFiles = Annotated[
    bool,
    Field(
        description="The registry runs on this host with filesystem storage (the embedded "
        "default, `forgeline up`): read and write its blobs as local files instead of asking it "
        "for URLs. Leave it off where the registry runs in another container or machine "
        "(compose, Kubernetes): its paths mean nothing there.",
    ),
]


def check_database_url(value: str) -> str:
    """`value` if it is a database URL a service opens (``sqlite:///PATH`` or
    ``postgresql://...``, see `forgeline_kit.databases`); otherwise a validation error that says
    what is accepted."""
    if is_postgresql_url(value):
        return value
    try:
        sqlite_path(value)
    except ValueError as error:
        raise PydanticCustomError(
            "database_url",
            "is refused: {reason} (or postgresql://USER:PASSWORD@HOST/DATABASE)",
            {"reason": str(error)},
        ) from None
    return value


#: A service's ``database_url`` setting: where its state is, as a database URL
#: (``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``postgresql://...``), checked
#: when settings load.
DatabaseUrl = Annotated[str, AfterValidator(check_database_url)]


@dataclass(frozen=True)
class RenamedSetting:
    """A variable a setting was read from before it was renamed, still read for one release.

    Attributes:
        old: the old variable's name after the service's prefix, lower case (``"database"``).
        new: the field that replaced it (``"database_url"``).
        convert: turns the old variable's value into the new setting's (a path into a URL).
    """

    old: str
    new: str
    convert: Callable[[str], str] = str


class LogFormat(enum.StrEnum):
    """How log records are written: human-readable lines, or one JSON object per line."""

    TEXT = "text"
    JSON = "json"


class ServiceSettings(BaseSettings):
    """What every Forgeline service is configured with; subclass it with a service prefix."""

    model_config = SettingsConfigDict(env_prefix=ROOT_PREFIX, frozen=True, extra="ignore")

    grpc_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the gRPC server listens on; 0.0.0.0 (or ::) inside a container.",
    )
    grpc_port: Port = Field(50051, description="gRPC port; 0 picks a free one.")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="Address of the Prometheus /metrics endpoint."
    )
    metrics_port: Port = Field(9464, description="Port of the /metrics endpoint; 0 picks one.")
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = Field(
        LogFormat.TEXT, description="text, or json for one JSON object per line."
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        allow_inf_nan=False,
        description="On SIGTERM, how long in-flight calls may run before they are cancelled.",
    )

    #: Variables renamed in this release, read when their new name is not set (with a warning).
    renamed_settings: ClassVar[tuple[RenamedSetting, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_renamed_variables(cls, data: Any) -> Any:
        if not cls.renamed_settings or not isinstance(data, dict):
            return data
        for renamed in cls.renamed_settings:
            value = _environment_value(cls.env_var(renamed.old))
            if value is not None and renamed.new not in data:
                data = {**data, renamed.new: renamed.convert(value)}
        return data

    @classmethod
    def env_prefix(cls) -> str:
        """The prefix of this class's environment variables, upper case."""
        return str(cls.model_config.get("env_prefix", "")).upper()

    @classmethod
    def env_var(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        return f"{cls.env_prefix()}{field}".upper()


class SettingsError(Exception):
    """The environment does not describe a valid configuration.

    Attributes:
        problems: one line per problem, each starting with the variable to change.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S]) -> S:
    """Read and validate `cls` from the environment.

    Raises:
        SettingsError: naming each variable that is malformed, missing or unknown.
    """
    problems = _unknown_variables(cls) + _renamed_variable_conflicts(cls)
    try:
        settings = cls()
    except ValidationError as exc:
        problems = [_describe(cls, error) for error in exc.errors()] + problems
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings


def renamed_variables_in_use(cls: type[ServiceSettings]) -> list[str]:
    """A warning for each renamed variable set in the environment: read in place of its new
    name, or saying what the new one says too (set to something else, `load_settings` refuses
    it)."""
    warnings = []
    for renamed in cls.renamed_settings:
        old, new = cls.env_var(renamed.old), cls.env_var(renamed.new)
        value = _environment_value(old)
        if value is None:
            continue
        if _environment_value(new) is None:
            warnings.append(
                f"{old} is deprecated and will stop being read in a coming release: set {new} "
                f"instead ({new}={renamed.convert(value)} is the same setting)"
            )
        else:
            warnings.append(f"{old} is deprecated and says what {new} says: remove it")
    return warnings


def settings_help(cls: type[ServiceSettings]) -> str:
    """One line per environment variable `cls` reads: its name, default and description."""
    lines = []
    for name, field in cls.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = f"default {str(value.value if isinstance(value, enum.Enum) else value)!r}"
        lines.append(f"  {cls.env_var(name)} ({default})")
        if field.description:
            lines.append(f"      {field.description}")
    for renamed in cls.renamed_settings:
        lines.append(f"  {cls.env_var(renamed.old)} (deprecated: use {cls.env_var(renamed.new)})")
    return "\n".join(lines)


def _describe(cls: type[ServiceSettings], error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    variable = cls.env_var("__".join(loc)) if loc else cls.env_prefix() + "*"
    if error["type"] == "missing":
        return f"{variable} is not set: it is required"
    message = str(error["msg"])
    if error["type"] not in _PHRASED_ERRORS:
        message = "is not valid: " + message[:1].lower() + message[1:]
    # The variable as the operator wrote it, not as a before-validator reshaped it: the renamed
    # one when the value came from there.
    value = _environment_value(variable)
    if value is None and loc:
        for renamed in cls.renamed_settings:
            old_value = _environment_value(cls.env_var(renamed.old))
            if renamed.new == loc[0] and old_value is not None:
                variable, value = cls.env_var(renamed.old), old_value
    if value is None:
        value = error.get("input")
    if error["type"] == "database_url" and isinstance(value, str):
        value = redact_database_url(value)
    return f"{variable}={value!r} {message}"


#: Error types whose message is a whole phrase after the value ("is not a valid port: ...").
_PHRASED_ERRORS = frozenset({"port", "database_url"})

#: The password of a URL's ``user:password@``, kept out of error messages.
_PASSWORD_IN_URL = re.compile(r"(://[^/@:]*):[^/@]*@")


def redact_database_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (for logs and error messages)."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", url)


def _environment_value(variable: str) -> str | None:
    """The value of `variable` (an upper-case name) in the environment, in whatever case it
    was set there, as pydantic-settings reads it; None when unset."""
    return next((v for k, v in os.environ.items() if k.upper() == variable), None)


def _renamed_variable_conflicts(cls: type[ServiceSettings]) -> list[str]:
    """A problem for each renamed variable set beside its new name to something else: which one
    the operator meant is not for the service to guess (an image's new default over an old
    variable set by hand would move the service off its state)."""
    problems = []
    for renamed in cls.renamed_settings:
        old, new = cls.env_var(renamed.old), cls.env_var(renamed.new)
        old_value, new_value = _environment_value(old), _environment_value(new)
        if old_value is None or new_value is None or renamed.convert(old_value) == new_value:
            continue
        problems.append(
            f"{old} (deprecated) and {new} are both set and disagree: set only {new} "
            f"({new}={renamed.convert(old_value)} is what {old} says)"
        )
    return problems


def _unknown_variables(cls: type[ServiceSettings]) -> list[str]:
    prefix = cls.env_prefix()
    if not prefix or prefix == ROOT_PREFIX:
        return []
    known = {cls.env_var(name) for name in cls.model_fields}
    known |= {cls.env_var(renamed.old) for renamed in cls.renamed_settings}
    problems = []
    for variable in sorted(os.environ):
        upper = variable.upper()
        if upper.startswith(prefix) and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{variable} is not a setting of this service{hint}")
    return problems
