"""Check and summarise every known dataset found under a folder (the interim main job).

Looks for the sample layouts of ../shared/data (covid-chestxray, figure1, chest_xray, shenzhen,
lung-segmentation, covid-qu-ex, and any rsna / montgomery / hospital folders) and prints
`unveil data check` for each, then the paper's D composition built from COVID-ChestXRay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unveil.data.check import summarise
from unveil.data.compose import compose, load_recipes
from unveil.data.sources import DatasetLayoutError, load_source

KNOWN = {"covid-chestxray": "covid-chestxray", "figure1": "figure1", "chest_xray": "chestxray",
         "shenzhen": "shenzhen", "montgomery": "montgomery", "rsna": "rsna",
         "lung-segmentation": "lung-segmentation", "covid-qu-ex": "covid-qu-ex"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"error: {args.data} is not a folder of datasets", file=sys.stderr)
        return 2
    loads = {}
    for folder, source in KNOWN.items():
        root = args.data / folder
        if not root.is_dir():
            continue
        try:
            loads[source] = load_source(source, root)
        except DatasetLayoutError as error:
            print(f"skipped {root}: {error}", file=sys.stderr)
            continue
        print(f"== {source} ({root})")
        print(summarise([loads[source]], workers=args.workers).to_text())
        print()
    if "covid-chestxray" in loads:
        result = compose(load_recipes().recipe("D"), {"D": loads["covid-chestxray"].records}, seed=args.seed)
        print(f"== composition D (seed {args.seed}): COVID-ChestXRay, classes balanced by subsampling")
        for split, counts in result.counts().items():
            print(f"{split:5s} covid+ {counts['covid+']:4d}  covid- {counts['covid-']:4d}  "
                  f"patients {counts['patients']}")
    if not loads:
        print(f"no known dataset layout under {args.data}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
