"""Audit acceptance on real data: a COVID-ChestXRay + Kermany (AB) model is audited on its own test split and on
other hospitals' images; print the figures of the source probe, the transfer verdict and the other tests.

Role A = COVID-ChestXRay (COVID+ and COVID-), role B = Kermany (pediatric COVID-), recipe AB: the shortcut
set-up of issue 15. External sets: COVID-QU-Ex and Figure 1 (whole datasets). Needs ../shared/data.

    .venv/bin/python benchmarks/audit_realdata.py --arch conv8 --size 128 --epochs 20 --seeds 0 1
    .venv/bin/python benchmarks/audit_realdata.py --arch resnet18 --size 224 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unveil.audit import audit
from unveil.preprocess.cache import PreprocessSettings
from unveil.data.spec import DataSpec
from unveil.training import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run(out: Path, *, arch: str, width: float, size: int, epochs: int, seed: int, mask: str, workers: int) -> dict:
    data = {"A": DataSpec("covid-chestxray", str(SHARED / "covid-chestxray")),
            "B": DataSpec("chestxray", str(SHARED / "chest_xray"))}
    external = [f"covid-qu-ex:{SHARED / 'covid-qu-ex'}", f"figure1:{SHARED / 'figure1'}"]
    started = time.perf_counter()
    trained = train("AB", data, out / f"{arch}-{size}-seed{seed}", config=TrainConfig(
        architecture=arch, width=width, image_size=size, epochs=epochs, batch_size=32, seed=seed),
        preprocess=PreprocessSettings(mask=mask), cache=out / "cache", workers=workers, resume=False)
    trained_s = time.perf_counter() - started
    result = audit(trained.bundle, external, out / f"{arch}-{size}-seed{seed}-audit", cache=out / "cache", seed=seed,
                   workers=workers, resamples=1000)
    return {"arch": arch, "size": size, "epochs": epochs, "seed": seed, "mask": mask,
            "train_seconds": round(trained_s, 1), "audit_seconds": round(time.perf_counter() - started - trained_s, 1),
            "val_auc": trained.best_metrics["val_auc"], "summary": result.figures["summary"],
            "verdicts": [{"test": v.test, "subject": v.subject, "value": round(v.value, 3),
                          "interval": [round(v.low, 3), round(v.high, 3)], "flagged": v.flagged}
                         for v in result.verdicts],
            "transfer": result.figures["transfer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/audit-realdata"))
    parser.add_argument("--arch", default="conv8")
    parser.add_argument("--width", type=float, default=None, help="conv8 width (default 0.5; 1 for the others)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--mask", default="none", help="pre-processing lung mask: none or segment (the paper's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    width = args.width if args.width is not None else 0.5 if args.arch == "conv8" else 1.0
    for seed in args.seeds:
        print(json.dumps(run(args.out, arch=args.arch, width=width, size=args.size, epochs=args.epochs, seed=seed,
                             mask=args.mask, workers=args.workers), default=str), flush=True)


if __name__ == "__main__":
    main()
