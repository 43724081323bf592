"""Check dataset files record by record, and write LLaMA-Factory's ``dataset_info.json``.

Shared because the gateway checks uploads (the Files API) with the same rules the trainer applies
before training.

Users hand the trainer data files and say how they are laid out (:class:`DatasetSpec`); the
trainer checks every record before any GPU time is spent — errors name the record (1 is the
first) and the field, "record 17: 'output' is missing" — and then writes the
``dataset_info.json`` LLaMA-Factory reads. Users never write that file.

OpenAI's fine-tuning files (chat JSONL ``{"messages": [...]}`` and preference JSONL
``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``) are
checked with OpenAI's rules, errors naming the line and field ("line 3: messages[1].role: must be
one of system, user, assistant, tool (got 'bot')"), and rewritten for LLaMA-Factory as sharegpt by
:func:`prepare_for_llamafactory`. :func:`detect_dataset` tells an uploaded file's layout.

Files are read as a stream, a record at a time, within :class:`DatasetLimits` (how many records,
how long one may be): a JSONL or text line at a time, a ``.json`` list an element at a time. The
``.json`` list is parsed incrementally rather than refused past some size: LLaMA-Factory (through
``datasets``' json builder) reads both layouts, users hand alpaca/sharegpt data as ``.json`` lists
of any size, and parsing one whole would cost several times its size in memory wherever uploads
are checked. :func:`detect_dataset` reads only the file's first record.

The rules follow LLaMA-Factory's converters (``llamafactory.data.converter``): alpaca records need
a prompt and a response (or chosen and rejected for preference data); sharegpt conversations
alternate user/observation and assistant/function_call turns after an optional system turn, end
with the assistant (or, for preference data, with the user before a chosen/rejected pair).

The package is split by what each part does, and this module names its whole public surface:

- :mod:`.spec`: layouts, the dataset spec, reading limits and the errors;
- :mod:`.dataset_info`: LLaMA-Factory's ``dataset_info.json`` schema;
- :mod:`.reading`: streaming a file's records within the limits;
- :mod:`.validate`: the per-layout record checks;
- :mod:`.rewrite`: preparing files for LLaMA-Factory and writing ``dataset_info.json``;
- :mod:`.detect`: telling an upload's layout.
"""

from .dataset_info import DatasetColumns, DatasetInfo, DatasetInfoEntry, DatasetTags
from .detect import ACCEPTED_LAYOUTS, DETECT_LEAD_BYTES, KTO_TAG, detect_dataset, detect_format
from .rewrite import OPENAI_SHAREGPT_TAGS, prepare_for_llamafactory, write_dataset_info
from .spec import (
    DEFAULT_LIMITS,
    DatasetFormat,
    DatasetLimits,
    DatasetSpec,
    DatasetTooLarge,
    InvalidDataset,
)
from .validate import MAX_REPORTED, validate_dataset

__all__ = [
    "ACCEPTED_LAYOUTS",
    "DEFAULT_LIMITS",
    "DETECT_LEAD_BYTES",
    "KTO_TAG",
    "MAX_REPORTED",
    "OPENAI_SHAREGPT_TAGS",
    "DatasetColumns",
    "DatasetFormat",
    "DatasetInfo",
    "DatasetInfoEntry",
    "DatasetLimits",
    "DatasetSpec",
    "DatasetTags",
    "DatasetTooLarge",
    "InvalidDataset",
    "detect_dataset",
    "detect_format",
    "prepare_for_llamafactory",
    "validate_dataset",
    "write_dataset_info",
]
