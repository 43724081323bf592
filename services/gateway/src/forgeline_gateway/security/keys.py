"""API keys: made here, shown once, stored as SHA-256, checked on every request.

A key is 32 random bytes (``flk-`` and URL-safe base64), so a plain SHA-256 is the right hash
(as for GitHub or Stripe tokens): nothing to brute-force, and a lookup costs a microsecond.
Verified keys are cached for a few seconds, so revoking a key takes effect on every replica
within that time without a database read per request.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from forgeline_gateway.store import KeyRecord, Store
from forgeline_kit.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "Authenticator",
    "Principal",
    "Scope",
    "create_key",
    "hash_key",
    "require_scope",
    "revoke_key",
]

KEY_PREFIX = "flk-"
_CACHE_LIMIT = 10_000


class Scope(enum.StrEnum):
    """What a key may do: inference (the OpenAI endpoints), admin (deployments, keys)."""

    INFERENCE = "inference"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and name, and what it may do."""

    key_id: str
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal(key_id="", name="anonymous", scopes=frozenset(s.value for s in Scope))


def hash_key(key: str) -> str:
    """The stored form of `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, name: str, scopes: set[Scope]) -> tuple[str, KeyRecord]:
    """Make a new key with `scopes`; returns the key (shown to its owner once) and its record.

    Raises:
        InvalidArgument: no scope, or an empty name.
    """
    if not scopes:
        raise InvalidArgument("a key needs at least one scope: inference, admin", field="scopes")
    if not name.strip():
        raise InvalidArgument("a key needs a name saying who or what uses it", field="name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord(
        id="key_" + secrets.token_hex(8),
        name=name.strip(),
        prefix=key[:10],
        hash=hash_key(key),
        scopes=frozenset(s.value for s in scopes),
        created_at=int(time.time()),
        revoked_at=None,
    )
    store.add_key(record)
    return key, record


def revoke_key(store: Store, key_id: str) -> KeyRecord:
    """Revoke a key by id.

    Raises:
        NotFound: no key has that id.
    """
    record = store.revoke_key(key_id)
    if record is None:
        raise NotFound(f"there is no API key with id '{key_id}'", field="key_id")
    return record


class Authenticator:
    """Turns an ``Authorization`` header into a `Principal`, or refuses it."""

    def __init__(self, store: Store, *, required: bool, cache_seconds: float) -> None:
        self.store = store
        self.required = required
        self.cache_seconds = cache_seconds
        # Keys that exist and keys that do not are cached apart: a flood of made-up keys fills
        # and evicts only its own bounded cache, never the entries of real keys.
        self._known: dict[str, tuple[KeyRecord, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind `authorization` (``Bearer KEY``).

        Raises:
            Unauthenticated: no key, or a key that is unknown or revoked.
        """
        if not self.required:
            return ANONYMOUS
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated(
                "You didn't provide an API key. Provide it in an Authorization header using "
                "Bearer auth (Authorization: Bearer YOUR_KEY)."
            )
        record = await self._lookup(hash_key(key))
        if record is None or not record.active:
            raise Unauthenticated(f"Incorrect API key provided: {_mask(key)}.")
        return Principal(key_id=record.id, name=record.name, scopes=record.scopes)

    def forget(self) -> None:
        """Drop cached keys (after this process changed one)."""
        self._known.clear()
        self._unknown.clear()

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        unknown_until = self._unknown.get(digest)
        if unknown_until is not None and unknown_until > now:
            return None
        record = await self.store.run(lambda: self.store.key_by_hash(digest))
        until = now + self.cache_seconds
        if record is None:
            self._unknown[digest] = until
            self._unknown.move_to_end(digest)
            while len(self._unknown) > _CACHE_LIMIT:
                self._unknown.popitem(last=False)
        else:
            self._unknown.pop(digest, None)
            if len(self._known) >= _CACHE_LIMIT:
                # Only as many entries as the database holds keys: clearing is a safety net.
                self._known.clear()
            self._known[digest] = (record, until)
        return record


def require_scope(principal: Principal, scope: Scope) -> None:
    """Refuse `principal` unless its key has `scope`.

    Raises:
        PermissionDenied: naming the scope that is missing.
    """
    if scope.value not in principal.scopes:
        raise PermissionDenied(
            f"This API key does not have the '{scope.value}' scope needed here; "
            f"it has: {', '.join(sorted(principal.scopes)) or 'none'}."
        )


def _mask(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}" if len(key) > 16 else "***"
