"""The results tables as text: LaTeX (escaped, booktabs) and Markdown, each with its caption and notes."""

from __future__ import annotations

import pandas as pd

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "∞": r"$\infty$", "±": r"$\pm$",
        "—": "---"}


def tex_escape(text: object) -> str:
    """``text`` for LaTeX: its special characters escaped (a bare ``%`` would comment out the rest of a
    caption), infinity, ± and the em dash spelled for LaTeX."""
    return "".join(_TEX.get(character, character) for character in str(text))


def latex_table(table: pd.DataFrame, caption: str, label: str, notes: list[str] | None = None) -> str:
    """``table`` as a LaTeX table (booktabs rules) with its caption, ``label`` and the notes under it, every
    cell, header and note escaped."""
    escaped = table.copy()
    escaped.columns = [tex_escape(c) for c in escaped.columns]
    for column in escaped.columns:
        escaped[column] = escaped[column].map(tex_escape)
    text = escaped.style.hide(axis="index").to_latex(caption=tex_escape(caption), label=label, hrules=True,
                                                     column_format="l" * len(escaped.columns))
    if notes:
        lines = "\\\\\n".join(tex_escape(note) for note in notes)
        text += f"\\begin{{flushleft}}\\footnotesize\n{lines}\n\\end{{flushleft}}\n"
    return text


def markdown_table(table: pd.DataFrame, caption: str, notes: list[str]) -> str:
    """``table`` as a Markdown table under its bold caption, the notes as a list after it."""
    text = f"**{caption}**\n\n" + table.to_markdown(index=False) + "\n"
    if not notes:
        return text
    # Markdown would read "tp*tn and fp*fn" as emphasis: the asterisks are escaped.
    return text + "\n" + "".join("- " + note.replace("*", r"\*") + "\n" for note in notes)
