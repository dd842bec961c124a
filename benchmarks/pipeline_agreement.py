"""Agreement of the exported whole-chain pipeline with `unveil predict` on real radiographs (issue 28.3 figure).

Exports ``--model`` with ``unveil.inference.export_pipeline`` (its own check: all classes' probabilities of
onnxruntime + preprocess.py against predict's path in PyTorch, unrounded), then runs `unveil predict` on the
same files and the exported folder (``preprocess.Pipeline``, onnxruntime and numpy only) and prints the largest
absolute difference of COVID+ probabilities against predictions.csv (which rounds to 6 decimals), and the
seconds per image of each.

    .venv/bin/python benchmarks/pipeline_agreement.py --model runs/demo/cells/conv8-none-AB/model --images 10

(10 images from each of COVID-ChestXRay, Figure 1, ChestXRay NORMAL and PNEUMONIA by default.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unveil.inference import export_pipeline, predict_files
from unveil.inference.pipeline_runtime import Pipeline
from unveil.inference.predict import expand_inputs
from unveil.io import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a COVID classifier bundle")
    parser.add_argument("--data", nargs="+", default=["../shared/data/covid-chestxray/images",
                                                      "../shared/data/figure1/images",
                                                      "../shared/data/chest_xray/train/NORMAL",
                                                      "../shared/data/chest_xray/train/PNEUMONIA"])
    parser.add_argument("--images", type=int, default=10, help="images taken from each --data folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = [file for folder in args.data for file in expand_inputs([folder])[: args.images]]
    with tempfile.TemporaryDirectory(prefix="pipeline-agreement-") as scratch:
        start = time.perf_counter()
        description = export_pipeline(args.model, Path(scratch) / "pipeline", images=files)
        exported_s = time.perf_counter() - start
        start = time.perf_counter()
        predict_files(args.model, files, Path(scratch) / "predict", evidence=False)
        predict_s = (time.perf_counter() - start) / len(files)
        table = pd.read_csv(Path(scratch) / "predict" / "predictions.csv")
        runner = Pipeline(Path(scratch) / "pipeline")
        start = time.perf_counter()
        got = np.array([runner.probability(read_image(path).pixels) for path in files])
        onnx_s = (time.perf_counter() - start) / len(files)
    print(json.dumps({
        "images": len(files), "folders": args.data,
        "export_check_max_abs_difference": description["check"]["max_abs_difference_vs_predict"],
        "max_abs_difference_vs_predictions_csv": float(np.abs(got - table["probability"].to_numpy()).max()),
        "export_s": round(exported_s, 1), "predict_s_per_image": round(predict_s, 3),
        "pipeline_s_per_image": round(onnx_s, 3)}, indent=2))


if __name__ == "__main__":
    main()
