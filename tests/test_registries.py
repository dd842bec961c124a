"""The registries are the one source: a model, metric or threshold rule registered once appears in the CLI,
the tables and the store, and every registered metric is computed and tabulated."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import typer.main
from torch import nn
from typer.testing import CliRunner

from unveil.cli import app
from unveil.cli.train import registered_model
from unveil.evaluation import metric_specs
from unveil.evaluation.metric_specs import IntervalKind, MetricSpec, MetricSpecError, Needs
from unveil.evaluation.metrics import evaluate_scores, metrics_at_paper_threshold
from unveil.evaluation.store import ResultsStore, stored_metrics
from unveil.evaluation.tables import architecture_tables, interval_captions, named_tables, summary_table
from unveil.models import EncoderParts, ModelError, ModelSpec, build_model, model_names, register_model
from unveil.models.catalog import arch_help, model_spec, unregister_model
from unveil.thresholds import ThresholdError, ThresholdRequest, ThresholdRule, rules_help


def _tiny_encoder(in_channels: int, width: float) -> EncoderParts:
    encoder = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return EncoderParts(encoder, 4, "0", "0.weight", "head")


@pytest.fixture
def fake_model() -> Iterator[ModelSpec]:
    spec = register_model(ModelSpec("tinynet", "TinyNet", _tiny_encoder, scalable_width=True))
    try:
        yield spec
    finally:
        unregister_model("tinynet")


def _youden_index(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return tp / (tp + fn) + tn / (tn + fp) - 1


@pytest.fixture
def fake_metric() -> Iterator[MetricSpec]:
    spec = metric_specs.register_metric(MetricSpec("youden_index", "J", "Youden's J", Needs.BOTH,
                                                   IntervalKind.BOOTSTRAP, _youden_index, paper=False,
                                                   at_paper_threshold=True))
    try:
        yield spec
    finally:
        metric_specs.unregister_metric("youden_index")


def _rows(architecture: str = "conv8") -> pd.DataFrame:
    """Result rows of two test sets (one without COVID- images), as `evaluate_models` gives them."""
    rng = np.random.default_rng(3)
    rows = []
    for test_set, negatives in (("A", True), ("B", False)):
        labels = np.r_[np.zeros(12 if negatives else 0, int), np.ones(12, int)]
        scores = np.clip(0.2 + 0.5 * labels + 0.3 * rng.random(len(labels)), 0, 1)
        evaluation = evaluate_scores(labels, scores, np.arange(len(labels)) // 2, threshold=0.6, resamples=40)
        rows.append({"model": f"{architecture}-run", "architecture": architecture, "encoder": "none",
                     "training_set": "A", "test_set": test_set, "resamples": 40, "seed": 0,
                     **evaluation.as_row(), **metrics_at_paper_threshold(labels, scores)})
    return pd.DataFrame(rows)


def test_every_registered_metric_is_computed_and_tabulated():
    rows = _rows()
    table = architecture_tables(rows)["conv8"]
    for spec in metric_specs.metric_specs():
        assert spec.key in rows and f"{spec.key}_note" in rows, spec.key
        assert spec.label in table.columns, spec.label
        assert (f"{spec.key}_wilson_low" in rows) == (spec.interval is IntervalKind.WILSON)
    # B holds no COVID- images: every metric needing them is n/a there, with the note its spec gives
    b = rows.set_index("test_set").loc["B"]
    for spec in metric_specs.metric_specs():
        undefined = spec.needs in (Needs.NEGATIVES, Needs.BOTH)
        assert np.isnan(b[spec.key]) == undefined, spec.key
        if undefined:
            assert "no COVID- images" in b[f"{spec.key}_note"]


def test_a_metric_registered_once_is_computed_tabulated_captioned_and_stored(fake_metric, tmp_path):
    rows = _rows()
    a = rows.set_index("test_set").loc["A"]
    assert a["youden_index"] == pytest.approx(a["sensitivity"] + a["specificity"] - 1)
    assert "youden_index_at_0.5" in rows and np.isnan(rows.set_index("test_set").loc["B", "youden_index"])
    caption, table, notes = named_tables(rows)["tableA1_conv8"]
    assert table.columns.get_loc("J") == table.columns.get_loc("DOR (HA)") + 1
    assert "J" in interval_captions().split("F1, ")[1] and "J" in caption
    assert any("J: undefined: no COVID- images" in note for note in notes)
    with ResultsStore(tmp_path / "store.sqlite") as store:
        store.put_cell({"cell_id": "conv8-run", "architecture": "conv8", "encoder": "none", "training_set": "A",
                        "config": {}, "status": "done"})
        store.put_results("conv8-run", rows, {})
        assert {"youden_index", "youden_index_at_0.5"} <= set(store.table("results")["metric"])
        wide = store.wide_results().set_index("test_set")
    assert wide.loc["A", "youden_index"] == pytest.approx(a["youden_index"])
    assert "youden_index" in stored_metrics()


def test_metric_specs_refuse_what_cannot_be_computed():
    with pytest.raises(MetricSpecError, match="registered already"):
        metric_specs.register_metric(metric_specs.metric_spec("f1"))
    with pytest.raises(MetricSpecError, match="trials"):
        metric_specs.register_metric(MetricSpec("hit", "Hit", "hit", Needs.IMAGES, IntervalKind.WILSON, _youden_index))
    with pytest.raises(MetricSpecError, match="formula"):
        metric_specs.register_metric(MetricSpec("ap", "AP", "average precision", Needs.BOTH, IntervalKind.BOOTSTRAP,
                                                None))
    with pytest.raises(MetricSpecError, match="column suffix"):
        metric_specs.register_metric(MetricSpec("f1_low", "x", "x", Needs.IMAGES, IntervalKind.BOOTSTRAP,
                                                _youden_index))
    with pytest.raises(MetricSpecError, match="unknown metric 'mcc'; metrics: sensitivity"):
        metric_specs.metric_spec("mcc")


def test_a_model_registered_once_builds_and_appears_in_tables_and_cli(fake_model):
    assert model_names()[-1] == "tinynet" and arch_help().endswith("covidnet or tinynet.")
    model = build_model("tinynet", width=0.5)
    assert model.architecture == "tinynet" and model.target_layer == "encoder.0"
    assert registered_model("tinynet") == "tinynet"
    rows = pd.concat([_rows("resnet18"), _rows("tinynet")], ignore_index=True)
    assert list(summary_table(rows)["Architecture"]) == ["ResNet-18", "TinyNet"]  # registry order
    named = named_tables(rows)
    assert list(named) == ["table2", "tableA1_resnet18", "tableA2_tinynet"]
    assert named["tableA2_tinynet"][0].startswith("Table A2: TinyNet, model x test set")


def test_model_registry_refuses_duplicates_and_bad_builders():
    with pytest.raises(ModelError, match="registered already"):
        register_model(model_spec("conv8"))
    register_model(ModelSpec("brokennet", "Broken", lambda in_channels, width: nn.Identity()))
    try:
        with pytest.raises(ModelError, match="brokennet: its builder returned Identity, not EncoderParts"):
            build_model("brokennet")
        with pytest.raises(ModelError, match="fixed width; width=0.5 is only honoured by conv8 and covidnet"):
            build_model("brokennet", width=0.5)
    finally:
        unregister_model("brokennet")


def test_arch_and_width_come_from_the_registry():
    command = typer.main.get_command(app).commands["train"]
    options = {param.opts[0]: param for param in command.params}
    assert options["--arch"].help == "resnet18, resnet50, densenet121, conv8 or covidnet."
    assert options["--width"].help == "Channel-width multiplier (conv8, covidnet)."
    result = CliRunner().invoke(app, ["train", "--arch", "vgg16", "--out", "unused"])
    assert result.exit_code == 2 and "'vgg16' is no known model; choose one of resnet18" in result.output


def test_threshold_rule_help_lists_every_rule_with_its_help():
    for path in (["evaluate"], ["predict"]):
        command = typer.main.get_command(app).commands[path[0]]
        option = next(p for p in command.params if "--threshold-rule" in p.opts)
        assert option.help == rules_help()
        for rule in ThresholdRule:
            assert f"{rule.value} ({rule.help})" in option.help
    assert "bundle" not in rules_help(allow_bundle=False)


def test_threshold_request_checks_the_parameter_its_rule_uses():
    assert ThresholdRequest("Youden ").rule is ThresholdRule.YOUDEN
    assert ThresholdRequest.of("fixed") == ThresholdRequest(ThresholdRule.FIXED, 0.5, 0.9)
    with pytest.raises(ThresholdError, match=r"probability in \[0, 1\]; got 2"):
        ThresholdRequest("fixed", 2.0)
    with pytest.raises(ThresholdError, match=r"target sensitivity must lie in \(0, 1\]; got 0"):
        ThresholdRequest("sensitivity", target_sensitivity=0.0)
    assert ThresholdRequest("bundle", target_sensitivity=0.0).rule is ThresholdRule.BUNDLE  # unused, unchecked
    with pytest.raises(ThresholdError, match="unknown threshold rule 'median'"):
        ThresholdRequest("median")
    chosen = ThresholdRequest("sensitivity", target_sensitivity=0.5).choose([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert chosen.value == 0.8 and chosen.parameter == 0.5
    assert ThresholdRequest("fixed", 0.3).as_dict() == {"threshold_rule": "fixed", "threshold": 0.3,
                                                         "target_sensitivity": 0.9}


def test_the_command_line_lists_models_without_loading_torch():
    code = "import sys, unveil.cli; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
