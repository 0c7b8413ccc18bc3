"""`hf-minitron publish RUN_DIR --repo-id ORG/NAME`: push the packaged variants to the Hub."""

from __future__ import annotations

from ..hub import publish
from .common import require


def register(subparsers):
    parser = subparsers.add_parser("publish", help="push a run's packaged models (weights, card, scores) to the Hub")
    parser.add_argument("path", help="pipeline run folder (or one packaged model folder)")
    parser.add_argument("--repo-id", default=None, help="ORG/NAME: variants become ORG/NAME-Width-Base, ...")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="write the folders that would be pushed, push nothing")
    parser.add_argument("--dry-run-dir", default=None, help="where --dry-run writes (default RUN/publish-dry-run)")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def run(args) -> None:
    require(args, "repo_id")
    results = publish(args.path, args.repo_id, private=args.private, dry_run=args.dry_run, dry_run_dir=args.dry_run_dir)
    for entry in results:
        where = entry["folder"] if not entry["pushed"] else entry.get("url") or entry["repo_id"]
        verb = "would push" if not entry["pushed"] else "pushed"
        print(f"{entry['repo_id']}: {verb} {len(entry['files'])} files ({where})")
