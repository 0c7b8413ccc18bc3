"""`hf-minitron run RECIPE`: the whole chain as resumable stages (see hf_minitron.pipeline)."""

from __future__ import annotations

from ..pipeline import STAGE_NAMES, run_recipe
from .common import require


def add_run_args(parser, output_default=None) -> None:
    parser.add_argument("--output", "-o", default=output_default, help="run folder: one subfolder per stage")
    parser.add_argument("--resume", action="store_true", help="skip finished stages whose inputs are unchanged")
    parser.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, default=None, help="rerun from this stage")
    parser.add_argument("--overwrite", action="store_true", help="clear the run folder and start over")
    parser.add_argument("--budget", type=float, default=1.0, help="multiply training steps and generated prompts")
    parser.add_argument("--no-publish", dest="publish", action="store_false", help="skip the publish stage")


def register(subparsers):
    parser = subparsers.add_parser("run", help="run a pipeline recipe (importance → prune → distil → ... → cards)")
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    add_run_args(parser)
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def report(result: dict, output) -> None:
    print()
    print(result["table"])
    print()
    tokens = ", ".join(f"{name} {count}" for name, count in result["distillation_tokens"].items())
    if tokens:  # none when the recipe stops after pruning
        print(f"Distillation tokens per student: {tokens}.")
    print(f"Perplexity on {result['perplexity_data']}, used for no calibration or training here.")
    for name, answers in result["generations"].items():
        for prompt, answer in answers.items():
            print(f"{name} ▸ {prompt}\n    {answer[:300]!r}")
    print(f"Run folder: {output} (models/ holds the packaged variants with model cards; {result['seconds']} s)")


def run_and_report(recipe, args) -> None:
    """Run a recipe with the shared run options (--resume, --from, --overwrite, --budget, --no-publish)."""
    require(args, "output")
    result = run_recipe(
        recipe,
        args.output,
        resume=args.resume,
        from_stage=args.from_stage,
        overwrite=args.overwrite,
        budget=args.budget,
        publish=args.publish,
    )
    report(result, args.output)


def run(args) -> None:
    run_and_report(args.recipe, args)
