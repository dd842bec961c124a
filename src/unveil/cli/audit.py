"""`unveil audit`: did the model learn the disease or the dataset?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from unveil.cli.options import (
    AllowOverlapOption,
    CacheOption,
    CommandLineError,
    DataOption,
    JsonOption,
    LoaderOption,
    LungConventionOption,
    MaskOption,
    RecipesOption,
    ResamplesOption,
    SeedOption,
    WorkersOption,
    bind_roles,
    key_values,
    loader_options,
    writes_output,
)

AuditThresholdOption = Annotated[list[str] | None, typer.Option(
    "--audit-threshold", help="Flag threshold of an audit test, KEY=VALUE (repeatable): source_probe, "
                              "occlusion_auc, lung_saliency, min_images, transfer_drop, below_chance, "
                              "metadata_probe, metadata_only_auc, infection_pointing, contamination, "
                              "fingerprint_auc, discovery_ami, discovery_acquisition (none: informative).")]


def audit_thresholds(pairs: list[str] | None):
    """``--audit-threshold KEY=VALUE`` values as :class:`AuditThresholds` (``none``: an informative test)."""
    from dataclasses import fields

    from unveil.audit import AuditThresholds

    known = {f.name: f.type for f in fields(AuditThresholds)}
    chosen: dict[str, Any] = {}
    for key, value in key_values(pairs, "--audit-threshold").items():
        shown = f"--audit-threshold {key}={value}"
        if key not in known:
            raise CommandLineError(f"{shown}: KEY is one of {', '.join(known)}")
        if value.strip().lower() == "none":
            if "None" not in str(known[key]):
                raise CommandLineError(f"{shown}: {key} cannot be turned off (none is for informative-only tests)")
            chosen[key] = None
            continue
        try:
            chosen[key] = int(value) if known[key] == "int" else float(value)
        except ValueError:
            raise CommandLineError(f"{shown}: {value!r} is not a number") from None
    return AuditThresholds(**chosen)


@writes_output("on", "data", "option", "recipes", models=("model",))
def audit_command(
    model: Annotated[Path, typer.Argument(help="Model bundle (OUT/model of `unveil train`).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs, audit.json, audit.md, audit_images.csv.")],
    on: Annotated[list[str] | None, typer.Option(
        "--on", help="Another record set (repeatable), audited with the model's own test split: a composition "
                     "name (its test split) or SOURCE:PATH (an external set, read with the --option KEY=VALUE "
                     "loader options: transfer verdict).")] = None,
    own: Annotated[bool, typer.Option(
        help="Also audit the model's own composition's test split, rebuilt from its provenance (the in-source "
             "reference of the transfer verdict and of the source probes).")] = True,
    recipes: RecipesOption = None,
    data: DataOption = None,
    option: LoaderOption = None,
    mask: MaskOption = "segment",
    lung_convention: LungConventionOption = None,
    audit_threshold: AuditThresholdOption = None,
    resamples: ResamplesOption = 1000,
    saliency_samples: Annotated[int, typer.Option(help="Grad-CAM overlays saved per class.")] = 4,
    cache: CacheOption = None,
    workers: WorkersOption = 2,
    allow_overlap: AllowOverlapOption = False,
    as_json: JsonOption = False,
    seed: SeedOption = 0,
) -> None:
    """Did the model learn the disease or the dataset? t-SNE, source probes, lung occlusion, Grad-CAM.
    Lung masks for occlusion and saliency: --mask segment or truth; --data ROLE=SOURCE:PATH binds a role
    the model was not trained with."""
    from unveil.audit import audit
    from unveil.audit.outputs import audit_text
    from unveil.audit.run import audit_document

    plain, per_role = loader_options(option)
    result = audit(model, on or [], out, data=bind_roles(data, per_role, recipes), mask=mask, cache=cache,
                   thresholds=audit_thresholds(audit_threshold), seed=seed, resamples=resamples,
                   saliency_samples=saliency_samples, workers=workers, allow_overlap=allow_overlap,
                   progress=not as_json, lung_convention=lung_convention, recipes=recipes, own=own, options=plain)
    if as_json:
        typer.echo(json.dumps(audit_document(result), indent=2, default=str))
        return
    typer.echo(audit_text(result, out))  # wrapped at 100 columns: one block per verdict
