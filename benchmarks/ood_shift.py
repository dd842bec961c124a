"""Out-of-distribution check: false alarms on held-out in-distribution images, detection of real shifts.

Two models, each trained with the demo's settings (conv8, width 0.5, 128 px, equalization, shipped
lung model, blurred mask) and each with the OOD reference `unveil train` fits:

* ``synthetic``: trained on the synthetic `paper` benchmark's composition AB. In distribution: the
  AB test split (patients never trained on). Shift: every real radiograph of ``--shared``
  (COVID-ChestXRay, Figure 1, pediatric ChestXRay, COVID-QU-Ex); also the synthetic C source
  (another simulated hospital), for information.
* ``adult``: trained on real adult radiographs, COVID-ChestXRay (composition D). In distribution: the
  D test split. Shifts: pediatric radiographs (ChestXRay), another collection (Figure 1, COVID-QU-Ex).

Every image goes through the prediction path (`Predictor`: read, resize, segment, pre-process,
encoder, OOD score), exactly as `unveil predict` scores it. Prints one JSON document (also written
to OUT/ood_shift.json) with, per set, the images scored and the share flagged; for the in-distribution
sets this is the false-alarm rate (the check is calibrated to the bundle's target, 5 %), for the
others the detection rate.

    .venv/bin/python benchmarks/ood_shift.py --out runs/ood-shift --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unveil.evaluation.evaluate import unseen_test_set
from unveil.inference.predict import Predictor, expand_inputs
from unveil.preprocess.cache import PreprocessSettings
from unveil.data.spec import DataSpec
from unveil.training import TrainConfig, load_bundle, train

CONFIG = TrainConfig(architecture="conv8", width=0.5, image_size=128, epochs=10, batch_size=32, lr=0.01)
#: Real sets: name -> (folder under --shared, file pattern); COVID-QU-Ex keeps its masks beside the images.
REAL = {"covid-chestxray": ("covid-chestxray/images", "*"), "figure1": ("figure1/images", "*"),
        "chestxray (pediatric)": ("chest_xray", "*.jpeg"), "covid-qu-ex": ("covid-qu-ex", "images/*.png")}


def flagged_share(predictor: Predictor, files: list[Path], batch_size: int = 32) -> dict[str, float | int]:
    """Images scored and the share the OOD check flags, through the prediction path."""
    flags, scores = [], []
    for start in range(0, len(files), batch_size):
        for row in predictor.score(files[start:start + batch_size]):
            if row["status"] != "unreadable":
                flags.append(bool(row["ood_flag"]))
                scores.append(float(row["ood_distance"]))
    return {"images": len(flags), "flagged": round(float(np.mean(flags)), 4) if flags else None,
            "median_score": round(float(np.median(scores)), 3) if scores else None}


def trained(name: str, recipe: str, data: dict[str, DataSpec], out: Path, config: TrainConfig) -> Path:
    """The bundle of a run (trained unless OUT/name already holds one)."""
    if not (out / name / "model" / "bundle.json").is_file():
        train(recipe, data, out / name, config=config, preprocess=PreprocessSettings(mask="segment"),
              cache=out / "cache", progress=False)
    return out / name / "model"


def measure(bundle_path: Path, in_distribution: str, shifts: dict[str, list[Path]]) -> dict[str, object]:
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle)
    held_out = list(map(Path, unseen_test_set(bundle, in_distribution)[0].records["path"]))
    figures = {"false_alarm_target": predictor.ood.false_alarm, "threshold": round(predictor.ood.threshold, 3),
               "in_distribution": {in_distribution + " test": flagged_share(predictor, held_out)},
               "shifted": {name: flagged_share(predictor, files) for name, files in shifts.items()}}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ood-shift"))
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("synthetic", "adult"), default=None)
    args = parser.parse_args()
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    started = time.perf_counter()
    config = replace(CONFIG, epochs=args.epochs, seed=args.seed)
    real = {name: [p for p in expand_inputs([args.shared / folder]) if p.match(pattern)]
            for name, (folder, pattern) in REAL.items()}
    figures: dict[str, object] = {"threads": torch.get_num_threads(), "seed": args.seed, "epochs": args.epochs}
    if args.only in (None, "synthetic"):
        bench = args.out / "bench"
        if not (bench / "synth.meta.json").is_file():
            generate(replace(load_config("paper"), image_size=256), bench, seed=args.seed)
        data = {name: DataSpec(source, str(path)) for name, (source, path) in dataset_roots(bench).items()}
        model = trained("synthetic-AB", "AB", {"A": data["A"], "B": data["B"]}, args.out, config)
        synthetic_c = list(map(Path, data["C"].load()["path"]))
        figures["synthetic"] = measure(model, "AB", {"synthetic C (another simulated hospital)": synthetic_c,
                                                     **{f"real: {k}": v for k, v in real.items()}})
    if args.only in (None, "adult"):
        model = trained("adult-D", "D", {"D": DataSpec("covid-chestxray", str(args.shared / "covid-chestxray"))},
                        args.out, config)
        figures["adult"] = measure(model, "D", {k: v for k, v in real.items() if k != "covid-chestxray"})
    figures["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood_shift.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
