"""Stages as verified artifacts (unveil.artifacts) and the one job graph of `unveil reproduce`."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from unveil.artifacts import ArtifactError, Input, artifact_input, load_artifact, meta_path, write_artifact
from unveil.data.splits import SplitFileError, read_split_file


def folder_artifact(root: Path, text: str = "a,b\n1,2\n") -> Path:
    folder = root / "stage"
    (folder / "sub").mkdir(parents=True)
    (folder / "results.csv").write_text(text)
    (folder / "sub" / "figure.png").write_bytes(b"\x89PNG fake")
    return folder


# --- the one writer and the one loader ----------------------------------------------------------------------


def test_writer_and_loader_round_trip(tmp_path):
    source = tmp_path / "splits.csv"
    source.write_text("record_id,split\nr1,train\n")
    write_artifact(source, "split", [source.name], command="unveil data compose", config={"seed": 3})
    assert meta_path(source) == tmp_path / "splits.meta.json"
    folder = folder_artifact(tmp_path)
    written = write_artifact(folder, "evaluation", ["results.csv", "sub/figure.png"], command="unveil evaluate",
                             config={"on": ["AB"]}, inputs=[artifact_input(source, "split", "split"),
                                                            Input("records", None, "0" * 64, "A")])
    assert written == folder / "meta.json"
    loaded = load_artifact(folder, "evaluation")
    assert loaded.verified and loaded.kind == "evaluation" and set(loaded.files) == {"results.csv", "sub/figure.png"}
    assert loaded.meta["command"] == "unveil evaluate" and loaded.meta["config"] == {"on": ["AB"]}
    assert {"python", "torch", "unveil-cxr"} <= set(loaded.meta["versions"])
    split = loaded.input("split")
    assert split["path"] == "../splits.csv" and split["sha256"] == load_artifact(source, "split").meta["digest"]
    assert loaded.input("A")["path"] is None  # a described input: recorded, nothing to re-hash


def test_a_changed_or_missing_file_is_refused_by_name(tmp_path):
    folder = folder_artifact(tmp_path)
    write_artifact(folder, "audit", ["results.csv", "sub/figure.png"], command="unveil audit", config={})
    (folder / "results.csv").write_text("a,b\n1,3\n")
    with pytest.raises(ArtifactError, match=r"results.csv: content hash differs from the one .*meta.json recorded"):
        load_artifact(folder)
    (folder / "results.csv").unlink()
    with pytest.raises(ArtifactError, match=r"results.csv: listed in .*meta.json but missing"):
        load_artifact(folder)


def test_an_input_that_changed_since_is_refused_naming_both_files(tmp_path):
    source = tmp_path / "splits.csv"
    source.write_text("record_id,split\nr1,train\n")
    write_artifact(source, "split", [source.name], command="x", config={})
    folder = folder_artifact(tmp_path)
    write_artifact(folder, "bundle", ["results.csv"], command="x", config={},
                   inputs=[artifact_input(source, "split", "split")])
    # The split rewritten with its own meta.json: it verifies, but it is not the split the bundle was built from.
    source.write_text("record_id,split\nr1,test\n")
    write_artifact(source, "split", [source.name], command="x", config={})
    assert load_artifact(source, "split").verified
    with pytest.raises(ArtifactError) as caught:
        load_artifact(folder, "bundle")
    assert str(folder / "meta.json") in str(caught.value) and f"built from {source}" in str(caught.value)
    assert load_artifact(folder, "bundle", check_inputs=False).verified  # the files themselves are intact
    source.write_text("record_id,split\nr1,train\n")  # the same content again: the same digest
    assert load_artifact(folder, "bundle").verified


def test_legacy_outputs_without_meta_json_load_with_a_warning(tmp_path, caplog):
    folder = folder_artifact(tmp_path)
    with caplog.at_level(logging.WARNING, logger="unveil.artifacts"):
        loaded = load_artifact(folder, "evaluation")
    assert not loaded.verified and loaded.files == {}
    assert "loaded unverified" in caplog.text and str(folder) in caplog.text
    with pytest.raises(ArtifactError, match="no such"):
        load_artifact(tmp_path / "absent")


def test_a_wrong_kind_or_a_foreign_meta_json_is_refused(tmp_path):
    folder = folder_artifact(tmp_path)
    write_artifact(folder, "audit", ["results.csv"], command="x", config={})
    with pytest.raises(ArtifactError, match="describes a 'audit' artifact, expected 'bundle'"):
        load_artifact(folder, "bundle")
    (folder / "meta.json").write_text('{"command": "something else"}')
    with pytest.raises(ArtifactError, match="not an unveil artifact description"):
        load_artifact(folder)
    with pytest.raises(ArtifactError, match="unknown artifact kind"):
        write_artifact(folder, "model", [], command="x", config={})


def test_an_input_that_is_gone_is_a_warning_not_an_error(tmp_path, caplog):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights")
    folder = folder_artifact(tmp_path)
    write_artifact(folder, "bundle", ["results.csv"], command="x", config={},
                   inputs=[artifact_input(source, "weights", "init_weights")])
    source.unlink()  # a bundle copied elsewhere, without what it was built from
    with caplog.at_level(logging.WARNING, logger="unveil.artifacts"):
        assert load_artifact(folder, "bundle").verified
    assert "is not there any more" in caplog.text


# --- the chain on a trained run: evaluate and audit refuse a changed split -----------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic benchmark and a conv8 trained on its AB composition."""
    from unveil.data.spec import DataSpec
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate
    from unveil.training import TrainConfig, train

    root = tmp_path_factory.mktemp("artifacts")
    generate(replace(load_config("paper"), image_size=48), root / "bench", seed=0, scale=0.12)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(root / "bench").items()}
    config = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=1, batch_size=16, eval_batch_size=32)
    train("AB", {"A": data["A"], "B": data["B"]}, root / "AB", config=config,
          preprocess=PreprocessSettings(mask="none"), cache=root / "cache")
    return {"data": data, "run": root / "AB", "cache": root / "cache"}


def test_a_training_run_writes_its_split_and_bundle_as_artifacts(trained):
    run = trained["run"]
    split = load_artifact(run / "splits.csv", "split")
    assert split.files.keys() == {"splits.csv"} and split.input("")["kind"] == "records"
    bundle = load_artifact(run / "model", "bundle")
    assert {"bundle.json", "model.safetensors"} <= set(bundle.files)
    assert bundle.input("split")["sha256"] == split.meta["digest"] and bundle.meta["command"] == "unveil train"
    manifests = list(trained["cache"].glob("manifest-*.csv"))
    assert manifests and load_artifact(manifests[0], "preprocessed").verified


def moved_test_image(splits: Path) -> None:
    table = pd.read_csv(splits, dtype=str, keep_default_na=False)
    table.loc[table.index[table["split"] == "test"][0], "split"] = "train"  # a silent leak
    table.to_csv(splits, index=False, lineterminator="\n")


@pytest.mark.parametrize("stage", ["evaluate", "audit"])
@pytest.mark.parametrize("meta_too", [False, True])
def test_a_split_changed_after_training_makes_evaluate_and_audit_refuse(trained, tmp_path, stage, meta_too):
    from unveil.audit import audit
    from unveil.evaluation.evaluate import evaluate_models

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("cache"))
    splits = run / "splits.csv"
    moved_test_image(splits)
    if meta_too:  # the split's own meta.json rewritten to match: the bundle's record of it still differs
        write_artifact(splits, "split", ["splits.csv"], command="edited", config={})
    with pytest.raises((ArtifactError, SplitFileError)) as caught:
        if stage == "evaluate":
            evaluate_models([run / "model"], ["AB"], data=trained["data"], cache=trained["cache"], resamples=10)
        else:
            audit(run / "model", ["AB"], tmp_path / "audit", data=trained["data"], cache=trained["cache"])
    assert str(splits) in str(caught.value) and "hash" in str(caught.value)
    if meta_too:
        assert str(run / "model" / "meta.json") in str(caught.value)
    with pytest.raises(SplitFileError, match="splits.csv"):
        read_split_file(splits, expected_hash=None) if not meta_too else read_split_file(
            splits, expected_hash=load_artifact(run / "model", "bundle", check_inputs=False).input("split")["sha256"])


def test_a_run_of_an_older_unveil_still_evaluates_with_a_warning(trained, tmp_path, caplog):
    from unveil.evaluation.evaluate import evaluate_models
    from unveil.evaluation.outputs import read_results, write_evaluation_outputs

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("cache", "*meta.json"))
    assert not (run / "model" / "meta.json").exists()
    with caplog.at_level(logging.WARNING, logger="unveil.artifacts"):
        result = evaluate_models([run / "model"], ["AB"], data=trained["data"], cache=trained["cache"], resamples=10)
    assert len(result.rows) == 1 and "loaded unverified" in caplog.text
    write_evaluation_outputs(result, tmp_path / "eval", arguments={"models": [str(run / "model")]},
                             roc_formats=("png",))
    evaluation = load_artifact(tmp_path / "eval", "evaluation")
    assert evaluation.input("model")["sha256"] is None  # a legacy bundle: recorded, not verifiable
    assert len(read_results(tmp_path / "eval" / "results.csv")) == 1
    (tmp_path / "eval" / "results.csv").write_text("model,test_set\nx,AB\n")
    with pytest.raises(ArtifactError, match="results.csv: content hash differs"):
        read_results(tmp_path / "eval" / "results.csv")


# --- the one job graph -----------------------------------------------------------------------------------------

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"synthetic": {"preset": "paper", "scale": 0.1, "image_size": 48}},
    "preprocess": {"size": 32, "mask": "none"},
    "training": {"width": 0.25, "epochs": 2, "batch_size": 16},
    "pretraining": {"B": {"data": ["B"], "training": {"epochs": 1}}},
    "grid": {"encoders": ["none", "B"], "architectures": ["conv8"], "compositions": ["AB"], "tests": ["AB", "AC"]},
    "audit": {"compositions": ["AB"], "test_sets": ["AB"]},
}


def test_the_runners_graph_orders_pretraining_before_cells_before_evaluation(tmp_path):
    from unveil.data.spec import DataSpec
    from unveil.evaluation.store import ResultsStore
    from unveil.experiments import load_experiment
    from unveil.experiments.runner import plan_cells, plan_graph
    from unveil.experiments.state import GridRun as _Run

    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(TINY))
    experiment = load_experiment(tmp_path / "exp.yaml")
    with ResultsStore(tmp_path / "out" / "results.sqlite") as store:
        run = _Run(experiment, tmp_path / "out", store, 1, 1, None)
        run.data = {role: DataSpec("covid-chestxray", str(tmp_path / role)) for role in "ABC"}
        graph = plan_graph(run, plan_cells(experiment, run.out))
    keys = [node.key for node in graph.order()]
    assert keys == ["pretrain:B-conv8", "cell:conv8-none-AB", "cell:conv8-B-AB", "evaluate:conv8-none-AB",
                    "evaluate:conv8-B-AB", "audit:conv8-none-AB", "audit:conv8-B-AB", "report"]
    assert graph["cell:conv8-B-AB"].after == ("pretrain:B-conv8",) and graph["cell:conv8-none-AB"].after == ()
    assert graph["evaluate:conv8-B-AB"].after == ("cell:conv8-B-AB",)
    assert [n.key for n in graph.dependencies("report")] == keys[3:7]
    assert graph["cell:conv8-B-AB"].job.encoder == str(run.out / "pretrain" / "B-conv8" / "model")
    assert not any(node.done for node in graph.order())


def test_a_graph_node_may_only_name_what_is_already_in_it():
    from unveil.experiments.config import ExperimentError
    from unveil.experiments.graph import JobGraph, Node

    graph = JobGraph()
    graph.add(Node("cell:x", "cell", Path("x")))
    with pytest.raises(ExperimentError, match="not in the job graph"):
        graph.add(Node("evaluate:y", "evaluate", Path("y"), ("cell:y",)))
    with pytest.raises(ExperimentError, match="two nodes"):
        graph.add(Node("cell:x", "cell", Path("x")))
    graph.add(Node("pretrain:p", "pretrain", Path("p")))
    graph.add(Node("evaluate:x", "evaluate", Path("e"), ("cell:x",)))
    assert [node.key for node in graph.order()] == ["pretrain:p", "cell:x", "evaluate:x"]
    graph.add(Node("pretrain:late", "pretrain", Path("l"), ("evaluate:x",)))
    with pytest.raises(ExperimentError, match="cannot come after evaluate:x"):
        graph.order()


def test_the_report_verifies_the_evaluations_and_audits_it_shows(tmp_path):
    from unveil.reports.html import stage_inputs

    folder = folder_artifact(tmp_path / "evaluation")  # OUT/evaluation/<cell>/
    write_artifact(folder, "evaluation", ["results.csv"], command="unveil reproduce", config={})
    folder_artifact(tmp_path / "audit")  # an older run's audit: no meta.json
    inputs = stage_inputs(tmp_path)
    assert [(item.kind, item.role) for item in inputs] == [("audit", "audit"), ("evaluation", "evaluation")]
    assert inputs[0].sha256 is None and inputs[1].sha256 == load_artifact(folder).meta["digest"]
    (folder / "results.csv").write_text("edited\n")
    with pytest.raises(ArtifactError, match="results.csv: content hash differs"):
        stage_inputs(tmp_path)


def test_an_artifact_written_in_a_staging_folder_records_inputs_from_where_it_lands(tmp_path: Path) -> None:
    """A guarded command writes into OUT/.unveil-partial, then moves it to OUT: inputs are relative to OUT."""
    from unveil.artifacts import STAGING_DIR, artifact_input, write_artifact

    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w")
    stage = tmp_path / "eval" / STAGING_DIR
    stage.mkdir(parents=True)
    (stage / "results.csv").write_text("a\n", encoding="utf-8")
    meta = write_artifact(stage, "evaluation", ["results.csv"], command="t", config={},
                          inputs=[artifact_input(model, "bundle", "model")])
    recorded = json.loads(meta.read_text(encoding="utf-8"))["inputs"][0]["path"]
    assert recorded == "../runs/model"
    assert (tmp_path / "eval" / recorded).resolve() == model.resolve()
