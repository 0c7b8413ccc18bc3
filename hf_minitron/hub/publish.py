"""Publishing packaged students to the Hugging Face Hub (or to any server HF_ENDPOINT names).

A run's ``models/`` folder holds one complete folder per variant (``NAME-Width-Base``, ...): weights,
tokenizer, pruning config, importance scores, plots and ``card_facts.json``. Publishing renames
the variants after ``--repo-id ORG/NAME``, re-renders each card with the final repository ids (an
Instruct card links to its Base repository), and uploads everything but the facts file. The token
comes from the environment or the login cache and is never printed or written anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import MinitronError
from ..outputs import MARKER_FILE, atomic_output_dir
from .card import model_link, render_model_card

FACTS_FILE = "card_facts.json"
VARIANT_KINDS = ("Base", "Instruct")
DRY_RUN_KIND = "publish dry run"


def variant_repo_id(repo_id: str, variant: str, kind: str) -> str:
    """ORG/NAME → ORG/NAME-Width-Base (the Minitron release naming)."""
    return f"{repo_id}-{variant}-{kind}"


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(c in repo_id for c in " \\:"):
        raise MinitronError(
            f"'{repo_id}' is not a repository id",
            fix="pass --repo-id ORG/NAME (variants become ORG/NAME-Width-Base, ...)",
        )


def packaged_models(path: str | os.PathLike) -> list[Path]:
    """The packaged model folders of a run (``RUN/models/*``), or the one folder given."""
    path = Path(path)
    if (path / FACTS_FILE).is_file():
        return [path]
    folders = sorted(p for p in (path / "models").glob("*") if (p / FACTS_FILE).is_file())
    if not folders:
        raise MinitronError(
            f"Nothing to publish in '{path}'",
            "publishing takes a pipeline run folder (with models/) or one packaged model folder",
            "run the pipeline through its model_card stage first",
        )
    return folders


def stage_for_upload(folders: list[Path], repo_id: str, destination: Path) -> list[dict]:
    """Write, under ``destination``, exactly the folder each repository will receive."""
    _check_repo_id(repo_id)
    facts_by_folder = {folder: json.loads((folder / FACTS_FILE).read_text()) for folder in folders}
    base_ids = {
        facts["variant"]: variant_repo_id(repo_id, facts["variant"], "Base")
        for facts in facts_by_folder.values()
        if facts["kind"] == "Base"
    }
    plan = []
    for folder, facts in facts_by_folder.items():
        target = variant_repo_id(repo_id, facts["variant"], facts["kind"])
        facts = {**facts, "repo_id": target, "name": target.split("/")[1]}
        if facts["kind"] == "Instruct" and facts["variant"] in base_ids:
            facts["base"] = model_link(base_ids[facts["variant"]])
        staged = destination / target.replace("/", "__")
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(FACTS_FILE, "README.md", MARKER_FILE))
        (staged / "README.md").write_text(render_model_card(facts), encoding="utf-8")
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        plan.append({"repo_id": target, "folder": staged, "files": files})
    return plan


def _check_apart(destination: Path, sources: list[Path]) -> None:
    """The dry-run folder must not hold what is published: replacing it would delete the models."""
    where = destination.resolve()
    for source in sources:
        if where == source.resolve() or where in source.resolve().parents:
            raise MinitronError(
                f"--dry-run-dir '{destination}' holds the models being published ('{source}')",
                "A dry run replaces its folder, which would delete them",
                "choose a separate folder for the dry run (default: RUN/publish-dry-run)",
            )


def publish(
    path: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> list[dict]:
    """Push every packaged variant under ``path`` to ``ORG/NAME-<Variant>-<Kind>``; with ``dry_run``, only
    write the folders that would be pushed (to ``dry_run_dir``, default ``path/publish-dry-run``)."""
    from huggingface_hub import HfApi, get_token

    folders = packaged_models(path)
    _check_repo_id(repo_id)
    if dry_run:
        destination = Path(dry_run_dir or Path(path) / "publish-dry-run")
        _check_apart(destination, [Path(path), *folders])
        # Replaces an earlier dry run's folder, and nothing else: any other existing folder is refused.
        with atomic_output_dir(destination, kind=DRY_RUN_KIND, replace_same_kind=True) as staging:
            plan = stage_for_upload(folders, repo_id, staging)
        return [{**e, "folder": str(destination / e["folder"].name), "pushed": False} for e in plan]
    token = token or get_token()
    if not token:
        raise MinitronError(
            "No Hugging Face token found",
            "publishing creates repositories and uploads to them",
            "set HF_TOKEN or run `hf auth login` (the token is never printed or stored by hf_minitron)",
        )
    api = HfApi(token=token)
    results = []
    with tempfile.TemporaryDirectory(prefix="hf-minitron-publish-") as scratch:
        plan = stage_for_upload(folders, repo_id, Path(scratch))
        for entry in plan:
            api.create_repo(entry["repo_id"], private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                folder_path=str(entry["folder"]),
                repo_id=entry["repo_id"],
                commit_message="Upload model made with hf_minitron",
            )
            results.append(
                {
                    "repo_id": entry["repo_id"],
                    "files": entry["files"],
                    "commit": commit.oid,
                    "url": commit.repo_url.url if commit.repo_url else None,
                    "pushed": True,
                }
            )
    return results
