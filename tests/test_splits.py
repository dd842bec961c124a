import pandas as pd
import pytest

from unveil.data.leakage import LeakageError, check_leakage, find_leakage
from unveil.data.records import patient_keys
from unveil.data.splits import (
    SplitError,
    SplitFileError,
    apply_split_file,
    patient_exclusive_split,
    read_split_file,
    write_split_file,
)
from unveil.errors import UnveilError

from conftest import make_records


@pytest.fixture
def records():
    patients = {f"pos{i:03d}": (1, 1 + i % 3) for i in range(100)}
    patients.update({f"neg{i:03d}": (0, 1 + i % 2) for i in range(60)})
    return make_records("s", patients)


def test_split_fractions_are_exact_per_stratum(records):
    split = patient_exclusive_split(records, seed=3)
    per_patient = pd.DataFrame({"p": patient_keys(records), "s": split, "c": records["covid"]}).drop_duplicates("p")
    counts = per_patient.groupby(["c", "s"]).size()
    # 100 positive patients: 30 test, 70 left -> 14 val, 56 train; 60 negatives: 18 / 8 / 34 (42 * 0.2 = 8.4)
    assert counts[(1, "test")] == 30 and counts[(1, "val")] == 14 and counts[(1, "train")] == 56
    assert counts[(0, "test")] == 18 and counts[(0, "val")] == 8 and counts[(0, "train")] == 34


def test_split_is_patient_exclusive(records):
    split = patient_exclusive_split(records, seed=1)
    assert find_leakage(records.assign(split=split)).clean
    spread = pd.DataFrame({"p": patient_keys(records), "s": split}).groupby("p")["s"].nunique()
    assert spread.max() == 1


def test_same_seed_same_split_whatever_the_row_order(records):
    first = patient_exclusive_split(records, seed=7)
    shuffled = records.sample(frac=1, random_state=0)
    second = patient_exclusive_split(shuffled, seed=7)
    assert (first.to_numpy() == second.loc[records.index].to_numpy()).all()
    assert not (patient_exclusive_split(records, seed=8) == first).all()


def test_split_file_is_byte_identical_for_same_seed(records, tmp_path):
    a = write_split_file(tmp_path / "a.csv", records, patient_exclusive_split(records, seed=5))
    b = write_split_file(tmp_path / "b.csv", records, patient_exclusive_split(records, seed=5))
    c = write_split_file(tmp_path / "c.csv", records, patient_exclusive_split(records, seed=6))
    assert a == b != c
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    table = read_split_file(tmp_path / "a.csv", expected_hash=a)
    assert len(table) == len(records)
    applied = apply_split_file(records, table)
    assert set(applied["split"]) == {"train", "val", "test"}


def test_split_file_hash_mismatch_and_unknown_records(records, tmp_path):
    digest = write_split_file(tmp_path / "a.csv", records, patient_exclusive_split(records, seed=5))
    path = tmp_path / "a.csv"
    path.write_text(path.read_text().replace("train", "test", 1))
    with pytest.raises(SplitFileError, match="content hash"):
        read_split_file(path, expected_hash=digest)
    with pytest.raises(SplitFileError, match="a.meta.json recorded"):  # its own meta.json catches the edit too
        read_split_file(path)
    write_split_file(path, records, patient_exclusive_split(records, seed=5))
    with pytest.raises(SplitFileError, match="not in the data"):
        apply_split_file(records.iloc[:5], read_split_file(path))


def test_invalid_fraction_rejected(records):
    with pytest.raises(SplitError, match="test_fraction"):
        patient_exclusive_split(records, seed=0, test_fraction=1.2)


def test_unknown_stratification_column_is_a_user_error(records):
    with pytest.raises(SplitError, match="cannot stratify by 'sexx': no such column; the records have .*covid"):
        patient_exclusive_split(records, seed=0, stratify_by=["covid", "sexx"])
    assert issubclass(SplitError, UnveilError)


def test_leakage_of_a_patient_is_detected(records):
    split = patient_exclusive_split(records, seed=0).copy()
    patient_rows = records.index[records["patient_id"] == "pos002"]  # three images
    split.loc[patient_rows[0]] = "train"
    split.loc[patient_rows[1]] = "test"
    with pytest.raises(LeakageError, match="s::pos002 in test\\+train"):
        check_leakage(records.assign(split=split))


def test_leakage_of_duplicate_images_is_detected():
    records = make_records("s", {"a": (1, 1), "b": (1, 1), "c": (0, 1), "d": (0, 1)})
    records = records.assign(split=["train", "test", "train", "test"])
    fingerprints = pd.DataFrame({
        "record_id": records["record_id"],
        "sha256": ["h1", "h1", "h2", "h3"],                  # a and b: the same file
        "phash": ["ffff0000ffff0000" * 4, "ffff0000ffff0000" * 4, "0f0f0f0f0f0f0f0f" * 4,
                  "0f0f0f0f0f0f0f0e" * 4],  # c and d differ in 4 bits
    })
    report = find_leakage(records, fingerprints)
    assert report.exact_images == [["s/a/0.png", "s/b/0.png"]]
    assert report.near_images == [["s/c/0.png", "s/d/0.png"]]
    assert not report.patients
    same_split = records.assign(split="train")
    assert find_leakage(same_split, fingerprints).clean
