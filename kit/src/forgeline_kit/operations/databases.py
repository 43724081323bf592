"""The operations store on a service's database (`forgeline_kit.databases.connect`).

A service with state beside its operations (the trainer's checkpoints) opens one
:class:`~forgeline_kit.databases.Database`, applies its own schema with
:func:`~forgeline_kit.databases.apply_schema`, and builds its operations store on the same
connection (:func:`operation_store`), so one URL moves all its state.
"""

from __future__ import annotations

from forgeline_kit.databases import Database, apply_schema
from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.postgres_store import MIGRATIONS
from forgeline_kit.operations.sql_store import SqlOperationStore
from forgeline_kit.operations.sqlite_store import SCHEMA as SQLITE_SCHEMA

__all__ = ["operation_store"]


def operation_store(database: Database, codec: OperationCodec[R, E]) -> SqlOperationStore[R, E]:
    """The operations store on ``database``, its tables brought up to date first."""
    apply_schema(database, "operations", sqlite=SQLITE_SCHEMA, postgresql=MIGRATIONS)
    return SqlOperationStore(database.connection, codec, database.dialect)
