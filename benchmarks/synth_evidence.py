"""Bias evidence on full-size synthetic benchmarks (issue figures), by hand.

Generates the `paper` and `clean` presets and reports, for a logistic regression on 32x32
downsampled pixels trained on AB: balanced accuracy AB->AB and AB->AC, on whole images and with
everything but the lungs masked out (ground-truth masks).

    .venv/bin/python benchmarks/synth_evidence.py --size 512 --scale 1 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from unveil.synth.config import load_config
from unveil.synth.evidence import bias_gap
from unveil.synth.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for preset in ("paper", "clean"):
                out = Path(folder) / f"{preset}-{seed}"
                start = time.perf_counter()
                generate(replace(load_config(preset), image_size=args.size), out, seed=seed, scale=args.scale,
                         workers=args.workers)
                generated = time.perf_counter() - start
                full, lungs = (bias_gap(out, seed=seed, mask_lungs=m) for m in (False, True))
                print(f"seed {seed} {preset:5s} (generated in {generated:5.1f} s): "
                      f"full image AB->AB {full.ab_on_ab:.3f} AB->AC {full.ab_on_ac:.3f} gap {full.gap:+.3f}; "
                      f"lungs only gap {lungs.gap:+.3f}; test images {full.test_images}")


if __name__ == "__main__":
    main()
