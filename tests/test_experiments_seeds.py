"""Several seeds (one full run each, aggregated over seeds) and the mitigated arm of an experiment."""

import math

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from test_experiments import TINY, write
from unveil.cli import app
from unveil.evaluation.store import ResultsStore
from unveil.experiments import ExperimentError, load_experiment, reproduce
from unveil.reports.mitigation import MEASURES, PAIRED, headline, over_seeds

ARM = {**TINY, "seeds": [0, 1], "grid": {**TINY["grid"], "encoders": ["none"]},
       "mitigation": {"debias": ["balanced"], "compositions": ["AB"]},
       "audit": {**TINY["audit"], "test_sets": None, "external": ["D"]}}


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": []}, "exp.yaml:.*seeds: lists no seed"),
    ({"seeds": [1, 1]}, "seeds: seed.s. 1 listed twice"),
    ({"mitigation": {"debias": ["end"], "compositions": ["AC"]}}, r"mitigation.compositions\[0\]: AC is not"),
    ({"mitigation": {"debias": ["magic"], "compositions": ["AB"]}}, r"mitigation.debias\[0\]"),
    ({"mitigation": {"compositions": ["AB"]}}, "mitigation.debias: the mitigated arm needs both"),
])
def test_seeds_and_mitigation_are_checked(tmp_path, change, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, {**TINY, **change}))


def test_seeds_and_the_mitigated_arm_plan_their_cells(tmp_path):
    experiment = load_experiment(write(tmp_path, ARM))
    assert experiment.all_seeds == [0, 1] and experiment.seed == 0
    assert experiment.mitigated_cells() == [("conv8", "none", "AB", "balanced")]
    assert load_experiment(write(tmp_path, ARM), seed=7).all_seeds == [7]  # --seed runs one seed
    assert load_experiment(write(tmp_path, TINY)).all_seeds == [0]


def test_two_seeds_with_a_mitigated_arm_run_and_aggregate(tmp_path):
    out = tmp_path / "out"
    result = reproduce(load_experiment(write(tmp_path, ARM)), out, report=True)
    assert result == out / "tables" / "results_by_cell.csv"
    for seed in (0, 1):
        with ResultsStore(out / f"seed-{seed}" / "results.sqlite") as store:
            cells = store.table("cells").set_index("cell_id")
            assert set(cells.index) == {"conv8-none-AB", "conv8-none-AB-balanced"}
            assert cells.loc["conv8-none-AB-balanced", "debias"] == "balanced"
            assert cells.loc["conv8-none-AB", "debias"] == "none"
            assert set(store.table("audits")["cell_id"]) == set(cells.index)
            claims = set(store.table("comparisons")["claim"])
            assert "debias balanced helps" in claims
        seed_page = (out / f"seed-{seed}" / "report.html").read_text(encoding="utf-8")
        assert "Mitigation, re-audited" in seed_page and "Conv8 / none / AB, debias balanced" in seed_page
        assert (out / f"seed-{seed}" / "tables" / "mitigation.md").is_file()
    assert (out / "cache").is_dir() and not (out / "seed-0" / "cache").exists()  # one cache for the seeds
    pooled = pd.read_csv(result)
    assert set(pooled["n_seeds"]) == {2} and set(pooled["seeds"]) == {"0, 1"}
    assert set(pooled["model"]) == {"conv8-none-AB", "conv8-none-AB-balanced"}
    every = pd.read_csv(out / "tables" / "results.csv")
    assert sorted(every["seed"].unique()) == [0, 1] and len(every) == 2 * len(pooled)
    one = every[(every["model"] == "conv8-none-AB") & (every["test_set"] == "AB")]
    row = pooled[(pooled["model"] == "conv8-none-AB") & (pooled["test_set"] == "AB")].iloc[0]
    assert math.isclose(row["balanced_accuracy"], one["balanced_accuracy"].mean())
    table2 = (out / "tables" / "table2.md").read_text(encoding="utf-8")
    assert "AB, debias balanced" in table2 and "seeds 0, 1" in table2
    arm = pd.read_csv(out / "tables" / "mitigation.csv")
    assert set(arm["measure"]) >= {PAIRED, "external AUC"}
    assert set(arm[arm["measure"].isin([PAIRED, "external AUC"])]["seeds"]) == {"0, 1"}  # a probe pair may apply
    # in one seed only (too few images of a source in the other's split): it is pooled over the seeds it has
    assert set(arm["verdict"]) <= {"improved", "worse", "not shown"}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "The mitigated arm side by side" in page and 'href="seed-1/report.html"' in page
    (out / "report.html").unlink()
    result_cli = CliRunner().invoke(app, ["report", str(out)])  # rewrites each seed's report and the summary
    assert result_cli.exit_code == 0, result_cli.output
    assert "seed-0/report.html" in result_cli.output and (out / "report.html").is_file()
    refused = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "r.html")])
    assert refused.exit_code != 0 and "holds one run per seed (0, 1)" in refused.output
    calls = []
    import unveil.experiments.runner as runner
    real = runner.CellJob.run
    runner.CellJob.run = lambda job: (calls.append(job.name), real(job))[1]
    try:
        reproduce(load_experiment(write(tmp_path, ARM)), out, report=False)  # finished: nothing retrained
    finally:
        runner.CellJob.run = real
    assert calls == []


def _rows(differences, measure="external AUC", subject="C"):
    return pd.DataFrame([{"cell": "m", "twin": "t", "debias": "end", "measure": measure, "subject": subject,
                          "twin_value": 0.6, "value": 0.6 + d, "difference": d} for d in differences])


def test_over_seeds_verdicts_need_the_interval_to_exclude_no_change():
    improved = over_seeds({0: _rows([0.10]), 1: _rows([0.12]), 2: _rows([0.11])})
    row = improved.iloc[0]
    assert row["verdict"] == "improved" and math.isclose(row["difference"], 0.11)
    # t(0.975, 2) = 4.3027; sd of 0.10, 0.12, 0.11 = 0.01: half-width 0.02484
    assert math.isclose(row["difference_high"] - row["difference"], 4.302653 * 0.01 / math.sqrt(3), rel_tol=1e-5)
    mixed = over_seeds({0: _rows([0.10]), 1: _rows([-0.08]), 2: _rows([0.02])})
    assert mixed.iloc[0]["verdict"] == "not shown"
    probe = over_seeds({s: _rows([d], measure=MEASURES[0].label) for s, d in enumerate([0.1, 0.12, 0.11])})
    assert probe.iloc[0]["verdict"] == "worse"  # a higher source-probe accuracy: the source is easier to read
    assert over_seeds({0: _rows([0.3])}).iloc[0]["verdict"] == "not shown"  # one seed: no interval
    assert headline(mixed).startswith("No mitigation was shown to help")
    assert "improved: external AUC of m on C" in headline(improved)


def test_too_wide_notes_apply_the_reports_rule_to_the_seeds_interval():
    from unveil.reports.seeds import too_wide_notes

    pooled = pd.DataFrame({"model": ["m", "m", "n"], "test_set": ["A", "B", "A"],
                           "balanced_accuracy": [0.80, 0.56, 0.9], "balanced_accuracy_half_width": [0.05, 0.16, 0.11]})
    (line,) = too_wide_notes(pooled)
    assert "m on Test B: 0.56 ± 0.16: width 0.320 > 0.20; contains 0.5 (chance)" in line
    assert "n on Test A: 0.90 ± 0.11: width 0.220 > 0.20" in line and "m on Test A" not in line
    assert too_wide_notes(pooled.iloc[:1]) == []


def test_public_scale_loads_with_its_recipes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment("public-scale")
    assert experiment.all_seeds == [0, 1, 2] and experiment.compositions == ["Q", "QB"]
    assert experiment.mitigated_cells() == [("conv8", "none", "QB", "end"), ("conv8", "B", "QB", "end")]
    book = experiment.recipe_book()
    assert book.recipe("QB").positives_from == ("Q",) and book.recipe("QB").negatives_from == ("B",)
    assert yaml.safe_load(experiment.source.read_text())["preprocess"]["size"] == 128


@pytest.mark.parametrize(("lower_is_better", "twin", "mine", "verdict"), [
    (True, (0.90, 0.85, 0.95), (0.60, 0.52, 0.70), "improved"),  # probe down, intervals apart
    (True, (0.90, 0.85, 0.95), (0.84, 0.75, 0.90), "not shown"),  # overlapping
    (True, (0.60, 0.52, 0.70), (0.90, 0.85, 0.95), "worse"),
    (False, (0.60, 0.52, 0.70), (0.90, 0.85, 0.95), "improved"),  # external AUC up
    (False, (0.60, float("nan"), 0.70), (0.90, 0.85, 0.95), "not shown"),  # no interval: no verdict
])
def test_unpaired_verdict_reads_the_intervals(lower_is_better, twin, mine, verdict):
    from unveil.reports.mitigation import Measure, _unpaired

    measure = Measure("t", "t", lower_is_better, "")
    as_row = lambda v: pd.Series({"value": v[0], "low": v[1], "high": v[2]})  # noqa: E731
    assert _unpaired(measure, as_row(twin), as_row(mine))[0] == verdict
