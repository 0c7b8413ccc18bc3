"""How the worker reports to the orchestrator: one marked JSON line per event on stdout.

Lines without the mark (library output) pass through to the log untouched.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback

MARK = "@@gpu-bench@@ "


def send(event: str, **fields) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict | None:
    return json.loads(line[len(MARK) :]) if line.startswith(MARK) else None


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:180] if text else ''}"


class Rows:
    """The worker's side of one section: cells and statuses of its rows, each row's work protected."""

    def __init__(self, section: str, on_error=None):
        self.section = section
        self.on_error = on_error  # cleanup after a failed row (free GPU memory)

    def cells(self, row: str, **cells) -> None:
        send("cells", section=self.section, row=row, cells=cells)

    def status(self, row: str, text: str) -> None:
        send("status", section=self.section, row=row, text=text)

    @contextlib.contextmanager
    def row(self, row: str):
        """Measure one row; an exception marks the row with its error and the section goes on."""
        try:
            yield
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            self.status(row, "error: " + short_error(error))
            if self.on_error is not None:
                self.on_error()
