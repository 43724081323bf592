"""A ConvertRequest checked before it is accepted, and returned with its defaults filled in.

Everything a user can get wrong without running a tool is found here and answered
INVALID_ARGUMENT (NOT_FOUND for a source the registry does not have), so a conversion that is
accepted fails only for reasons found while working.
"""

from __future__ import annotations

from collections.abc import Collection

from forgeline_converter.llamacpp.source import TRUST_REMOTE_CODE_SETTING
from forgeline_converter.llamacpp.tools import requires_imatrix
from forgeline_converter.modelfile import PARAMETER_NAME, modelfile_value
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

__all__ = ["MAX_INLINE_CALIBRATION", "validate_spec"]

MAX_INLINE_CALIBRATION = 1 << 20
HF_KINDS = frozenset({rpb.VERSION_KIND_BASE, rpb.VERSION_KIND_MERGED, rpb.VERSION_KIND_FINETUNED})
FULL_PRECISION = frozenset({"F32", "F16", "BF16"})
# llama-quantize accepts these as the file type they stand for.
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
GGUF_SUFFIX = "-gguf"


async def resolve(registry: RegistryClient, ref: common_pb2.VersionRef, field: str) -> rpb.Version:
    """The version ``ref`` names (FULL view).

    Raises:
        InvalidArgument: no model named.
        NotFound: the registry has no such version (or alias).
    """
    if not ref.model:
        raise InvalidArgument(f"{field}.model is empty: name the model to convert", field=field)
    return await registry.resolve_version(
        rpb.ResolveVersionRequest(ref=ref, view=rpb.VERSION_VIEW_FULL)
    )


def pinned(version: rpb.Version) -> common_pb2.VersionRef:
    """A reference to exactly ``version``."""
    return common_pb2.VersionRef(model=version.model, version=version.number)


#: The label the registry's hub importer puts on a version it imported with trust_remote_code.
REMOTE_CODE_LABEL = "trust_remote_code"


def check_remote_code(version: rpb.Version, field: str, trust_remote_code: bool) -> None:
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


def _check_model(task: pb.ModelConversion, offered: Collection[str], has_imatrix: bool) -> None:
    field = "spec.model"
    if task.outtype == pb.GGUF_OUTTYPE_UNSPECIFIED:
        task.outtype = pb.GGUF_OUTTYPE_F16
    seen: set[str] = set()
    for index, target in enumerate(task.quantizations):
        where = f"{field}.quantizations[{index}]"
        target.type = _check_type(target.type, offered, f"{where}.type")
        if target.type in seen:
            raise InvalidArgument(f"{target.type} is asked for twice", field=f"{where}.type")
        seen.add(target.type)
        if requires_imatrix(target.type) and not has_imatrix:
            raise InvalidArgument(
                f"{target.type} needs an importance matrix: set {field}.imatrix (a calibration "
                "text, inline or in the registry, or an imatrix file), or choose a k-quant "
                "such as Q4_K_M",
                field=f"{where}.type",
            )
        for name in ("output_tensor_type", "token_embedding_type"):
            value = getattr(target, name)
            if value:
                setattr(target, name, _check_type(value, offered, f"{where}.{name}"))
        for position, override in enumerate(target.tensor_types):
            if not override.pattern:
                raise InvalidArgument(
                    "a tensor type override needs a pattern",
                    field=f"{where}.tensor_types[{position}].pattern",
                )
            override.type = _check_type(
                override.type, offered, f"{where}.tensor_types[{position}].type"
            )
    _check_modelfile(task.modelfile, f"{field}.modelfile")
    if task.outtype == pb.GGUF_OUTTYPE_Q8_0 and task.quantizations and not task.allow_requantize:
        raise InvalidArgument(
            "quantizing from a Q8_0 intermediate loses quality: use outtype F16 (or BF16/F32), "
            "or set allow_requantize",
            field=f"{field}.allow_requantize",
        )
    if task.HasField("imatrix"):
        source = task.imatrix.WhichOneof("source")
        if source is None:
            raise InvalidArgument(
                "imatrix is set but names no source: give imatrix, calibration_text or "
                "calibration_text_inline",
                field=f"{field}.imatrix",
            )
        inline = task.imatrix.calibration_text_inline
        if source == "calibration_text_inline" and len(inline.encode()) > MAX_INLINE_CALIBRATION:
            raise InvalidArgument(
                "calibration_text_inline is over 1 MiB: register the text and refer to it",
                field=f"{field}.imatrix.calibration_text_inline",
            )


def _check_modelfile(options: pb.ModelfileOptions, field: str) -> None:
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
    for name in ("system", "template_override"):
        _check_modelfile_text(getattr(options, name), f"{field}.{name}")


def _check_modelfile_text(value: str, field: str) -> None:
    try:
        modelfile_value(value)
    except ValueError as error:
        raise InvalidArgument(f"{field}: {error}", field=field) from None


def _check_gguf_source(source: rpb.Version, task: pb.ModelConversion) -> None:
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


async def _check_artifact(
    registry: RegistryClient, ref: common_pb2.ArtifactRef, field: str
) -> None:
    version = await resolve(registry, ref.version, f"{field}.version")
    ref.version.CopyFrom(pinned(version))
    paths = [a.path for a in version.artifacts]
    if ref.path not in paths:
        raise NotFound(
            f"{version.model}:{version.number} has no file {ref.path!r} (it has "
            f"{', '.join(paths) or 'none'})",
            field=f"{field}.path",
        )


async def _base_gguf(
    registry: RegistryClient, base: common_pb2.VersionRef
) -> common_pb2.VersionRef | None:
    """A GGUF version converted from ``base`` (F16 preferred), in ``<base>-gguf``."""
    try:
        answer = await registry.list_versions(
            rpb.ListVersionsRequest(
                model=base.model + GGUF_SUFFIX,
                kinds=[rpb.VERSION_KIND_GGUF],
                parent=base,
                relation=rpb.RELATION_CONVERTED_FROM,
                page_size=100,
            )
        )
    except NotFound:
        return None
    versions = sorted(answer.versions, key=lambda v: -v.number)
    for version in versions:
        if version.labels.get("file_type") == "F16":
            return pinned(version)
    return pinned(versions[0]) if versions else None


async def validate_spec(
    registry: RegistryClient,
    spec: pb.ConversionSpec,
    offered: Collection[str],
    *,
    trust_remote_code: bool = False,
) -> None:
    """Check ``spec`` and fill in its defaults in place: pinned versions, the output model, the
    outtype, the quality metric, the adapter's base and base GGUF.

    ``trust_remote_code`` is the operator's ``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``.

    Raises:
        InvalidArgument: the request cannot be carried out as written.
        NotFound: a version or file it names is not in the registry.
        FailedPrecondition: an HF version it names needs its own code, and that is not trusted.
    """
    task = spec.WhichOneof("task")
    verification = spec.verification
    if verification.quality_metric == pb.QUALITY_METRIC_UNSPECIFIED:
        verification.quality_metric = pb.QUALITY_METRIC_PERPLEXITY
    if verification.evaluation_chunks < 0:
        raise InvalidArgument(
            "evaluation_chunks cannot be negative", field="spec.verification.evaluation_chunks"
        )
    if verification.HasField("evaluation_text"):
        await _check_artifact(
            registry, verification.evaluation_text, "spec.verification.evaluation_text"
        )
    if task == "model":
        model = spec.model
        source = await resolve(registry, model.source, "spec.model.source")
        if source.kind == rpb.VERSION_KIND_GGUF:
            _check_gguf_source(source, model)
        elif source.kind not in HF_KINDS:
            raise InvalidArgument(
                f"{source.model}:{source.number} is a {rpb.VersionKind.Name(source.kind)} "
                "version; convert an HF model (BASE, MERGED or FINETUNED), or an adapter with "
                "spec.adapter",
                field="spec.model.source",
            )
        if source.kind in HF_KINDS:
            check_remote_code(source, "spec.model.source", trust_remote_code)
        model.source.CopyFrom(pinned(source))
        imatrix = model.imatrix if model.HasField("imatrix") else None
        _check_model(
            model, offered, imatrix is not None and imatrix.WhichOneof("source") is not None
        )
        if imatrix is not None:
            which = imatrix.WhichOneof("source")
            if which in ("imatrix", "calibration_text"):
                ref = imatrix.imatrix if which == "imatrix" else imatrix.calibration_text
                await _check_artifact(registry, ref, f"spec.model.imatrix.{which}")
        default_model = source.model
    elif task == "adapter":
        adapter_task = spec.adapter
        adapter = await resolve(registry, adapter_task.adapter, "spec.adapter.adapter")
        if adapter.kind != rpb.VERSION_KIND_ADAPTER:
            raise InvalidArgument(
                f"{adapter.model}:{adapter.number} is a {rpb.VersionKind.Name(adapter.kind)} "
                "version, not an ADAPTER",
                field="spec.adapter.adapter",
            )
        check_remote_code(adapter, "spec.adapter.adapter", trust_remote_code)
        adapter_task.adapter.CopyFrom(pinned(adapter))
        if adapter_task.outtype == pb.GGUF_OUTTYPE_UNSPECIFIED:
            adapter_task.outtype = pb.GGUF_OUTTYPE_F16
        if not adapter_task.HasField("base"):
            parents = [
                p.version for p in adapter.lineage.parents if p.relation == rpb.RELATION_ADAPTER_OF
            ]
            if not parents:
                raise InvalidArgument(
                    f"{adapter.model}:{adapter.number} has no ADAPTER_OF parent: name its base "
                    "in spec.adapter.base",
                    field="spec.adapter.base",
                )
            adapter_task.base.CopyFrom(parents[0])
        base = await resolve(registry, adapter_task.base, "spec.adapter.base")
        if base.kind not in HF_KINDS:
            raise InvalidArgument(
                f"the base {base.model}:{base.number} is not an HF model",
                field="spec.adapter.base",
            )
        check_remote_code(base, "spec.adapter.base", trust_remote_code)
        adapter_task.base.CopyFrom(pinned(base))
        if adapter_task.HasField("base_gguf"):
            base_gguf = await resolve(registry, adapter_task.base_gguf, "spec.adapter.base_gguf")
            if base_gguf.kind != rpb.VERSION_KIND_GGUF:
                raise InvalidArgument(
                    f"{base_gguf.model}:{base_gguf.number} is not a GGUF version",
                    field="spec.adapter.base_gguf",
                )
            adapter_task.base_gguf.CopyFrom(pinned(base_gguf))
        else:
            found = await _base_gguf(registry, adapter_task.base)
            if found is not None:
                adapter_task.base_gguf.CopyFrom(found)
        default_model = adapter.model
    else:
        raise InvalidArgument(
            "spec names nothing to convert: set spec.model or spec.adapter", field="spec"
        )
    if not spec.output.model:
        spec.output.model = default_model + GGUF_SUFFIX
