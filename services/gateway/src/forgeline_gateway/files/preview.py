"""What a fine-tuning file looks like to the model it trains: records rendered through the base
model's chat template, with the spans the loss is computed on marked.

The wrong template, a system prompt that never reaches the model, an answer that is not where
the user thinks: the mistakes users report most are invisible in the JSONL and obvious once the
text the model sees is shown. The masking follows LLaMA-Factory's supervised stage: every
assistant turn is trained, its end-of-turn text included (the template's closing after the
content, ``<|im_end|>`` and the newline for ChatML); system and user turns and the assistant's
header are not. ``train_on_prompt`` trains everything; ``mask_history`` trains only the last
assistant turn.

How: each message's content is replaced by a unique marker, the template is rendered once for the
whole conversation and once ending at each assistant turn (what follows that turn's marker in the
shorter rendering is its closing), and the real contents are put back where the markers are.
Templates run in Jinja's sandbox, as transformers runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from forgeline_gateway.files.service import FileService
from forgeline_gateway.fine_tuning.agreement import conversation_of, records_of
from forgeline_kit.errors import InvalidArgument

__all__ = ["RecordPreview", "Segment", "preview_records", "render_segments"]

Messages = list[dict[str, str]]

# Invisible separators around a number: nothing a dataset holds, and nothing a template trims.
_MARK: Final = "\u2063FL{}\u2063"


class Segment(BaseModel):
    """A run of the rendered text, and whether the loss is computed on it."""

    text: str
    trained: bool


def _raise(message: str) -> NoReturn:
    raise TemplateError(message)


@lru_cache(maxsize=32)
def _compiled(chat_template: str) -> Any:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    return environment.from_string(chat_template)


def _render(
    chat_template: str, messages: Sequence[Mapping[str, str]], tokens: Mapping[str, str]
) -> str:
    try:
        text: str = _compiled(chat_template).render(
            messages=messages, add_generation_prompt=False, **tokens
        )
    except TemplateError as error:
        raise InvalidArgument(f"the model's chat template fails on this record: {error}") from None
    return text


def render_segments(
    chat_template: str,
    conversation: Messages,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    bos_token: str = "",
    eos_token: str = "",
) -> list[Segment]:
    """`conversation` as `chat_template` renders it, in segments marked trained or not.

    Raises:
        InvalidArgument: the template fails on the conversation, or drops one of its messages.
    """
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    marked = [message | {"content": _MARK.format(i)} for i, message in enumerate(conversation)]
    full = _render(chat_template, marked, tokens)
    answers = [i for i, message in enumerate(conversation) if message["role"] == "assistant"]
    trained_turns = set(answers[-1:] if mask_history else answers)
    segments: list[Segment] = []

    def add(text: str, trained: bool) -> None:
        if not text:
            return
        if segments and segments[-1].trained == trained:
            segments[-1] = Segment(text=segments[-1].text + text, trained=trained)
        else:
            segments.append(Segment(text=text, trained=trained))

    position = 0
    for i, message in enumerate(conversation):
        mark = _MARK.format(i)
        found = full.find(mark, position)
        if found < 0:
            raise InvalidArgument(
                f"the model's chat template leaves out message {i + 1} ({message['role']}): "
                "the model would never see it"
            )
        add(full[position:found], train_on_prompt)
        position = found + len(mark)
        trained = train_on_prompt or i in trained_turns
        add(message["content"], trained)
        if message["role"] == "assistant":
            ending = _render(chat_template, marked[: i + 1], tokens)
            closing = ending[ending.find(mark) + len(mark) :]
            if full.startswith(closing, position):
                add(closing, trained)
                position += len(closing)
    add(full[position:], train_on_prompt)
    return segments


@dataclass(frozen=True)
class RecordPreview:
    """One record as the model sees it, or why it cannot be shown."""

    index: int
    segments: list[Segment]
    problem: str | None = None


def _first(path: Path, limit: int) -> list[Any]:
    return list(itertools.islice(records_of(path), limit))


async def preview_records(
    files: FileService,
    file_id: str,
    chat_template: str,
    *,
    limit: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> list[RecordPreview]:
    """The first `limit` records of the fine-tuning file `file_id` through `chat_template`.

    Raises:
        InvalidArgument: no such file, or not a fine-tuning file (``param: file_id``).
    """
    layout = (await files.resolve(file_id, param="file_id")).layout
    async with files.content(file_id) as (_, path):
        records = await asyncio.to_thread(_first, path, limit)
    previews = []
    for index, record in enumerate(records):
        conversation = conversation_of(
            record, layout.format, columns=layout.columns, tags=layout.tags
        )
        if conversation is None:
            problem = (
                f"a {layout.format.value} record has no conversation of text to render "
                "(pre-training text, preference pairs and tool calls are not shown)"
            )
            previews.append(RecordPreview(index, [], problem))
            continue
        try:
            segments = render_segments(
                chat_template,
                conversation,
                train_on_prompt=train_on_prompt,
                mask_history=mask_history,
            )
        except InvalidArgument as error:
            previews.append(RecordPreview(index, [], error.message))
            continue
        previews.append(RecordPreview(index, segments))
    return previews
