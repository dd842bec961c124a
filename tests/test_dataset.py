"""A PyTorch dataset over the record table (unveil.preprocess.dataset): samples as dicts, the cache's images."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from unveil.data.sources import load_source
from unveil.preprocess.cache import PreprocessSettings, load_cached, preprocess_records
from unveil.preprocess.dataset import DatasetRecordsError, RecordDataset
from unveil.segmentation import default_model_path
from unveil.synth.config import load_config
from unveil.synth.generate import generate


@pytest.fixture(scope="module")
def lungs(tmp_path_factory):
    """A small Shenzhen-layout set with true masks (synthetic): 6 images."""
    out = tmp_path_factory.mktemp("bench")
    config = load_config("clean")
    lungs = replace(config.datasets["lungs"], classes={"normal": 6})
    generate(replace(config, image_size=64, datasets={"lungs": lungs}), out, seed=0)
    return load_source("shenzhen", out / "lungs")


@pytest.mark.parametrize("mask", ["none", "truth"])
def test_samples_are_the_cached_images_with_their_record(lungs, tmp_path, mask):
    settings = PreprocessSettings(size=32, mask=mask)
    dataset = RecordDataset(lungs, settings)
    assert len(dataset) == len(lungs.records) == 6
    sample = dataset[2]
    assert sample["idx"] == 2 and sample["image"].shape == (1, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == torch.bool
    assert float(sample["image"].min()) >= 0 and float(sample["image"].max()) <= 1
    record = lungs.records.iloc[2]
    assert sample["record_id"] == record["record_id"] and sample["patient_id"] == record["patient_id"]
    assert sample["meta"]["path"] == record["path"] and sample["label"] in (-1, 0, 1)
    assert bool(sample["mask"].all()) is (mask == "none")  # the dataset's own lung mask, or none

    report = preprocess_records(lungs.records, tmp_path / "cache", settings)  # what training reads
    cached = report.manifest.set_index("record_id").loc[record["record_id"], "cache_path"]
    np.testing.assert_allclose(sample["image"][0].numpy(), load_cached(cached), atol=1 / 65535 + 1e-6)  # 16-bit PNG


def test_a_data_loader_batches_images_labels_and_metadata(lungs):
    loader = DataLoader(RecordDataset(lungs, PreprocessSettings(size=32, mask="none")), batch_size=4)
    batches = list(loader)
    assert [len(b["idx"]) for b in batches] == [4, 2]
    first = batches[0]
    assert first["image"].shape == (4, 1, 32, 32) and first["label"].dtype == torch.int64
    assert isinstance(first["meta"]["view"], list) and all(isinstance(v, str) for v in first["meta"]["age"])


@pytest.mark.skipif(not default_model_path().is_file(), reason="shipped lung model not built")
def test_segmented_lungs_load_lazily_and_never_travel_to_workers(lungs):
    dataset = RecordDataset(lungs, PreprocessSettings(size=64, mask="segment"))
    sample = dataset[0]
    assert 0.05 < float(sample["mask"].float().mean()) < 0.8  # the lung model found lungs
    assert dataset._segmenter is not None and pickle.loads(pickle.dumps(dataset))._segmenter is None


def test_not_a_record_table_is_refused():
    with pytest.raises(DatasetRecordsError, match="path"):
        RecordDataset(pd.DataFrame({"record_id": ["a"], "source": ["x"], "patient_id": ["1"]}))
