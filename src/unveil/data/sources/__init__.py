"""Dataset loaders, one module per source, each reading the source's original on-disk layout.

Use :func:`load_source` with a registry name (or alias) and the dataset's root folder::

    from unveil.data.sources import load_source
    loaded = load_source("covid-chestxray", "../shared/data/covid-chestxray")
    loaded.records      # the record table (see unveil.data.records)
    loaded.issues       # rows that point to missing files, unparseable labels...
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from unveil.data.sources.base import DataIssue, DatasetLayoutError, SourceLoad, UnknownSourceError

#: Registry name -> module whose ``load(root, **options)`` reads it (imported on first use).
#: Names are what records carry in their ``source`` column.
SOURCES: dict[str, str] = {
    "covid-chestxray": "unveil.data.sources.covid_chestxray",
    "figure1": "unveil.data.sources.figure1",
    "chestxray": "unveil.data.sources.kermany",
    "rsna": "unveil.data.sources.rsna",
    "montgomery": "unveil.data.sources.montgomery",
    "shenzhen": "unveil.data.sources.shenzhen",
    "hospital-csv": "unveil.data.sources.hospital_csv",
    "dicom-folder": "unveil.data.sources.dicom_folder",
    "lung-segmentation": "unveil.data.sources.lung_segmentation",
    "covid-qu-ex": "unveil.data.sources.covid_qu_ex",
}

#: Other names users type for the same sources.
ALIASES: dict[str, str] = {
    "cohen": "covid-chestxray",
    "covid_chestxray": "covid-chestxray",
    "actualmed": "figure1",
    "kermany": "chestxray",
    "chest_xray": "chestxray",
    "chest-xray": "chestxray",
    "rsna-pneumonia": "rsna",
    "hospital": "hospital-csv",
    "corda": "hospital-csv",
    "csv": "hospital-csv",
    "dicom": "dicom-folder",
    "dicom_folder": "dicom-folder",
    "pacs": "dicom-folder",
    "lung_segmentation": "lung-segmentation",
    "chest-xray-masks-and-labels": "lung-segmentation",
    "covid_qu_ex": "covid-qu-ex",
    "covidqu": "covid-qu-ex",
    "qu-ex": "covid-qu-ex",
}


def resolve_source_name(name: str) -> str:
    """Registry name for ``name`` or an alias; an :class:`UnknownSourceError` listing the known names otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise UnknownSourceError(f"unknown dataset source {name!r}; known sources: {known} "
                                 f"(or an alias: {', '.join(sorted(ALIASES))})")
    return key


def load_source(name: str, root: str | Path, **options) -> SourceLoad:
    """Load dataset ``name`` from ``root`` (its original layout); ``options`` go to the loader."""
    module = importlib.import_module(SOURCES[resolve_source_name(name)])
    accepted = [p for p in inspect.signature(module.load).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetLayoutError(f"source {name!r} has no option(s) {', '.join(unknown)}; "
                                 f"it accepts: {', '.join(accepted) or 'none'}")
    return module.load(Path(root), **options)


__all__ = ["SOURCES", "ALIASES", "DataIssue", "DatasetLayoutError", "SourceLoad", "UnknownSourceError", "load_source",
           "resolve_source_name"]
