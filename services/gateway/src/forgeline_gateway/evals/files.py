"""The rows of files uploaded with purpose ``evals`` (the Files API), for run data sources."""

from __future__ import annotations

import asyncio

from forgeline_gateway.evals.rows import InvalidRows, Row, read_rows
from forgeline_gateway.files.service import EVALS, FileService
from forgeline_kit.errors import InvalidArgument, NotFound

__all__ = ["FileRows"]


class FileRows:
    """Reads a file's rows back from the registry through the Files API's service."""

    def __init__(self, files: FileService) -> None:
        self.files = files

    async def rows(self, file_id: str, *, param: str) -> list[Row]:
        """The rows of `file_id`.

        Raises:
            InvalidArgument: no such file, or not of purpose ``evals``; names `param`.
            RegistryUnavailable: the registry cannot be reached (503).
        """
        try:
            record = await self.files.get(file_id)
        except NotFound:
            raise InvalidArgument(
                f"Invalid file ID '{file_id}' for '{param}': no such file; upload it with "
                f"POST /v1/files (purpose '{EVALS}').",
                field=param,
            ) from None
        if record.purpose != EVALS:
            raise InvalidArgument(
                f"File '{file_id}' has purpose '{record.purpose}', not '{EVALS}': upload the "
                f"rows with purpose '{EVALS}'.",
                field=param,
            )
        async with self.files.content(file_id) as (_, path):
            try:
                return await asyncio.to_thread(read_rows, path)
            except InvalidRows as error:  # checked at upload; only a changed file gets here
                raise InvalidArgument(
                    f"File '{file_id}' is not valid eval data:\n{error.listed()}", field=param
                ) from None
