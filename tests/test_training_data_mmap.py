"""Training reads the pre-processing cache through one memory-mapped uint8 array file per image set."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from unveil.models import build_model
from unveil.preprocess import cache as cache_module
from unveil.preprocess.cache import ImageArrayError, PreprocessSettings, array_path, image_array, preprocess_records
from unveil.training import TrainConfig, fit, fit_normalization, load_image_set

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=8, eval_batch_size=16)


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """24 small PNGs (class 1 brighter at the top, one file unreadable), pre-processed into a real cache."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for index in range(24):
        label = index % 2
        image = rng.integers(0, 140, size=(40, 40)).astype(np.uint8)
        if label:
            image[:20] += 100
        path = folder / f"{index}.png"
        Image.fromarray(image).save(path)
        rows.append({"record_id": f"r{index}", "path": str(path), "label": label})
    (folder / "broken.png").write_bytes(b"not a png")
    rows.append({"record_id": "broken", "path": str(folder / "broken.png"), "label": 0})
    records = pd.DataFrame(rows)
    cache = tmp_path_factory.mktemp("cache")
    report = preprocess_records(records, cache, PreprocessSettings(size=32, mask="none", equalize="none"))
    return records, report.manifest, cache


def load(records: pd.DataFrame, manifest: pd.DataFrame, cache: Path | None, size: int | None = 32):
    return load_image_set(records, manifest, records["label"].to_numpy(), ("neg", "pos"), size=size, cache=cache)


def test_mapped_set_holds_the_in_memory_pixels_and_is_the_file(cached):
    records, manifest, cache = cached
    mapped, in_memory = load(records, manifest, cache), load(records, manifest, None)
    assert mapped.images.dtype == torch.uint8 and mapped.images.shape == (24, 1, 32, 32)
    assert torch.equal(mapped.images, in_memory.images)
    assert torch.equal(mapped.labels, in_memory.labels)
    assert list(mapped.records["record_id"]) == list(in_memory.records["record_id"])
    assert len(mapped.skipped) == 1 and "broken.png" in mapped.skipped[0]
    files = list((cache / "arrays").glob("*.npy"))
    assert len(files) == 1 and files[0].stat().st_size == 128 + 24 * 32 * 32
    assert not list((cache / "arrays").glob(".*.tmp"))  # the temporary was moved into place
    if sys.platform.startswith("linux"):  # the images are mapped from the file, not read into memory
        assert str(files[0].resolve()) in Path("/proc/self/maps").read_text()
    # a size other than the cached one: resized the same way on both paths, in another file
    assert torch.equal(load(records, manifest, cache, size=16).images, load(records, manifest, None, size=16).images)
    assert len(list((cache / "arrays").glob("*.npy"))) == 2


def test_array_is_built_once_per_set_and_order(cached):
    records, manifest, cache = cached
    first = load(records, manifest, cache)
    path = next(p for p in (cache / "arrays").glob("*-24x32.npy"))
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)
    again = load(records, manifest, cache)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp  # reused, not rewritten
    assert torch.equal(first.images, again.images)
    reversed_records = records.iloc[::-1].reset_index(drop=True)
    flipped = load(reversed_records, manifest, cache)
    assert torch.equal(flipped.images, first.images.flip(0))  # another order is another set (another file)
    assert flipped.images.untyped_storage().data_ptr() != first.images.untyped_storage().data_ptr()


def test_tiny_training_is_identical_on_both_paths(cached, tmp_path):
    records, manifest, cache = cached
    results = {}
    for name, folder in (("mapped", cache), ("memory", None)):
        train = load(records.iloc[:18], manifest, folder)
        val = load(records.iloc[18:], manifest, folder)
        torch.manual_seed(TINY.seed)
        model = build_model("conv8", num_classes=2, width=TINY.width)
        results[name] = fit(model, train, val, TINY, tmp_path / name, normalization=fit_normalization(train.images),
                            resume=False)
    mapped, memory = results["mapped"], results["memory"]
    assert mapped.best_state.keys() == memory.best_state.keys()
    assert all(torch.equal(mapped.best_state[k], memory.best_state[k]) for k in mapped.best_state)
    timing = {"train_seconds", "train_images_per_second"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in mapped.history] == \
        [{k: v for k, v in h.items() if k not in timing} for h in memory.history]
    np.testing.assert_array_equal(mapped.val_probabilities, memory.val_probabilities)


def test_damaged_array_file_is_rebuilt(cached, caplog):
    records, manifest, cache = cached
    expected = load(records, manifest, None).images
    paths = list(load(records, manifest, None).records["record_id"].map(
        manifest.set_index("record_id")["cache_path"]))
    target = array_path(cache, paths, 32)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(target.read_bytes()[:500] if target.exists() else b"\x93NUMPY truncated")
    with caplog.at_level("WARNING", logger="unveil.preprocess.cache"):
        assert torch.equal(load(records, manifest, cache).images, expected)
    assert "damaged image array" in caplog.text
    assert target.stat().st_size == 128 + 24 * 32 * 32


def test_array_refuses_files_outside_the_cache_and_a_full_disk(cached, tmp_path, monkeypatch):
    records, manifest, cache = cached
    stray = tmp_path / "0.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(stray)
    with pytest.raises(ImageArrayError, match="not an image of the pre-processing cache"):
        image_array(tmp_path / "other-cache", [str(stray)], 8)
    paths = list(manifest.loc[manifest["status"] != "failed", "cache_path"])
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 1000})())
    with pytest.raises(ImageArrayError, match=r"needs 0\.1 MB, only 0\.0 MB free") as error:
        image_array(tmp_path / "full", paths, 64)
    assert str(tmp_path / "full" / "arrays") in str(error.value)
    assert not list((tmp_path / "full" / "arrays").glob("*.npy"))
