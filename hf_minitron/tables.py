"""Tables for terminal output (first column left-aligned, the rest right-aligned) or Markdown."""

from __future__ import annotations


def format_table(rows: list[list[str]], markdown: bool = False) -> str:
    """``rows[0]`` is the header; a rule goes under it. ``markdown`` gives a GitHub/Hub Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join([":---", *["---:"] * (len(rows[0]) - 1)]) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
