"""The label words a hospital's own tables use for COVID-19, read the same way by every hospital source.

``hospital-csv`` and ``dicom-folder`` read a label column with one :class:`LabelVocabulary`: a built-in set of
the words clinicians write (positive / negative, covid / normal / healthy / non-covid, covid-19, 1 / 0, yes / no,
true / false), compared case-insensitively after trimming, with spaces and underscores read as hyphens ("Non
COVID" is "non-covid"). The loader options ``positive_labels`` / ``negative_labels`` add a site's own words; any
other value is refused, and the refusal names the value, where it is and the two options that would map it.

A negative word that names a finding ("normal", "healthy", "pneumonia"...) gives that finding (through
:data:`FINDING_MAP`); other negative words ("negative", "0", "non-covid") say nothing about the lungs and give
"unknown". Every positive word gives "covid".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from unveil.data.sources.base import DatasetLayoutError

POSITIVE_LABELS: tuple[str, ...] = ("1", "covid", "covid-19", "covid19", "positive", "pos", "true", "yes")
NEGATIVE_LABELS: tuple[str, ...] = ("0", "negative", "neg", "false", "no", "normal", "healthy", "non-covid",
                                    "non-covid-19", "noncovid")

#: Finding word (as :func:`normalise_label` writes it) -> canonical finding, for COVID-negative images.
FINDING_MAP: dict[str, str] = {
    "normal": "normal", "no-finding": "normal", "healthy": "normal", "none": "normal",
    "bacterial": "bacterial", "bacteria": "bacterial", "bacterial-pneumonia": "bacterial",
    "viral": "viral", "virus": "viral", "viral-pneumonia": "viral",
    "pneumonia": "pneumonia",
    "other": "other",
}


def normalise_label(value: object) -> str:
    """A label or finding word as compared: trimmed, lower case, runs of spaces / underscores / hyphens as one
    hyphen ("Non COVID" and "non_covid" are "non-covid")."""
    return "-".join(str(value).strip().lower().replace("_", " ").replace("-", " ").split())


def _words(values: str | Iterable[str]) -> frozenset[str]:
    """Option words: a tuple, or one string (``-o negative_labels=sano``: commas separate words)."""
    items = values.split(",") if isinstance(values, str) else values
    return frozenset(normalise_label(v) for v in items if normalise_label(v))


@dataclass(frozen=True)
class LabelVocabulary:
    """Label words (normalised) meaning COVID-19 positive / negative."""

    positive: frozenset[str]
    negative: frozenset[str]

    @classmethod
    def of(cls, positive_labels: str | Iterable[str] = (), negative_labels: str | Iterable[str] = ()
           ) -> LabelVocabulary:
        """The built-in words plus the user's; a word on both sides is a :class:`DatasetLayoutError`."""
        positive = frozenset(POSITIVE_LABELS) | _words(positive_labels)
        negative = frozenset(NEGATIVE_LABELS) | _words(negative_labels)
        overlap = positive & negative
        if overlap:
            raise DatasetLayoutError(f"labels {sorted(overlap)} are listed as both positive and negative "
                                     "(options positive_labels / negative_labels)")
        return cls(positive, negative)

    def read(self, value: str | None) -> tuple[int, str] | None:
        """``(covid, finding)`` of a label cell, or None when the word is not in the vocabulary."""
        word = normalise_label(value or "")
        if word in self.positive:
            return 1, "covid"
        if word in self.negative:
            return 0, FINDING_MAP.get(word, "unknown")
        return None

    def refusal(self, value: str | None, column: str, where: str) -> str:
        """The problem text for a label :meth:`read` refuses: the value, its column and place, the options."""
        shown = value if value is not None else ""
        return (f"{where}: label {shown!r} in column {column!r} is not a known label word; map it with the loader "
                f"option positive_labels={shown} or negative_labels={shown} (known positive: "
                f"{', '.join(sorted(self.positive))}; negative: {', '.join(sorted(self.negative))})")


#: Words that name COVID-19 in a finding (as :func:`normalise_label` splits it at hyphens).
COVID_WORDS = frozenset({"covid", "covid19", "coronavirus", "ncov", "2019ncov"})
#: A word before a COVID word that negates it ("non-COVID", "not COVID-19"), and words after it that do.
NEGATING_BEFORE = frozenset({"non", "no", "not", "without", "negative", "excluded"})
NEGATING_AFTER = frozenset({"negative", "neg", "excluded", "ruled"})


def mentions_covid(text: object) -> bool:
    """Does a finding text say COVID-19 ("COVID-19 pneumonia", "SARS-CoV-2"), not negated ("non-COVID viral",
    "not COVID-19", "COVID negative")?"""
    words = normalise_label(text).split("-")
    for index, word in enumerate(words):
        sars_cov = word == "sars" and words[index + 1:index + 2] == ["cov"]
        if word in COVID_WORDS or word.startswith("covid") or sars_cov:
            before = words[index - 1] if index else ""
            after = next((w for w in words[index + 1:] if not w.isdigit() and w != "cov"), "")
            if before not in NEGATING_BEFORE and after not in NEGATING_AFTER:
                return True
    return False


def finding_contradiction(covid: int, finding: str | None) -> str | None:
    """Why a label and the finding written beside it cannot both be true (a negative label with a COVID-19
    finding, a positive one with a normal finding), or None: such a row is refused, never kept as either."""
    if finding is None:
        return None
    if covid == 0 and mentions_covid(finding):
        return "a negative label but the finding names COVID-19"
    if covid == 1 and FINDING_MAP.get(normalise_label(finding)) == "normal":
        return "a positive label but the finding says normal"
    return None
