"""End-to-end pre-processing throughput (issue figure: >= 20 images/s on 2 cores).

Decodes, resizes, equalizes, segments (shipped model), blurs and applies the mask, and writes
the cache, for every image of the given datasets, with N worker processes and a fresh cache;
then reruns on the warm cache.

    .venv/bin/python benchmarks/preprocess_speed.py --workers 2 \
        --data covid-chestxray:../shared/data/covid-chestxray --data chestxray:../shared/data/chest_xray
"""

from __future__ import annotations

import argparse
import tempfile
import time

from unveil.data.records import concat_records
from unveil.data.sources import load_source
from unveil.preprocess.cache import PreprocessSettings, preprocess_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=None, help="SOURCE:PATH (repeatable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    specs = args.data or ["covid-chestxray:../shared/data/covid-chestxray", "chestxray:../shared/data/chest_xray"]
    records = concat_records(load_source(*spec.split(":", 1)).records for spec in specs)
    settings = PreprocessSettings(size=args.size)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        report = preprocess_records(records, cache, settings, workers=args.workers)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        preprocess_records(records, cache, settings, workers=args.workers)
        warm = time.perf_counter() - start
    print(f"{len(records)} images ({', '.join(specs)}), {args.workers} workers, size {args.size}")
    print(f"cold cache: {len(records) / cold:6.1f} images/s ({cold:.1f} s), counts {report.counts()}")
    print(f"warm cache: {len(records) / warm:6.1f} images/s ({warm:.1f} s)")


if __name__ == "__main__":
    main()
