"""Interim main job on the embedded default data: the synthetic `paper` benchmark.

Generates the benchmark (datasets A, B, C, D and a lung-mask set, in the real layouts), writes a
preview grid, checks every dataset with the same loaders as real data, builds the paper's AB and AC
compositions, and measures the bias with a pixel logistic regression (AB->AB vs AB->AC, whole
image and lungs only). The full pipeline (segmentation, CNNs, audit, report) replaces it later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from unveil.data.check import summarise
from unveil.data.compose import compose, load_recipes
from unveil.data.sources import load_source
from unveil.provenance import write_run_metadata
from unveil.synth.config import load_config
from unveil.synth.evidence import bias_gap
from unveil.synth.generate import dataset_roots, generate
from unveil.synth.preview import write_preview


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    config = replace(load_config(args.preset), image_size=args.size)
    benchmark = args.out / "benchmark"
    print(f"[1/4] generating the synthetic '{config.name}' benchmark in {benchmark} ...", flush=True)
    generate(config, benchmark, seed=args.seed, scale=args.scale, workers=args.workers, progress=True,
             overwrite=True)
    preview = write_preview(config, args.out / "preview.png", seed=args.seed, per_class=2, tile=160)
    print(f"      preview grid: {preview}")
    print("[2/4] checking each dataset with the real loaders ...", flush=True)
    roots = dataset_roots(benchmark)
    loads = {name: load_source(source, root) for name, (source, root) in roots.items()}
    for name, load in loads.items():
        report = summarise([load], workers=args.workers)
        print(f"      {name:5s} ({load.source}): {report.records} images, {report.patients} patients, "
              f"classes {report.by_class}, unreadable {len(report.unreadable)}, missing {len(report.missing)}")
    print("[3/4] composing the paper's AB and AC training/test sets ...", flush=True)
    recipes = load_recipes()
    compositions = {}
    for name, roles in (("AB", ("A", "B")), ("AC", ("A", "C"))):
        composition = compose(recipes.recipe(name), {r: loads[r].records for r in roles}, seed=args.seed)
        compositions[name] = composition.counts()
        summary = ", ".join(f"{s} +{c['covid+']}/-{c['covid-']}" for s, c in compositions[name].items())
        print(f"      {name}: {summary}")
    print("[4/4] measuring the bias: pixel logistic regression trained on AB ...", flush=True)
    evidence = {}
    for masked in (False, True):
        result = bias_gap(benchmark, seed=args.seed, mask_lungs=masked)
        label = "lungs only" if masked else "whole image"
        evidence[label] = {"ab_on_ab": result.ab_on_ab, "ab_on_ac": result.ab_on_ac, "gap": result.gap}
        print(f"      {label:11s}: balanced accuracy AB->AB {result.ab_on_ab:.3f}, AB->AC {result.ab_on_ac:.3f} "
              f"(gap {result.gap:+.3f})")
    write_run_metadata(args.out / "demo.meta.json", "scripts/demo.py", vars(args),
                       extra={"compositions": compositions, "evidence": evidence})
    (args.out / "evidence.json").write_text(json.dumps(evidence, indent=2) + "\n")
    print(f"done in {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
