"""CPU throughput of the shipped lung model (issue figures: <= 100 ms per 256x256 image; images/s batched and
threaded, so that pre-processing 5,000 images is not the bottleneck).

Times `LungSegmenter.segment_batch` end to end on in-memory images of real radiographs (resize, equalize,
network, threshold, post-processing), for each number of torch threads and batch size, and prints images/s
(one JSON object per setting, then a Markdown table). ``--data`` reads the images of a dataset (decoded once,
before timing); without it, a random 256x256 image is repeated.

    .venv/bin/python benchmarks/segment_speed.py --data covid-qu-ex:../shared/data/scale/covid-qu-ex --images 128

The end-to-end pre-processing figure (decode, equalise, segment, blur and apply the mask, write the cache, in N
worker processes) is `benchmarks/preprocess_speed.py`, and `unveil reproduce` logs it per dataset
(``preprocess: ... img/s``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from unveil.segmentation import LungSegmenter


def images_of(spec: str | None, count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` gray images of dataset ``spec`` (SOURCE:PATH, drawn with ``seed``), or one random image repeated."""
    if spec is None:
        image = np.random.default_rng(seed).random((size, size), dtype=np.float32)
        return [image] * count
    from unveil.data.sources import load_source
    from unveil.io import read_image

    records = load_source(*spec.split(":", 1)).records
    chosen = np.random.default_rng(seed).choice(len(records), min(count, len(records)), replace=False)
    return [read_image(records["path"].iloc[int(i)]).pixels for i in np.sort(chosen)]


def throughput(segmenter: LungSegmenter, images: list[np.ndarray], batch_size: int, threads: int) -> float:
    """Images/s of ``segment_batch`` over ``images`` (after one warm-up batch)."""
    torch.set_num_threads(threads)
    segmenter.segment_batch(images[:batch_size], batch_size=batch_size)
    started = time.perf_counter()
    segmenter.segment_batch(images, batch_size=batch_size)
    return len(images) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="SOURCE:PATH of real radiographs (default: a random image)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="size of the random image (without --data)")
    parser.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (default 1, 8, 32)")
    parser.add_argument("--threads", type=int, action="append", default=None, help="torch threads (default 1, 2)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    segmenter = LungSegmenter.load(args.model)
    images = images_of(args.data, args.images, args.size, args.seed)
    rows = []
    for threads in args.threads or [1, 2]:
        for batch in args.batch or [1, 8, 32]:
            rate = throughput(segmenter, images, batch, threads)
            rows.append({"threads": threads, "batch": batch, "images_per_second": round(rate, 1),
                         "ms_per_image": round(1000 / rate, 1), "images": len(images)})
            print(json.dumps(rows[-1]))
    print("\n| threads | batch | images/s | ms per image |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['threads']} | {row['batch']} | {row['images_per_second']} | {row['ms_per_image']} |")


if __name__ == "__main__":
    main()
