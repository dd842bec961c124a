import pandas as pd
import pytest

from unveil.data.records import (
    FINDINGS,
    REQUIRED_COLUMNS,
    RecordTableError,
    build_records,
    canonical_sex,
    canonical_view,
    concat_records,
    make_record_id,
    parse_age,
    patient_keys,
    validate_records,
)

from conftest import make_records


@pytest.mark.parametrize("raw, expected", [("PA", "PA"), ("AP Supine", "AP"), ("AP erect", "AP"), ("ap", "AP"),
                                           ("L", "LATERAL"), ("Lateral", "LATERAL"), ("", None), (None, None),
                                           ("Axial", None)])
def test_canonical_view(raw, expected):
    assert canonical_view(raw) == expected


@pytest.mark.parametrize("raw, expected", [("54", 54.0), ("054Y", 54.0), ("50+", None), ("", None), ("-3", None),
                                           (None, None)])
def test_parse_age(raw, expected):
    assert parse_age(raw) == expected


def test_canonical_sex():
    assert [canonical_sex(v) for v in ("M", "female", "x", None)] == ["M", "F", None, None]


def test_record_id_is_relative_to_root(tmp_path):
    image = tmp_path / "images" / "a.png"
    assert make_record_id("src", tmp_path, image) == "src/images/a.png"


def test_build_records_gives_contract_dtypes():
    table = make_records("s", {"p1": (1, 2), "p2": (0, 1), "p3": (None, 1)})
    assert list(table.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert str(table["covid"].dtype) == "Int8"
    assert table["covid"].isna().sum() == 1
    assert set(table["finding"]) <= set(FINDINGS)


def test_validator_lists_every_problem():
    table = make_records("s", {"p1": (1, 1), "p2": (0, 1)})
    broken = table.copy()
    broken.loc[1, "record_id"] = broken.loc[0, "record_id"]
    broken["finding"] = broken["finding"].astype(object)
    broken.loc[0, "finding"] = "flu"
    broken.loc[1, "view"] = "XX"
    with pytest.raises(RecordTableError) as error:
        validate_records(broken)
    message = str(error.value)
    assert "duplicated record_id" in message and "finding not in" in message and "view not in" in message


def test_validator_rejects_missing_columns_and_covid_mismatch():
    with pytest.raises(RecordTableError, match="lacks required columns"):
        validate_records(pd.DataFrame({"record_id": ["a"]}))
    table = make_records("s", {"p1": (1, 1)})
    table["covid"] = pd.array([0], dtype="Int8")
    with pytest.raises(RecordTableError, match="finding 'covid' but covid != 1"):
        validate_records(table)


def test_patient_keys_are_source_qualified_and_concat_keeps_ids_unique():
    a = make_records("a", {"17": (1, 1)})
    b = make_records("b", {"17": (0, 1)})
    both = concat_records([a, b])
    assert patient_keys(both).nunique() == 2
    with pytest.raises(RecordTableError, match="duplicated record_id"):
        concat_records([a, a])


def test_empty_table_is_valid():
    assert len(build_records([])) == 0
