"""Deployments shared by gateway replicas: `DeploymentSync`.

Replicas on one database share its deployment records, but each serves from backend instances
of its own: a vLLM or Ollama deployment routes to the same servers from every replica, while a
llama.cpp deployment runs llama-server processes local to the replica that placed it (a process
one gateway manages is reached only through that gateway). So every replica places every
deployment itself. At start it places the stored ones (`restore.py`); from then on, every
`DEPLOYMENT_SYNC_SECONDS`, it places those another replica created since (bases before their
adapters) and removes those another replica deleted (adapters before their bases), recording
nothing: the creating or deleting replica already did. A request for a deployment created
elsewhere may get 404 on this replica for up to one interval (plus its placing time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pydantic import TypeAdapter

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import DeploymentSpec
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import AlreadyExists, NotFound

__all__ = ["DeploymentSync"]

log = logging.getLogger(__name__)

_SPEC: TypeAdapter[DeploymentSpec] = TypeAdapter(DeploymentSpec)


class DeploymentSync:
    """Keeps this replica's deployments those of the database."""

    def __init__(self, manager: DeploymentManager, store: Store, every_seconds: float) -> None:
        self.manager = manager
        self.store = store
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name="deployment sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def once(self) -> None:
        """One pass: place what was created elsewhere, remove what was deleted elsewhere (or
        deleted and created again under its name)."""
        records = {r.name: r for r in await self.store.run(self.store.list_deployments)}
        changing = self.manager.changing()
        here = {
            state.spec.name: state
            for state in self.manager.list()
            if state.spec.name not in changing
        }
        gone = [
            state
            for name, state in here.items()
            if name not in records or records[name].created_at != state.created
        ]
        # Adapters first: a base is not removed under one.
        for state in sorted(gone, key=lambda s: s.spec.base is None):
            log.info("deployment deleted on another replica", extra={"model": state.spec.name})
            with contextlib.suppress(NotFound):
                await self.manager.delete(state.spec.name)
            here.pop(state.spec.name)
        new = [
            (record, _SPEC.validate_json(record.spec_json))
            for name, record in records.items()
            if name not in here and name not in changing
        ]
        # Bases first, then adapters, oldest first.
        for record, spec in sorted(new, key=lambda n: (n[1].base is not None, n[0].created_at)):
            await self._place(record, spec)

    async def _place(self, record: DeploymentRecord, spec: DeploymentSpec) -> None:
        log.info("deployment created on another replica", extra={"model": record.name})
        try:
            await self.manager.create(spec, created=record.created_at, record=False)
        except AlreadyExists:  # placed here meanwhile
            return
        except Exception as error:
            # Not placeable here (a file this host lacks, a backend it cannot reach): listed as
            # failed on this replica, as at start; the others still serve it.
            self.manager.fail(record.name, spec, record.created_at, error)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await self.once()
            except Exception:  # the database may be back on the next pass
                log.warning("could not sync deployments with the database", exc_info=True)
