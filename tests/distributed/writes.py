"""Which process put each output folder in place: a line "RANK NAME" per folder, appended to a log file.

Every hf_minitron output folder appears by one rename at the end of ``outputs.atomic_output_dir``;
wrapping that step shows which processes wrote, and how often, without changing what is written.
"""

import os
from pathlib import Path

from hf_minitron import outputs


def log_folder_writes(log: Path) -> None:
    rank = os.environ.get("RANK", "0")
    swap_in = outputs._swap_in

    def logged(staging, path):
        swap_in(staging, path)
        with open(log, "a", encoding="utf-8") as file:  # O_APPEND: lines of two processes never mix
            file.write(f"{rank} {Path(path).name}\n")

    outputs._swap_in = logged
