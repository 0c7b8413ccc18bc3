"""`hf-minitron importance`: score heads, neurons, channels and layers; save scores and a plot."""

from __future__ import annotations

import torch

from ..data import check_text_source
from ..importance import AGGREGATIONS, estimate_importance
from ..loading import load_model_and_tokenizer
from ..outputs import atomic_output_dir, claim_output
from .common import add_data_args, add_model_args, add_output_args, require

SCORES_KIND = "importance scores"


def add_importance_args(parser) -> None:
    group = parser.add_argument_group("importance")
    group.add_argument("--batch-agg", default="l2", choices=AGGREGATIONS, help="reduction over samples (default l2)")
    group.add_argument("--seq-agg", default="mean", choices=AGGREGATIONS, help="reduction over tokens (default mean)")
    group.add_argument(
        "--downstream-task",
        default=None,
        help="multiple-choice jsonl (e.g. Winogrande), or builtin:everyday-facts, scored with each block of "
        "layers removed",
    )
    group.add_argument("--downstream-limit", type=int, default=None, help="rows of the task to use")
    group.add_argument(
        "--accuracy-block-sizes",
        type=int,
        nargs="*",
        default=[],
        help="block sizes K for the downstream accuracy curves",
    )
    group.add_argument(
        "--block-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also measure LM loss with every contiguous block of K layers skipped, for each K",
    )


def register(subparsers):
    parser = subparsers.add_parser("importance", help="estimate importance scores from calibration data")
    add_model_args(parser)
    add_data_args(parser)
    add_importance_args(parser)
    add_output_args(parser)
    parser.set_defaults(run=run)
    return parser


def compute_scores(args, model, tokenizer):
    return estimate_importance(
        model,
        tokenizer,
        args.data,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        batch_aggregation=args.batch_agg,
        seq_aggregation=args.seq_agg,
        packing=args.packing,
        text_column=args.text_column,
        block_lm_loss_sizes=args.block_sizes,
        downstream_task=args.downstream_task,
        downstream_limit=args.downstream_limit,
        block_accuracy_sizes=args.accuracy_block_sizes,
    )


def run(args) -> None:
    require(args, "output", "data")
    with claim_output(args.output, args.overwrite, kind=SCORES_KIND):
        _importance(args)


def _importance(args) -> None:
    check_text_source(args.data)
    model, tokenizer = load_model_and_tokenizer(
        args.model, dtype=args.dtype, device_map=args.device_map, trust_remote_code=args.trust_remote_code
    )
    scores = compute_scores(args, model, tokenizer)
    with atomic_output_dir(args.output, args.overwrite, kind=SCORES_KIND) as staging:
        scores.save(staging)
    order = scores.block_importance.argsort().tolist()
    print(f"Scores for {scores.metadata['model']} on {scores.metadata['num_tokens']} tokens saved to {args.output}")
    print(f"Layers from least to most important (block importance): {order}")
    for k, losses in sorted(scores.block_lm_loss.items()):
        measured = torch.nonzero(~losses.isnan()).flatten()  # only the blocks tied in accuracy, for downstream
        start = int(measured[losses[measured].argmin()])
        among = "" if len(measured) == len(losses) else f" among the {len(measured)} tied in accuracy"
        print(
            f"Best block of {k} layers to drop by LM loss{among}: {start}..{start + k - 1} "
            f"(loss {losses[start]:.3f}, unpruned {scores.base_lm_loss:.3f})"
        )
    for k, accuracy in sorted(scores.block_accuracy.items()):
        start = int(accuracy.argmax())
        print(
            f"Best block of {k} layers to drop by {scores.metadata['downstream_task']} accuracy: "
            f"{start}..{start + k - 1} (accuracy {accuracy[start]:.3f}, unpruned {scores.base_accuracy:.3f})"
        )
