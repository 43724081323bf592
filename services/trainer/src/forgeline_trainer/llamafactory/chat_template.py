"""Check a LLaMA-Factory ``template`` against the base model's own chat template.

Training formats each conversation with LLaMA-Factory's template; inference (llama-server,
vLLM, Ollama) formats it with the tokenizer's ``chat_template``. When the two disagree the model
learns one format and is prompted in another — typically it never emits the stop token inference
waits for, and "generation never stops". So one probe conversation is rendered both ways, exactly
as training and inference would, and any difference is refused with both renderings shown.

Needs ``transformers`` and ``llamafactory``, whose first import takes several seconds (torch,
peft, datasets): the check runs in the job's VALIDATING state, not in SubmitJob, and the service
imports them once at start with :func:`preload_in_background`, so a job does not pay for it.
"""

from __future__ import annotations

import copy
import difflib
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from forgeline_kit.errors import InvalidArgument

log = logging.getLogger(__name__)

#: A conversation both renderings must agree on (no system prompt: not every template has one).
PROBE: list[dict[str, str]] = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
]


class TemplateMismatch(InvalidArgument):
    """The training template does not format conversations the way the tokenizer does."""

    #: The contract's ``OperationError.code`` for a job that fails this way.
    error_code: ClassVar[str] = "template_mismatch"


def preload_in_background() -> threading.Thread:
    """Import what :func:`check_chat_template` needs in a daemon thread and return it.

    A job validated meanwhile simply waits on Python's import lock for the rest of the import;
    a daemon thread keeps a service that is stopped at once from waiting for it.
    """

    def preload() -> None:
        started = time.monotonic()
        try:
            import llamafactory.data.template  # noqa: F401
            import transformers  # noqa: F401
        except Exception:  # the check itself reports a broken install, with the job
            log.exception("preloading the chat-template check failed")
            return
        log.info("chat-template check ready in %.1f s", time.monotonic() - started)

    thread = threading.Thread(target=preload, name="preload-chat-template", daemon=True)
    thread.start()
    return thread


def check_chat_template(model_dir: Path, template: str) -> None:
    """Refuse ``template`` unless it renders :data:`PROBE` exactly as the tokenizer in
    ``model_dir`` does. A tokenizer without a chat template passes: the export writes
    LLaMA-Factory's template into it, so training and inference agree by construction.

    Raises:
        InvalidArgument: ``template`` is not a LLaMA-Factory template.
        TemplateMismatch: the renderings differ.
    """
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoTokenizer

    if template not in TEMPLATES:
        close = difflib.get_close_matches(template, TEMPLATES.keys(), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InvalidArgument(
            f"unknown LLaMA-Factory template '{template}'{hint}", field="template"
        )
    tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not isinstance(tokenizer.chat_template, str):
        return
    inference_prompt = tokenizer.apply_chat_template(
        PROBE[:1], tokenize=False, add_generation_prompt=True
    )
    inference_full = tokenizer.apply_chat_template(PROBE, tokenize=False)

    # Training mutates the tokenizer (LLaMA-Factory may replace its eos token): work on a copy.
    trained = copy.deepcopy(tokenizer)
    llamafactory_template = copy.deepcopy(TEMPLATES[template])
    llamafactory_template.fix_special_tokens(trained)
    prompt_ids, response_ids = llamafactory_template.encode_oneturn(trained, PROBE)
    training_prompt = trained.decode(prompt_ids)
    training_full = training_prompt + trained.decode(response_ids)

    if training_prompt == inference_prompt and training_full == inference_full:
        return
    raise TemplateMismatch(
        f"template '{template}' does not match the base model's chat template, so the trained "
        "model would be prompted in a format it never saw and may never stop generating.\n"
        f"  training renders:  {training_full!r}\n"
        f"  inference renders: {inference_full!r}\n"
        "Set 'template' to the LLaMA-Factory template of this model family (for a ChatML "
        "tokenizer, 'chatml').",
        field="template",
    )
