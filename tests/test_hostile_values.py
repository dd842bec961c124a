"""Hostile values (issue 25, classes 2 and 3): NaN and infinity never pass a range check; label conflicts are
refused or reported, never resolved by row order.

Class 2: every numeric check starts with :func:`unveil.errors.finite` (training options, experiment files,
audit thresholds, synthetic configurations, CLI float options, the out-of-distribution reference) and a DICOM
header that would blank the image is read without it, with a note. Class 3: repeated CSV columns, one image
under two names with two labels, a label its finding contradicts and patient ids such as ``NA`` are refused or
reported. Hypothesis drives each class with any float or any row order.
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer.main
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.errors import NotFiniteError, UnveilError, finite

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 0.5, 1.0, -1.0, 1e308]))
runner = CliRunner()


def save_png(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


# --- class 2: NaN and infinity pass range checks ---------------------------------------------------------------

@FAST
@given(value=ANY_FLOAT)
def test_finite_accepts_exactly_the_finite_floats(value):
    if math.isfinite(value):
        assert finite(value, "x") == value
    else:
        with pytest.raises(NotFiniteError, match="x must be finite"):
            finite(value, "x")
    for wrong in ("0.5", True, None, [1.0]):
        with pytest.raises(NotFiniteError, match="x must be a number"):
            finite(wrong, "x")


def _float_fields(cls: type) -> list[str]:
    """The fields declared float (possibly constrained: ``Annotated[float, ...]``, or optional)."""
    hints = typing.get_type_hints(cls)  # Annotated's constraints stripped
    return [f.name for f in fields(cls) if hints[f.name] in (float, float | None)]


@FAST
@given(data=st.data())
def test_any_float_training_option_is_accepted_finite_or_refused_by_name(data):
    from unveil.training.config import ConfigError, TrainConfig

    name = data.draw(st.sampled_from(_float_fields(TrainConfig)))
    value = data.draw(ANY_FLOAT)
    try:
        config = TrainConfig(**{name: value})
    except ConfigError as error:
        assert name in str(error)
        return
    assert math.isfinite(getattr(config, name))


@pytest.mark.parametrize("name", ["lr", "momentum", "weight_decay", "focal_gamma", "plateau_factor", "width",
                                  "epochs", "translate", "threshold_value", "collapse_tolerance"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan"])
def test_nan_training_options_are_refused_before_training(name, value):
    from unveil.training.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=name):
        TrainConfig.from_dict({name: value})


def _float_options() -> list[tuple[str, object]]:
    """(command, option) for every option of every command whose type is a float."""
    found = []

    def walk(command: object, path: str) -> None:
        for param in command.params:
            described = getattr(param, "type_descriptor", None)
            if described is not None and "float" in str(described.annotation):
                found.append((path, param))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def test_every_cli_float_option_refuses_nan_and_infinity():
    from unveil.cli.options import finite_float

    options = _float_options()
    assert len(options) >= 15  # learning rates, widths, thresholds, fractions, scale, blur radius
    for path, param in options:
        assert param.type_descriptor.parameter_info.parser is finite_float, f"unveil {path} {param.opts[0]}"
    for text in ("nan", "NaN", "inf", "-inf", "1e999", "Infinity"):
        with pytest.raises(NotFiniteError, match="not a finite number"):
            finite_float(text)
    with pytest.raises(NotFiniteError, match="not a number"):
        finite_float("fast")
    assert finite_float("0.25") == 0.25 and finite_float(3.0) == 3.0


@pytest.mark.parametrize("args, named", [
    (["train", "AB", "--learning-rate", "nan"], "--learning-rate"),
    (["train", "AB", "--width", "inf"], "--width"),
    (["data", "split", "chestxray", ".", "--out", "s.csv", "--test-fraction", "nan"], "--test-fraction"),
    (["synth", "generate", "--out", "x", "--scale", "nan"], "--scale"),
])
def test_nan_on_the_command_line_is_refused_naming_the_option(tmp_path, args, named):
    result = runner.invoke(app, [*args, "--data", "synthetic:nowhere"] if args[0] == "train" else args)
    assert result.exit_code == 2 and named in result.output and "finite" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("override", ["momentum=.nan", "lr=.inf", "momentum=nan", "weight_decay=-.inf"])
def test_set_nan_is_one_line_naming_the_option(tmp_path, override):
    result = runner.invoke(app, ["train", "AB", "--data", f"synthetic:{tmp_path / 'data'}", "--out",
                                 str(tmp_path / "o"), "--set", override])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and override.split("=")[0] in lines[0], result.output


TINY_EXPERIMENT = {
    "name": "tiny", "seed": 0,
    "data": {"synthetic": {"preset": "paper", "scale": 0.1, "image_size": 48}},
    "preprocess": {"size": 32, "mask": "none"},
    "training": {"width": 0.25, "epochs": 2, "batch_size": 16},
    "pretraining": {"B": {"data": ["B"], "training": {"epochs": 1}}},
    "grid": {"encoders": ["none", "B"], "architectures": ["conv8"], "compositions": ["AB"], "tests": ["AB"]},
    "evaluation": {"resamples": 50},
    "audit": {"compositions": ["AB"], "test_sets": ["AB"], "mask": "segment", "resamples": 50,
              "thresholds": {"min_images": 3}},
}


@FAST
@given(where=st.sampled_from([("training", "lr"), ("training", "momentum"), ("audit", "thresholds", "source_probe"),
                              ("pretraining", "B", "training", "lr"), ("data", "synthetic", "scale")]),
       value=ANY_FLOAT)
def test_any_float_in_an_experiment_file_loads_finite_or_is_refused_naming_it(tmp_path_factory, where, value):
    from unveil.experiments import ExperimentError, load_experiment

    document = json.loads(json.dumps(TINY_EXPERIMENT))
    node = document
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    path = tmp_path_factory.mktemp("exp") / "exp.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_experiment(path)
    except ExperimentError as error:
        assert where[-1] in str(error)
        return
    assert math.isfinite(value)


@FAST
@given(data=st.data())
def test_any_float_audit_threshold_is_accepted_finite_or_refused_by_name(data):
    from unveil.audit.run import AuditError, AuditThresholds

    name = data.draw(st.sampled_from(_float_fields(AuditThresholds)))
    value = data.draw(ANY_FLOAT)
    try:
        AuditThresholds(**{name: value})
    except AuditError as error:
        assert name in str(error)
        return
    assert math.isfinite(value)


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["datasets"][next(iter(d["datasets"]))].__setitem__("follow_up", math.nan), "follow_up"),
    (lambda d: d.__setitem__("severity", {"covid": [0.2, math.inf]}), "severity.covid[1]"),
    (lambda d: d.__setitem__("image_size", math.nan), "image_size"),
    (lambda d: d["datasets"][next(iter(d["datasets"]))]["classes"].__setitem__("normal", math.inf), "classes.normal"),
])
def test_nan_in_a_synthetic_configuration_is_refused_naming_it(edit, named):
    from importlib import resources

    from unveil.synth.config import SynthConfigError, parse_config

    document = yaml.safe_load(resources.files("unveil.synth").joinpath("presets/paper.yaml").read_text("utf-8"))
    edit(document)
    with pytest.raises(SynthConfigError, match=re.escape(f"{named}: should be a finite number")):
        parse_config(document)


def _ood_folder(tmp_path: Path, features: int = 6) -> Path:
    from unveil.training.ood import fit_ood_reference

    rng = np.random.default_rng(0)
    reference = fit_ood_reference(rng.normal(size=(40, features)), np.array(["a", "b"] * 20),
                                  rng.normal(size=(10, features)), dimensions=3, min_images=5)
    tmp_path.mkdir(parents=True, exist_ok=True)
    reference.save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("key", ["threshold", "false_alarm_target", "typical", "residual_scale"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_nan_in_the_ood_reference_refuses_it_never_switches_it_off(tmp_path, key, value):
    from unveil.training.ood import OOD_DESCRIPTION, OodReference, OodReferenceError

    folder = _ood_folder(tmp_path)
    described = json.loads((folder / OOD_DESCRIPTION).read_text())
    (described["views"]["encoder"] if key in ("typical", "residual_scale") else described)[key] = value
    (folder / OOD_DESCRIPTION).write_text(json.dumps(described))  # json writes NaN / Infinity, and reads them
    with pytest.raises(OodReferenceError, match=key) as raised:
        OodReference.load(folder)
    assert isinstance(raised.value, UnveilError) and "finite" in str(raised.value)
    assert OodReference.load(_ood_folder(tmp_path / "intact")) is not None


def _stored_image() -> np.ndarray:
    return (np.arange(48 * 48).reshape(48, 48) * 7 % 4000).astype(np.uint16)


@FAST
@given(slope=ANY_FLOAT, center=ANY_FLOAT, width=ANY_FLOAT)
def test_a_dicom_header_that_would_blank_the_image_is_ignored_and_said(tmp_path_factory, slope, center, width):
    from unveil.io import ImageReadError, read_image, write_dicom

    path = tmp_path_factory.mktemp("dcm") / "x.dcm"
    slope = slope if abs(slope) < 1e6 else math.copysign(math.inf, slope)  # the DS text holds 16 characters
    center = center if abs(center) < 1e6 else math.copysign(math.inf, center)
    width = width if abs(width) < 1e6 else math.copysign(math.inf, width)
    write_dicom(path, _stored_image(), rescale_slope=slope, window_center=center, window_width=width)
    try:
        image = read_image(path)
    except ImageReadError:  # a window pydicom cannot use is refused, named (another class's concern)
        return
    blanking_rescale = not math.isfinite(slope) or slope == 0
    blanking_window = not (math.isfinite(center) and math.isfinite(width))
    assert any("rescale" in note for note in image.notes) == blanking_rescale
    assert any("window" in note for note in image.notes) == blanking_window
    if blanking_window and (blanking_rescale or abs(slope) > 1e-6):
        assert image.pixels.std() > 0.1  # read without the header: min-max of the stored values, not blank


@pytest.mark.parametrize("header, named", [
    ({"rescale_slope": 0.0}, "RescaleSlope 0"), ({"rescale_slope": math.nan}, "RescaleSlope nan"),
    ({"rescale_slope": 1.0, "rescale_intercept": math.inf}, "RescaleIntercept inf"),
    ({"window_center": math.nan, "window_width": 400.0}, "WindowCenter nan"),
    ({"window_center": 2000.0, "window_width": -math.inf}, "WindowWidth -inf"),
])
def test_data_check_warns_about_a_header_read_without(tmp_path, caplog, header, named):
    from unveil.data.check import check_dataset
    from unveil.io import read_image, write_dicom

    write_dicom(tmp_path / "a.dcm", _stored_image(), **header)
    image = read_image(tmp_path / "a.dcm")
    assert image.pixels.std() > 0.1 and any(named in note for note in image.notes)
    save_png(tmp_path / "b.png", 1)
    (tmp_path / "labels.csv").write_text("path,patient,label\na.dcm,P1,1\nb.png,P2,0\n")
    report = check_dataset("hospital-csv", tmp_path)
    assert any("a.dcm" in note and named in note for note in report.notes), report.notes
    assert any(named in record.getMessage() for record in caplog.records)


# --- class 3: label conflicts resolved silently ------------------------------------------------------------------

def _hospital(root: Path, header: str, rows: list[str], images: int = 4) -> Path:
    for index in range(images):
        save_png(root / f"img{index}.png", index)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


@FAST
@given(data=st.data())
def test_a_csv_repeating_a_column_is_refused_naming_it(tmp_path_factory, data):
    from unveil.data.sources import load_source
    from unveil.data.sources.base import DatasetLayoutError

    columns = ["path", "patient", "label"]
    repeated = data.draw(st.sampled_from(columns))
    spelling = data.draw(st.sampled_from([repeated, repeated.upper(), repeated.title(), f" {repeated} "]))
    header = data.draw(st.permutations([*columns, spelling]))
    values = {"path": "img0.png", "patient": "P1", "label": "1"}
    root = _hospital(tmp_path_factory.mktemp("dup"), ",".join(header),
                     [",".join(values[c.strip().lower()] for c in header)])
    with pytest.raises(DatasetLayoutError, match=f"more than once: '{repeated}'|more than once: .*'{repeated}'"):
        load_source("hospital-csv", root)


def test_first_of_two_label_columns_no_longer_wins(tmp_path):
    from unveil.data.sources import load_source
    from unveil.data.sources.base import DatasetLayoutError

    root = _hospital(tmp_path, "path,patient,label,label", ["img0.png,P1,0,1", "img1.png,P2,1,0"])
    with pytest.raises(DatasetLayoutError, match="'label' / 'label'"):
        load_source("hospital-csv", root)


def _copies(root: Path) -> list[str]:
    """Rows for 6 images, two of them copied under a new name: one copy with the same label, one with the other."""
    for index in range(6):
        save_png(root / f"img{index}.png", index)
    (root / "same.png").write_bytes((root / "img0.png").read_bytes())
    (root / "flipped.png").write_bytes((root / "img1.png").read_bytes())
    rows = [f"img{i}.png,P{i},{i % 2}" for i in range(6)]
    return [*rows, "same.png,P10,0", "flipped.png,P11,0"]  # img1 is labelled 1, its copy 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(range(8))))
def test_conflicting_copies_are_dropped_whatever_the_row_order(tmp_path_factory, order):
    from unveil.data.sources import load_source
    from unveil.data.splits import drop_duplicate_images, patient_exclusive_split
    from unveil.provenance import file_sha256

    root = tmp_path_factory.mktemp("copies")
    rows = _copies(root)
    (root / "labels.csv").write_text("\n".join(["path,patient,label", *[rows[i] for i in order]]) + "\n")
    kept, messages = drop_duplicate_images(load_source("hospital-csv", root).records)
    names = set(kept["path"].map(lambda p: Path(p).name))
    assert "img1.png" not in names and "flipped.png" not in names  # one image, two labels: neither kept
    assert any("conflicting labels" in m and "flipped.png" in m and "img1.png" in m for m in messages)
    assert len(names & {"img0.png", "same.png"}) == 1  # same label: one copy kept
    labels = {file_sha256(p): int(c) for p, c in zip(kept["path"], kept["covid"], strict=True)}
    assert labels == {file_sha256(root / f"img{i}.png"): i % 2 for i in (0, 2, 3, 4, 5)}
    patient_exclusive_split(kept, seed=0)  # no duplicate left


def test_data_check_and_data_split_report_conflicting_copies(tmp_path):
    from unveil.data.check import check_dataset

    root = tmp_path / "h"
    rows = _copies(root)
    (root / "labels.csv").write_text("\n".join(["path,patient,label", *rows]) + "\n")
    report = check_dataset("hospital-csv", root)
    conflicts = [issue for issue in report.invalid if "conflicting labels" in issue.problem]
    assert len(conflicts) == 1 and {"img1.png", "flipped.png"} <= {
        Path(p).name for p in [conflicts[0].path, *conflicts[0].problem.split()] if p.endswith(".png")
        or p.endswith(".png,")}
    out = tmp_path / "split.csv"
    result = runner.invoke(app, ["data", "split", "hospital-csv", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    split = pd.read_csv(out)
    assert not split["record_id"].str.contains("img1.png|flipped.png").any()
    assert "conflicting labels" in result.output


FINDINGS = st.sampled_from(["COVID-19 pneumonia", "covid", "SARS-CoV-2 infection", "Covid19", "2019-nCoV",
                            "pneumonia (COVID-19)", "normal", "viral pneumonia", "non-COVID viral",
                            "not COVID-19", "COVID negative", "No Finding", "bacterial", "healthy"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(finding=FINDINGS, label=st.sampled_from(["0", "1", "negative", "positive"]))
def test_a_label_its_finding_contradicts_is_an_invalid_issue(tmp_path_factory, finding, label):
    from unveil.data.sources import load_source
    from unveil.data.sources.labels import mentions_covid

    root = _hospital(tmp_path_factory.mktemp("finding"), "path,patient,label,finding",
                     [f"img0.png,P0,{label},{finding}", "img1.png,P1,1,", "img2.png,P2,0,"])
    loaded = load_source("hospital-csv", root, finding_column="finding")
    negative = label in ("0", "negative")
    says_normal = finding.lower() in ("normal", "no finding", "healthy")
    contradicts = mentions_covid(finding) if negative else says_normal
    kept = loaded.records["path"].str.endswith("img0.png").any()
    assert kept != contradicts
    assert any("img0.png" in issue.path and "finding" in issue.problem for issue in loaded.issues) == contradicts


def test_label_0_with_finding_covid_19_pneumonia_is_no_negative_record(tmp_path):
    from unveil.data.sources import load_source

    root = _hospital(tmp_path, "path,patient,label,finding",
                     ["img0.png,P0,0,COVID-19 pneumonia", "img1.png,P1,1,", "img2.png,P2,0,viral pneumonia"])
    loaded = load_source("hospital-csv", root, finding_column="finding")
    assert not loaded.records["path"].str.endswith("img0.png").any()
    assert [issue.kind for issue in loaded.issues if "img0.png" in issue.path] == ["invalid"]


def test_covid_pneumonia_under_label_0_is_not_a_negative():
    from unveil.data.sources.labels import finding_contradiction

    assert finding_contradiction(0, "COVID-19 pneumonia") and finding_contradiction(1, "No Finding")
    assert finding_contradiction(0, "non-COVID pneumonia") is None and finding_contradiction(1, "pneumonia") is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(missing=st.lists(st.sampled_from(["NA", "nan", "NaN", "N/A", "", " ", "null", "None", "<NA>", "na"]),
                        min_size=2, max_size=3))
def test_na_patient_ids_are_no_patient_never_one_patient(tmp_path_factory, missing):
    from unveil.data.records import patient_keys
    from unveil.data.sources import load_source

    rows = [f"img{i}.png,{patient},{i % 2}" for i, patient in enumerate(missing)] + ["img3.png,P3,1"]
    root = _hospital(tmp_path_factory.mktemp("na"), "path,patient,label", rows)
    loaded = load_source("hospital-csv", root)
    records = loaded.records.set_index(loaded.records["path"].map(lambda p: Path(p).name))
    assert len(records) == len(missing) + 1
    unknown = [f"img{i}.png" for i in range(len(missing))]
    assert not records.loc[unknown, "patient_known"].any() and bool(records.loc["img3.png", "patient_known"])
    assert patient_keys(records.loc[unknown]).nunique() == len(missing)  # each its own patient
    assert not records["patient_id"].str.lower().isin(["na", "nan", "n/a", "null", "none", "<na>"]).any()
    assert any(f"{len(missing)} image(s) have no patient id" in note for note in loaded.notes)


def test_na_patientid_in_covid_chestxray_is_its_own_patient(tmp_path):
    from unveil.data.sources import load_source

    root = tmp_path / "cohen"
    names = [f"{i}.png" for i in range(3)]
    for index, name in enumerate(names):
        save_png(root / "images" / name, index)
    pd.DataFrame([{"patientid": p, "finding": "COVID-19", "filename": n}
                  for p, n in zip(["NA", "nan", "7"], names, strict=True)]).to_csv(root / "metadata.csv", index=False)
    loaded = load_source("covid-chestxray", root)
    assert len(loaded.records) == 3 and loaded.records["patient_known"].tolist() == [False, False, True]
    assert loaded.records["patient_id"].nunique() == 3 and loaded.notes


def test_copies_conflict_on_a_label_not_on_what_is_unsaid():
    from unveil.data.splits import conflicting_labels

    table = pd.DataFrame({"covid": pd.array([0, 1, 0, None], dtype="Int8"),
                          "finding": ["unknown", "covid", "normal", "normal"]})
    assert conflicting_labels(table, [0, 1]) == "covid 0 / 1"
    assert conflicting_labels(table, [0, 2, 3]) is None  # "unknown" and a missing label agree with anything
    assert conflicting_labels(table.assign(finding=["normal", "covid", "pneumonia", None]), [0, 2]) == \
        "finding normal / pneumonia"


def test_predict_with_a_nan_ood_threshold_fails_naming_it_never_reads_ok(tmp_path):
    import torch

    from unveil.models import build_model
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training.bundle import save_bundle
    from unveil.training.ood import OOD_DESCRIPTION

    torch.manual_seed(0)
    model = build_model("conv8", num_classes=2, width=0.25)
    bundle = save_bundle(tmp_path / "model", model, width=0.25, classes=["covid-", "covid+"], positive_class="covid+",
                         image_size=32, preprocess=PreprocessSettings(size=32), normalization=(120.0, 60.0))
    folder = _ood_folder(Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent, model.feature_dim)
    described = json.loads((folder / OOD_DESCRIPTION).read_text())
    (folder / OOD_DESCRIPTION).write_text(json.dumps({**described, "threshold": math.nan}))
    save_png(tmp_path / "in" / "a.png", 0, size=64)
    result = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "ood.json" in lines[0] and "threshold" in lines[0], \
        result.output
