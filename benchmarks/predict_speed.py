"""Prediction throughput on CPU, end to end from file (issue figure: images/s at the bundle's resolution).

Reads every image (PNG/JPEG/DICOM of any size), resizes, equalizes, segments the lungs (shipped
model), masks, scores, computes the OOD distance and the lung check, and writes the CSV; with
`--evidence` also Grad-CAM and an overlay PNG per image. Without `--model`, an untrained bundle of
`--arch` at `--size` is built (weights do not change the speed).

    .venv/bin/python benchmarks/predict_speed.py --arch resnet18 --size 224 \
        --data ../shared/data/chest_xray ../shared/data/covid-chestxray/images
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from unveil.inference import predict_files
from unveil.inference.predict import expand_inputs
from unveil.models import build_model
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import save_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a bundle; default: untrained --arch")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--data", nargs="+", default=["../shared/data/chest_xray",
                                                      "../shared/data/covid-chestxray/images"])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = expand_inputs(args.data)[: args.images]
    figures = {"images": len(files), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as temporary:
        model = args.model
        if model is None:
            torch.manual_seed(args.seed)
            model = save_bundle(Path(temporary) / "bundle", build_model(args.arch), width=1.0,
                                classes=["covid-", "covid+"], positive_class="covid+", image_size=args.size,
                                preprocess=PreprocessSettings(size=args.size), normalization=(0.3, 0.25))
        for evidence in (False, True):
            started = time.perf_counter()
            summary = predict_files(model, files, Path(temporary) / f"out-{evidence}", batch_size=args.batch_size,
                                    evidence=evidence)
            seconds = time.perf_counter() - started
            figures[f"evidence={evidence}"] = {"images_per_second": round(summary.scored / seconds, 2),
                                               "seconds": round(seconds, 1), "unreadable": len(summary.unreadable)}
    figures.update(arch=args.arch if args.model is None else str(args.model), size=args.size)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
