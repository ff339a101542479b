"""The fidelity table for reading: a styled pandas table, a takeaway from its verdicts, and its JSON form.

Presentation only (pandas' Styler, no UI library): every cell is text, the verdict a word with a colour,
so the table never shows a raw float.
"""
from __future__ import annotations

import pandas as pd

#: how each verdict reads in the table
VERDICTS = {True: "✓ holds", False: "✗ does not hold here", None: "— not checkable here"}
COLOURS = {True: "#dff0d8", False: "#f8d7da", None: "#eeeeee"}
SHOWN = {"label": "Technique", "paper": "Paper", "claim": "Headline claim (source)",
         "measured": "Measured at lab scale", "holds": "Direction", "evidence": "Evidence / reconstructed",
         "left": "Left unchecked"}
WIDTHS = {"Technique": "7em", "Paper": "10em", "Headline claim (source)": "22em", "Measured at lab scale": "24em",
          "Direction": "7em", "Evidence / reconstructed": "16em", "Left unchecked": "14em"}


def verdict(holds) -> str:
    return VERDICTS[None if holds is None else bool(holds)]


def styled(table: pd.DataFrame):
    """The table as a pandas Styler: one row per technique, wrapped text, the verdict coloured."""
    shown = table[list(SHOWN)].rename(columns=SHOWN).copy()
    holds = table["holds"].tolist()
    shown["Direction"] = [verdict(h) for h in holds]

    def colour(column: pd.Series) -> list[str]:
        return [f"background-color: {COLOURS[None if h is None else bool(h)]}" for h in holds]

    styles = [{"selector": "th", "props": "text-align: left; vertical-align: bottom; font-size: 0.85em"},
              {"selector": "td", "props": "text-align: left; vertical-align: top; font-size: 0.8em; "
                                          "white-space: normal; line-height: 1.3"}]
    styler = shown.style.hide(axis="index").set_table_styles(styles).apply(colour, subset=["Direction"])
    for column, width in WIDTHS.items():
        styler = styler.set_properties(subset=[column], **{"min-width": width, "max-width": width})
    return styler


def counts(table: pd.DataFrame) -> dict[str, list[str]]:
    """Technique labels by verdict: {'holds': [...], 'fails': [...], 'unchecked': [...]}."""
    out = {"holds": [], "fails": [], "unchecked": []}
    for label, holds in zip(table["label"], table["holds"]):
        out["unchecked" if holds is None else "holds" if holds else "fails"].append(label)
    return out


def takeaway(table: pd.DataFrame) -> str:
    """One paragraph (markdown) from the verdicts of the table."""
    c = counts(table)
    n = len(table)
    parts = [f"Of {n} techniques, **{len(c['holds'])}** show their paper's direction at lab scale"]
    if c["fails"]:
        parts.append(f"**{len(c['fails'])}** do not here ({', '.join(c['fails'])})")
    if c["unchecked"]:
        parts.append(f"**{len(c['unchecked'])}** cannot be checked at this scale ({', '.join(c['unchecked'])})")
    return "; ".join(parts) + "."


def to_metrics(table: pd.DataFrame) -> dict:
    """The table as JSON-ready data: {technique: {label, family, paper, claim, measured, holds, ...}}."""
    rows = {}
    for row in table.to_dict(orient="records"):
        holds = row["holds"]
        rows[row["technique"]] = {**{k: v for k, v in row.items() if k not in ("technique", "holds", "seconds")},
                                  "holds": None if holds is None else bool(holds),
                                  "seconds": round(float(row["seconds"]), 3)}
    return rows
