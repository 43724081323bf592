"""The registry's stored records: small JSON documents, one pydantic model each.

Layout in the store (``~`` stands for the ``/`` of a two-segment model name, so that one model's
keys never fall under another's prefix)::

    blobs/sha256/<digest>                     artifact bytes, content-addressed, write-once (fs
                                              driver), or a BlobIndex of their parts (S3 driver)
    parts/sha256/<digest>/<upload id>/<n>     S3 driver: part n of an upload of the blob
    verified/sha256/<digest>                  marker: the blob was hashed and matched its digest
    refs/sha256/<digest>/<upload id>          marker: an upload (and its version) uses the blob
    gc/sha256/<digest>/<collection id>        CollectionMarker: a collection of the blob is under
                                              way (or was, in a registry that died)
    deleting/sha256/<digest>/<upload id>      S3 driver: marker: those parts are being deleted
    models/<model>/model.json                 ModelRecord (with `deletion` set: the model's
                                              tombstone while it is being deleted)
    models/<model>/versions/<number>.json     VersionManifest (a tombstone once deleted; the
                                              highest survives the model's deletion)
    models/<model>/deleted/<number>           marker: that version is deleted (fast counts)
    models/<model>/aliases/<alias>.json       AliasRecord
    models/<model>/requests/<key hash>.json   RequestRecord (idempotency key -> upload)
    lineage/<model>/<number>/<child>/<n>.json ChildRecord (reverse index of lineage parents)
    uploads/<upload id>.json                  UploadRecord (an open or committed upload)

Enumerations are stored by their proto names (``VERSION_KIND_BASE``), which never change within
``forgeline.registry.v1``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AliasRecord",
    "ArtifactRecord",
    "BlobIndex",
    "BlobUploadState",
    "ChildRecord",
    "CollectionMarker",
    "DatasetRecord",
    "LineageRecord",
    "ModelDeletion",
    "ModelRecord",
    "ParentRecord",
    "ProvenanceFileRecord",
    "ProvenanceRecord",
    "RequestRecord",
    "UploadRecord",
    "VersionManifest",
    "dump",
    "keys",
    "now",
]


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def dump(record: BaseModel) -> bytes:
    """A record as the canonical JSON stored for it."""
    return record.model_dump_json().encode()


class ArtifactRecord(_Record):
    """One file of a version."""

    path: str
    kind: str
    sha256: str
    size_bytes: int
    media_type: str = "application/octet-stream"
    gguf_file_type: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)


class ParentRecord(_Record):
    """One parent of a version and how the version relates to it."""

    model: str
    version: int
    relation: str


class DatasetRecord(_Record):
    """A dataset a version was trained or evaluated on."""

    name: str = ""
    sha256: str = ""
    format: str = ""
    record_count: int = 0


class ProvenanceFileRecord(_Record):
    """One file of a hub repository, as imported."""

    path: str
    sha256: str
    size_bytes: int = 0
    hub_digest: str = ""


class ProvenanceRecord(_Record):
    """The hub repository and commit an imported version was taken from."""

    hub: str
    repo_id: str
    revision: str = ""
    commit: str = ""
    endpoint: str = ""
    files: tuple[ProvenanceFileRecord, ...] = ()


class LineageRecord(_Record):
    """Where a version came from, as its writer recorded it."""

    parents: tuple[ParentRecord, ...] = ()
    datasets: tuple[DatasetRecord, ...] = ()
    training_config: dict[str, Any] | None = None
    template: str = ""
    chat_template: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    produced_by: str = ""
    #: Set on imports from a model hub. Older registries ignore it (records ignore unknown
    #: fields), and manifests written before it existed read as None.
    provenance: ProvenanceRecord | None = None


class VersionManifest(_Record):
    """A committed version. Written last, with an atomic create, so it is the commit point."""

    schema_version: Literal[1] = 1
    model: str
    number: int
    kind: str
    artifacts: tuple[ArtifactRecord, ...]
    lineage: LineageRecord = LineageRecord()
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    create_time: datetime
    upload_id: str
    #: A deleted version keeps its key as a tombstone, so its number is never handed out again.
    deleted: bool = False

    @property
    def size_bytes(self) -> int:
        """Sum of the artifacts' sizes."""
        return sum(a.size_bytes for a in self.artifacts)

    @property
    def blob_digests(self) -> list[str]:
        """The digests of the blobs the version uses, each once, in order."""
        return sorted({a.sha256 for a in self.artifacts})

    def content_sha256(self) -> str:
        """SHA-256 of the immutable content (what the version is, not its labels or state)."""
        content = self.model_dump(
            mode="json", include={"model", "number", "kind", "artifacts", "lineage"}
        )
        if content["lineage"].get("provenance") is None:
            # Versions without provenance keep the digest they had before the field existed.
            content["lineage"].pop("provenance", None)
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ModelDeletion(_Record):
    """A model's tombstone: its deletion is under way (or was, in a registry that died).

    Written into the model's record, by compare-and-swap, before anything is deleted: from then on
    the model reads as not found, new uploads and commits to it are refused, and a deletion that
    was cut short is finished by a retry or by the janitor.
    """

    start_time: datetime
    #: The deletion may delete the model's versions (DeleteModel's `force`); without it, a
    #: version committed before the tombstone was written makes the deletion back out.
    force: bool = False


class ModelRecord(_Record):
    """A model's own mutable fields."""

    name: str
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    create_time: datetime
    update_time: datetime
    #: Set while the model is being deleted. Older registries ignore it (records ignore unknown
    #: fields) and would show the model until its deletion finishes.
    deletion: ModelDeletion | None = None


class AliasRecord(_Record):
    """Where an alias points."""

    version: int
    update_time: datetime


class ChildRecord(_Record):
    """Reverse lineage: the child named by the key has the parent named by the key, so."""

    relation: str


class BlobUploadState(_Record):
    """How one missing blob of an upload is being sent, as the driver set it up."""

    sha256: str
    size_bytes: int
    #: ``local``: the client writes ``staging_path``; ``parts``: the client PUTs each part as an
    #: object of its own under ``parts/sha256/<digest>/<upload_id>/``.
    method: Literal["local", "parts"]
    staging_path: str = ""
    upload_id: str = ""
    part_size_bytes: int = 0


class BlobIndex(_Record):
    """A verified blob stored in parts (S3 driver): the parts of which upload make it up.

    Written with an atomic create once every part was hashed, so it is the blob's commit point;
    the parts' sizes follow from `size_bytes` and `part_size_bytes`.
    """

    schema_version: Literal[1] = 1
    sha256: str
    size_bytes: int
    upload_id: str
    part_size_bytes: int


class CollectionMarker(_Record):
    """A garbage collection of one blob under way: commits of the blob wait while one exists.

    A registry that dies mid-collection leaves it behind; the janitor finishes the collection once
    `start_time` is old enough. One written for a version's deletion names that version, so the
    janitor can finish the deletion too (and release the version's reference to the blob).
    """

    start_time: datetime
    model: str = ""
    version: int = 0
    upload_id: str = ""


class UploadRecord(_Record):
    """An upload begun with BeginVersion: what the version will be and how its blobs arrive."""

    upload_id: str
    model: str
    kind: str
    artifacts: tuple[ArtifactRecord, ...]
    lineage: LineageRecord = LineageRecord()
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    request_id: str = ""
    create_time: datetime
    expire_time: datetime
    blobs: tuple[BlobUploadState, ...] = ()
    state: Literal["open", "committed"] = "open"
    #: The version number a commit is trying to claim; a commit interrupted after writing that
    #: manifest is recognised by it, so a retry never claims a second number.
    claiming: int | None = None
    version: int | None = None
    #: The `create_time` of the model the upload was begun for: a model deleted and created again
    #: meanwhile is another model, and the commit is refused. None in records of older registries.
    model_create_time: datetime | None = None


class RequestRecord(_Record):
    """An idempotency key: the upload it started and, once committed, the version."""

    upload_id: str
    version: int | None = None


class keys:  # noqa: N801 (a namespace of key builders)
    """Object keys of the layout above."""

    @staticmethod
    def model_dir(model: str) -> str:
        return f"models/{model.replace('/', '~')}/"

    @staticmethod
    def model_from_dir(segment: str) -> str:
        return segment.replace("~", "/")

    @staticmethod
    def model(model: str) -> str:
        return keys.model_dir(model) + "model.json"

    @staticmethod
    def versions(model: str) -> str:
        return keys.model_dir(model) + "versions/"

    @staticmethod
    def version(model: str, number: int) -> str:
        # Zero-padded so that listing order is number order.
        return f"{keys.versions(model)}{number:010d}.json"

    @staticmethod
    def deleted(model: str) -> str:
        """The prefix of the model's deleted-version markers."""
        return keys.model_dir(model) + "deleted/"

    @staticmethod
    def deleted_marker(model: str, number: int) -> str:
        return f"{keys.deleted(model)}{number:010d}"

    @staticmethod
    def aliases(model: str) -> str:
        return keys.model_dir(model) + "aliases/"

    @staticmethod
    def alias(model: str, alias: str) -> str:
        return f"{keys.aliases(model)}{alias}.json"

    @staticmethod
    def request(model: str, request_id: str) -> str:
        digest = hashlib.sha256(request_id.encode()).hexdigest()[:40]
        return f"{keys.model_dir(model)}requests/{digest}.json"

    @staticmethod
    def children(model: str, number: int) -> str:
        return f"lineage/{model.replace('/', '~')}/{number:010d}/"

    @staticmethod
    def child(parent_model: str, parent_number: int, model: str, number: int) -> str:
        child = f"{model.replace('/', '~')}/{number:010d}.json"
        return keys.children(parent_model, parent_number) + child

    @staticmethod
    def upload(upload_id: str) -> str:
        return f"uploads/{upload_id}.json"

    @staticmethod
    def blob(digest: str) -> str:
        return f"blobs/sha256/{digest}"

    @staticmethod
    def blob_parts(digest: str, upload_id: str) -> str:
        return f"parts/sha256/{digest}/{upload_id}/"

    @staticmethod
    def blob_part(digest: str, upload_id: str, number: int) -> str:
        # Zero-padded so that listing order is part order (S3 allows 10,000 parts).
        return f"{keys.blob_parts(digest, upload_id)}{number:05d}"

    @staticmethod
    def verified(digest: str) -> str:
        return f"verified/sha256/{digest}"

    @staticmethod
    def refs(digest: str) -> str:
        return f"refs/sha256/{digest}/"

    @staticmethod
    def ref(digest: str, upload_id: str) -> str:
        return f"{keys.refs(digest)}{upload_id}"

    #: Every collection marker is under this prefix.
    GC = "gc/sha256/"

    @staticmethod
    def gc(digest: str) -> str:
        """The prefix of the blob's collection markers (one per collection under way)."""
        return f"{keys.GC}{digest}/"

    @staticmethod
    def gc_marker(digest: str, collection_id: str) -> str:
        return f"{keys.gc(digest)}{collection_id}"

    #: Every parts-deletion marker (S3 driver) is under this prefix.
    DELETING = "deleting/sha256/"

    @staticmethod
    def parts_deletion(digest: str, upload_id: str) -> str:
        return f"{keys.DELETING}{digest}/{upload_id}"
