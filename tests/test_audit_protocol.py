"""The audit test protocol (issue 26.3): one registry in a fixed order, every registered test conforming, "too few"
as InsufficientData recorded "not applicable" with its reason, a real ValueError never swallowed, and a test
registered from outside appearing in the audit's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unveil.audit import (
    AuditContext,
    AuditOutcome,
    AuditResult,
    AuditTest,
    InsufficientData,
    Verdict,
    audit,
    register,
    registered,
    unregister,
)
from unveil.audit.protocol import RESOURCES, check_test
from unveil.audit.run import run_test, run_tests
from unveil.audit.suite.feature_map import FeatureMap
from unveil.audit.suite.source_probes import SourceProbes
from unveil.audit.verdict import DATA_TESTS, MEANINGS, summary_sentence
from unveil.errors import UnveilError

BUILT_IN = ["feature map", "source probes", "lung occlusion", "transfer", "metadata", "contamination",
            "acquisition fingerprint", "source discovery", "saliency in lungs", "infection saliency"]


def _context(tmp_path: Path, n: int, features: np.ndarray | None = None) -> AuditContext:
    """A context over ``n`` images of distinct patients, labels alternating, with these ``features`` (no model:
    the tests that read only records and features run on it)."""
    labels = np.arange(n) % 2
    records = pd.DataFrame({"record_id": [f"toy/{i}" for i in range(n)], "source": "toy",
                            "patient_id": [str(i) for i in range(n)], "test_set": "toy", "audited_as": "toy"})
    audited = SimpleNamespace(records=records, is_positive=labels, groups=("toy::" + records["patient_id"]).to_numpy(),
                              label_names=np.where(labels == 1, "COVID+", "COVID-"), members={"toy": set()}, own=None,
                              training_groups=None)
    context = AuditContext(audited, tmp_path)  # type: ignore[arg-type]
    context.features = np.random.default_rng(0).normal(size=(n, 4)) if features is None else features
    context.probability = np.linspace(0.1, 0.9, n)
    return context


class Toy(AuditTest):
    """A test that does what it is told: return one verdict, or raise ``error``."""

    name = "toy"
    needs = ("records",)
    order = 10_000
    measure = "share of images"

    def __init__(self, error: Exception | None = None, figures_key: str = "toy") -> None:
        self.error, self.figures_key = error, figures_key

    def run(self, context: AuditContext) -> AuditOutcome:
        if self.error is not None:
            raise self.error
        share = float(np.mean(context.is_positive))
        verdict = Verdict(self.name, "all audited images", share, math.nan, math.nan, "informative (no flag)", None,
                          f"{share:.0%} of the audited images are COVID+", measure=self.measure)
        return AuditOutcome(verdicts=[verdict], figures={self.figures_key: {"share": share}},
                            per_image={"toy_label": np.asarray(context.is_positive) * 10})


@pytest.fixture
def toy_registered():
    """The toy test registered for one test, and removed after (the registry is shared by the whole process)."""
    test = register(Toy())
    yield test
    unregister(test.name)


def test_the_registry_runs_the_built_in_tests_in_their_order():
    tests = registered()
    assert [test.name for test in tests] == BUILT_IN
    orders = [test.order for test in tests]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)


@pytest.mark.parametrize("test", registered(), ids=lambda test: test.name)
def test_every_registered_test_follows_the_protocol(test):
    check_test(test)  # raises on a name, needs or order out of the protocol
    assert isinstance(test, AuditTest) and type(test).run is not AuditTest.run
    assert test.needs and set(test.needs) <= set(RESOURCES)
    assert all(hasattr(AuditContext, need) for need in RESOURCES)  # every resource a test may need is there
    assert test.stage, "a built-in test names its progress stage"


def test_the_protocol_refuses_a_malformed_or_duplicate_test():
    class Nameless(Toy):
        name = ""

    class Greedy(Toy):
        name = "greedy"
        needs = ("records", "the patients' addresses")

    class Unordered(Toy):
        name = "unordered"
        order = float("nan")

    for bad, words in ((Nameless(), "needs a name"), (Greedy(), "needs must be"), (Unordered(), "order must be"),
                       (object(), "AuditTest instance")):
        with pytest.raises(TypeError, match=words):
            register(bad)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="already registered"):
        register(FeatureMap())
    assert [test.name for test in registered()] == BUILT_IN
    with pytest.raises(KeyError, match="no audit test named"):
        unregister("no such test")


def test_a_registered_flag_speaks_in_the_lead_sentence_until_it_is_removed():
    class Balance(Toy):
        name = "balance"
        meanings = {"balance": "one class dominates the audited images"}
        data_flags = ("balance",)

    class Copycat(Toy):
        name = "copycat"
        meanings = {"source probe": "something else"}

    register(Balance())
    try:
        text = summary_sentence([("balance", True), ("source probe", False)])
        assert text.startswith("No flag fired on the model (1 kind of test with a rule)")
        assert text.endswith(". On the data: balance: one class dominates the audited images.")
        with pytest.raises(TypeError, match="source probe already belong"):
            register(Copycat())  # a built-in test's meaning is not redefined
    finally:
        unregister("balance")
    assert "balance" not in MEANINGS and "balance" not in DATA_TESTS and "copycat" not in [t.name for t in registered()]
    assert summary_sentence([("balance", True)]).startswith("1 flag fired on the model — balance: see the table")


def test_insufficient_data_is_recorded_not_applicable_with_its_reason(tmp_path):
    outcome = run_test(Toy(InsufficientData("only 1 patient per class")), _context(tmp_path, 4))
    [verdict] = outcome.verdicts
    assert verdict.state == "not applicable" and verdict.flagged is None and math.isnan(verdict.value)
    assert verdict.suggests == "not applicable: only 1 patient per class" and verdict.test == "toy"
    assert verdict.shown == "n/a" and outcome.figures == {"toy": {"not_applicable": "only 1 patient per class"}}
    assert issubclass(InsufficientData, UnveilError) and issubclass(InsufficientData, ValueError)


def test_too_few_images_for_the_feature_map_gives_todays_note_and_no_stale_map(tmp_path):
    (tmp_path / "tsne_by_source.png").write_bytes(b"an earlier run's map")
    outcome = run_test(FeatureMap(), _context(tmp_path, 3))
    assert outcome.figures == {"tsne_note": "t-SNE needs at least 5 images, got 3"} and not outcome.verdicts
    assert np.isnan(outcome.per_image["tsne_x"]).all() and len(outcome.per_image["tsne_y"]) == 3
    assert not (tmp_path / "tsne_by_source.png").exists() and not outcome.files


def test_a_probe_with_too_few_patients_is_a_note_and_a_real_value_error_propagates(tmp_path, monkeypatch):
    outcome = SourceProbes().run(_context(tmp_path, 3))  # COVID+: one patient
    assert outcome.figures["label_probe_note"].startswith("probe label: each side needs images of at least 2 patients")
    assert outcome.figures["probes"] == [] and not outcome.verdicts

    def broken(*args, **kwargs):
        raise ValueError("Input X contains NaN.")  # what scikit-learn says of a bug upstream, not of too few data

    monkeypatch.setattr("unveil.audit.suite.source_probes.linear_probe", broken)
    with pytest.raises(ValueError, match="contains NaN"):
        SourceProbes().run(_context(tmp_path, 20))
    with pytest.raises(ValueError, match="a bug"):
        run_tests(_context(tmp_path, 4), AuditResult([], {}), (Toy(ValueError("a bug")),))


def test_the_runner_merges_outcomes_and_refuses_a_key_written_twice(tmp_path):
    result = AuditResult([], {"images": 4})
    columns = run_tests(_context(tmp_path, 4), result, (Toy(),))
    assert [v.test for v in result.verdicts] == ["toy"] and result.figures == {"images": 4, "toy": {"share": 0.5}}
    assert columns["toy_label"].tolist() == [0, 10, 0, 10]

    class Twin(Toy):
        name = "twin"

    with pytest.raises(RuntimeError, match="figures\\['toy'\\], which 'toy' wrote"):
        run_tests(_context(tmp_path, 4), AuditResult([], {}), (Toy(), Twin()))
    with pytest.raises(RuntimeError, match="figures\\['images'\\], which 'audit' wrote"):
        run_tests(_context(tmp_path, 4), AuditResult([], {"images": 4}), (Toy(figures_key="images"),))

    class Short(Toy):
        name = "short"

        def run(self, context: AuditContext) -> AuditOutcome:
            return AuditOutcome(per_image={"short": np.zeros(len(context.records) - 1)})

    with pytest.raises(RuntimeError, match="per-image columns of other lengths than the 4 images: {'short': 3}"):
        run_tests(_context(tmp_path, 4), AuditResult([], {}), (Short(),))


@pytest.fixture(scope="module")
def small_hospital(tmp_path_factory) -> str:
    """A hospital CSV of 12 patients (6 COVID+), one 32-px image each, as ``hospital-csv:PATH``."""
    root = tmp_path_factory.mktemp("hospital")
    rng = np.random.default_rng(0)
    rows = ["path,patient,label"]
    for index in range(12):
        pixels = rng.integers(0, 200, size=(32, 32)).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{index}.png")
        rows.append(f"{index}.png,p{index},{'positive' if index % 2 else 'negative'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return f"hospital-csv:{root / 'labels.csv'}"


def test_a_registered_test_appears_in_the_audit_outputs(bundle, small_hospital, tmp_path, toy_registered):
    from unveil.audit import AuditThresholds

    out = tmp_path / "audit"
    result = audit(bundle, [small_hospital], out, own=False, resamples=20, saliency_samples=1,
                   thresholds=AuditThresholds(min_images=2), cache=tmp_path / "cache")
    assert [v.test for v in result.verdicts][-1] == "toy"  # it runs last: its order is the highest
    document = json.loads((out / "audit.json").read_text())
    assert document["verdicts"][-1]["suggests"] == "50% of the audited images are COVID+"
    assert document["figures"]["toy"] == {"share": 0.5}
    assert "| toy |" in (out / "audit.md").read_text()
    images = pd.read_csv(out / "audit_images.csv")
    assert list(images.columns)[-1] == "toy_label" and sorted(set(images["toy_label"])) == [0, 10]
    assert list(images.columns)[:8] == ["record_id", "source", "patient_id", "test_set", "audited_as", "label",
                                        "probability", "probability_lungs_hidden"]


def test_a_source_pair_too_small_to_probe_is_a_not_applicable_verdict_and_the_lead_sentence_says_so() -> None:
    import pandas as pd

    from unveil.audit.suite.source_probes import too_few_to_probe

    counts = pd.Series({"chestxray": 8, "hospital-csv": 2, "rsna": 30})
    verdicts = too_few_to_probe(counts, 10, "COVID-")
    assert [v.subject for v in verdicts] == ["chestxray vs hospital-csv (COVID- images)",
                                             "chestxray vs rsna (COVID- images)",
                                             "hospital-csv vs rsna (COVID- images)"]
    assert all(v.state == "not applicable" for v in verdicts)
    assert "chestxray: 8 image(s), hospital-csv: 2 among COVID- images; a source probe needs 10" in verdicts[0].suggests
    assert too_few_to_probe(pd.Series({"a": 10, "b": 12}), 10, "COVID+") == []
    text = summary_sentence([("source probe", False)], not_run=["source probe", "source probe"])
    assert text.startswith("No flag fired") and text.endswith(
        "Not run for too few patients, classes or images: source probe (see the table).")
