"""Shared test helpers: where the real samples live, and small record tables built in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from unveil.data.records import build_records
from unveil.training import ImageSet

# `make test` runs two pytest workers on two cores: two OpenMP threads each would oversubscribe the
# cores, and oneDNN then runs 10-100x slower. One thread per worker process.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    """Path of a real sample under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data sample {path} not present")
    return path


def make_records(source: str, patients: dict[str, tuple[int | None, int]], finding_negative: str = "normal"):
    """A record table: ``patients`` maps patient id -> (covid label, number of images)."""
    rows = []
    for patient, (covid, count) in sorted(patients.items()):
        for index in range(count):
            finding = "covid" if covid == 1 else finding_negative if covid == 0 else "unknown"
            rows.append({"record_id": f"{source}/{patient}/{index}.png", "source": source,
                         "path": f"/data/{source}/{patient}/{index}.png", "patient_id": patient,
                         "covid": covid, "finding": finding, "source_finding": None, "view": "PA",
                         "source_view": "PA", "sex": None, "age": None, "mask_path": None})
    return build_records(rows)


def toy_set(n: int, seed: int, size: int = 32) -> ImageSet:
    """A toy training set: images whose upper half is brighter for class 1, learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 160, size=(n, 1, size, size))
    images[labels == 1, :, : size // 2] += 80
    records = pd.DataFrame({"record_id": [f"toy/{seed}/{i}" for i in range(n)], "source": "toy",
                            "patient_id": [str(i) for i in range(n)]})
    return ImageSet(torch.from_numpy(images.astype(np.uint8)), torch.as_tensor(labels), records, ("neg", "pos"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A small conv8 classifier bundle (untrained weights: these tests check handling, not accuracy)."""
    import torch

    from unveil.models import build_model
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training.bundle import save_bundle

    torch.manual_seed(0)
    model = build_model("conv8", num_classes=2, width=0.25)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "model", model, width=0.25, classes=["covid-", "covid+"],
                       positive_class="covid+", image_size=32, preprocess=PreprocessSettings(size=32),
                       normalization=(120.0, 60.0))
