"""Benchmarks of ``make benchmark``; each prints a Markdown table for the README."""
from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """``header`` and ``rows`` of cells as a Markdown table."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
