"""Serving the admin key endpoints over the store."""

from __future__ import annotations

from forgeline_gateway.api.keys.protocol import ApiKey, ApiKeyCreate, ApiKeyList, CreatedApiKey
from forgeline_gateway.security.keys import Authenticator, create_key, revoke_key
from forgeline_gateway.store import KeyRecord, Store

__all__ = ["KeyServing"]


class KeyServing:
    """Creates, lists and revokes API keys."""

    def __init__(self, store: Store, authenticator: Authenticator) -> None:
        self.store = store
        self.authenticator = authenticator

    async def create(self, body: ApiKeyCreate) -> CreatedApiKey:
        key, record = await self.store.run(
            lambda: create_key(self.store, body.name, set(body.scopes))
        )
        return CreatedApiKey(key=key, **_view(record).model_dump(exclude={"object"}))

    async def list(self) -> ApiKeyList:
        records = await self.store.run(self.store.list_keys)
        return ApiKeyList(data=[_view(r) for r in records])

    async def revoke(self, key_id: str) -> ApiKey:
        record = await self.store.run(lambda: revoke_key(self.store, key_id))
        self.authenticator.forget()
        return _view(record)


def _view(record: KeyRecord) -> ApiKey:
    return ApiKey(
        id=record.id,
        name=record.name,
        prefix=record.prefix,
        scopes=sorted(record.scopes),
        created=record.created_at,
        revoked=record.revoked_at,
    )
