"""The benchmark's results: every planned row of every section, written as markdown and JSON after each update."""

from __future__ import annotations

import json
import os
from pathlib import Path

from plan import Section


def _format(column, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return column.format.format(value)
    return str(value)


class Report:
    def __init__(self, out: Path, sections: list[Section], header: list[str]):
        self.out, self.sections, self.header = out, sections, header
        self.cells = {s.name: {key: {} for key, _ in s.rows} for s in sections}
        self.status = {s.name: {key: None for key, _ in s.rows} for s in sections}
        self.section_notes: dict[str, str] = {}
        self.env: dict = {}

    def set_cells(self, section: str, row: str, cells: dict) -> None:
        self.cells[section][row].update(cells)

    def set_status(self, section: str, row: str, text: str) -> None:
        self.status[section][row] = text

    def close_section(self, section: str, note: str, unmeasured: str | None = None) -> None:
        """The section's timing line; rows with neither cells nor status get ``unmeasured``."""
        self.section_notes[section] = note
        if unmeasured:
            for row, cells in self.cells[section].items():
                if not cells and self.status[section][row] is None:
                    self.status[section][row] = unmeasured

    def markdown(self) -> str:
        lines = ["# hf_minitron GPU benchmark", "", *self.header]
        if self.env:
            lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in self.env.items()))
        for s in self.sections:
            lines += ["", f"## {s.title}", ""]
            if s.name in self.section_notes:
                lines += [self.section_notes[s.name], ""]
            lines.append("| | " + " | ".join(c.name for c in s.columns) + " |")
            lines.append("|---" * (len(s.columns) + 1) + "|")
            for key, label in s.rows:
                cells, status = self.cells[s.name][key], self.status[s.name][key]
                values = [_format(c, cells.get(c.name)) for c in s.columns]
                if status and s.columns[-1].name == "note":
                    values[-1] = status if values[-1] == "—" else f"{values[-1]}; {status}"
                lines.append(f"| {label} | " + " | ".join(values) + " |")
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict:
        return {
            "env": self.env,
            "sections": {
                s.name: {
                    "title": s.title,
                    "note": self.section_notes.get(s.name),
                    "rows": {
                        key: {"label": label, "cells": self.cells[s.name][key], "status": self.status[s.name][key]}
                        for key, label in s.rows
                    },
                }
                for s in self.sections
            },
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.md", self.markdown()), ("results.json", json.dumps(self.as_json(), indent=1))):
            staging = self.out / f".{name}.tmp"
            staging.write_text(text)
            os.replace(staging, self.out / name)
