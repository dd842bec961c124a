"""Pre-processing transforms, mask post-processing, segmentation metrics: tiny exact arrays."""

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from unveil.segmentation.metrics import dice, hausdorff95, iou, mask_figures
from unveil.segmentation.postprocess import clean_lung_mask, fill_holes, keep_largest_components
from unveil.transforms import (
    ApplyLungMask,
    EqualizeHistogram,
    NormalizeIntensity,
    Resize,
    apply_lung_mask,
    blur_mask,
    clahe,
    equalize_histogram,
    normalize_intensity,
    paper_pipeline,
    resize_mask,
)


def ramp(n=32, power=3.0):
    return (np.linspace(0, 1, n * n, dtype=np.float32).reshape(n, n)) ** power


def test_equalization_flattens_the_histogram_and_keeps_order():
    image = ramp()
    equalized = equalize_histogram(image)
    assert equalized.min() == 0.0 and equalized.max() == pytest.approx(1.0)
    assert np.all(np.diff(equalized.ravel()) >= -1e-6)  # monotonic: order preserved
    # a skewed ramp becomes (nearly) uniform: each quarter of the range holds about a quarter
    counts, _ = np.histogram(equalized, bins=4, range=(0, 1))
    assert counts.min() > 0.15 * equalized.size


def test_equalization_within_a_mask_uses_the_mask_histogram():
    image = ramp()
    mask = np.zeros_like(image, dtype=bool)
    mask[16:] = True  # the bright half
    inside = equalize_histogram(image, mask)
    assert inside[16:].min() == pytest.approx(0.0, abs=0.02)  # the mask's darkest value maps to ~0
    assert inside[:16].max() <= 0.02  # everything darker than the mask stays at the bottom


# Equalisation worked by hand, as MONAI's HistogramNormalize computes it: a histogram of ``bins`` equal bins over
# the range of the (masked) values, its cumulative counts rescaled to [0, 1], then each pixel linearly
# interpolated between the bin centres (clamped outside the first and last centre).
EQUALIZED_BY_HAND = {
    # 4 bins over [0, 1], centres 1/8 3/8 5/8 7/8; counts 2 1 1 2, cumulative 2 3 4 6 -> 0 1/4 1/2 1.
    # 0.25 is halfway between the first two centres (0 and 1/4: 1/8), 0.5 halfway between the next two (3/8).
    "4 bins": ({"bins": 4}, [[0.0, 0.0, 0.25], [0.5, 1.0, 1.0]], None,
               [[0.0, 0.0, 0.125], [0.375, 1.0, 1.0]]),
    # 256 bins (the default): counts 2 in bins 0, 128 (0.5 opens it) and 255, cumulative rescaled: 0 up to bin
    # 127, 1/2 from bin 128, 1 at 255; 0.5 is halfway between the centres 127.5/256 (0) and 128.5/256 (1/2).
    "256 bins": ({}, [[0.0, 0.0, 0.5], [0.5, 1.0, 1.0]], None,
                 [[0.0, 0.0, 0.25], [0.25, 1.0, 1.0]]),
    # the histogram of the masked 0, 0.5, 1, 1 only (4 bins over [0, 1]): counts 1 0 1 2, cumulative 1 1 2 4 ->
    # 0 0 1/3 1; the unmasked 0.25 falls between two centres at 0, the unmasked 0.75 halfway from 1/3 to 1.
    "mask": ({"bins": 4}, [[0.0, 0.25, 0.5], [0.75, 1.0, 1.0]], [[1, 0, 1], [0, 1, 1]],
             [[0.0, 0.0, 1 / 6], [2 / 3, 1.0, 1.0]]),
}


@pytest.mark.parametrize("to_input", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", list(EQUALIZED_BY_HAND))
def test_equalization_equals_the_hand_computed_array(case, to_input):
    options, image, mask, expected = EQUALIZED_BY_HAND[case]
    image = to_input(np.array(image, dtype=np.float32))
    mask = None if mask is None else to_input(np.array(mask, dtype=bool))
    eps = np.finfo(np.float32).eps
    out = equalize_histogram(image, mask, **options)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, np.array(expected, dtype=np.float32), rtol=0, atol=eps)
    sample = EqualizeHistogram(within_mask=mask is not None, **options)({"image": image, "mask": mask})
    np.testing.assert_allclose(sample["image"], np.array(expected, dtype=np.float32), rtol=0, atol=eps)
    assert sample["mask"] is mask  # the dictionary twin passes the mask through untouched


def test_equalization_within_an_empty_mask_uses_the_whole_image():
    image = np.array([[0.0, 0.0, 0.25], [0.5, 1.0, 1.0]], dtype=np.float32)
    for mask in (np.zeros((2, 3), bool), torch.zeros((2, 3), dtype=torch.bool)):
        out = EqualizeHistogram(within_mask=True, bins=4)({"image": image, "mask": mask})["image"]
        assert np.array_equal(out, np.array([[0.0, 0.0, 0.125], [0.375, 1.0, 1.0]], dtype=np.float32))


def test_clahe_range_and_type():
    out = clahe(ramp(64))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_blurred_mask_softens_only_near_the_edge():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    soft = blur_mask(mask, 3)
    assert soft[20, 20] == pytest.approx(1.0, abs=5e-3) and soft[0, 0] == pytest.approx(0.0, abs=1e-3)
    assert 0.3 < soft[20, 10] < 0.7  # on the edge: about half
    applied = apply_lung_mask(np.ones((40, 40), np.float32), mask, blur_radius=0)
    assert np.array_equal(applied, mask.astype(np.float32))
    assert blur_mask(mask.astype(np.uint8) * 255, 0).max() == 1.0


def test_normalize_and_resize():
    assert normalize_intensity(np.array([[2.0, 4.0]])).tolist() == [[0.0, 1.0]]
    assert normalize_intensity(np.full((2, 2), 3.0)).sum() == 0
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    assert resize_mask(mask, 4)[:, :2].all() and not resize_mask(mask, 4)[:, 2:].any()


def test_paper_pipeline_composes_on_image_and_mask():
    image, mask = ramp(64), np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    out = paper_pipeline(32, blur_radius=1)({"image": image, "mask": mask})  # a callable Compose
    assert out["image"].shape == (32, 32) and out["mask"].shape == (32, 32)
    assert out["image"][0, 0] == 0.0 and out["image"].max() == pytest.approx(1.0)
    no_mask = paper_pipeline(32, mask=False, equalize="none")({"image": image})
    assert no_mask["image"].shape == (32, 32)
    with pytest.raises(ValueError, match="needs a 'mask'"):
        ApplyLungMask()({"image": image})
    with pytest.raises(ValueError, match="equalize must be"):
        paper_pipeline(32, equalize="fancy")
    steps = Compose([Resize(16), EqualizeHistogram(within_mask=True), NormalizeIntensity()])
    assert steps({"image": image, "mask": np.zeros((64, 64), bool)})["image"].shape == (16, 16)  # empty mask: global


def test_postprocess_keeps_two_lungs_and_fills_holes():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 3:12] = True  # right lung
    mask[5:25, 17:27] = True  # left lung
    mask[1, 1] = True  # speck
    mask[10, 6] = False  # hole
    cleaned = clean_lung_mask(mask)
    assert not cleaned[1, 1] and cleaned[10, 6]
    assert cleaned.sum() == 20 * 9 + 20 * 10
    assert keep_largest_components(np.zeros((5, 5), bool)).sum() == 0
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert fill_holes(ring)[3, 3]


def test_metrics_against_hand_computed_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 pixels
    b[:, 2:6] = True  # 40 pixels, 30 shared
    assert dice(a, b) == pytest.approx(2 * 30 / 90)
    assert iou(a, b) == pytest.approx(30 / 60)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert hausdorff95(a, a) == 0.0 and np.isnan(hausdorff95(a, np.zeros_like(a)))
    shifted = np.roll(a, 1, axis=1)
    assert hausdorff95(a, shifted, size=10) == pytest.approx(1.0)
    assert set(mask_figures(a, b)) == {"dice", "iou", "hd95_px256"}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_dice_accepts_numpy_and_torch(as_tensor):
    a = np.eye(4, dtype=bool)
    value = dice(torch.from_numpy(a).numpy() if as_tensor else a, a)
    assert value == 1.0
