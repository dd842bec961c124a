"""Hostile inputs, round 3 (issue 25), classes 1 and 5: every external value read once and checked, and no
unbounded work from a tiny input.

1. Header and field values: every numeric DICOM element goes through :func:`unveil.io.dicom.dicom_number`
   (an unparsable or out-of-range value is an ImageReadError naming the file and the element, and the file is
   skipped while the rest of the folder proceeds); ``bundle.json`` and YAML documents are checked for their
   top-level type, nesting depth and number sizes (:mod:`unveil.documents`).
5. Every YAML the project reads goes through :func:`unveil.documents.load_yaml_text`: a size cap before
   parsing, and limits on aliases, expanded nodes and depth while composing.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import unveil
from test_hostile import one_line_error, radiograph, save_png, tree_hashes
from unveil.cli import app
from unveil.documents import MAX_ALIASES, MAX_DEPTH, DocumentError, load_yaml_text
from unveil.errors import UnveilError
from unveil.io import ImageReadError, read_image, write_dicom
from unveil.io.dicom import NUMERIC_ELEMENTS, TEXT_ELEMENTS

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
runner = CliRunner()
STORED = np.random.default_rng(0).integers(0, 4000, (48, 48)).astype(np.uint16)


def hostile_dicom(path: Path, keyword: str, value: str | int) -> Path:
    """A valid DICOM (the project's writer) whose element ``keyword`` is replaced by ``value``: text is stored
    with a text VR (LO), as a careless exporter writes it, so the reader meets the raw text; an int with the
    element's binary VR (US)."""
    import pydicom

    write_dicom(path, STORED, window_center=2000, window_width=4000, rescale_slope=1.0, rescale_intercept=0.0)
    dataset = pydicom.dcmread(path)
    if keyword in dataset:
        del dataset[keyword]
    dataset.add_new(keyword, "LO" if isinstance(value, str) else "US", value)
    dataset.save_as(path)
    return path


# ----------------------------------------------------------------- 1. DICOM header values read once, checked

# A finite-or-not number in a rescale or window (1e400, inf) is not here: such a header would blank the image,
# so it is read without it and says so (tests/test_hostile_values.py::test_data_check_warns_about_a_header_...).
HOSTILE_ELEMENTS = [("NumberOfFrames", "1A"), ("WindowCenter", "abc"), ("RescaleSlope", "x"),
                    ("SamplesPerPixel", 3), ("Rows", "abc"), ("WindowWidth", "1e4e4"),
                    ("RescaleIntercept", "--1"), ("BitsStored", 64), ("PixelRepresentation", 7),
                    ("PhotometricInterpretation", "MONOCHROME2\\RGB")]
FOLDER_ELEMENTS = HOSTILE_ELEMENTS[:4]  # the hostile DICOMs of hostile_folder, in its order


@pytest.mark.parametrize("keyword, value", HOSTILE_ELEMENTS)
def test_unusable_dicom_element_is_one_error_naming_file_and_element(tmp_path, keyword, value):
    path = hostile_dicom(tmp_path / "hostile.dcm", keyword, value)
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and keyword in message


@FAST
@given(keyword=st.sampled_from(sorted(NUMERIC_ELEMENTS) + list(TEXT_ELEMENTS)),
       value=st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=16),
                       st.integers(0, 65535), st.sampled_from(["1A", "nan", "-inf", "1e400", "3", "-1", "1\\x"])))
def test_any_dicom_element_value_reads_or_is_refused(tmp_path_factory, keyword, value):
    path = hostile_dicom(tmp_path_factory.mktemp("d") / "x.dcm", keyword, value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = read_image(path)
    except ImageReadError as error:  # any other exception is a bug and fails the test
        assert "\n" not in str(error) and str(path) in str(error)
        return
    assert image.pixels.ndim == 2 and np.isfinite(image.pixels).all()
    assert image.pixels.min() >= 0 and image.pixels.max() <= 1


def hostile_folder(root: Path) -> tuple[list[str], list[str]]:
    """Good files (3 PNGs and a DICOM) beside DICOMs with unusable elements; (good names, hostile names)."""
    good = [save_png(root / f"good{i}.png", radiograph(i)).name for i in range(3)]
    good.append(write_dicom(root / "good.dcm", STORED).name)
    bad = [hostile_dicom(root / f"bad_{keyword}.dcm", keyword, value).name
           for keyword, value in FOLDER_ELEMENTS]
    return good, bad


def test_predict_skips_a_hostile_dicom_and_scores_every_good_file(bundle, tmp_path):
    good, bad = hostile_folder(tmp_path / "in")
    before = tree_hashes(tmp_path / "in")
    result = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                 "--no-evidence"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    scored = table[table["probability"].notna()]["file"].map(lambda p: Path(p).name)
    assert sorted(scored) == sorted(good)
    for name, (keyword, _) in zip(bad, FOLDER_ELEMENTS, strict=True):
        lines = [line for line in result.output.splitlines() if name in line]
        assert len(lines) == 1 and keyword in lines[0], result.output
    assert tree_hashes(tmp_path / "in") == before


def test_segment_skips_a_hostile_dicom_and_masks_every_good_file(tmp_path):
    good, bad = hostile_folder(tmp_path / "in")
    result = runner.invoke(app, ["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1), result.output
    masks = sorted(p.name for p in (tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == len(good) and all(any(m.startswith(Path(n).stem + "_") for m in masks) for n in good), \
        (masks, result.output)
    for name, (keyword, _) in zip(bad, FOLDER_ELEMENTS, strict=True):
        assert any(name in line and keyword in line for line in result.output.splitlines()), result.output


def test_data_check_names_a_hostile_dicom_and_reads_every_good_file(tmp_path):
    good, bad = hostile_folder(tmp_path / "in")
    lines = ["path,patient,label"] + [f"{tmp_path / 'in' / n},p{i},{'positive' if i % 2 else 'normal'}"
                                      for i, n in enumerate(good + bad)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "check", "hospital-csv", str(tmp_path / "labels.csv"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["records"] == len(good) + len(bad)
    unreadable = {Path(issue["path"]).name: issue["problem"] for issue in document["unreadable"]}
    assert set(unreadable) == set(bad)
    for name, (keyword, _) in zip(bad, FOLDER_ELEMENTS, strict=True):
        assert keyword in unreadable[name]


# ------------------------------------------------------------ 1. bundle.json: top-level type, depth, numbers


def rewrite_bundle(source: Path, target: Path, text: str) -> Path:
    import shutil

    shutil.copytree(source, target)
    (target / "bundle.json").write_text(text)
    return target


def bundle_text(bundle: Path, field: str, raw: str) -> str:
    """The bundle's description with ``field``'s value replaced by the raw JSON text ``raw``."""
    description = json.loads((bundle / "bundle.json").read_text())
    description[field] = "@@"
    return json.dumps(description).replace('"@@"', raw)


@pytest.mark.parametrize("case, field", [("list", None), ("deep", "provenance"), ("huge", "num_classes"),
                                         ("digits", "image_size"), ("number", None)])
def test_hostile_bundle_json_is_one_error_naming_it(bundle, tmp_path, case, field):
    from unveil.training.bundle import BundleError, load_bundle

    texts = {"list": "[1, 2, 3]", "deep": bundle_text(bundle, "provenance", "[" * 100_000 + "]" * 100_000),
             "huge": bundle_text(bundle, "num_classes", str(10**400)),
             "digits": bundle_text(bundle, "image_size", "9" * 5000), "number": "12"}
    edited = rewrite_bundle(bundle, tmp_path / "model", texts[case])
    with pytest.raises(BundleError) as caught:
        load_bundle(edited)
    message = str(caught.value)
    assert "\n" not in message and "bundle.json" in message and (field is None or field in message
                                                                 or case in ("deep", "digits"))
    inputs = save_png(tmp_path / "in" / "a.png", radiograph())
    result = runner.invoke(app, ["predict", str(edited), str(inputs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    one_line_error(result, "bundle.json")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**500), 10**500) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12)


@FAST
@given(field=st.sampled_from(["num_classes", "image_size", "width", "normalization", "threshold", "provenance",
                              "classes", "preprocess", "collapse"]),
       value=st.one_of(st.integers(-(10**500), 10**500), JSON_VALUES),
       depth=st.one_of(st.just(0), st.integers(1, 5000)))
def test_any_nesting_or_integer_in_bundle_json_loads_or_is_named(bundle, tmp_path_factory, field, value, depth):
    from unveil.training.bundle import BundleError, load_bundle

    raw = "[" * depth + json.dumps(value) + "]" * depth
    edited = rewrite_bundle(bundle, tmp_path_factory.mktemp("b") / "model", bundle_text(bundle, field, raw))
    try:
        loaded = load_bundle(edited)
    except BundleError as error:
        assert "\n" not in str(error) and str(edited) in str(error)
        return
    assert 16 <= loaded.image_size <= 4096 and len(loaded.classes) == loaded.model.num_classes
    assert math.isfinite(loaded.threshold)


# ------------------------------------------------------------- 1. experiment files: numbers, NUL, nesting


def experiment_with(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(f"name: hostile\n{line}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("line, problem", [
    ("seeds: [" + "9" * 5000 + "]", "number of 5000 characters"),
    ('name2: "a\\0b"', "NUL"),
    ("grid: " + "[" * 2000 + "]" * 2000, "nested deeper"),
    ("grid: {" + "a: {" * 2000 + "}" * 2001, "nested deeper"),
])
def test_hostile_experiment_values_are_one_error(tmp_path, line, problem):
    from unveil.experiments import ExperimentError, load_experiment

    path = experiment_with(tmp_path, line)
    with pytest.raises(ExperimentError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and (problem is None or problem in message)
    result = runner.invoke(app, ["reproduce", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    one_line_error(result, str(path))


# ------------------------------------------------------------------- 5. bounded work from a tiny YAML

def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs document: each level repeats the one below ``width`` times (494 bytes at 9 x 9)."""
    lines = ['a0: &a0 ["lol"' + ', "lol"' * (width - 1) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _readers(tmp_path: Path):
    """Every YAML the project reads from a user's file, as (name, call on a path)."""
    from unveil.cli.train import _train_config
    from unveil.data.compose import load_recipes
    from unveil.experiments import load_experiment
    from unveil.synth.config import load_config

    return [("experiment", load_experiment), ("recipes", load_recipes), ("synth config", load_config),
            ("train --config", lambda path: _train_config({}, path, None))]


@pytest.mark.parametrize("reader", range(4))
def test_an_alias_bomb_is_refused_fast_by_every_yaml_reader(tmp_path, reader):
    name, read = _readers(tmp_path)[reader]
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(), encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(UnveilError) as caught:
        read(path)
    assert time.perf_counter() - start < 1.0, name
    message = str(caught.value)
    assert str(path) in message and "limit" in message and "\n" not in message, (name, message)


@pytest.mark.parametrize("reader", range(4))
def test_an_oversized_yaml_file_is_refused_before_parsing(tmp_path, monkeypatch, reader):
    import unveil.documents

    name, read = _readers(tmp_path)[reader]
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200, encoding="utf-8")
    monkeypatch.setattr(unveil.documents, "MAX_DOCUMENT_BYTES", 1000)
    with pytest.raises(UnveilError, match="over the limit of 1000 bytes") as caught:
        read(path)
    assert str(path) in str(caught.value), name


def test_train_set_override_is_bounded_too():
    from unveil.cli.options import CommandLineError
    from unveil.cli.train import _train_config

    bomb = "[" + ", ".join(["&a [1]"] + ["*a"] * (MAX_ALIASES + 1)) + "]"
    with pytest.raises(CommandLineError, match="limit"):
        _train_config({}, None, [f"epochs={bomb}"])


@FAST
@given(levels=st.integers(1, 12), width=st.integers(1, 12), nest=st.integers(0, 3 * MAX_DEPTH))
def test_any_alias_structure_loads_or_is_refused_quickly(levels, width, nest):
    text = alias_bomb(levels, width) + "deep: " + "[" * nest + "]" * nest + "\n"
    start = time.perf_counter()
    try:
        document = load_yaml_text(text, "doc.yaml")
    except DocumentError as error:
        assert "doc.yaml" in str(error) and "limit" in str(error)
    else:
        assert width**levels <= 100_000 and nest < MAX_DEPTH and isinstance(document, dict)
    assert time.perf_counter() - start < 1.0


def test_every_yaml_read_goes_through_the_bounded_loader():
    source = Path(unveil.__file__).parent
    pattern = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all|SafeLoader\()")
    offenders = [f"{path.relative_to(source)}:{number}" for path in sorted(source.rglob("*.py"))
                 if path.name != "documents.py"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


def test_the_other_json_documents_are_read_through_the_checked_reader(tmp_path):
    """ood.json and a lung model's description: a list, deep nesting or a huge integer is one error naming them."""
    import shutil

    from unveil.segmentation import default_model_path
    from unveil.segmentation.model import LungModelError, load_lung_bundle
    from unveil.training.ood import OOD_DESCRIPTION, OOD_WEIGHTS, OodReference, OodReferenceError

    folder = tmp_path / "ood"
    folder.mkdir()
    (folder / OOD_WEIGHTS).write_bytes(b"")
    for text, problem in (("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"), ("[1]", "object"),
                          ('{"version": ' + "9" * 30 + "}", "version")):
        (folder / OOD_DESCRIPTION).write_text(text)
        with pytest.raises(OodReferenceError, match=problem) as raised:
            OodReference.load(folder)
        assert str(folder / OOD_DESCRIPTION) in str(raised.value) and "\n" not in str(raised.value)
    if not default_model_path().is_file():
        pytest.skip("shipped lung model not built")
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    shutil.copy(default_model_path(), lungs / "lung.safetensors")
    (lungs / "lung.json").write_text("[]")
    with pytest.raises(LungModelError, match="lung model description must hold a JSON object"):
        load_lung_bundle(lungs / "lung.safetensors")
