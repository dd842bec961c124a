"""One audit verdict, and the sentence a reviewer reads first: which flags fired and what they mean."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Verdict:
    test: str
    subject: str
    value: float
    low: float
    high: float
    threshold: str
    flagged: bool | None  # None: informative only
    suggests: str
    measure: str = ""  # what ``value`` is: ROC AUC, balanced accuracy, a ratio ...


#: what a fired flag of each test means, in a reviewer's words
MEANINGS: dict[str, str] = {
    "source probe": "the features tell the datasets apart within a class, so the model can read the hospital",
    "lung occlusion": "the model still separates the classes with the lungs hidden, so it uses evidence outside "
                      "the lungs",
    "transfer (AUC)": "its ranking of COVID+ over COVID- degrades on other sets, so its in-source figures do not "
                      "carry over",
    "transfer (balanced accuracy)": "its decisions degrade on other sets at its own threshold",
    "below chance": "on another set it ranks COVID- above COVID+, so what it learned is inverted there (a "
                    "shortcut, not the disease)",
    "metadata probe": "the features encode acquisition or patient factors (view, sex, age, site) within a class",
    "metadata only": "the metadata alone predict the label, so a shortcut is available in the data",
    "contamination": "some test images are copies of training images, so their scores are not independent "
                     "evidence",
    "saliency in lungs": "the saliency is not concentrated in the lungs",
    "pointing game": "the saliency peak rarely falls in the infected region",
}


def summary_sentence(verdicts: Iterable[tuple[str, bool | None]]) -> str:
    """One sentence from (test, flagged) pairs: how many flags fired, for which tests, and what they mean."""
    verdicts = list(verdicts)
    fired: dict[str, int] = {}
    for test, flagged in verdicts:
        if flagged:
            fired[test] = fired.get(test, 0) + 1
    tested = len({test for test, flagged in verdicts if flagged is not None})
    if not fired:
        return (f"No flag fired ({tested} kinds of test with a rule): no evidence of a dataset shortcut was found "
                "by these tests; this is not proof that the model learned the disease.")
    parts = [f"{test}{f' (x{count})' if count > 1 else ''}: {MEANINGS.get(test, 'see the table')}"
             for test, count in fired.items()]
    total = sum(fired.values())
    return f"{total} flag{'s' if total != 1 else ''} fired — " + "; ".join(parts) + "."
