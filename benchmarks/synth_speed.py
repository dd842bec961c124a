"""Synthetic benchmark generation speed on one core (issue figure: >= 50 images/s at 512x512).

Reports images/s for rendering alone (in memory) and end to end (rendered and written in the
datasets' layouts: PNG, JPEG, DICOM, plus the ground-truth mask), in this one process.

    .venv/bin/python benchmarks/synth_speed.py --images 300 --size 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from unveil.synth.config import load_config
from unveil.synth.generate import plan_jobs, render_job
from unveil.synth.render import render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = replace(load_config(args.preset), image_size=args.size)
    total = sum(sum(c.values()) for c in config.scaled_counts(1.0).values())
    with tempfile.TemporaryDirectory() as folder:
        jobs = plan_jobs(config, Path(folder), seed=args.seed, scale=args.images / total)[: args.images]
        for job in jobs[:5]:  # warm-up: imports, fonts, noise tile
            render_job(job)
        start = time.perf_counter()
        for job in jobs:
            signature = job.signatures[job.signature_names[0]]
            render_image(job.finding, 0.7, signature, size=job.size, rng=np.random.default_rng(job.image_index))
        render_rate = len(jobs) / (time.perf_counter() - start)
        start = time.perf_counter()
        for job in jobs:
            render_job(job)
        write_rate = len(jobs) / (time.perf_counter() - start)
    print(f"{len(jobs)} images at {args.size}x{args.size}, preset {args.preset}, one process")
    print(f"render only:            {render_rate:6.1f} images/s")
    print(f"render + write to disk: {write_rate:6.1f} images/s")


if __name__ == "__main__":
    main()
