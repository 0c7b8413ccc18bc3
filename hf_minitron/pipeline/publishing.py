"""The publish stage: the packaged models pushed to the Hub."""

from __future__ import annotations

import json
from pathlib import Path

from .stages import Run


def publish(run: Run, folder: Path, records: dict) -> dict:
    from ..hub.publish import publish as push

    settings = run.recipe.publish
    results = push(run.output_dir, settings.repo_id, private=settings.private)
    (folder / "published.json").write_text(json.dumps(results, indent=2) + "\n")
    return {"repositories": [r["repo_id"] for r in results]}
