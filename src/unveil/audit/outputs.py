"""The audit's files (Grad-CAM overlays, the discovered clusters' montage, the per-image table, audit.json,
audit.md, its metadata) and its text.

A test set given as ``SOURCE:PATH`` is named by its short label in audit.md and in the terminal text (its role,
``figures["test_sets"]``; `unveil.evaluation.names`), its full name in a legend; audit.json keeps the full names.

Everything here is written atomically (a file by rename, the overlay folder by swapping folders), so an
interrupted audit never leaves a half-written file or a mix of two runs' overlays.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from unveil.audit.verdict import AuditResult, Verdict, summary_sentence
from unveil.evaluation.names import legend, relabel
from unveil.explain.saliency import display_image, save_overlay
from unveil.io import ImageReadError, read_image
from unveil.provenance import write_run_metadata, write_text_atomic

if TYPE_CHECKING:
    from unveil.audit.run import AuditedImages


def write_overlays(audited: AuditedImages, maps: np.ndarray, probability: np.ndarray, out: Path, *, seed: int,
                   samples: int) -> list[str]:
    """``samples`` Grad-CAM overlays per class into OUT/saliency; a rerun replaces the whole folder, so no
    overlay of an earlier run is left beside the new ones."""
    kept, labels, label_names = audited.records, audited.labels, audited.label_names
    rng = np.random.default_rng(seed)
    overlay_dir = out / "saliency"
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".saliency.", suffix=".tmp"))
    overlays = []
    try:
        for value in np.unique(labels):
            candidates = np.flatnonzero(labels == value)
            for index in sorted(rng.choice(candidates, min(samples, len(candidates)), replace=False)):
                name = f"{label_names[index]}_{index:05d}.png"
                title = f"{kept.loc[index, 'source']} {label_names[index]} p={probability[index]:.2f}"
                save_overlay(audited.images.images[index, 0].numpy(), maps[index], audited.lungs[index], title,
                             staging / name, display=_display(kept.loc[index, "path"]))
                overlays.append(str(overlay_dir / name))
        _replace_folder(staging, overlay_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return overlays


def write_audit_files(result: AuditResult, per_image: pd.DataFrame, out: Path, arguments: dict[str, Any]) -> None:
    """audit_images.csv, audit.json, audit.md and audit.meta.json (``arguments``: what the run was asked)."""
    write_text_atomic(out / "audit_images.csv", per_image.to_csv(index=False, lineterminator="\n"))
    write_text_atomic(out / "audit.json", json.dumps(audit_document(result), indent=2, default=str) + "\n")
    write_text_atomic(out / "audit.md", audit_markdown(result, out))
    write_run_metadata(out / "audit.meta.json", "unveil audit", arguments, extra={"flagged": len(result.flagged)})


def write_cluster_montage(clusters: list[dict], path: Path, side: int = 96) -> Path | None:
    """One row per discovered cluster (:mod:`unveil.audit.discovery`): the images nearest its centre, as acquired
    (longest side ``side`` px), captioned with its size and COVID+ share. None (and no file) without clusters."""
    path.unlink(missing_ok=True)  # an earlier run's montage is not this run's
    if not clusters:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(c["paths"]) for c in clusters)
    figure, axes = plt.subplots(len(clusters), columns, figsize=(1.3 * columns, 1.5 * len(clusters)), dpi=110,
                                squeeze=False)
    for row, cluster in zip(axes, clusters, strict=True):
        for column, axis in enumerate(row):
            axis.set(xticks=[], yticks=[])
            shown = _display(cluster["paths"][column], side) if column < len(cluster["paths"]) else None
            if shown is not None:
                axis.imshow(shown, cmap="gray", vmin=0, vmax=1)
            else:
                axis.axis("off")
        row[0].set_title(f"cluster {cluster['cluster']}: {cluster['images']} images, "
                         f"{cluster['covid_positive_share']:.0%} COVID+", fontsize=7, loc="left")
    figure.tight_layout()
    staging = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(staging)
    plt.close(figure)
    staging.replace(path)
    return path


def _display(path: str, side: int | None = None) -> np.ndarray | None:
    """The original radiograph resized for an overlay (longest side ``side``, default the overlays'); None (the
    pre-processed image is drawn) if unreadable."""
    try:
        pixels = read_image(path).pixels
        return display_image(pixels) if side is None else display_image(pixels, side)
    except (ImageReadError, OSError):
        return None


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of ``target`` (renames, so ``target`` is never half written)."""
    new.chmod(0o755)
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old.", suffix=".tmp"))
        target.replace(old / target.name)
        new.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.replace(target)


def _number(value: float) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def audit_document(result: AuditResult) -> dict[str, Any]:
    """Everything as JSON-ready data (NaN -> null); each verdict also as printed (``shown``, ``state``)."""
    verdicts = [{**{k: _number(v) if isinstance(v, float) else v for k, v in asdict(verdict).items()},
                 "shown": verdict.shown, "state": verdict.state} for verdict in result.verdicts]
    return {"verdicts": verdicts, "flagged": len(result.flagged), "figures": result.figures, "files": result.files}


#: the width of `unveil audit`'s text (columns)
TEXT_WIDTH = 100
#: the indent of a verdict's lines after its first
INDENT = "    "


def _summary(result: AuditResult) -> str:
    return result.figures.get("summary") or summary_sentence((v.test, v.flagged) for v in result.verdicts)


def _labels(result: AuditResult) -> dict[str, str]:
    """Full test-set name -> its label (``figures["test_sets"]``; empty for an audit written before labels)."""
    labels = result.figures.get("test_sets")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def verdict_block(verdict: Verdict, labels: dict[str, str], width: int = TEXT_WIDTH) -> list[str]:
    """One verdict as lines of at most ``width`` columns: ``[state] test — subject``, then (indented) what was
    measured and the rule, then what it suggests; test sets by their labels."""
    def wrap(text: str, first: str = INDENT) -> list[str]:
        return textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=INDENT,
                             break_on_hyphens=False)

    lines = wrap(f"[{verdict.state}] {verdict.test} — {relabel(verdict.subject, labels)}", first="")
    lines += wrap(f"{verdict.measure or 'value'}: {verdict.shown}; rule: {verdict.threshold}")
    return lines + (wrap(relabel(verdict.suggests, labels)) if verdict.suggests else [])


def audit_text(result: AuditResult, out: str | Path | None = None, width: int = TEXT_WIDTH) -> str:
    """What `unveil audit` prints: the lead sentence, one block per verdict (:func:`verdict_block`), the full name
    of each test set shown by a label, the flag count; every line at most ``width`` columns."""
    labels = _labels(result)
    lines = [*textwrap.wrap(_summary(result), width=width, break_on_hyphens=False), ""]
    for verdict in result.verdicts:
        lines += [*verdict_block(verdict, labels, width), ""]
    names = legend(labels)
    if names:
        lines += textwrap.wrap("Test sets:", width=width)
        lines += [line for name in names for line in textwrap.wrap(name, width=width, initial_indent=INDENT,
                                                                      subsequent_indent=INDENT * 2)]
        lines.append("")
    tail = f"{len(result.flagged)} flag(s)" + (f"; figures in {out}" if out is not None else "")
    return "\n".join(lines + textwrap.wrap(tail, width=width, break_on_hyphens=False))


def audit_markdown(result: AuditResult, out: Path) -> str:
    """The section a report includes: the verdict table, the test sets' full names, then the pictures."""
    summary, labels = _summary(result), _labels(result)
    lines = ["## Bias audit", "", f"**{summary}**", "",
             f"{result.figures['images']} test images of {result.figures['patients']} "
             f"patients ({', '.join(f'{k}: {v}' for k, v in result.figures['by_source'].items())}).", "",
             "| test | subject | measure | value [95 % CI] | flag rule | flagged | what it suggests |",
             "|---|---|---|---|---|---|---|"]
    for v in result.verdicts:
        flag = {"FLAGGED": "**yes**", "ok": "no", "informative": "—"}.get(v.state, v.state)
        cells = [v.test, relabel(v.subject, labels), v.measure, v.shown, v.threshold, flag,
                 relabel(v.suggests, labels)]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    names = legend(labels)
    if names:
        lines += ["Test sets: " + "; ".join(f"`{name}`" for name in names) + ".", ""]
    for key in ("tsne_by_source", "tsne_by_label", "clusters_montage"):
        if key in result.files:
            lines.append(f"![{key}]({Path(result.files[key]).relative_to(out)})")
    lines.append("")
    return "\n".join(lines) + "\n"
