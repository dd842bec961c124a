"""Which dataset to read: a loader name, its root folder and its options (``SOURCE:PATH``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from unveil.data.sources import load_source
from unveil.errors import UnveilError


class DataSpecError(UnveilError, ValueError):
    """A dataset reference is not ``SOURCE:PATH`` (the message shows the text given)."""


@dataclass(frozen=True)
class DataSpec:
    """One dataset to read: loader name, root folder, loader options."""

    source: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", str(self.root))

    @classmethod
    def parse(cls, text: str, options: dict[str, Any] | None = None) -> DataSpec:
        source, colon, root = text.partition(":")
        if not colon or not source or not root:
            raise DataSpecError(f"expected SOURCE:PATH, got {text!r}")
        return cls(source.strip(), root.strip(), dict(options or {}))

    def load(self) -> pd.DataFrame:
        return load_source(self.source, self.root, **self.options).records
