"""The audit as a reviewer reads it: `unveil audit`'s text wrapped at 100 columns, one block per verdict, and test
sets by their labels (audit.md too), the full names in a legend."""

from __future__ import annotations

import math
from pathlib import Path

from unveil.audit.outputs import TEXT_WIDTH, audit_markdown, audit_text
from unveil.audit.verdict import AuditResult, Verdict, summary_sentence

EXTERNAL = "covid-chestxray:/tmp/pytest-of-someone/pytest-12/test_a_rather_long_name0/bench/paper/D"
UNLABELLED = "chestxray:/tmp/" + "x" * 120  # a name longer than a line, with no label


def _result(labels: dict[str, str] | None = None) -> AuditResult:
    verdicts = [
        Verdict("source probe", f"chestxray (test split of AB) vs {EXTERNAL} (COVID- images)", 0.97, 0.93, 0.99,
                "informative: an external set (flags only between training sources)", None,
                f"the features tell {EXTERNAL} from chestxray (test split of AB) (accuracy 0.95, majority rate 0.50; "
                "chestxray (test split of AB): 40 images, D: 38 images): a shift between a training source and an "
                "external set; whether it costs accuracy is the transfer test's question",
                measure="balanced accuracy (linear probe, out of fold)"),
        Verdict("transfer (AUC)", f"AB -> {EXTERNAL}", 0.31, 0.2, 0.4, "drop >= 0.1 with its interval above 0 flags",
                True, f"AUC 0.90 on its own test split (AB), 0.59 on {EXTERNAL}; drop 0.31 [0.20, 0.40]: the model "
                "does not transfer; its in-source figures are no evidence that it detects COVID-19 elsewhere",
                measure="AUC drop (in-source minus external; patients of each set resampled)"),
        Verdict("contamination", f"{UNLABELLED} vs training images", 1.0, math.nan, math.nan, "count >= 1 flags",
                True, "1 image is a near-duplicate of a training image", measure="number of test images that "
                "duplicate a training image (pHash)", total=180),
        Verdict("saliency in lungs", "Grad-CAM mass in lungs / lung area (features.7)", 1.01, 0.97, 1.05,
                "informative (no flag unless lung_saliency is set)", None, ""),
    ]
    figures = {"images": 180, "patients": 90, "by_source": {"chestxray": 80, "covid-chestxray": 100},
               "summary": summary_sentence((v.test, v.flagged) for v in verdicts)}
    if labels is not None:
        figures["test_sets"] = labels
    return AuditResult(verdicts, figures)


def test_the_terminal_text_wraps_at_100_columns_one_block_per_verdict() -> None:
    result = _result({"AB": "AB", EXTERNAL: "D", UNLABELLED: "chestxray"})
    out = Path("/tmp") / ("a-long-output-folder-" * 6)
    text = audit_text(result, out)
    lines = text.splitlines()
    assert TEXT_WIDTH == 100 and max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert " ".join(text.split()).startswith(" ".join(result.figures["summary"].split()))  # the lead sentence first
    blocks = text.split("\n\n")[1:]
    assert [b.splitlines()[0].split(" — ")[0] for b in blocks[:4]] == [
        "[informative] source probe", "[FLAGGED] transfer (AUC)", "[FLAGGED] contamination",
        "[informative] saliency in lungs"]
    assert blocks[1].splitlines()[0] == "[FLAGGED] transfer (AUC) — AB -> D"
    assert all(line.startswith("    ") for block in blocks[:4] for line in block.splitlines()[1:])
    flat = " ".join(text.split())
    assert "AUC drop (in-source minus external; patients of each set resampled): 0.31 [0.20, 0.40]; rule: drop" in flat
    assert "0.59 on D; drop 0.31 [0.20, 0.40]: the model does not transfer" in flat
    assert ": 1 of 180 images; rule: count >= 1 flags" in flat
    # the full names only in the legend, each still whole once its wrapped lines are joined
    legend = blocks[4]
    assert legend.startswith("Test sets:") and f"D = {EXTERNAL}" in " ".join(legend.split())
    assert "".join(line.strip() for line in legend.splitlines()[-2:]) == f"chestxray = {UNLABELLED}"
    assert sum(EXTERNAL in " ".join(block.split()) for block in blocks) == 1
    assert blocks[5].startswith("2 flag(s); figures in /tmp/a-long")
    assert "".join(blocks[5].split()) == "".join(f"2 flag(s); figures in {out}".split())  # the folder broken, kept


def test_an_audit_without_labels_still_wraps() -> None:
    """An audit result written before labels (no ``figures["test_sets"]``): full names, lines still <= 100."""
    text = audit_text(_result(), None)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Test sets:" not in text and text.splitlines()[-1] == "2 flag(s)"
    assert EXTERNAL[:60] in text


def test_audit_markdown_names_test_sets_by_their_labels(tmp_path: Path) -> None:
    text = audit_markdown(_result({"AB": "AB", EXTERNAL: "D"}), tmp_path)
    assert text.splitlines()[2].startswith("**")  # the lead sentence, as before
    assert "| transfer (AUC) | AB -> D |" in text and "0.59 on D; drop" in text
    assert text.count(EXTERNAL) == 1 and f"Test sets: `D = {EXTERNAL}`." in text
