"""The speed benchmarks (benchmarks/train_speed.py, gpu_speed.py, gpu_profile.py): architecture selection, the
ratio and table formatting with exact numbers, the profile summary, the refusal without CUDA, a tiny real run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unveil.models import ModelError, ModelSpec, build_model, model_names, register_model
from unveil.models.catalog import unregister_model
from unveil.training import TrainConfig, fit, fit_normalization

from conftest import shared, toy_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_profile  # noqa: E402
import gpu_speed  # noqa: E402
import segment_speed  # noqa: E402
import train_speed  # noqa: E402
from gpu_profile import OpTime, ProfileError, profile_summary, profile_text  # noqa: E402


def test_every_catalog_architecture_by_default():
    assert train_speed.parse_args([]).arch is None and gpu_speed.parse_args([]).arch is None
    assert train_speed.select_architectures(None) == model_names()
    assert {"resnet18", "densenet121", "conv8", "covidnet"} <= set(train_speed.select_architectures([]))
    register_model(ModelSpec("fakebench", "Fake", "unveil.models.conv8:build_encoder"))
    try:  # a model registered at run time is run too, last (the table order)
        assert train_speed.select_architectures(None)[-1] == "fakebench"
    finally:
        unregister_model("fakebench")
    chosen = train_speed.parse_args(["--arch", "conv8", "--arch", "resnet18", "--arch", "conv8"]).arch
    assert train_speed.select_architectures(chosen) == ("conv8", "resnet18")
    with pytest.raises(ModelError, match="nonet"):
        train_speed.select_architectures(["conv8", "nonet"])


def test_width_applies_only_where_it_scales():
    assert train_speed.width_for("conv8", 0.5) == 0.5
    assert train_speed.width_for("covidnet", 0.25) == 0.25
    assert train_speed.width_for("resnet18", 0.5) == 1.0


def test_train_speed_row_and_table_exact():
    row = train_speed.speed_row("resnet18", {"ours": 54.0, "paper": 17.5, "model_only": 56.0}, width=1.0, size=224)
    assert row == {"arch": "resnet18", "width": 1.0, "size": 224,
                   "images_per_second": {"ours": 54.0, "paper": 17.5, "model_only": 56.0},
                   "speedup_vs_paper": 3.09, "share_of_model_only": 0.964}
    slow = train_speed.speed_row("conv8", {"ours": 1234.567, "paper": 0.0, "model_only": 1000.0}, width=0.5)
    assert slow["speedup_vs_paper"] is None and slow["share_of_model_only"] == 1.235
    assert train_speed.markdown_table([row, slow]).splitlines() == [
        "| model | width | ours | paper's loop | model-only limit | ours / paper | ours / model-only |",
        "|---|---|---|---|---|---|---|",
        "| ResNet-18 | 1 | 54.0 | 17.5 | 56.0 | 3.09× | 96 % |",
        "| Conv8 | 0.5 | 1,234.6 | 0.0 | 1,000.0 | n/a | 124 % |"]


def test_gpu_speed_row_and_table_exact():
    row = gpu_speed.gpu_row("resnet18", 3244.44, 4054.0, width=1.0, size=224)
    assert row["images_per_second"] == {"ours": 3244.4, "model_only": 4054.0}
    assert row["share_of_model_only"] == 0.8
    dense = gpu_speed.gpu_row("densenet121", 455.0, 486.0)
    assert gpu_speed.gpu_table([row, dense]).splitlines()[2:] == [
        "| ResNet-18 | 1 | 3,244.4 | 4,054.0 | 80 % |", "| DenseNet-121 | 1 | 455.0 | 486.0 | 94 % |"]


@pytest.mark.parametrize(("images", "batch", "steps"), [(400, 32, 13), (384, 32, 12), (385, 32, 12), (10, 32, 1)])
def test_steps_per_epoch_matches_fit(images, batch, steps):
    assert gpu_speed.steps_per_epoch(images, batch) == steps


def test_profile_summary_exact():
    ops = [OpTime("void conv_kernel", 10, 4000.0, 0.0, 0.0, True),
           OpTime("Memcpy HtoD (Pageable -> Device)", 5, 1000.0, 0.0, 0.0, True),
           OpTime("aten::cudnn_convolution", 10, 3500.0, 300.0, 2500.0, False),
           OpTime("Optimizer.step#SGD.step", 5, 0.0, 200.0, 1500.0, False, annotation=True),
           OpTime("aten::_local_scalar_dense", 5, 0.0, 800.0, 800.0, False),
           OpTime("ProfilerStep#7", 5, 9000.0, 100.0, 9000.0, False, annotation=True)]  # not GPU busy time
    summary = profile_summary(ops, wall_us=10_000.0, steps=5, batch_size=32, top=2, arch="resnet18", loop="ours")
    assert summary["gpu_busy_ms"] == 5.0 and summary["gpu_busy_fraction"] == 0.5
    assert summary["gpu_idle_fraction"] == 0.5 and summary["images_per_second"] == 16000.0
    assert summary["markers_ms"]["optimizer step (CPU, inclusive)"] == 1.5
    assert summary["markers_ms"]["host-to-device copies (GPU)"] == 1.0
    assert summary["markers_ms"]["tensor to Python number (CPU, waits for the GPU)"] == 0.8
    assert summary["top_kernels"] == [
        {"name": "void conv_kernel", "calls": 10, "ms": 4.0, "share_of_wall": 0.4},
        {"name": "Memcpy HtoD (Pageable -> Device)", "calls": 5, "ms": 1.0, "share_of_wall": 0.1}]
    assert summary["top_operators_self_device"] == [
        {"name": "aten::cudnn_convolution", "calls": 10, "ms": 3.5, "share_of_wall": 0.35}]
    assert [e["name"] for e in summary["top_self_cpu"]] == ["aten::_local_scalar_dense", "aten::cudnn_convolution"]
    text = profile_text([summary])
    assert text.startswith("arch=resnet18 loop=ours: 5 steps of 32 in 10.000 ms (16,000.0 images/s); GPU busy "
                           "5.000 ms = 50.0%, idle 50.0%")
    assert "     4.000   40.0%      10  void conv_kernel" in text
    with pytest.raises(ProfileError, match="wall time"):
        profile_summary(ops, wall_us=0.0, steps=5, batch_size=32)


def test_profile_summary_from_a_real_cpu_profile():
    model, inputs = torch.nn.Linear(8, 2), torch.randn(4, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model(inputs).sum().backward()
    ops = gpu_profile.ops_from_profiler(profiler)
    assert "aten::linear" in {op.name for op in ops} and not any(op.on_device for op in ops)
    summary = profile_summary(ops, wall_us=1000.0, steps=1, batch_size=4)
    assert summary["gpu_idle_fraction"] == 1.0 and summary["top_kernels"] == []
    assert summary["top_self_cpu"] and all(e["ms"] > 0 for e in summary["top_self_cpu"])


def test_gpu_speed_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_speed, "load_images", lambda *a, **k: pytest.fail("data loaded without CUDA"))
    assert gpu_speed.main(["--arch", "resnet18"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == gpu_speed.NO_CUDA + "\n"
    assert "CUDA device" in captured.err and captured.err.count("\n") == 1


def test_train_speed_unknown_architecture_is_one_line(capsys):
    assert train_speed.main(["--arch", "nonet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nonet'") and err.count("\n") == 1


def test_train_speed_tiny_real_run(tmp_path, capsys):
    data = shared("chest_xray")
    out = tmp_path / "speed.json"
    code = train_speed.main(["--data", f"chestxray:{data}", "--size", "32", "--images", "16", "--epochs", "2",
                             "--mask", "none", "--arch", "conv8", "--arch", "resnet18", "--width", "0.25",
                             "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["arch"], r["width"], r["images"]) for r in rows] == [("conv8", 0.25, 16), ("resnet18", 1.0, 16)]
    for row in rows:
        rates = row["images_per_second"]
        assert all(rates[k] > 0 for k in ("ours", "paper", "model_only"))
        assert row["speedup_vs_paper"] == pytest.approx(rates["ours"] / rates["paper"], abs=0.01)
        assert row["share_of_model_only"] == pytest.approx(rates["ours"] / rates["model_only"], abs=0.002)
    printed = capsys.readouterr().out
    assert "| Conv8 | 0.25 |" in printed and "| ResNet-18 | 1 |" in printed
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_step_profiler_windows_the_last_epoch_of_fit(tmp_path, monkeypatch):
    """The profiled steps of `gpu_speed.profile` are steps of fit's last epoch (after its first): checked on the
    CPU, with a CPU-only profiler, against the steps fit reports."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    data = toy_set(42, seed=0)  # batches of 8: 5 full and one of 2, kept
    config = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=8, seed=0)
    per_epoch = gpu_speed.steps_per_epoch(len(data), config.batch_size)
    cpu = [torch.profiler.ProfilerActivity.CPU]
    profiler = gpu_speed.StepProfiler(start=per_epoch + 1, steps=per_epoch - 2, activities=cpu)
    seen = []

    def on_step(epoch, step):
        seen.append((epoch, step))
        profiler.step()

    model = build_model("conv8", width=0.25)
    history = fit(model, data, toy_set(8, seed=1), config, tmp_path, normalization=fit_normalization(data.images),
                  resume=False, on_step=on_step).history
    assert per_epoch == 6 == history[-1]["optimizer_steps"] - history[0]["optimizer_steps"]
    assert seen[per_epoch] == (1, 0) and len(seen) == 2 * per_epoch
    summary = profiler.summary(config.batch_size, arch="conv8", loop="ours")
    assert summary["steps"] == 4 and summary["wall_ms"] > 0
    assert any(e["name"].startswith("aten::") for e in summary["top_self_cpu"])
    short = gpu_speed.StepProfiler(start=3 * per_epoch, steps=2, activities=cpu)
    with pytest.raises(ProfileError, match="fewer than"):
        short.summary(8)


def test_segment_speed_times_batches_of_real_images(capsys):
    from unveil.segmentation import LungSegmenter

    images = segment_speed.images_of(None, 3, 40, seed=0)
    assert len(images) == 3 and images[0].shape == (40, 40)
    assert segment_speed.throughput(LungSegmenter.load(), images, batch_size=2, threads=1) > 0
    segment_speed.main(["--images", "2", "--size", "32", "--batch", "2", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    row = json.loads(lines[0])
    assert (row["threads"], row["batch"], row["images"]) == (1, 2, 2) and row["images_per_second"] > 0
    assert "| threads | batch | images/s | ms per image |" in lines
    real = segment_speed.images_of(f"covid-qu-ex:{shared('covid-qu-ex')}", 2, 0, seed=1)  # skips without the data
    assert len(real) == 2 and real[0].ndim == 2 and real[0].dtype == np.float32
