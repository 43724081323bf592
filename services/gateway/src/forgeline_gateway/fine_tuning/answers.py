"""What the pipeline's adapter check reads and asks: prompts of a job's uploaded file (the Files
API) and greedy answers of deployed models (a `Sampler` over the gateway's own proxy, so a
request is routed, checked and counted as a client's is, the adapter selection of a shared base
included, under the endpoint label `METRICS_LABEL`)."""

from __future__ import annotations

import asyncio

from forgeline_gateway.evals.sampling import Sampler
from forgeline_gateway.files.service import FileService
from forgeline_gateway.fine_tuning.agreement import MAX_TOKENS, Messages, prompts_of

__all__ = ["METRICS_LABEL", "ServedAnswers"]

#: The ``endpoint`` label of the check's requests in the gateway's metrics.
METRICS_LABEL = "adapter_check"


class ServedAnswers:
    """Prompts from uploaded files, greedy answers from deployments (the pipeline's
    `AdapterCheck`)."""

    def __init__(self, files: FileService, sampler: Sampler) -> None:
        """
        Args:
            sampler: chat completions from the gateway's deployments (the gateway wires in its
                proxy, counting them under `METRICS_LABEL`).
        """
        self.files = files
        self.sampler = sampler

    async def prompts(self, file_id: str, limit: int) -> list[Messages]:
        """Up to `limit` distinct prompts of the fine-tuning file `file_id`."""
        layout = (await self.files.resolve(file_id)).layout
        async with self.files.content(file_id) as (_, path):
            return await asyncio.to_thread(
                prompts_of,
                path,
                layout.format,
                columns=layout.columns,
                tags=layout.tags,
                limit=limit,
            )

    async def answer(self, model: str, messages: Messages) -> str:
        """The deployment `model`'s greedy answer to `messages`."""
        params = {"temperature": 0, "seed": 0, "max_tokens": MAX_TOKENS}
        answer = await self.sampler.complete(model, messages, params)
        return answer.text
