"""Whether a fine-tune served as a GGUF adapter on a shared base answers as its merged model does.

The pipeline serves a job's adapter on the base deployment (`deploy.serve: adapter`) only on this
evidence: up to `PROMPTS` prompts of the job's validation file (else its training file), each
answered greedily (temperature 0, seed 0, at most `MAX_TOKENS` tokens) by the adapter deployment
and by the merged GGUF, and compared as text. The adapter holds the quality when the answers are
identical for all but at most one prompt in eight (`required`: 7 of 8; with fewer than eight
prompts, every one). Both are served by the same llama-server build; what can differ is the
arithmetic (the adapter is applied to the base's weights at run time, B·(A·x) in F32, where the
merged model has it folded in before quantization), which a faithful adapter keeps below what
changes a greedy answer.

Prompts are the conversations of the file up to their last assistant turn (system and user
turns, and earlier assistant turns of text), in the file's order, each distinct one once. Records
with tools, tool calls or other content than text are skipped; pre-training text has no prompts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetColumns, DatasetTags

__all__ = [
    "MAX_TOKENS",
    "PROMPTS",
    "Agreement",
    "Answer",
    "compare",
    "conversation_of",
    "examples_of",
    "prompts_of",
    "records_of",
    "required",
]

#: Prompts compared at most.
PROMPTS: Final = 8
#: Tokens of each greedy answer.
MAX_TOKENS: Final = 32
#: Prompts in eight whose answers may differ.
_DIFFERING_PER_EIGHT: Final = 1

Messages = list[dict[str, str]]
#: A greedy answer of a deployed model (by name) to a conversation.
Answer = Callable[[str, Messages], Awaitable[str]]


def required(total: int) -> int:
    """How many of `total` prompts must get identical answers: all but one in eight."""
    return total - (total // 8) * _DIFFERING_PER_EIGHT


@dataclass(frozen=True)
class Agreement:
    """The comparison of an adapter's greedy answers with the merged model's."""

    agreed: int
    total: int
    #: The first prompt whose answers differ: (its number from 1, adapter's, merged's).
    first_difference: tuple[int, str, str] | None = None

    @property
    def holds(self) -> bool:
        return self.total > 0 and self.agreed >= required(self.total)

    @property
    def text(self) -> str:
        """``7/8``."""
        return f"{self.agreed}/{self.total}"

    def describe(self) -> str:
        """What the comparison found, for the job's events."""
        said = (
            f"its greedy answers agree with the merged model's on {self.agreed} of {self.total} "
            f"prompts (at least {required(self.total)} needed)"
        )
        if self.first_difference is not None:
            number, adapter, merged = self.first_difference
            # From a little before where they part: long answers may share most of their text.
            shared = next(
                (i for i, (a, m) in enumerate(zip(adapter, merged, strict=False)) if a != m),
                min(len(adapter), len(merged)),
            )
            start = max(shared - 20, 0)
            said += (
                f"; the first difference is on prompt {number}: the adapter answers "
                f"{_short(adapter, start)}, the merged model {_short(merged, start)}"
            )
        return said


async def compare(
    answer: Answer, adapter_model: str, merged_model: str, prompts: Sequence[Messages]
) -> Agreement:
    """Ask both deployments each prompt and count identical answers. A prompt that either
    deployment refuses (too long for its context, say) is left out of the count; other errors
    (a backend that cannot be reached) are raised."""
    agreed = total = 0
    first: tuple[int, str, str] | None = None
    for number, messages in enumerate(prompts, 1):
        try:
            by_adapter = await answer(adapter_model, messages)
            by_merged = await answer(merged_model, messages)
        except InvalidArgument:
            continue
        total += 1
        if by_adapter == by_merged:
            agreed += 1
        elif first is None:
            first = (number, by_adapter, by_merged)
    return Agreement(agreed=agreed, total=total, first_difference=first)


def prompts_of(
    path: Path,
    format: DatasetFormat,
    *,
    columns: DatasetColumns | None = None,
    tags: DatasetTags | None = None,
    limit: int = PROMPTS,
) -> list[Messages]:
    """Up to `limit` distinct prompts of the dataset file at `path` (see the module's doc)."""
    columns = columns or DatasetColumns()
    tags = tags or DatasetTags()
    found: list[Messages] = []
    seen: set[str] = set()
    for record in records_of(path):
        if len(found) >= limit:
            break
        if not isinstance(record, dict):
            continue
        prompt = _prompt(record, format, columns, tags)
        if not prompt:
            continue
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(prompt)
    return found


def examples_of(
    path: Path,
    format: DatasetFormat,
    *,
    columns: DatasetColumns | None = None,
    tags: DatasetTags | None = None,
    limit: int = PROMPTS,
) -> list[tuple[Messages, str]]:
    """Up to `limit` prompts of the dataset file at `path`, each with the file's own answer to it
    (the last assistant turn; an Alpaca record's output): what a job's evaluation scores against.
    Preference pairs and pre-training text have no single answer and give none."""
    columns = columns or DatasetColumns()
    tags = tags or DatasetTags()
    found: list[tuple[Messages, str]] = []
    for record in records_of(path):
        if len(found) >= limit:
            break
        if not isinstance(record, dict) or columns.chosen or columns.rejected:
            continue
        prompt = _prompt(record, format, columns, tags)
        answer = _answer(record, format, columns, tags)
        if prompt and answer:
            found.append((prompt, answer))
    return found


def conversation_of(
    record: Any,
    format: DatasetFormat,
    *,
    columns: DatasetColumns | None = None,
    tags: DatasetTags | None = None,
) -> Messages | None:
    """A record's whole conversation as chat messages (system, user and assistant turns of text),
    or None for one that has none (pre-training text, preference pairs, tool calls)."""
    columns = columns or DatasetColumns()
    tags = tags or DatasetTags()
    if not isinstance(record, dict) or columns.chosen or columns.rejected:
        return None
    prompt = _prompt(record, format, columns, tags)
    answer = _answer(record, format, columns, tags)
    if not prompt or not answer:
        return None
    if format is DatasetFormat.ALPACA:
        return [*prompt, {"role": "assistant", "content": answer}]
    if format is DatasetFormat.OPENAI_CHAT:
        return _turns(record.get("messages"), "role", "content", _OPENAI_ROLES)
    roles = {
        tags.user_tag or "human": "user",
        tags.assistant_tag or "gpt": "assistant",
        tags.system_tag or "system": "system",
    }
    turns = _turns(
        record.get(columns.messages or "conversations"),
        tags.role_tag or "from",
        tags.content_tag or "value",
        roles,
    )
    system = record.get(columns.system or "system")
    if turns and isinstance(system, str) and system and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns


def _answer(
    record: Mapping[str, Any], format: DatasetFormat, columns: DatasetColumns, tags: DatasetTags
) -> str | None:
    if format is DatasetFormat.ALPACA:
        output = record.get(columns.response or "output")
        return output if isinstance(output, str) and output else None
    if format is DatasetFormat.OPENAI_CHAT:
        turns = _turns(record.get("messages"), "role", "content", _OPENAI_ROLES)
    elif format is DatasetFormat.SHAREGPT:
        roles = {tags.assistant_tag or "gpt": "assistant", tags.user_tag or "human": "user"}
        turns = _turns(
            record.get(columns.messages or "conversations"),
            tags.role_tag or "from",
            tags.content_tag or "value",
            roles | {tags.system_tag or "system": "system"},
        )
    else:
        return None
    if not turns or turns[-1]["role"] != "assistant":
        return None
    return turns[-1]["content"] or None


def records_of(path: Path) -> Iterator[Any]:
    """The records of a JSON (a list) or JSONL file, in order; unreadable lines skipped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            return
        if isinstance(data, list):
            yield from data
        return
    for line in text.splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _prompt(
    record: Mapping[str, Any], format: DatasetFormat, columns: DatasetColumns, tags: DatasetTags
) -> Messages | None:
    if format is DatasetFormat.OPENAI_CHAT:
        if record.get("tools") or record.get("functions"):
            return None
        return _until_last_answer(record.get("messages"), "role", "content", _OPENAI_ROLES)
    if format is DatasetFormat.OPENAI_PREFERENCE:
        conversation = (record.get("input") or {}).get("messages")
        return _whole(conversation, "role", "content", _OPENAI_ROLES)
    if format is DatasetFormat.ALPACA:
        return _alpaca(record, columns)
    if format is DatasetFormat.SHAREGPT:
        if columns.tools and record.get(columns.tools):
            return None
        roles = {
            tags.user_tag or "human": "user",
            tags.assistant_tag or "gpt": "assistant",
            tags.system_tag or "system": "system",
        }
        turns = record.get(columns.messages or "conversations")
        role_tag, content_tag = tags.role_tag or "from", tags.content_tag or "value"
        system = record.get(columns.system or "system")
        prompt = (
            _whole(turns, role_tag, content_tag, roles)
            if columns.chosen or columns.rejected
            else _until_last_answer(turns, role_tag, content_tag, roles)
        )
        if prompt and isinstance(system, str) and system and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system})
        return prompt
    return None  # pre-training text: no conversations


_OPENAI_ROLES: Final = {"system": "system", "user": "user", "assistant": "assistant"}


def _turns(
    messages: Any, role_tag: str, content_tag: str, roles: Mapping[str, str]
) -> Messages | None:
    if not isinstance(messages, list) or not messages:
        return None
    turns: Messages = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = roles.get(str(message.get(role_tag)))
        content = message.get(content_tag)
        if role is None or not isinstance(content, str) or message.get("tool_calls"):
            return None
        turns.append({"role": role, "content": content})
    return turns


def _until_last_answer(
    messages: Any, role_tag: str, content_tag: str, roles: Mapping[str, str]
) -> Messages | None:
    turns = _turns(messages, role_tag, content_tag, roles)
    if not turns:
        return None
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    prompt = turns[:last] if last >= 0 else turns
    return prompt if prompt and prompt[-1]["role"] == "user" else None


def _whole(
    messages: Any, role_tag: str, content_tag: str, roles: Mapping[str, str]
) -> Messages | None:
    turns = _turns(messages, role_tag, content_tag, roles)
    return turns if turns and turns[-1]["role"] == "user" else None


def _alpaca(record: Mapping[str, Any], columns: DatasetColumns) -> Messages | None:
    instruction = record.get(columns.prompt or "instruction")
    extra = record.get(columns.query or "input")
    system = record.get(columns.system or "system")
    if not isinstance(instruction, str) or not instruction:
        return None
    content = f"{instruction}\n{extra}" if isinstance(extra, str) and extra else instruction
    prompt: Messages = []
    if isinstance(system, str) and system:
        prompt.append({"role": "system", "content": system})
    prompt.append({"role": "user", "content": content})
    return prompt


def _short(text: str, start: int = 0, limit: int = 60) -> str:
    """`text` from `start`, at most `limit` characters of it, as a JSON string."""
    shown = text[start : start + limit]
    return ("…" if start else "") + json.dumps(shown) + ("…" if start + limit < len(text) else "")
