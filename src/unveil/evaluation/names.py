"""How tables, the report and the audit name a test set: a short label, the full binding in a legend.

A composition (``AB``) is its own label. A whole dataset given as ``SOURCE:PATH`` is named by its role where
one is bound to that dataset (``D``), else by its source (``covid-chestxray``), with the last folder of its
path added only where two sets, or a set and a bound role, share a source (``chestxray (other)``; more folders
where the last is shared). A label that would
read like another set's (role ``A`` beside the composition ``A``) says it is the whole set (``A (whole set)``);
labels are always distinct. The full name stays in the data (``test_set``) and in each legend.

>>> test_set_labels(["AB", "covid-chestxray:/data/cohen"], {"covid-chestxray:/data/cohen": "D"})
{'AB': 'AB', 'covid-chestxray:/data/cohen': 'D'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

WHOLE = " (whole set)"


def _split(name: str) -> tuple[str, str] | None:
    """(source, path) of a ``SOURCE:PATH`` name; None for a composition."""
    source, colon, root = name.partition(":")
    return (source.strip(), root.strip()) if colon and source.strip() and root.strip() else None


def _tails(roots: list[str]) -> list[str]:
    """The last folder of each path, with as many parent folders as it takes to tell them apart."""
    parts = [PurePath(root).parts or (root,) for root in roots]
    tails = []
    for own in parts:
        depth = 1
        while depth < len(own) and any(o != own and o[-depth:] == own[-depth:] for o in parts):
            depth += 1
        tails.append("/".join(own[-depth:]).lstrip("/") or "/")
    return tails


def role_labels(names: Iterable[str], bindings: Mapping[str, Any]) -> dict[str, str]:
    """``SOURCE:PATH`` name -> the role (of ``bindings``: role -> a spec with ``source`` and ``root``) bound to the
    same dataset (same source, same resolved folder); names no role binds are left out."""
    found: dict[str, str] = {}
    for name in names:
        parsed = _split(str(name))
        if parsed is None:
            continue
        folder = Path(parsed[1]).expanduser().resolve()
        role = next((r for r, spec in bindings.items() if str(spec.source) == parsed[0]
                     and Path(str(spec.root)).expanduser().resolve() == folder), None)
        if role is not None:
            found[str(name)] = str(role)
    return found


def test_set_labels(names: Iterable[str], preferred: Mapping[str, str] | None = None,
                    sources: Iterable[str] = ()) -> dict[str, str]:
    """Full test-set name -> a short, distinct label (module docstring); ``preferred``: a label to use for a
    name where it is free (its role, or one a results file recorded); ``sources``: those of other datasets in
    play (the roles bound), so that a set of one of them also shows its folder."""
    names = list(dict.fromkeys(str(n) for n in names))
    preferred = {str(k): str(v) for k, v in (preferred or {}).items() if isinstance(v, str) and v}
    labels = {n: n for n in names if _split(n) is None}
    labels |= {n: preferred[n] for n in names if n not in labels and n in preferred}
    by_source: dict[str, list[str]] = {}
    for name in names:
        if _split(name) is not None:
            by_source.setdefault(_split(name)[0], []).append(name)  # type: ignore[index]
    for source, group in by_source.items():  # a set without a label: its source, its folder where one is shared
        shared = len(group) > 1 or source in set(sources)
        tails = _tails([_split(n)[1] for n in group]) if shared else [""] * len(group)  # type: ignore[index]
        labels.update({n: f"{source} ({tail})" if tail else source for n, tail in zip(group, tails, strict=True)
                       if n not in labels})
    for fallback in (lambda n: labels[n] + WHOLE, lambda n: n):  # a clash: say "whole set", else the full name
        clashing = [n for n in names if n != labels[n] and list(labels.values()).count(labels[n]) > 1]
        labels.update({n: fallback(n) for n in clashing})
    return {n: labels[n] for n in names}


def bound_labels(names: Iterable[str], bindings: Mapping[str, Any]) -> dict[str, str]:
    """:func:`test_set_labels` with the roles of ``bindings`` (role -> spec): a set is named by the role bound to
    it, else by its source, with its folder where a role or another set shares that source."""
    names = list(names)
    return test_set_labels(names, role_labels(names, bindings), {str(spec.source) for spec in bindings.values()})


def legend(labels: Mapping[str, str], prefix: str = "") -> list[str]:
    """``D = covid-chestxray:/data/cohen`` for each label that is not the full name (``prefix``: e.g. "Test ")."""
    return [f"{prefix}{label} = {name}" for name, label in labels.items() if label != name]


def relabel(text: str, labels: Mapping[str, str]) -> str:
    """``text`` (an audit subject, a sentence) with every full ``SOURCE:PATH`` name of ``labels`` replaced by its
    label; a name inside a longer path (``/x/D`` in ``/x/D2``) is left alone."""
    changed = sorted((n for n, label in labels.items() if label != n), key=len, reverse=True)
    if not changed or not text:
        return text
    pattern = re.compile(r"(?<![\w./:-])(" + "|".join(map(re.escape, changed)) + r")(?![\w./-])")
    return pattern.sub(lambda match: labels[match.group(1)], text)
