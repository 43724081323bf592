"""LlamaIndex's OpenAI-compatible LLM class against a gateway, as an application uses it.

Run by tests/gateway/test_clients.py with the interpreter of .venv-clients (LlamaIndex pins
openai<3, which cannot share the project's environment): ``python llamaindex_chat.py BASE_URL
API_KEY MODEL``. Prints one JSON object: what the answers and the stream looked like.
"""

from __future__ import annotations

import json
import sys

from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike


def main() -> None:
    base_url, api_key, model = sys.argv[1:4]
    llm = OpenAILike(
        model=model,
        api_base=base_url,
        api_key=api_key,
        is_chat_model=True,
        temperature=0,
        max_tokens=6,
        max_retries=0,
        timeout=60,
    )
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="hello"),
    ]
    answer = llm.chat(messages)
    chunks = [chunk.delta or "" for chunk in llm.stream_chat(messages)]
    completion = llm.complete("hello")
    print(
        json.dumps(
            {
                "chat": answer.message.content,
                "stream": chunks,
                "complete": completion.text,
            }
        )
    )


if __name__ == "__main__":
    main()
