"""A PyTorch dataset over the record table: any loaded source, composition or split, with the paper's chain.

Used the way torchxrayvision's datasets are: index it, or wrap it in a ``torch.utils.data.DataLoader``.
Each sample is a dictionary (the MONAI/torchxrayvision convention, so masks and metadata ride along)::

    {"idx": 3, "image": float32 tensor 1 x S x S in [0, 1], "mask": bool tensor S x S,
     "label": 1 (COVID+) / 0 (COVID-) / -1 (unknown), "record_id": ..., "source": ..., "patient_id": ...,
     "meta": {"finding": ..., "view": ..., "sex": ..., "age": ..., ...}}

``meta`` holds the record's other fields (``path``, ``finding``, ``view``, a composition's ``split``...) as
strings ("" when missing), so that the default collate function batches them as lists. The image is what the
pre-processing cache stores and what a model bundle with the same
:class:`~unveil.preprocess.cache.PreprocessSettings` is trained on (one function does both:
:func:`~unveil.preprocess.cache.prepare_image`). With ``mask="segment"`` the lung model is loaded lazily in each
process (DataLoader workers included), never pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from unveil.errors import UnveilError
from unveil.io import DEFAULT_MAX_PIXELS
from unveil.preprocess.cache import PreprocessSettings, prepare_image, resolve_settings
from unveil.segmentation import LungSegmenter

#: Record fields given at the top level of a sample; the others go to ``meta``.
TOP_LEVEL = ("record_id", "source", "patient_id")


class DatasetRecordsError(UnveilError, ValueError):
    """The records given to :class:`RecordDataset` are not a record table (a column is missing)."""


class RecordDataset(torch.utils.data.Dataset):
    """Samples of ``records`` (a record table, or anything with a ``records`` table: a :class:`SourceLoad`)
    pre-processed with ``settings`` (default: 256 px, global equalization, segmented lungs, 3 px blur)."""

    def __init__(self, records: pd.DataFrame | Any, settings: PreprocessSettings = PreprocessSettings(), *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        table = records.records if hasattr(records, "records") else records
        missing = [c for c in ("path", *TOP_LEVEL) if c not in table]
        if missing:
            raise DatasetRecordsError(f"not a record table: column(s) {', '.join(missing)} missing")
        self.records = table.reset_index(drop=True)
        self.settings = resolve_settings(settings)
        self.max_pixels = max_pixels
        self._segmenter: LungSegmenter | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers load their own lung model
        return {**self.__dict__, "_segmenter": None}

    def segmenter(self) -> LungSegmenter | None:
        if self.settings.mask == "segment" and self._segmenter is None:
            self._segmenter = LungSegmenter.load(self.settings.model)
        return self._segmenter

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.records.iloc[index]
        truth = row.get("mask_path")
        image, mask = prepare_image(row["path"], truth if isinstance(truth, str) else None, self.settings,
                                    self.segmenter(), max_pixels=self.max_pixels)
        covid = row.get("covid")
        return {"idx": int(index), "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)),
                "label": -1 if covid is None or pd.isna(covid) else int(covid),
                **{name: str(row[name]) for name in TOP_LEVEL},
                "meta": {name: _text(row[name]) for name in row.index if name not in (*TOP_LEVEL, "covid")}}


def _text(value: Any) -> str:
    """A record field as text for batching: "" when missing."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


__all__ = ["DatasetRecordsError", "RecordDataset"]

