"""unveil: chest X-ray classifiers that are honest about small, biased data.

Implements Tartaglione et al., "Unveiling COVID-19 from Chest X-ray with deep learning:
a hurdles race with small data" (2020). Every layer is usable from Python.

Layers, lowest first. A module imports only from its own layer or a lower-numbered one, and
only at module level (``tests/test_layers.py`` checks the import graph):

1. ``unveil.errors``, ``unveil.provenance``, ``unveil.progress``, ``unveil.documents``, ``unveil.schema``,
   ``unveil.tracking``, ``unveil.artifacts``: the error family, atomic writes and run metadata, logging and
   progress bars, the bounded reading of YAML and JSON files, the one schema machinery of every configuration
   (FILE:LINE errors), the experiment trackers (metrics.jsonl, TensorBoard, MLflow) every trainer logs to, each
   stage's output as a verified artifact (one writer, one loader).
2. ``unveil.io``: reading (and writing) radiographs.
3. ``unveil.data``: dataset loaders, the record table, splits, compositions, fingerprints, data specs.
4. ``unveil.synth``: the synthetic benchmark.
5. ``unveil.transforms``: pure image transforms (equalisation, resizing, lung masking).
6. ``unveil.segmentation``: the lung segmentation model.
7. ``unveil.preprocess``: the pre-processing pipeline run over a dataset, and its cache.
8. ``unveil.models``: classifier architectures.
9. ``unveil.thresholds``: decision-threshold rules.
10. ``unveil.training``: fitting, checkpoints, model bundles, the out-of-distribution reference.
11. ``unveil.explain``: Grad-CAM saliency maps and overlays.
12. ``unveil.evaluation``: metrics, evaluation of models on test sets, tables, the results store.
13. ``unveil.audit``: the bias audit.
14. ``unveil.inference``: prediction on new images, export.
15. ``unveil.reports``: the HTML report.
16. ``unveil.experiments``: experiment files and ``unveil reproduce``.
17. ``unveil.cli``: the command line.
"""

__version__ = "0.1.0"
