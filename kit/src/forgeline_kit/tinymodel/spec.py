"""The shape of the tiny model and the tokens its chat format relies on.

The numbers are chosen for the tools downstream, not for quality: llama.cpp's k-quants (Q4_K_M
and friends) quantize rows in blocks of 256, so every weight row width (hidden and intermediate
size) must be a multiple of 256; two layers keep CPU fine-tuning to seconds.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "DEFAULT_SEED",
    "EOS_TOKEN",
    "IM_END",
    "IM_START",
    "LLAMAFACTORY_TEMPLATE",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "TinyModelSpec",
]

DEFAULT_SEED: Final = 1234

UNK_TOKEN: Final = "<unk>"
BOS_TOKEN: Final = "<s>"
EOS_TOKEN: Final = "</s>"
PAD_TOKEN: Final = "<pad>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"

# Token ids are fixed by position: SentencePiece puts unk/bos/eos/pad first and the control
# symbols right after them, in this order.
SPECIAL_TOKENS: Final = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)

# ChatML, rendered exactly as LLaMA-Factory's `chatml` template encodes a conversation: system,
# user, assistant and tool turns each as `<|im_start|>ROLE\nCONTENT<|im_end|>\n`, then the
# generation prompt `<|im_start|>assistant\n`; no default system prompt and no BOS. llama.cpp
# recognises this template too. If training and serving disagree, generation never stops.
#
# Plus what serving needs for tool calling, in the Hermes 2 Pro / Qwen 2.5 format: with `tools`
# the function signatures go first in a system turn (after the system prompt, if any), and an
# assistant turn with `tool_calls` writes each call as `<tool_call>\n{"name": ..., "arguments":
# ...}\n</tool_call>`. llama.cpp derives its tool-call parser and grammar from exactly this
# (`/props` reports `supports_tools` and `supports_tool_calls`). Conversations without tools or
# tool calls render byte for byte as before, which is what LLaMA-Factory's `chatml` agrees on; it
# has no tool format of its own (it would train ReAct-style "Action:" lines), so tool data is not
# trained in this format.
CHATML_TEMPLATE: Final = (
    "{% if tools is defined and tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}"
    "{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{% endif %}"
    "{% for message in messages %}"
    # The system prompt went into the tools turn above.
    "{% if loop.first and message['role'] == 'system' and tools is defined and tools %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] is defined "
    "and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant' }}"
    "{% if message['content'] %}{{ '\\n' + message['content'] }}{% endif %}"
    "{% for tool_call in message['tool_calls'] %}"
    "{% if tool_call['function'] is defined %}"
    "{% set tool_call = tool_call['function'] %}"
    "{% endif %}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' + tool_call['name'] + '\", \"arguments\": ' }}"
    # OpenAI sends the arguments as a JSON string, transformers callers often as an object.
    "{% if tool_call['arguments'] is string %}{{ tool_call['arguments'] }}"
    "{% else %}{{ tool_call['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The LLaMA-Factory template (`template:` in its YAML) that formats text exactly as CHATML_TEMPLATE.
LLAMAFACTORY_TEMPLATE: Final = "chatml"


class TinyModelSpec(BaseModel):
    """Architecture and tokenizer settings of a tiny Llama model.

    The defaults are what the tests and the demo use; other values are for experiments.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(2048, ge=512, le=32000)
    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(512, gt=0)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(2048, ge=64)
    rms_norm_eps: float = 1e-5
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _fits_the_tools(self) -> TinyModelSpec:
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 256:
                raise ValueError(f"{name} must be a multiple of 256 for llama.cpp's k-quants")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self

    @property
    def bos_token_id(self) -> int:
        return SPECIAL_TOKENS.index(BOS_TOKEN)

    @property
    def eos_token_id(self) -> int:
        """The end of a chat turn, where generation stops: ``<|im_end|>``."""
        return SPECIAL_TOKENS.index(IM_END)

    @property
    def pad_token_id(self) -> int:
        return SPECIAL_TOKENS.index(PAD_TOKEN)
