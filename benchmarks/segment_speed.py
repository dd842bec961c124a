"""CPU inference time of the shipped lung model (issue figure: <= 100 ms per 256x256 image).

Times `LungSegmenter.segment` end to end on an in-memory 256x256 image (resize, equalize,
network, threshold, post-processing), one image at a time, with 1 and 2 torch threads.

    .venv/bin/python benchmarks/segment_speed.py --repeats 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from unveil.segmentation import LungSegmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    segmenter = LungSegmenter.load(args.model)
    image = np.random.default_rng(0).random((args.size, args.size), dtype=np.float32)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(5):
            segmenter.segment(image)
        start = time.perf_counter()
        for _ in range(args.repeats):
            segmenter.segment(image)
        per_image = (time.perf_counter() - start) / args.repeats
        print(f"{threads} thread(s): {1000 * per_image:6.1f} ms per {args.size}x{args.size} image "
              f"(segment: resize, equalize, U-Net, threshold, clean-up)")


if __name__ == "__main__":
    main()
