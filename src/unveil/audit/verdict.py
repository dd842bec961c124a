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


#: tests about the audited data rather than the model: they fire for any model audited on these images
DATA_TESTS = ("metadata only", "contamination")


def summary_sentence(verdicts: Iterable[tuple[str, bool | None]]) -> str:
    """One sentence from (test, flagged) pairs: which flags fired on the model and on the data, and what they
    mean. The data flags (:data:`DATA_TESTS`) say what the test images allow, whatever the model."""
    verdicts = list(verdicts)
    fired: dict[str, int] = {}
    for test, flagged in verdicts:
        if flagged:
            fired[test] = fired.get(test, 0) + 1

    def listed(tests: list[str]) -> str:
        return "; ".join(f"{test}{f' (x{fired[test]})' if fired[test] > 1 else ''}: "
                         f"{MEANINGS.get(test, 'see the table')}" for test in tests)

    model = [t for t in fired if t not in DATA_TESTS]
    data = [t for t in fired if t in DATA_TESTS]
    count = sum(fired[t] for t in model)
    if model:
        head = f"{count} flag{'s' if count != 1 else ''} fired on the model — {listed(model)}"
    else:
        tested = len({t for t, flagged in verdicts if flagged is not None and t not in DATA_TESTS})
        kinds = f"{tested} kind{'s' if tested != 1 else ''} of test with a rule"
        head = (f"No flag fired on the model ({kinds}): these tests found no evidence of a dataset shortcut, "
                "which is not proof that it learned the disease")
    return head + (f". On the data: {listed(data)}." if data else ".")
