import pytest

from unveil.data.compose import RecipeError, compose, load_recipes, split_role
from unveil.data.records import patient_keys

from conftest import make_records


@pytest.fixture(scope="module")
def tables():
    a = make_records("hospital-csv", {**{f"p{i}": (1, 1) for i in range(100)}, **{f"n{i}": (0, 1) for i in range(50)},
                                      "u0": (None, 1)})
    b = make_records("chestxray", {f"b{i}": (0, 1) for i in range(300)})
    c = make_records("rsna", {f"c{i}": (0, 1) for i in range(20)})
    d = make_records("covid-chestxray",
                     {**{f"d{i}": (1, 1) for i in range(80)}, **{f"e{i}": (0, 1) for i in range(20)}})
    return {"A": a, "B": b, "C": c, "D": d}


def counts(composition, split, source=None):
    part = composition.counts()[split]
    if source is not None:
        part = part["by_source"].get(source, {"covid+": 0, "covid-": 0})
    return part["covid+"], part["covid-"]


def test_shipped_recipes_are_the_papers_table1():
    book = load_recipes()
    assert list(book.recipes) == ["A", "AB", "AC", "AD", "D"]
    assert book.recipe("AB").negatives_from == ("B",) and book.recipe("AB").balance == "add_negatives"
    assert book.recipe("AD").bases == ("A", "D")


def test_A_subsamples_to_balance(tables):
    result = compose(load_recipes().recipe("A"), tables, seed=0)
    # A positives 100 -> 30 test / 14 val / 56 train; negatives 50 -> 15 / 7 / 28
    assert counts(result, "train") == (28, 28)
    assert counts(result, "val") == (7, 7)
    assert counts(result, "test") == (15, 15)
    assert any("without a COVID label" in w for w in result.warnings)


def test_AB_adds_negatives_from_B_in_every_split(tables):
    result = compose(load_recipes().recipe("AB"), tables, seed=0)
    assert counts(result, "train", "hospital-csv") == (56, 28)
    assert counts(result, "train", "chestxray") == (0, 28)
    assert counts(result, "val", "chestxray") == (0, 7)
    assert counts(result, "test", "hospital-csv") == (30, 15)
    assert counts(result, "test", "chestxray") == (0, 15)


def test_AC_warns_when_donor_runs_short(tables):
    result = compose(load_recipes().recipe("AC"), tables, seed=0)
    # C has 20 patients: 6 test, 3 val, 11 train; train needs 28
    assert counts(result, "train", "rsna") == (0, 11)
    assert any("stays unbalanced" in w for w in result.warnings)


def test_AD_pools_and_subsamples(tables):
    result = compose(load_recipes().recipe("AD"), tables, seed=0)
    # D: positives 80 -> 24 / 11 / 45, negatives 20 -> 6 / 3 / 11; train 101+ vs 39-
    assert counts(result, "train") == (39, 39)
    assert counts(result, "test") == (21, 21)


def test_D_alone(tables):
    result = compose(load_recipes().recipe("D"), tables, seed=0)
    assert counts(result, "train") == (11, 11) and counts(result, "test") == (6, 6)


def test_test_part_of_a_dataset_is_the_same_in_every_recipe(tables):
    book = load_recipes()
    tests = {}
    for name in ("AB", "AC"):
        result = compose(book.recipe(name), tables, seed=4)
        part = result.split("test")
        tests[name] = set(part.loc[part["source"] == "hospital-csv", "record_id"])
    assert tests["AB"] == tests["AC"]
    train_ab = compose(book.recipe("AB"), tables, seed=4).split("train")
    assert not set(train_ab["record_id"]) & tests["AB"]


def test_compositions_are_patient_exclusive_and_deterministic(tables):
    book = load_recipes()
    first = compose(book.recipe("AB"), tables, seed=9).records
    second = compose(book.recipe("AB"), tables, seed=9).records
    assert first["record_id"].tolist() == second["record_id"].tolist()
    keys = first.assign(key=patient_keys(first)).groupby("key")["split"].nunique()
    assert keys.max() == 1


def test_missing_role_and_bad_recipe_file(tables, tmp_path):
    with pytest.raises(RecipeError, match="needs data for role"):
        compose(load_recipes().recipe("AB"), {"A": tables["A"]}, seed=0)
    bad = tmp_path / "r.yaml"
    bad.write_text("recipes:\n  X: {bases: [A], balance: add_negatives}\n")
    with pytest.raises(RecipeError, match="names no negatives_from"):
        load_recipes(bad)
    with pytest.raises(RecipeError, match="unknown composition"):
        load_recipes().recipe("ZZ")


def _book(tmp_path, body: str):
    path = tmp_path / "recipes.yaml"
    path.write_text("roles: {A: {}, B: {}}\nrecipes:\n" + body)
    return load_recipes(path)


def test_positives_from_takes_only_covid_positive_images_with_the_split_of_the_whole_role(tables, tmp_path):
    book = _book(tmp_path, "  A: {bases: [A]}\n"
                           "  AxB: {positives_from: [A], negatives_from: [B], balance: add_negatives}\n")
    shortcut = compose(book.recipe("AxB"), tables, seed=0)
    assert book.recipe("AxB").roles == ("A", "B")
    # A's 100 positives: 56 train / 14 val / 30 test, none of A's negatives; B fills each split
    assert counts(shortcut, "train", "hospital-csv") == (56, 0)
    assert counts(shortcut, "train", "chestxray") == (0, 56)
    assert counts(shortcut, "test", "hospital-csv") == (30, 0)
    assert counts(shortcut, "test", "chestxray") == (0, 30)
    # A's images keep the split A has on its own (as a base in any recipe): the same test part everywhere
    whole = split_role(tables["A"], "A", seed=0, test_fraction=0.3, val_fraction=0.2)
    for split in ("train", "test"):
        part = shortcut.split(split)
        mine = set(part[part["source"] == "hospital-csv"]["record_id"])
        assert mine == set(whole.query(f"covid == 1 and split == '{split}'")["record_id"])
    own = compose(book.recipe("A"), tables, seed=0)
    assert not set(shortcut.split("test")["record_id"]) & set(own.split("train")["record_id"])


@pytest.mark.parametrize(("body", "message"), [
    ("  X: {negatives_from: [B], balance: add_negatives}\n", "names no bases (and no positives_from)"),
    ("  X: {bases: [A], positives_from: [A]}\n", "role(s) A in positives_from and in bases"),
    ("  X: {positives_from: [Z]}\n", "undefined role(s) Z"),
])
def test_recipe_with_positives_from_refused_when_ambiguous(tmp_path, body, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _book(tmp_path, body)
