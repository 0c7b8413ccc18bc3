"""`hf-minitron search`: candidate shapes near a parameter target, each pruned and lightly distilled."""

from __future__ import annotations

from ..data import check_text_source
from ..errors import MinitronError
from ..importance import ImportanceScores
from ..loading import load_model_and_tokenizer
from ..outputs import claim_work_dir
from ..search import SearchSettings, architecture_search, enumerate_candidates, read_results, search_table
from ..search.run import SEARCH_KIND
from ..training_data import load_training_dataset
from .common import add_data_args, add_model_args, add_output_args, require
from .importance import add_importance_args, compute_scores


def parse_count(text: str) -> float:
    """'4B', '70M', '1.2e9', '350K' → a number of parameters."""
    text = str(text).strip().upper().replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(text[-1:], 1)
    try:
        return float(text[:-1] if scale != 1 else text) * scale
    except ValueError as error:
        raise MinitronError(f"'{text}' is not a parameter count", fix="write e.g. 4B, 70M or 3.5e9") from error


def register(subparsers):
    parser = subparsers.add_parser("search", help="search pruned shapes near a parameter target")
    add_model_args(parser)
    group = parser.add_argument_group("search space")
    group.add_argument("--target-params", type=parse_count, default=None, help="e.g. 4B or 70M (required)")
    group.add_argument("--tolerance", type=float, default=0.05, help="relative distance to the target (±5%%)")
    group.add_argument("--count", choices=("total", "non_embedding"), default="total")
    for axis in ("layers", "heads", "mlp", "hidden"):
        group.add_argument(f"--{axis}", type=int, nargs="+", default=None, help=f"grid of {axis} values")
    group.add_argument("--dry-run", action="store_true", help="list the candidates and stop")
    train = parser.add_argument_group("light distillation of each candidate")
    train.add_argument("--scores", default=None, help="saved importance scores (else computed from --data)")
    train.add_argument("--train-data", default="builtin:python-docs", help="distillation text (id, file, builtin)")
    train.add_argument("--eval-data", default="builtin:python-docs-heldout", help="text for the eval LM loss")
    train.add_argument("--eval-samples", type=int, default=32, help="eval rows to use")
    defaults = SearchSettings()
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument("--train-batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--max-length", type=int, default=defaults.max_length)
    train.add_argument("--eval-task", default=None, help="multiple-choice jsonl reported beside the loss")
    train.add_argument("--eval-task-limit", type=int, default=None)
    train.add_argument("--resume", action="store_true", help="continue a search in an existing output folder")
    add_data_args(parser)
    add_importance_args(parser)
    add_output_args(parser)
    parser.set_defaults(run=run)
    return parser


def run(args) -> None:
    require(args, "target_params")
    if args.dry_run:
        return _search(args)
    require(args, "output")
    for source in (args.train_data, args.eval_data):
        check_text_source(source)
    with claim_work_dir(
        args.output,
        kind=SEARCH_KIND,
        overwrite=args.overwrite,
        keep=args.resume,
        busy_fix="pass --resume to continue that search, --overwrite to start over, or choose another folder",
    ):
        _search(args)


def _search(args) -> None:
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device_map=args.device_map)
    candidates = enumerate_candidates(
        model.config,
        args.target_params,
        tolerance=args.tolerance,
        layers=args.layers,
        heads=args.heads,
        mlp=args.mlp,
        hidden=args.hidden,
        count=args.count,
    )
    print(f"{len(candidates)} candidates within ±{args.tolerance:.0%} of {args.target_params:,.0f} parameters:")
    for candidate in candidates:
        print(
            f"  {candidate.name}: {candidate.params / 1e6:.2f}M ({candidate.non_embedding_params / 1e6:.2f}M "
            "without embeddings)"
        )
    if args.dry_run:
        return
    if args.resume and read_results(args.output):
        print(f"Resuming: {len(read_results(args.output))} candidates already finished")
    scores = ImportanceScores.load(args.scores) if args.scores else compute_scores(args, model, tokenizer)
    train = load_training_dataset(args.train_data)
    evaluation = load_training_dataset(args.eval_data, max_samples=args.eval_samples)
    settings = SearchSettings(
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.train_batch_size,
        max_length=args.max_length,
        eval_task=args.eval_task,
        eval_task_limit=args.eval_task_limit,
    )
    ranked = architecture_search(model, tokenizer, scores, candidates, train, evaluation, args.output, settings)
    print(search_table(ranked))
    print(f"Winner {ranked[0]['name']} saved to {args.output}/winner (plot: {args.output}/search.png)")
