"""Hostile and careless input (issue 16): nothing lost, nothing silently wrong.

One section per class of the issue. Each test checks the exit code (or the exception), a one-line
message naming the file or field, and that every input file is untouched (the input tree is hashed
before and after). Hypothesis generates corrupt bytes, odd shapes, hostile CSV rows and bundle fields;
the hand-made cases of the issue sit beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image, write_dicom
from unveil.io.outputs import OutputError, OutputFolder

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
runner = CliRunner()


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (the state a run must leave untouched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(result, *names: str) -> str:
    """The run's single ``error:`` line, which must name each of ``names``; no traceback."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1, result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def radiograph(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


# ------------------------------------------------------------------------ 1. never overwrite or lose files


def test_segment_refuses_an_output_folder_inside_the_inputs(tmp_path):
    inputs = tmp_path / "in"
    save_png(inputs / "CHNCXR_0001_0.png", radiograph())
    save_png(inputs / "CHNCXR_0001_0_mask.png", np.zeros((64, 64), np.uint8))  # ground truth beside it
    before = tree_hashes(inputs)
    for out in (inputs, inputs / "sub"):
        result = runner.invoke(app, ["segment", str(inputs), "--out", str(out)])
        assert result.exit_code == 2
        one_line_error(result, str(out), "inside the input")
    assert tree_hashes(inputs) == before


def test_segment_keeps_same_stem_outputs_apart(tmp_path):
    inputs = tmp_path / "in"
    save_png(inputs / "good.png", radiograph(1))
    Image.fromarray(radiograph(2)).save(inputs / "good.jpeg")
    before = tree_hashes(inputs)
    result = runner.invoke(app, ["segment", str(inputs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert written == ["good_jpeg_mask.png", "good_jpeg_overlay.png", "good_png_mask.png", "good_png_overlay.png"]
    assert tree_hashes(inputs) == before


def test_predict_refuses_an_output_folder_inside_the_inputs(bundle, tmp_path):
    inputs = tmp_path / "in"
    save_png(inputs / "a.png", radiograph())
    before = tree_hashes(inputs)
    result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(inputs / "out")])
    assert result.exit_code == 2
    one_line_error(result, str(inputs / "out"), "inside the input")
    assert tree_hashes(inputs) == before and not (inputs / "out").exists()


def test_an_interrupted_predict_keeps_the_previous_result(bundle, tmp_path, monkeypatch):
    from unveil.inference import predict as predict_module
    from unveil.inference import predict_files

    inputs = tmp_path / "in"
    for seed in range(6):
        save_png(inputs / f"x{seed}.png", radiograph(seed))
    out = tmp_path / "out"
    predict_files(bundle, [inputs], out, batch_size=2)
    complete = tree_hashes(out)
    assert pd.read_csv(out / "predictions.csv").shape[0] == 6
    before = tree_hashes(inputs)

    original = predict_module.Predictor.score
    calls = []

    def failing(self, paths, **kwargs):  # the bundle fails part-way through the second run
        calls.append(len(paths))
        if len(calls) == 2:
            raise RuntimeError("scoring failed")
        yield from original(self, paths, **kwargs)

    monkeypatch.setattr(predict_module.Predictor, "score", failing)
    with pytest.raises(RuntimeError, match="scoring failed"):
        predict_files(bundle, [inputs], out, batch_size=2)
    final = {k: v for k, v in tree_hashes(out).items() if not k.startswith(".unveil")}
    assert final == {k: v for k, v in complete.items() if not k.startswith(".unveil")}  # byte for byte
    assert tree_hashes(inputs) == before


def test_concurrent_runs_into_one_folder_are_refused(bundle, tmp_path):
    inputs = tmp_path / "in"
    save_png(inputs / "a.png", radiograph())
    out = tmp_path / "out"
    with OutputFolder(out, [inputs]):  # another run holds the folder
        result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(out)])
        assert result.exit_code == 2
        one_line_error(result, str(out), "another unveil run")
        with pytest.raises(OutputError, match="another unveil run"), OutputFolder(out, [inputs]):
            pass
    result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(out), "--no-evidence"])
    assert result.exit_code == 0, result.output  # released


def test_read_only_output_folder_is_one_line(bundle, tmp_path):
    target = Path("/sys/unveil-hostile-test")  # a read-only file system, even for root
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("no read-only location to write into")
    inputs = tmp_path / "in"
    save_png(inputs / "a.png", radiograph())
    for command in (["predict", str(bundle), str(inputs)], ["segment", str(inputs)],
                    ["train", "D", "--data", f"D=covid-chestxray:{inputs}"]):
        result = runner.invoke(app, [*command, "--out", str(target)])
        assert result.exit_code == 2, result.output
        one_line_error(result, str(target), "cannot write")


def test_predict_prints_each_skipped_file_once(bundle, tmp_path):
    inputs = tmp_path / "in"
    save_png(inputs / "a.png", radiograph())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(tmp_path / "out"),
                                 "--no-evidence"])
    assert result.exit_code == 0, result.output
    assert result.output.count("broken.png") == 1


# ----------------------------------------------------------------- 2. labels and records never wrong in silence


def cohen_root(tmp_path: Path, rows: list[dict[str, str]], images: list[str]) -> Path:
    root = tmp_path / "cohen"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(images):
        save_png(root / "images" / name, radiograph(index))
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_unknown_or_negated_findings_are_reported_never_labelled(tmp_path):
    from unveil.data.sources import load_source

    rows = [{"patientid": str(i), "finding": f, "filename": f"{i}.png", "modality": "X-ray"}
            for i, f in enumerate(["COVID-19", "banana", "not COVID-19", "No Finding", "Pneumonia/Viral/SARS"])]
    loaded = load_source("covid-chestxray", cohen_root(tmp_path, rows, [f"{i}.png" for i in range(5)]))
    assert sorted(loaded.records["patient_id"]) == ["0", "3", "4"]
    problems = " ".join(issue.problem for issue in loaded.issues)
    assert "'banana'" in problems and "'not COVID-19'" in problems
    assert all(issue.kind == "invalid" for issue in loaded.issues)


@FAST
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30))
def test_any_finding_string_maps_in_vocabulary_or_is_refused(raw):
    from unveil.data.sources.covid_chestxray import FINDING_VOCABULARY, FindingError, map_finding

    try:
        covid, finding = map_finding(raw)
    except FindingError as error:
        assert repr(raw) in str(error) and "\n" not in str(error)
        return
    words = [w for w in " ".join(raw.lower().split()).replace("no finding", "").replace("/", " ")
             .replace(",", " ").replace(";", " ").split() if w]
    assert all(w in FINDING_VOCABULARY for w in words)
    assert covid in (None, 0, 1) and (covid == 1) == any("covid" in w or w in ("sars-cov-2", "2019-ncov")
                                                          for w in words)


def test_a_file_listed_twice_or_outside_the_root_is_one_record(tmp_path):
    from unveil.data.sources import load_source

    outside = save_png(tmp_path / "elsewhere" / "secret.png", radiograph(9))
    rows = [{"patientid": "p1", "finding": "COVID-19", "filename": "x.png"},
            {"patientid": "p2", "finding": "COVID-19", "filename": "../images/x.png"},
            {"patientid": "p3", "finding": "COVID-19", "filename": f"../../elsewhere/{outside.name}"}]
    root = cohen_root(tmp_path, rows, ["x.png"])
    loaded = load_source("covid-chestxray", root)
    assert list(loaded.records["patient_id"]) == ["p1"]
    problems = [issue.problem for issue in loaded.issues]
    assert any("listed again" in p for p in problems) and any("leaves the dataset root" in p for p in problems)
    allowed = load_source("covid-chestxray", root, allow_outside="true")
    assert sorted(allowed.records["patient_id"]) == ["p1", "p3"]
    roundabout = root.parent / "elsewhere" / ".." / root.name  # a root written with "..", or through a symlink
    (tmp_path / "link").symlink_to(tmp_path)
    for written in (roundabout, tmp_path / "link" / root.name):
        assert list(load_source("covid-chestxray", written).records["patient_id"]) == ["p1"]


def test_hospital_csv_refuses_paths_outside_its_root_when_told(tmp_path):
    """A hospital CSV's paths are its author's explicit choice (read wherever they point, issue 24); the user can
    still refuse files outside the CSV's folder with allow_outside=false."""
    from unveil.data.sources import load_source

    save_png(tmp_path / "elsewhere" / "x.png", radiograph(1))
    save_png(tmp_path / "hospital" / "a.png", radiograph(2))
    (tmp_path / "hospital" / "labels.csv").write_text("path,patient,label\na.png,P1,1\n../elsewhere/x.png,P2,0\n")
    loaded = load_source("hospital-csv", tmp_path / "hospital", allow_outside="false")
    assert list(loaded.records["patient_id"]) == ["P1"]
    assert any("leaves the dataset root" in issue.problem for issue in loaded.issues)
    assert len(load_source("hospital-csv", tmp_path / "hospital").records) == 2


def test_duplicate_images_never_reach_two_splits(tmp_path):
    from unveil.data.compose import compose, load_recipes
    from unveil.data.sources import load_source
    from unveil.data.splits import DuplicateRecordsError, patient_exclusive_split

    names = [f"{i}.png" for i in range(12)]
    rows = [{"patientid": f"p{i}", "finding": "COVID-19" if i % 2 else "No Finding", "filename": n}
            for i, n in enumerate(names)]
    root = cohen_root(tmp_path, rows, names)
    (root / "images" / "copy.png").write_bytes((root / "images" / "0.png").read_bytes())  # same bytes, new name
    rows.append({"patientid": "other", "finding": "No Finding", "filename": "copy.png"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    records = load_source("covid-chestxray", root).records
    assert len(records) == 13
    with pytest.raises(DuplicateRecordsError, match="copy.png"):
        patient_exclusive_split(records, seed=0)
    composition = compose(load_recipes().recipe("D"), {"D": records}, seed=0)
    assert len(composition.records) <= 12 and not composition.records["path"].str.endswith("copy.png").any()
    assert any("copy.png" in w and "duplicate" in w for w in composition.warnings)


@pytest.mark.parametrize("text, problem", [
    ("patientid,filename\np,x.png\n", "column 'finding' missing"),
    ("patientid,finding,filename\n", "no rows"),
    ("", "not a readable CSV"),
])
def test_broken_metadata_is_one_line(tmp_path, text, problem):
    root = tmp_path / "cohen"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text(text)
    before = tree_hashes(root)
    for command in (["data", "check", "covid-chestxray", str(root)],
                    ["data", "split", "covid-chestxray", str(root), "--out", str(tmp_path / "s.csv")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        one_line_error(result, "metadata.csv", problem)
    assert tree_hashes(root) == before


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({
    "patientid": st.one_of(st.just(""), st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                                                 max_size=8)),
    "finding": st.sampled_from(["COVID-19", "No Finding", "banana", "", "not covid", "Pneumonia", "COVID-19, ARDS"]),
    "filename": st.sampled_from(["0.png", "1.png", "missing.png", "../images/0.png", "../../x.png", "", "/etc/hosts"]),
    "modality": st.sampled_from(["X-ray", "CT", ""]),
}), min_size=1, max_size=8))
def test_hostile_metadata_rows_are_records_or_issues(tmp_path_factory, rows):
    from unveil.data.sources import DatasetLayoutError, load_source
    from unveil.data.sources.covid_chestxray import FindingError, map_finding

    root = cohen_root(tmp_path_factory.mktemp("rows"), rows, ["0.png", "1.png"])
    try:
        loaded = load_source("covid-chestxray", root)
    except DatasetLayoutError as error:
        assert "metadata.csv" in str(error)
        return
    accounted = len(loaded.records) + len(loaded.issues) + sum(loaded.excluded.values())
    assert accounted == len(rows)  # every row is a record, an issue or a counted exclusion
    assert loaded.records["path"].is_unique
    for _, record in loaded.records.iterrows():
        assert Path(record["path"]).is_relative_to(root.resolve())
        try:
            expected = map_finding(None if pd.isna(record["source_finding"]) else record["source_finding"])[0]
        except FindingError:
            pytest.fail(f"record with an invalid finding {record['source_finding']!r}")
        assert (None if pd.isna(record["covid"]) else int(record["covid"])) == expected


# --------------------------------------------------------------------------- 3. bundles validated before use


HOSTILE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                           st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                max_size=2))
FIELDS = ["architecture", "width", "num_classes", "in_channels", "classes", "positive_class", "image_size",
          "preprocess", "preprocess.size", "preprocess.equalize", "preprocess.mask", "preprocess.blur_radius",
          "normalization", "normalization.mean", "normalization.std", "threshold", "threshold.value",
          "threshold.rule", "format_version"]


def edited_bundle(source: Path, target: Path, field: str, value) -> Path:
    import shutil

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    description = json.loads((target / "bundle.json").read_text())
    holder, *rest = field.split(".")
    if rest:
        description[holder][rest[0]] = value
    elif value is ...:
        del description[holder]
    else:
        description[holder] = value
    (target / "bundle.json").write_text(json.dumps(description, allow_nan=True))
    return target


@pytest.mark.parametrize("field, value", [
    ("threshold.value", float("nan")), ("threshold.value", 2), ("threshold.value", -1),
    ("normalization.std", 0), ("image_size", 20000), ("num_classes", 3), ("classes", ["a", "a"]),
    ("positive_class", "banana"), ("architecture", "resnet9000"), ("width", "wide"), ("threshold", ...),
    ("preprocess.blur_radius", float("inf")), ("preprocess.equalize", "sharpen"), ("format_version", "1"),
])
def test_edited_bundle_fields_are_refused_by_name(bundle, tmp_path, field, value):
    from unveil.training.bundle import BundleError, load_bundle

    edited = edited_bundle(bundle, tmp_path / "model", field, value)
    with pytest.raises(BundleError) as caught:
        load_bundle(edited)
    message = str(caught.value)
    assert "\n" not in message and str(edited) in message
    assert field.split(".")[0] in message or field in message
    inputs = save_png(tmp_path / "in" / "a.png", radiograph())
    result = runner.invoke(app, ["predict", str(edited), str(inputs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    one_line_error(result, "bundle.json", field.split(".")[0])  # the CLI names the file and the field too
    assert not (tmp_path / "out" / "predictions.csv").exists()


@FAST
@given(field=st.sampled_from(FIELDS), value=HOSTILE_VALUES)
def test_any_bundle_field_edit_loads_valid_or_fails_naming_it(bundle, tmp_path_factory, field, value):
    from unveil.training.bundle import BundleError, load_bundle

    edited = edited_bundle(bundle, tmp_path_factory.mktemp("b") / "model", field, value)
    try:
        loaded = load_bundle(edited)
    except BundleError as error:
        assert "\n" not in str(error) and str(edited) in str(error)
        return
    # Loaded: every value the predictor uses is sane.
    mean, std = loaded.normalization
    assert math.isfinite(mean) and math.isfinite(std) and std > 0
    assert 0 <= loaded.threshold <= 1 and 16 <= loaded.image_size <= 4096
    assert len(loaded.classes) == loaded.model.num_classes and loaded.positive_index in (0, 1, None)


# ------------------------------------------------------------------------------ 4. processes and resources


def test_preprocess_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from unveil.preprocess.cache import _init_worker

        def stuck(_):
            time.sleep(120)

        if __name__ == "__main__":
            with ProcessPoolExecutor(2, initializer=_init_worker, initargs=(None, 1, None, True)) as pool:
                futures = [pool.submit(stuck, i) for i in range(2)]
                time.sleep(2)
                print(" ".join(str(p) for p in pool._processes), flush=True)
                time.sleep(120)
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
        return state not in ("Z", "X")

    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their killed parent"


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A few-byte PNG whose header declares ``width`` x ``height`` gray pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    body = zlib.compress(b"\x00" * 1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_max_pixels_is_one_option_checked_before_decoding(bundle, tmp_path):
    from unveil.cli.options import MaxPixelsOption

    bomb = png_declaring(tmp_path / "in" / "bomb.png", 9999, 9999)
    save_png(tmp_path / "in" / "a.png", radiograph())
    assert DEFAULT_MAX_PIXELS < 9999 * 9999  # refused by default
    with pytest.raises(ImageReadError, match="pixel limit"):
        read_image(bomb)
    before = tree_hashes(tmp_path / "in")
    result = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "p"),
                                 "--no-evidence", "--max-pixels", "5000"])
    assert result.exit_code == 0 and result.output.count("bomb.png") == 1 and "pixel limit of 5,000" in result.output
    result = runner.invoke(app, ["segment", str(tmp_path / "in"), "--out", str(tmp_path / "s"),
                                 "--max-pixels", "5000"])
    assert result.exit_code == 1 and "bomb.png" in result.output and "pixel limit of 5,000" in result.output
    assert tree_hashes(tmp_path / "in") == before
    helps = {}
    for command in (["predict"], ["segment"], ["preprocess"], ["data", "check"]):
        text = " ".join(runner.invoke(app, [*command, "--help"], terminal_width=400).output.split())
        helps[command[-1]] = text[text.index("--max-pixels"):][:200]
        assert "Default: 50000000" in helps[command[-1]]
    assert len({h.split("[default")[0] for h in helps.values()}) == 1
    declared = " ".join(MaxPixelsOption.__metadata__[0].help.split())  # the one declaration every command shows
    assert f"Default: {DEFAULT_MAX_PIXELS}" in declared and all(declared[:80] in h for h in helps.values())


@FAST
@given(width=st.integers(1, 1200), height=st.integers(1, 1200))
def test_odd_shapes_are_read_or_refused_never_crash(tmp_path_factory, width, height):
    path = tmp_path_factory.mktemp("shape") / "odd.png"
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(path)
    limit = 100_000
    try:
        pixels = read_image(path, max_pixels=limit).pixels
    except ImageReadError as error:
        assert width * height > limit and "odd.png" in str(error)
        return
    assert pixels.shape == (height, width) and pixels.dtype == np.float32


@FAST
@given(data=st.binary(min_size=1, max_size=400), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                                                                        b"\x00" * 128 + b"DICM"]))
def test_corrupt_bytes_give_one_line_errors(tmp_path_factory, data, prefix):
    path = tmp_path_factory.mktemp("bytes") / "corrupt.png"
    path.write_bytes(prefix + data)
    try:
        read_image(path)
    except ImageReadError as error:
        assert str(path) in str(error) and "\n" not in str(error)


def test_implausible_images_are_rejected_without_a_decision(bundle, tmp_path):
    inputs = tmp_path / "in"
    for name, array in {"flat.png": np.full((64, 64), 128, np.uint8), "strip.png": radiograph(3, 64)[:6],
                        "tall.png": np.tile(radiograph(4, 64), (10, 1))[:, :12]}.items():
        save_png(inputs / name, array)
    result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(tmp_path / "out"),
                                 "--no-evidence"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    rejected = table[table["status"] == "rejected"]
    assert len(rejected) == 3 and (rejected["decision"] == "").all() and (rejected["warnings"] != "").all()
    by_name = dict(zip(table["file"].map(lambda f: Path(f).name), table["warnings"], strict=True))
    assert "aspect ratio" in by_name["strip.png"] and "aspect ratio" in by_name["tall.png"]
    assert "no contrast" in by_name["flat.png"]
    assert (table.loc[table["status"] == "ok", "decision"] != "").all()
    result = runner.invoke(app, ["predict", str(bundle), str(inputs), "--out", str(tmp_path / "out"),
                                 "--no-evidence", "--decide-anyway"])
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert result.exit_code == 0 and (table["decision"] != "").all() and "rejected" not in set(table["status"])


def test_dicom_noise_is_one_line_and_truncation_is_named(tmp_path, capfd):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    good = write_dicom(tmp_path / "good.dcm", (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16))
    dataset = pydicom.dcmread(good)
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"garbage" * 20])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    capfd.readouterr()
    with pytest.raises(ImageReadError, match="JPEG 2000") as caught:
        read_image(tmp_path / "j2k.dcm")
    assert "\n" not in str(caught.value)
    assert "Traceback" not in "".join(capfd.readouterr())
    data = good.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "cut.dcm")


def test_nothing_is_ever_unpickled(bundle):
    source = Path(__file__).parents[1] / "src" / "unveil"
    for path in source.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0] + call.split(")")[1], path
    assert {p.suffix for p in bundle.iterdir()} <= {".safetensors", ".json"}


def test_pillow_global_limit_is_never_touched(tmp_path, monkeypatch):
    import threading

    path = save_png(tmp_path / "a.png", radiograph(size=128))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # another library's setting; ours is per call
    seen: set = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(30):
            assert read_image(path, max_pixels=20_000).pixels.shape == (128, 128)
    finally:
        stop.set()
        watcher.join()
    assert seen == {1000}
