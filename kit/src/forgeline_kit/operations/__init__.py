"""Long-running work (training jobs, conversions, fine-tuning pipelines): one way to keep it.

Every kind of long-running work in Forgeline has the same shape: a record (what was asked, where
it stands) and its numbered events, changed together; callers create it idempotently by
``request_id``, list it page by page, watch its events (resuming after the last sequence they
saw), cancel it, and expect a restarted service to pick it up. This package is that shape once:

- :mod:`.codec` — how one kind's records and events are stored (:class:`OperationCodec`);
- :mod:`.store` — the storage interface (:class:`OperationStore`) and what it returns;
- :mod:`.sqlite_store` — that interface on SQLite, the embedded default;
- :mod:`.watching` — watches that resume after a sequence and wake on new events;
- :mod:`.page_tokens` — the one page-token codec;
- :mod:`.failure` — the one failure type (:class:`OperationFailure`).

A service keeps only its own stages and what its records hold.
"""

from forgeline_kit.operations.codec import OperationCodec, RecordInfo
from forgeline_kit.operations.failure import OperationFailure
from forgeline_kit.operations.page_tokens import decode_page_token, encode_page_token
from forgeline_kit.operations.sqlite_store import SqliteOperationStore
from forgeline_kit.operations.store import OperationStore, Page
from forgeline_kit.operations.watching import ChangeBell, watch_events

__all__ = [
    "ChangeBell",
    "OperationCodec",
    "OperationFailure",
    "OperationStore",
    "Page",
    "RecordInfo",
    "SqliteOperationStore",
    "decode_page_token",
    "encode_page_token",
    "watch_events",
]
