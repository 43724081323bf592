"""Uploaded files as the trainer's datasets: the Files API's records, in the trainer's terms."""

from __future__ import annotations

from typing import Final

from forgeline_gateway.files.service import FileService
from forgeline_gateway.fine_tuning.plan import DatasetFile
from forgeline_kit.datasets import DatasetFormat
from forgeline_proto.trainer.v1 import trainer_pb2

__all__ = ["UploadedDatasets"]

_FORMATS: Final = {
    DatasetFormat.ALPACA: trainer_pb2.DATASET_FORMAT_ALPACA,
    DatasetFormat.SHAREGPT: trainer_pb2.DATASET_FORMAT_SHAREGPT,
    DatasetFormat.PRETRAIN_TEXT: trainer_pb2.DATASET_FORMAT_PRETRAIN_TEXT,
    DatasetFormat.OPENAI_CHAT: trainer_pb2.DATASET_FORMAT_OPENAI_CHAT,
    DatasetFormat.OPENAI_PREFERENCE: trainer_pb2.DATASET_FORMAT_OPENAI_PREFERENCE,
}


class UploadedDatasets:
    """Resolves file ids through the Files API's service (the pipeline's `DatasetFiles`)."""

    def __init__(self, files: FileService) -> None:
        self.files = files

    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        resolved = await self.files.resolve(file_id, param=param)
        layout = resolved.layout
        return DatasetFile(
            file_id=resolved.id,
            source=resolved.ref,
            format=_FORMATS[layout.format],
            ranking=layout.ranking,
            columns=layout.columns.model_dump(exclude_none=True),
            tags=layout.tags.model_dump(exclude_none=True),
            records=layout.records,
        )
