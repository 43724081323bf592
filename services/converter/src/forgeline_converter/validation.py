"""A conversion's spec checked before it is accepted, and returned with its defaults filled in.

Everything a user can get wrong without running a tool is found here and answered
INVALID_ARGUMENT (NOT_FOUND for a source the registry does not have), so a conversion that is
accepted fails only for reasons found while working.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from forgeline_converter.conversions import (
    AdapterConversion,
    ArtifactRef,
    ConversionSpec,
    GgufOuttype,
    ImatrixOptions,
    ModelConversion,
    ModelfileOptions,
    QualityMetric,
    QuantizationTarget,
    TensorTypeOverride,
    VersionRef,
)
from forgeline_converter.llamacpp.source import TRUST_REMOTE_CODE_SETTING
from forgeline_converter.llamacpp.tools import requires_imatrix
from forgeline_converter.modelfile import PARAMETER_NAME, modelfile_value
from forgeline_converter.registry_access import (
    RegistryAccess,
    RegistryVersion,
    Relation,
    VersionKind,
)
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["MAX_INLINE_CALIBRATION", "check_remote_code", "validate_spec"]

MAX_INLINE_CALIBRATION = 1 << 20
HF_KINDS = frozenset({VersionKind.BASE, VersionKind.MERGED, VersionKind.FINETUNED})
FULL_PRECISION = frozenset({"F32", "F16", "BF16"})
# llama-quantize accepts these as the file type they stand for.
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
GGUF_SUFFIX = "-gguf"


async def resolve(registry: RegistryAccess, ref: VersionRef, field: str) -> RegistryVersion:
    """The version ``ref`` names (with its artifacts and lineage).

    Raises:
        InvalidArgument: no model named.
        NotFound: the registry has no such version (or alias).
    """
    if not ref.model:
        raise InvalidArgument(f"{field}.model is empty: name the model to convert", field=field)
    return await registry.resolve(ref)


#: The label the registry's hub importer puts on a version it imported with trust_remote_code.
REMOTE_CODE_LABEL = "trust_remote_code"


def check_remote_code(version: RegistryVersion, field: str, trust_remote_code: bool) -> None:
    """Refuse at once a version that needs its own code, when the operator has not trusted that.

    What the registry already says is enough here: the hub importer's ``trust_remote_code``
    label, or ``.py`` files among the artifacts. An ``auto_map`` in a config file is found by
    the worker once the files are downloaded (:func:`.source.check_remote_code`).

    Raises:
        FailedPrecondition: it needs code and ``trust_remote_code`` is off.
    """
    if trust_remote_code:
        return
    reasons = []
    if version.labels.get(REMOTE_CODE_LABEL) == "true":
        reasons.append("it was imported with --trust-remote-code")
    code = sorted(a.path for a in version.artifacts if a.path.endswith(".py"))
    if code:
        reasons.append(f"it carries Python files ({', '.join(code[:5])})")
    if reasons:
        raise FailedPrecondition(
            f"{version.model}:{version.number} needs its own Python code to load "
            f"({'; '.join(reasons)}), and this converter does not run a model's code "
            f"({TRUST_REMOTE_CODE_SETTING} is off). Convert a model whose architecture "
            "transformers and llama.cpp ship, or, if every model in the registry comes from "
            f"someone you trust, set {TRUST_REMOTE_CODE_SETTING}=true on the converter",
            field=field,
        )


def _check_type(name: str, offered: Collection[str], field: str) -> str:
    upper = name.strip().upper()
    if upper not in offered:
        raise InvalidArgument(
            f"unknown quantization type {name!r}; llama-quantize offers "
            f"{', '.join(sorted(offered))} (see ListQuantizationTypes)",
            field=field,
        )
    return ALIASES.get(upper, upper)


def _check_target(
    target: QuantizationTarget,
    offered: Collection[str],
    has_imatrix: bool,
    seen: set[str],
    where: str,
) -> QuantizationTarget:
    """``target`` with its types in llama-quantize's spelling; ``seen`` collects them."""
    kind = _check_type(target.type, offered, f"{where}.type")
    if kind in seen:
        raise InvalidArgument(f"{kind} is asked for twice", field=f"{where}.type")
    seen.add(kind)
    if requires_imatrix(kind) and not has_imatrix:
        raise InvalidArgument(
            f"{kind} needs an importance matrix: set spec.model.imatrix (a calibration "
            "text, inline or in the registry, or an imatrix file), or choose a k-quant "
            "such as Q4_K_M",
            field=f"{where}.type",
        )
    output_tensor_type = target.output_tensor_type
    if output_tensor_type:
        output_tensor_type = _check_type(output_tensor_type, offered, f"{where}.output_tensor_type")
    token_embedding_type = target.token_embedding_type
    if token_embedding_type:
        token_embedding_type = _check_type(
            token_embedding_type, offered, f"{where}.token_embedding_type"
        )
    overrides = []
    for position, override in enumerate(target.tensor_types):
        if not override.pattern:
            raise InvalidArgument(
                "a tensor type override needs a pattern",
                field=f"{where}.tensor_types[{position}].pattern",
            )
        overrides.append(
            TensorTypeOverride(
                pattern=override.pattern,
                type=_check_type(override.type, offered, f"{where}.tensor_types[{position}].type"),
            )
        )
    return replace(
        target,
        type=kind,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        tensor_types=tuple(overrides),
    )


def _check_model(
    task: ModelConversion, offered: Collection[str], has_imatrix: bool
) -> ModelConversion:
    """``task`` checked, with the outtype defaulted and the types in llama-quantize's spelling."""
    field = "spec.model"
    outtype = task.outtype or GgufOuttype.F16
    seen: set[str] = set()
    quantizations = tuple(
        _check_target(target, offered, has_imatrix, seen, f"{field}.quantizations[{index}]")
        for index, target in enumerate(task.quantizations)
    )
    _check_modelfile(task.modelfile, f"{field}.modelfile")
    if outtype == GgufOuttype.Q8_0 and quantizations and not task.allow_requantize:
        raise InvalidArgument(
            "quantizing from a Q8_0 intermediate loses quality: use outtype F16 (or BF16/F32), "
            "or set allow_requantize",
            field=f"{field}.allow_requantize",
        )
    if task.imatrix is not None:
        _check_imatrix(task.imatrix, f"{field}.imatrix")
    return replace(task, outtype=outtype, quantizations=quantizations)


def _check_imatrix(options: ImatrixOptions, field: str) -> None:
    if options.source is None:
        raise InvalidArgument(
            "imatrix is set but names no source: give imatrix, calibration_text or "
            "calibration_text_inline",
            field=field,
        )
    inline = options.calibration_text_inline
    if inline is not None and len(inline.encode()) > MAX_INLINE_CALIBRATION:
        raise InvalidArgument(
            "calibration_text_inline is over 1 MiB: register the text and refer to it",
            field=f"{field}.calibration_text_inline",
        )


def _check_modelfile(options: ModelfileOptions, field: str) -> None:
    """Refuse what the Modelfile could not carry as given (a value that would end early and
    inject an instruction), before any work is done."""
    for index, parameter in enumerate(options.parameters):
        where = f"{field}.parameters[{index}]"
        if not PARAMETER_NAME.match(parameter.name):
            raise InvalidArgument(
                f"'{parameter.name}' is not a Modelfile parameter name: use Ollama's names "
                "(letters, digits and _), such as temperature or num_ctx",
                field=f"{where}.name",
            )
        _check_modelfile_text(parameter.value, f"{where}.value")
    _check_modelfile_text(options.system, f"{field}.system")
    _check_modelfile_text(options.template_override, f"{field}.template_override")


def _check_modelfile_text(value: str, field: str) -> None:
    try:
        modelfile_value(value)
    except ValueError as error:
        raise InvalidArgument(f"{field}: {error}", field=field) from None


def _check_gguf_source(source: RegistryVersion, task: ModelConversion) -> None:
    """A GGUF source is quantized as it is: it needs targets, and to be full precision unless
    requantizing is allowed (its type is checked again on the file itself)."""
    name = f"{source.model}:{source.number}"
    if not task.quantizations:
        raise InvalidArgument(
            f"{name} is already a GGUF: name the quantizations to make from it",
            field="spec.model.quantizations",
        )
    if task.register_outtype:
        raise InvalidArgument(
            f"{name} is already registered; register_outtype applies to HF sources only",
            field="spec.model.register_outtype",
        )
    ggufs = [a for a in source.artifacts if a.path.endswith(".gguf")]
    if len(ggufs) != 1:
        raise InvalidArgument(
            f"{name} holds {len(ggufs)} GGUF files; quantize a version holding exactly one",
            field="spec.model.source",
        )
    file_type = (ggufs[0].gguf_file_type or source.labels.get("file_type", "")).upper()
    if file_type and file_type not in FULL_PRECISION and not task.allow_requantize:
        raise InvalidArgument(
            f"{name} is already quantized ({file_type}); quantizing it again loses quality: "
            "quantize its F16 version, or set allow_requantize",
            field="spec.model.allow_requantize",
        )


async def _check_artifact(registry: RegistryAccess, ref: ArtifactRef, field: str) -> ArtifactRef:
    """``ref`` pinned to the version it names, which must hold its file."""
    version = await resolve(registry, ref.version, f"{field}.version")
    paths = [a.path for a in version.artifacts]
    if ref.path not in paths:
        raise NotFound(
            f"{version.model}:{version.number} has no file {ref.path!r} (it has "
            f"{', '.join(paths) or 'none'})",
            field=f"{field}.path",
        )
    return replace(ref, version=version.pinned())


async def _base_gguf(registry: RegistryAccess, base: VersionRef) -> VersionRef | None:
    """A GGUF version converted from ``base`` (F16 preferred), in ``<base>-gguf``."""
    try:
        versions = await registry.list_versions(
            base.model + GGUF_SUFFIX,
            kind=VersionKind.GGUF,
            parent=base,
            relation=Relation.CONVERTED_FROM,
            limit=100,
        )
    except NotFound:
        return None
    versions.sort(key=lambda v: -v.number)
    for version in versions:
        if version.labels.get("file_type") == "F16":
            return version.pinned()
    return versions[0].pinned() if versions else None


async def _validate_model(
    registry: RegistryAccess,
    model: ModelConversion,
    offered: Collection[str],
    trust_remote_code: bool,
) -> tuple[ModelConversion, str]:
    """The model task completed, and the model its outputs go to by default."""
    source = await resolve(registry, model.source, "spec.model.source")
    if source.kind == VersionKind.GGUF:
        _check_gguf_source(source, model)
    elif source.kind not in HF_KINDS:
        raise InvalidArgument(
            f"{source.model}:{source.number} is a {source.kind} version; convert an HF model "
            "(BASE, MERGED or FINETUNED), or an adapter with spec.adapter",
            field="spec.model.source",
        )
    if source.kind in HF_KINDS:
        check_remote_code(source, "spec.model.source", trust_remote_code)
    imatrix = model.imatrix
    model = _check_model(
        replace(model, source=source.pinned()),
        offered,
        imatrix is not None and imatrix.source is not None,
    )
    if imatrix is not None and imatrix.registry_file is not None:
        which = imatrix.source
        checked = await _check_artifact(
            registry, imatrix.registry_file, f"spec.model.imatrix.{which}"
        )
        imatrix = (
            replace(imatrix, imatrix=checked)
            if which == "imatrix"
            else replace(imatrix, calibration_text=checked)
        )
        model = replace(model, imatrix=imatrix)
    return model, source.model


async def _validate_adapter(
    registry: RegistryAccess, task: AdapterConversion, trust_remote_code: bool
) -> tuple[AdapterConversion, str]:
    """The adapter task completed (pinned, its base and base GGUF found), and the model its
    output goes to by default."""
    adapter = await resolve(registry, task.adapter, "spec.adapter.adapter")
    if adapter.kind != VersionKind.ADAPTER:
        raise InvalidArgument(
            f"{adapter.model}:{adapter.number} is a {adapter.kind} version, not an ADAPTER",
            field="spec.adapter.adapter",
        )
    check_remote_code(adapter, "spec.adapter.adapter", trust_remote_code)
    base_ref = task.base
    if base_ref is None:
        parents = [p.version for p in adapter.parents if p.relation == Relation.ADAPTER_OF]
        if not parents:
            raise InvalidArgument(
                f"{adapter.model}:{adapter.number} has no ADAPTER_OF parent: name its base "
                "in spec.adapter.base",
                field="spec.adapter.base",
            )
        base_ref = parents[0]
    base = await resolve(registry, base_ref, "spec.adapter.base")
    if base.kind not in HF_KINDS:
        raise InvalidArgument(
            f"the base {base.model}:{base.number} is not an HF model",
            field="spec.adapter.base",
        )
    check_remote_code(base, "spec.adapter.base", trust_remote_code)
    if task.base_gguf is not None:
        base_gguf = await resolve(registry, task.base_gguf, "spec.adapter.base_gguf")
        if base_gguf.kind != VersionKind.GGUF:
            raise InvalidArgument(
                f"{base_gguf.model}:{base_gguf.number} is not a GGUF version",
                field="spec.adapter.base_gguf",
            )
        base_gguf_ref: VersionRef | None = base_gguf.pinned()
    else:
        base_gguf_ref = await _base_gguf(registry, base.pinned())
    completed = AdapterConversion(
        adapter=adapter.pinned(),
        base=base.pinned(),
        outtype=task.outtype or GgufOuttype.F16,
        base_gguf=base_gguf_ref,
    )
    return completed, adapter.model


async def validate_spec(
    registry: RegistryAccess,
    spec: ConversionSpec,
    offered: Collection[str],
    *,
    trust_remote_code: bool = False,
) -> ConversionSpec:
    """``spec`` checked, with its defaults filled in: pinned versions, the output model, the
    outtype, the quality metric, the adapter's base and base GGUF.

    ``trust_remote_code`` is the operator's ``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``.

    Raises:
        InvalidArgument: the request cannot be carried out as written.
        NotFound: a version or file it names is not in the registry.
        FailedPrecondition: an HF version it names needs its own code, and that is not trusted.
    """
    verification = spec.verification
    if verification.quality_metric is None:
        verification = replace(verification, quality_metric=QualityMetric.PERPLEXITY)
    if verification.evaluation_chunks < 0:
        raise InvalidArgument(
            "evaluation_chunks cannot be negative", field="spec.verification.evaluation_chunks"
        )
    if verification.evaluation_text is not None:
        verification = replace(
            verification,
            evaluation_text=await _check_artifact(
                registry, verification.evaluation_text, "spec.verification.evaluation_text"
            ),
        )
    task: ModelConversion | AdapterConversion
    if isinstance(spec.task, ModelConversion):
        task, default_model = await _validate_model(registry, spec.task, offered, trust_remote_code)
    elif isinstance(spec.task, AdapterConversion):
        task, default_model = await _validate_adapter(registry, spec.task, trust_remote_code)
    else:
        raise InvalidArgument(
            "spec names nothing to convert: set spec.model or spec.adapter", field="spec"
        )
    output = spec.output
    if not output.model:
        output = replace(output, model=default_model + GGUF_SUFFIX)
    return ConversionSpec(task=task, output=output, verification=verification)
