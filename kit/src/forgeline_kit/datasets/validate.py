"""Checking every record of a dataset file against its layout's rules (:func:`validate_dataset`).

The rules for alpaca, sharegpt and pre-training text follow LLaMA-Factory's converters
(``llamafactory.data.converter``); OpenAI's chat and preference layouts are checked with OpenAI's
rules, errors naming the line and field ("line 3: messages[1].role: must be one of system, user,
assistant, tool (got 'bot')").
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from .reading import _records, _Unreadable
from .spec import DEFAULT_LIMITS, DatasetFormat, DatasetLimits, DatasetSpec, InvalidDataset

__all__ = ["MAX_REPORTED", "validate_dataset"]

#: How many record errors one report lists; the rest are counted.
MAX_REPORTED: Final = 20


def validate_dataset(spec: DatasetSpec, limits: DatasetLimits = DEFAULT_LIMITS) -> int:
    """Check every record of ``spec``'s file; the number of records.

    The file is read as a stream, one record at a time, within `limits`.

    Raises:
        InvalidDataset: some records are malformed (up to :data:`MAX_REPORTED` listed).
        DatasetTooLarge: the file is past one of `limits` (checking stops there).
    """
    problems: list[str] = []
    total_bad = 0
    count = 0
    for label, record in _records(spec, limits):
        count += 1
        found = list(_check_record(spec, record))
        if found:
            total_bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{label}: {'; '.join(found)}")
    if count == 0:
        raise InvalidDataset(spec.name, ["the file holds no records"], 1)
    if problems:
        raise InvalidDataset(spec.name, problems, total_bad)
    return count


def _check_record(spec: DatasetSpec, record: Any) -> Iterator[str]:
    if isinstance(record, _Unreadable):
        yield record.reason
        return
    if not isinstance(record, dict):
        yield f"must be a JSON object, not {type(record).__name__}"
        return
    if spec.format is DatasetFormat.PRETRAIN_TEXT:
        yield from _text_field(record, spec.columns.prompt or "text")
    elif spec.format is DatasetFormat.ALPACA:
        yield from _check_alpaca(spec, record)
    elif spec.format is DatasetFormat.OPENAI_CHAT:
        yield from _check_openai_chat(record)
    elif spec.format is DatasetFormat.OPENAI_PREFERENCE:
        yield from _check_openai_preference(record)
    else:
        yield from _check_sharegpt(spec, record)
    if spec.columns.kto_tag is not None:
        tag = spec.columns.kto_tag
        if not isinstance(record.get(tag), bool):
            yield f"'{tag}' must be true or false"


def _text_field(record: Mapping[str, Any], field: str, *, optional: bool = False) -> Iterator[str]:
    if field not in record or record[field] is None:
        if not optional:
            yield f"'{field}' is missing"
        return
    value = record[field]
    if not isinstance(value, str):
        yield f"'{field}' must be text, not {type(value).__name__}"
    elif not optional and not value.strip():
        yield f"'{field}' is empty"


def _check_alpaca(spec: DatasetSpec, record: Mapping[str, Any]) -> Iterator[str]:
    columns = spec.columns
    yield from _text_field(record, columns.prompt or "instruction")
    yield from _text_field(record, columns.query or "input", optional=True)
    yield from _text_field(record, columns.system or "system", optional=True)
    if spec.ranking:
        yield from _text_field(record, columns.chosen or "chosen")
        yield from _text_field(record, columns.rejected or "rejected")
    else:
        yield from _text_field(record, columns.response or "output")
    history = columns.history or "history"
    if record.get(history) is not None:
        turns = record[history]
        if not isinstance(turns, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
            for turn in turns
        ):
            yield f"'{history}' must be a list of [instruction, response] pairs of text"


def _check_sharegpt(spec: DatasetSpec, record: Mapping[str, Any]) -> Iterator[str]:
    columns, tags = spec.columns, spec.tags
    field = columns.messages or "conversations"
    role_tag, content_tag = tags.role_tag or "from", tags.content_tag or "value"
    user, assistant = tags.user_tag or "human", tags.assistant_tag or "gpt"
    observation = tags.observation_tag or "observation"
    function = tags.function_tag or "function_call"
    system = tags.system_tag or "system"
    yield from _text_field(record, columns.system or "system", optional=True)
    yield from _check_tools(record, columns.tools or "tools")
    messages = record.get(field)
    if messages is None:
        yield f"'{field}' is missing"
        return
    if not isinstance(messages, list) or not messages:
        yield f"'{field}' must be a non-empty list of messages"
        return
    odd, even = (user, observation), (assistant, function)
    start = 1 if isinstance(messages[0], dict) and messages[0].get(role_tag) == system else 0
    for index, message in enumerate(messages):
        where = f"'{field}'[{index}]"
        if not isinstance(message, dict):
            yield f"{where} must be an object with '{role_tag}' and '{content_tag}'"
            continue
        role, content = message.get(role_tag), message.get(content_tag)
        if role is None:
            yield f"{where}: '{role_tag}' is missing"
            continue
        if not isinstance(content, str):
            yield f"{where}: '{content_tag}' is missing or not text"
        if index < start:
            continue
        expected = odd if (index - start) % 2 == 0 else even
        if role not in expected:
            allowed = " or ".join(map(repr, expected))
            yield f"{where}: '{role_tag}' is {role!r} but {allowed} must come here"
        elif role == function and isinstance(content, str):
            yield from _check_function_call(where, content_tag, content)
    turns = len(messages) - start
    if spec.ranking:
        if turns % 2 == 0:
            yield f"'{field}' must end with a '{user}' turn before the chosen/rejected answers"
        for key in (columns.chosen or "chosen", columns.rejected or "rejected"):
            answer = record.get(key)
            if not isinstance(answer, dict) or not isinstance(answer.get(content_tag), str):
                yield f"'{key}' must be a message with '{role_tag}' and '{content_tag}'"
            elif answer.get(role_tag) not in even:
                yield f"'{key}': '{role_tag}' must be {assistant!r} or {function!r}"
    elif turns % 2 != 0:
        yield f"'{field}' must end with a {assistant!r} or {function!r} turn"


def _check_tools(record: Mapping[str, Any], field: str) -> Iterator[str]:
    tools = record.get(field)
    if tools is None or tools == "":
        return
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            yield f"'{field}' must be a JSON list of tool definitions"
            return
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        yield f"'{field}' must be a JSON list of tool definitions"


def _check_function_call(where: str, content_tag: str, content: str) -> Iterator[str]:
    problem = (
        f"{where}: '{content_tag}' of a function call must be JSON with 'name' and 'arguments'"
    )
    try:
        call = json.loads(content)
    except json.JSONDecodeError:
        yield problem
        return
    calls = call if isinstance(call, list) else [call]
    if not all(isinstance(c, dict) and "name" in c and "arguments" in c for c in calls):
        yield problem


# --- OpenAI's layouts: checking -----------------------------------------------------------------

_ROLES: Final = ("system", "user", "assistant", "tool")


def _check_openai_chat(record: Mapping[str, Any]) -> Iterator[str]:
    yield from _check_openai_tools(record.get("tools"), "tools")
    messages = record.get("messages")
    found = list(_check_messages(messages, "messages"))
    if found:
        yield from found
        return
    assert isinstance(messages, list)
    trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and _weight(m)]
    if not trained:
        yield (
            "messages: needs at least one assistant message with weight 1 (the answers to learn)"
            if any(m["role"] == "assistant" for m in messages)
            else "messages: needs at least one assistant message (the answers to learn)"
        )
        return
    yield from _check_order(messages, "messages")
    for index, message in enumerate(messages[: trained[-1]]):
        if message["role"] == "assistant" and not _weight(message):
            # LLaMA-Factory learns every assistant turn it is given; only trailing turns can be
            # left out, so an untrained answer in the middle cannot be honoured.
            yield (
                f"messages[{index}].weight: 0 is only supported after the last assistant message "
                "with weight 1 (split the conversation, or give it weight 1)"
            )


def _check_openai_preference(record: Mapping[str, Any]) -> Iterator[str]:
    given = record.get("input")
    if not isinstance(given, dict):
        yield "input: must be an object with 'messages'" if given else "input: is missing"
    else:
        yield from _check_openai_tools(given.get("tools"), "input.tools")
        messages = given.get("messages")
        found = list(_check_messages(messages, "input.messages"))
        yield from found
        if not found:
            assert isinstance(messages, list)
            yield from _check_order(messages, "input.messages")
            if messages[-1]["role"] not in ("user", "tool"):
                yield (
                    f"input.messages[{len(messages) - 1}].role: the input must end with a user "
                    "or tool message, which the preferred and non-preferred outputs answer"
                )
    for key in ("preferred_output", "non_preferred_output"):
        output = record.get(key)
        if output is None:
            yield f"{key}: is missing"
        elif not isinstance(output, list) or len(output) != 1:
            yield f"{key}: must be a list holding exactly one assistant message"
        else:
            found = list(_check_message(output[0], f"{key}[0]"))
            yield from found
            if not found and output[0]["role"] != "assistant":
                yield f"{key}[0].role: must be 'assistant' (got {output[0]['role']!r})"


def _check_messages(messages: Any, where: str) -> Iterator[str]:
    if messages is None:
        yield f"{where}: is missing"
    elif not isinstance(messages, list) or not messages:
        yield f"{where}: must be a non-empty list of messages"
    else:
        for index, message in enumerate(messages):
            yield from _check_message(message, f"{where}[{index}]")


def _check_message(message: Any, where: str) -> Iterator[str]:
    if not isinstance(message, dict):
        yield f"{where}: must be an object with 'role' and 'content'"
        return
    role = message.get("role")
    if role is None:
        yield f"{where}.role: is missing"
        return
    if role not in _ROLES:
        yield f"{where}.role: must be one of {', '.join(_ROLES)} (got {role!r})"
        return
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            yield f"{where}.tool_calls: only assistant messages call tools"
        else:
            yield from _check_tool_calls(calls, f"{where}.tool_calls")
    content = message.get("content")
    if content is None:
        if calls is None:
            yield f"{where}.content: is missing"
    elif _text(content) is None:
        yield f"{where}.content: must be text or a list of text parts"
    elif calls is None and not _text(content) and role in ("user", "assistant"):
        yield f"{where}.content: is empty"
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            yield f"{where}.weight: only assistant messages have a weight"
        elif type(weight) is not int or weight not in (0, 1):
            yield f"{where}.weight: must be 0 or 1 (got {weight!r})"
    if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
        yield f"{where}.tool_call_id: must be text"


def _check_tool_calls(calls: Any, where: str) -> Iterator[str]:
    if not isinstance(calls, list) or not calls:
        yield f"{where}: must be a non-empty list of tool calls"
        return
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        if not isinstance(call, dict):
            yield f"{at}: must be an object with 'type' and 'function'"
            continue
        if call.get("type", "function") != "function":
            yield f"{at}.type: must be 'function' (got {call.get('type')!r})"
        function = call.get("function")
        if not isinstance(function, dict):
            yield f"{at}.function: must be an object with 'name' and 'arguments'"
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            yield f"{at}.function.name: must be a non-empty string"
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            yield f"{at}.function.arguments: must be a string holding a JSON object"
            continue
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            yield f"{at}.function.arguments: must be a string holding a JSON object"


def _check_openai_tools(tools: Any, where: str) -> Iterator[str]:
    if tools is None:
        return
    if not isinstance(tools, list):
        yield f"{where}: must be a list of tools"
        return
    for index, tool in enumerate(tools):
        at = f"{where}[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            yield f"{at}.type: must be 'function'"
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            yield f"{at}.function.name: is missing"


def _check_order(messages: list[dict[str, Any]], where: str) -> Iterator[str]:
    """The order LLaMA-Factory can learn from: user (or tool results) and assistant turns taking
    turns after an optional leading system message; consecutive user messages merge."""
    previous: dict[str, Any] | None = None
    for index, message in enumerate(messages):
        at = f"{where}[{index}].role"
        role = message["role"]
        if role == "system":
            if index != 0:
                yield f"{at}: a system message may only come first"
        elif previous is None or previous["role"] == "system":
            if role != "user":
                yield f"{at}: the conversation must start with a user message (got {role!r})"
                return
        elif role == "tool":
            if previous["role"] != "tool" and not (
                previous["role"] == "assistant" and previous.get("tool_calls")
            ):
                yield f"{at}: a tool message must follow an assistant message with tool_calls"
        elif role == "user" and previous["role"] == "tool":
            yield f"{at}: the assistant must answer the tool results before the next user message"
        elif role == "assistant" and previous["role"] == "assistant":
            yield f"{at}: two assistant messages in a row; a user or tool message goes between"
        previous = message


def _text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of text parts joined; None if neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def _weight(message: Mapping[str, Any]) -> bool:
    return bool(message.get("weight", 1))
