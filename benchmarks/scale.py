"""Data at scale: pre-processing and one training epoch for growing synthetic RSNA-like sets.

Issue figures: peak memory flat in the data set size (training reads a memory-mapped array file from
the cache), and epoch throughput within 10 % of the in-memory path at 1k images.

The synthetic generator renders one RSNA-layout set (DICOM, normal / pneumonia, the ``paper``
preset's C signature) of max(--images) images at --synth-size; each N takes a seeded sample of it.
For each N, in child processes (so each phase's memory is its own):

- preprocess: ``preprocess_records`` (what ``unveil preprocess`` runs) into a fresh cache: images/s;
- train: the manifest -> train/val image sets (90/10) -> one epoch of ``fit`` (``--arch``, ``--width``,
  ``--size``, ``--device``): images/s of the epoch (validation not counted), the time to load the sets,
  and the data path alone (``gather_seconds``: every batch of an epoch indexed out of the set, no model). Path
  ``mmap`` (what training does) builds the array file on first use; ``memory`` decodes into RAM.
  With ``--repeats R`` each path trains R times at the first N, alternating the order; the fastest epoch is kept (the
  least disturbed by other work on the machine), the load time of the first (the build), the peak of all.

Memory per child: ``peak_rss_mb`` (``ru_maxrss`` from ``wait4``: the largest process of the child's
tree, file-backed pages included), ``peak_anon_mb`` and ``peak_file_mb`` (the child's ``RssAnon`` and
``RssFile`` from ``/proc``, sampled every 20 ms). The pages of the map count in ``RssFile``: they are the
OS page cache, shared by every process that maps the file and dropped first under memory pressure;
``RssAnon`` is the memory the process itself holds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --images 1000 5000 --in-memory-at 1000 5000 \\
        --repeats 2 --work runs/scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()


def synth_config(count: int, size: int) -> Any:
    """The ``paper`` preset reduced to its RSNA-like set C, ``count`` images (half pneumonia) at ``size``."""
    from unveil.synth.config import load_config, parse_config

    raw = dict(load_config("paper").raw)
    raw["image_size"] = size
    raw["datasets"] = {"C": {**raw["datasets"]["C"], "classes": {"normal": count - count // 2,
                                                                  "pneumonia": count // 2}}}
    return parse_config(raw, "paper (C only)")


def sample_records(root: Path, count: int, seed: int) -> Any:
    """A seeded sample of ``count`` records of the generated set."""
    from unveil.data.sources import load_source

    records = load_source("rsna", root / "C").records
    if count > len(records):
        raise SystemExit(f"{root}: {len(records)} images generated, {count} asked for")
    return records.sample(n=count, random_state=seed).reset_index(drop=True)


# --- child processes ------------------------------------------------------------------------------

def child_preprocess(args: argparse.Namespace) -> dict[str, Any]:
    from unveil.preprocess.cache import PreprocessSettings, preprocess_records

    records = sample_records(Path(args.root), args.n, args.seed)
    started = time.perf_counter()
    report = preprocess_records(records, args.cache, PreprocessSettings(size=args.size, mask=args.mask),
                                workers=args.workers)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images_per_second": len(records) / seconds, "counts": report.counts(),
            "manifest": str(report.manifest_path)}


def child_train(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch

    from unveil.models import build_model
    from unveil.training import TrainConfig, fit, fit_normalization, load_image_set

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    records = sample_records(Path(args.root), args.n, args.seed)
    manifest = pd.read_csv(args.manifest)
    classes = ("normal", "pneumonia")
    labels = records["finding"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    is_val = np.random.default_rng(args.seed).random(len(records)) < 0.1
    cache = args.cache if args.path == "mmap" else None
    started = time.perf_counter()
    sets = {name: load_image_set(records[mask].reset_index(drop=True), manifest, labels[mask], classes,
                                 size=args.size, cache=cache)
            for name, mask in (("train", ~is_val), ("val", is_val))}
    normalization = fit_normalization(sets["train"].images)
    load_seconds = time.perf_counter() - started
    config = TrainConfig(architecture=args.arch, width=args.width, image_size=args.size, epochs=1,
                         batch_size=args.batch_size, eval_batch_size=64, seed=args.seed, device=args.device)
    order = torch.randperm(len(sets["train"]), generator=torch.Generator().manual_seed(args.seed))
    started = time.perf_counter()  # the data path alone: every batch of an epoch taken from the set
    for batch in torch.split(order, config.batch_size):
        sets["train"].images[batch].float()
    gather_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(classes), width=config.width)
    result = fit(model, sets["train"], sets["val"], config, Path(args.run), normalization=normalization, resume=False)
    epoch = result.history[-1]
    train_images, val_images = len(sets["train"]), len(sets["val"])
    del sets, model, result  # the peak memory must not count the sets twice
    started = time.perf_counter()  # a second run on the same set: the array file exists (mmap) or not (memory)
    load_image_set(records[~is_val].reset_index(drop=True), manifest, labels[~is_val], classes, size=args.size,
                   cache=cache)
    reload_seconds = time.perf_counter() - started
    return {"path": args.path, "load_seconds": load_seconds, "reload_seconds": reload_seconds,
            "train_images": train_images, "val_images": val_images,
            "epoch_seconds": epoch["train_seconds"], "images_per_second": epoch["train_images_per_second"],
            "gather_seconds": gather_seconds}


# --- the driver -----------------------------------------------------------------------------------

def _proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with Path(f"/proc/{pid}/status").open(encoding="ascii") as stream:
            for line in stream:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0])  # kB
    except OSError:
        pass
    return values


def run_child(phase: str, options: list[str]) -> dict[str, Any]:
    """Run one phase in a child process; its JSON result plus its wall time and peak memory."""
    command = [sys.executable, str(SELF), phase, *options]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _proc_status(process.pid).items():
                peaks[key] = max(peaks[key], value)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": peaks["RssAnon"] / 1024,
            "peak_file_mb": peaks["RssFile"] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 5000], help="set sizes N")
    parser.add_argument("--in-memory-at", type=int, nargs="*", default=[1000],
                        help="also train on the in-memory path at these N")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"), help="data, caches and runs (reused)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default WORK/scale.json)")
    parser.add_argument("--synth-size", type=int, default=256, help="side of the generated radiographs")
    parser.add_argument("--size", type=int, default=256, help="pre-processing and training size")
    parser.add_argument("--mask", default="segment", help="pre-processing lung mask: segment, truth or none")
    parser.add_argument("--workers", type=int, default=2, help="pre-processing (and generation) processes")
    parser.add_argument("--arch", default="conv8")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda, auto)")
    parser.add_argument("--synth-images", type=int, default=None, help="images generated (default: the largest N)")
    parser.add_argument("--train-only", action="store_true",
                        help="reuse each N's cache and manifest from an earlier run: train only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="training runs per path at the first N, where the paths' throughput is compared")
    args = parser.parse_args()
    from unveil.synth.generate import generate

    work = args.work.resolve()
    generated = args.synth_images or max(args.images)
    root = work / f"synth-{generated}x{args.synth_size}"
    if not (root / "synth.meta.json").is_file():
        started = time.perf_counter()
        generate(synth_config(generated, args.synth_size), root, seed=args.seed, workers=args.workers, overwrite=True)
        print(f"generated {generated} images at {args.synth_size} px in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    common = ["--root", str(root), "--size", str(args.size), "--seed", str(args.seed)]
    rows = []
    for n in args.images:
        cache = work / f"cache-{n}-{args.size}-{args.mask}"
        row: dict[str, Any] = {"images": n}
        if args.train_only:
            manifests = sorted(cache.glob("manifest-*.csv"))
            if len(manifests) != 1:
                raise SystemExit(f"{cache}: {len(manifests)} manifests; run without --train-only first")
            row["preprocess"] = {"manifest": str(manifests[0])}
        else:
            row["preprocess"] = run_child("_preprocess", [*common, "--n", str(n), "--cache", str(cache),
                                                          "--mask", args.mask, "--workers", str(args.workers)])
        paths = ["mmap", *(["memory"] if n in args.in_memory_at else [])]
        tries: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        # alternate the order: other work on the machine disturbs both paths alike
        for repeat in range(args.repeats if n == args.images[0] else 1):
            for path in paths if repeat % 2 == 0 else paths[::-1]:
                tries[path].append(run_child("_train", [
                    *common, "--n", str(n), "--cache", str(cache), "--manifest", row["preprocess"]["manifest"],
                    "--path", path, "--arch", args.arch, "--width", str(args.width),
                    "--batch-size", str(args.batch_size), "--device", args.device,
                    "--run", str(work / f"run-{n}-{path}")]))
        for path, results in tries.items():  # the fastest epoch (least disturbed), the first load (the build)
            best = max(results, key=lambda r: r["images_per_second"])
            row[f"train_{path}"] = {**best, "load_seconds": results[0]["load_seconds"],
                                    "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                                    "peak_anon_mb": max(r["peak_anon_mb"] for r in results),
                                    "peak_file_mb": max(r["peak_file_mb"] for r in results),
                                    "all_images_per_second": [r["images_per_second"] for r in results]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    document = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "results": rows}
    out = args.json or work / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(out)
    print(table(rows))
    print(f"results: {out}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| N | phase | images/s | load s | batch gather s | peak RSS MB | peak anon MB | peak file MB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for phase in ("preprocess", "train_mmap", "train_memory"):
            if phase in row and "images_per_second" in row[phase]:
                r = row[phase]
                load = f"{r['load_seconds']:.1f}" if "load_seconds" in r else "-"
                gather = f"{r['gather_seconds']:.2f}" if "gather_seconds" in r else "-"
                lines.append(f"| {row['images']} | {phase} | {r['images_per_second']:.1f} | {load} | {gather} | "
                             f"{r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['peak_file_mb']:.0f} |")
    return "\n".join(lines)


def child_main(phase: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("--root", "--cache", "--manifest", "--path", "--arch", "--run", "--mask", "--device"):
        parser.add_argument(name)
    for name in ("--n", "--size", "--seed", "--workers", "--batch-size"):
        parser.add_argument(name, type=int, default=1)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = child_preprocess(args) if phase == "_preprocess" else child_train(args)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_preprocess", "_train"):
        child_main(sys.argv[1], sys.argv[2:])
    else:
        main()
