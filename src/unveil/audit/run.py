"""`unveil audit`: did the model learn the disease, or the dataset? Evidence and numbers.

The audit gathers the images once (:func:`unveil.audit.context.gather`: the model's own test split and every
external set, pre-processed as the model saw them, with lung masks), then runs every registered audit test
(:mod:`unveil.audit.protocol`, one module each in :mod:`unveil.audit.suite`) in order on one
:class:`~unveil.audit.context.AuditContext`:

1. feature map: t-SNE of the encoder features, coloured by source and by label (the paper's Fig. 4);
2. source identifiability: a cross-validated linear probe telling two sources apart *within one
   class* (and, for reference, the same probe predicting the label);
3. lung occlusion: the model's AUC with the lung content replaced by a neutral fill (on lung-masked input: the
   lungs' silhouette kept, the content hidden; see :mod:`unveil.audit.occlusion`);
4. the shortcuts of the data and the sets (:mod:`~unveil.audit.transfer`, :mod:`~unveil.audit.metadata`,
   :mod:`~unveil.audit.contamination`), and the merged sources no column names: the label from the image files
   alone (:mod:`~unveil.audit.fingerprint`) and clusters of the features that follow the label and the files
   (:mod:`~unveil.audit.discovery`);
5. saliency: the share of Grad-CAM mass inside the lung mask, and in the infected regions where masks exist.

Each test returns its verdicts, figures, files and per-image evidence (:class:`~unveil.audit.protocol.AuditOutcome`);
a test that lacks the data to say anything raises :class:`~unveil.audit.protocol.InsufficientData` and is recorded
as "not applicable" with the reason. The runner writes audit.json, audit.md, audit_images.csv and their metadata.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import unveil.audit.suite  # noqa: F401 (imports every audit test module, so each registers its test)
from unveil.audit.context import AuditContext, gather
from unveil.audit.outputs import (
    audit_document,  # noqa: F401 (re-exported: `unveil audit --json` uses it)
    write_audit_files,
)
from unveil.audit.protocol import AuditOutcome, AuditTest, InsufficientData, registered
from unveil.audit.settings import MASK_SOURCES, AuditError, AuditThresholds
from unveil.audit.transfer import own_composition
from unveil.audit.verdict import NOT_APPLICABLE, AuditResult, Verdict, summary_sentence
from unveil.data.spec import DataSpec
from unveil.evaluation.evaluate import model_bindings
from unveil.evaluation.names import bound_labels
from unveil.progress import bar as progress_bar
from unveil.training.bundle import ModelBundle, load_verified_bundle

__all__ = ["MASK_SOURCES", "AuditError", "AuditResult", "AuditThresholds", "Verdict", "audit", "gather",
           "run_tests"]

log = logging.getLogger(__name__)

#: the rules of an audit not told otherwise (the documented defaults)
DEFAULT_THRESHOLDS = AuditThresholds()

#: the per-image columns of audit_images.csv after ``label`` and ``probability``, in their documented order (see
#: docs/audit.md); columns of other tests follow, in the order the tests run
PER_IMAGE_COLUMNS = ("probability_lungs_hidden", "lung_saliency", "tsne_x", "tsne_y", "near_duplicate_of_training",
                     "cluster")
#: the columns of audit_images.csv that say which image a row is (no test may write them)
IDENTITY_COLUMNS = ("record_id", "source", "patient_id", "test_set", "audited_as", "label", "probability")


def _merge(into: dict[str, Any], new: dict[str, Any], owners: dict[str, str], test: AuditTest, what: str) -> None:
    """Add ``new`` to ``into``; a key another test already wrote is a bug in that test (one key, one test)."""
    for key, value in new.items():
        if key in owners:
            raise RuntimeError(f"audit test {test.name!r} writes {what}[{key!r}], which {owners[key]!r} wrote")
        owners[key] = test.name
        into[key] = value


def run_test(test: AuditTest, context: AuditContext) -> AuditOutcome:
    """``test`` on ``context``, its needs computed first; :class:`InsufficientData` (and only that) becomes its
    "not applicable" outcome."""
    for need in test.needs:
        getattr(context, need)  # the costly resources are computed once, by the first test that needs them
    try:
        return test.run(context)
    except InsufficientData as error:
        log.info("audit test %s not applicable: %s", test.name, error)
        return test.not_applicable(context, str(error))


def run_tests(context: AuditContext, result: AuditResult, tests: tuple[AuditTest, ...] | None = None, *,
              progress: bool = False) -> dict[str, np.ndarray]:
    """Run ``tests`` (default: every registered one) in order, merging each outcome into ``result``; returns the
    per-image evidence columns, each one value per audited image. One progress step per run of tests sharing a
    ``stage``."""
    tests = registered() if tests is None else tests
    stages = [(stage, list(members)) for stage, members in itertools.groupby(tests, key=lambda t: t.stage or t.name)]
    steps = progress_bar(total=len(stages), desc="audit", unit="test", enabled=progress)
    columns: dict[str, np.ndarray] = {}
    owners: dict[str, dict[str, str]] = {"figures": dict.fromkeys(result.figures, "audit"), "files": {},
                                         "per_image": dict.fromkeys(IDENTITY_COLUMNS, "audit")}
    for stage, members in stages:
        steps.set_postfix_str(stage)
        for test in members:
            outcome = run_test(test, context)
            result.verdicts += outcome.verdicts
            _merge(result.figures, outcome.figures, owners["figures"], test, "figures")
            _merge(result.files, outcome.files, owners["files"], test, "files")
            wrong = {name: len(values) for name, values in outcome.per_image.items()
                     if len(values) != len(context.records)}
            if wrong:
                raise RuntimeError(f"audit test {test.name!r}: per-image columns of other lengths than the "
                                   f"{len(context.records)} images: {wrong}")
            _merge(columns, outcome.per_image, owners["per_image"], test, "per_image")
        steps.update()
    steps.close()
    return columns


def per_image_table(context: AuditContext, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """audit_images.csv: who each image is, its label and probability, then the tests' evidence
    (:data:`PER_IMAGE_COLUMNS` first)."""
    ordered = [name for name in PER_IMAGE_COLUMNS if name in columns] + \
        [name for name in columns if name not in PER_IMAGE_COLUMNS]
    base = context.records[list(IDENTITY_COLUMNS[:5])]
    return base.assign(label=context.is_positive, probability=context.probability,
                       **{name: columns[name] for name in ordered})


def _audited_sets(model: str | Path, bundle: ModelBundle, test_sets: list[str], own: bool) -> tuple[str | None,
                                                                                                  list[str]]:
    """(the model's own composition or None, every set to audit: the own one first)."""
    if bundle.positive_index is None:
        raise AuditError(f"{model}: a pre-training model; audit COVID classifiers from `unveil train`")
    own_name = own_composition(bundle) if own else None
    names = list(dict.fromkeys([*([own_name] if own_name else []), *test_sets]))
    if not names:
        raise AuditError("nothing to audit: give a test set with --on, or keep the model's own test split")
    return own_name, names


def audit(model: str | Path, test_sets: list[str], out: str | Path, *, data: dict[str, DataSpec] | None = None,
          mask: str = "segment", cache: str | Path | None = None, thresholds: AuditThresholds = DEFAULT_THRESHOLDS,
          seed: int = 0, resamples: int = 1000, saliency_samples: int = 4, workers: int = 1,
          recipes: str | Path | None = None, allow_overlap: bool = False, progress: bool = False,
          lung_convention: str | None = None, own: bool = True, options: dict[str, Any] | None = None) -> AuditResult:
    """Run the registered tests of ``model`` on its own composition's test split (``own``, rebuilt from its
    provenance) plus every set of ``test_sets``, in one feature space; write PNGs, JSON and Markdown.
    ``lung_convention``: of the segmented masks (default: the one the model was trained with).
    ``options``: loader options of the ``SOURCE:PATH`` test sets."""
    if mask not in MASK_SOURCES:
        raise AuditError(f"mask must be one of {', '.join(MASK_SOURCES)}; got {mask!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_verified_bundle(model)
    own_name, test_sets = _audited_sets(model, bundle, test_sets, own)
    audited = gather(bundle, test_sets, own_name, data=data, mask=mask, cache=cache, recipes=recipes,
                     allow_overlap=allow_overlap, workers=workers, progress=progress, lung_convention=lung_convention,
                     options=options)
    kept = audited.records
    result = AuditResult([], {"images": len(kept), "patients": int(len(set(audited.groups))),
                              "by_source": {str(k): int(v) for k, v in kept["source"].value_counts().items()},
                              "skipped": audited.images.skipped, "masks": mask, "thresholds": asdict(thresholds)})
    context = AuditContext(audited, out, thresholds, seed=seed, resamples=resamples, workers=workers,
                           saliency_samples=saliency_samples)
    columns = run_tests(context, result, progress=progress)
    result.figures["summary"] = summary_sentence(((v.test, v.flagged) for v in result.verdicts),
                                                 not_run=(v.test for v in result.verdicts if v.state == NOT_APPLICABLE))
    result.figures["test_sets"] = bound_labels(test_sets, model_bindings(bundle, data).specs)  # names for the text
    write_audit_files(result, per_image_table(context, columns), out, {
        "model": str(model), "on": test_sets, "own": own_name, "masks": mask, "seed": seed, "resamples": resamples,
        "thresholds": asdict(thresholds), "cache": str(audited.cache)}, bundle=bundle.path)
    return result
