"""Audit acceptance on the synthetic benchmark: `paper` AB (no lung masking) is flagged, `clean` is not.

For each preset: generate the benchmark, train a CNN on its AB composition from scratch without lung
masking, audit it on the AB test split (segmentation masks from the shipped lung model), print the
verdicts. Issue figures: the paper model's source probe separates B from A among COVID- images with
accuracy >= 0.9 and the occlusion test flags it; the clean model raises neither flag.

    .venv/bin/python benchmarks/audit_acceptance.py --size 128 --scale 1 --epochs 20 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from unveil.audit import audit
from unveil.preprocess.cache import PreprocessSettings
from unveil.synth.config import load_config
from unveil.synth.generate import dataset_roots, generate
from unveil.data.spec import DataSpec
from unveil.training import TrainConfig, train


def run(preset: str, out: Path, *, size: int, scale: float, epochs: int, arch: str, width: float, seed: int,
        workers: int) -> dict:
    bench = out / preset / "bench"
    if not (bench / "synth.meta.json").is_file():
        generate(replace(load_config(preset), image_size=max(size * 2, 128)), bench, seed=seed, scale=scale,
                 workers=workers, overwrite=True)
    roots = {name: DataSpec(source, root) for name, (source, root) in dataset_roots(bench).items()}
    config = TrainConfig(architecture=arch, width=width, image_size=size, epochs=epochs, batch_size=32, seed=seed)
    started = time.perf_counter()
    trained = train("AB", {"A": roots["A"], "B": roots["B"]}, out / preset / "AB", config=config,
                    preprocess=PreprocessSettings(mask="none"), cache=out / "cache", workers=workers, resume=False)
    result = audit(trained.bundle, ["AB"], out / preset / "audit", cache=out / "cache", seed=seed, workers=workers)
    figures = {"preset": preset, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
               "val_auc": trained.best_metrics["val_auc"],
               "verdicts": [{"test": v.test, "subject": v.subject, "value": round(v.value, 3),
                             "interval": [round(v.low, 3), round(v.high, 3)], "flagged": v.flagged}
                            for v in result.verdicts],
               "probes": [{k: p[k] for k in ("name", "negative", "positive", "counts", "majority_rate")} |
                          {"accuracy": round(p["accuracy"]["value"], 3),
                           "balanced_accuracy": round(p["balanced_accuracy"]["value"], 3)}
                          for p in result.figures["probes"]],
               "occlusion": result.figures.get("occlusion"), "saliency": result.figures["saliency"]}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/audit-acceptance"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--arch", default="conv8")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    for seed in args.seeds:
        for preset in ("paper", "clean"):
            figures = run(preset, args.out / f"seed{seed}", size=args.size, scale=args.scale, epochs=args.epochs,
                          arch=args.arch, width=args.width, seed=seed, workers=args.workers)
            print(json.dumps(figures, default=str), flush=True)


if __name__ == "__main__":
    main()
