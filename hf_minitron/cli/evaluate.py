"""`hf-minitron eval`: perplexity and local multiple-choice tasks for one or more models, side by side."""

from __future__ import annotations

import json

from ..errors import MinitronError
from ..evaluation import evaluate_model, results_table
from ..loading import describe_source, load_model_and_tokenizer
from ..outputs import check_output_file, write_text_atomically


def register(subparsers):
    parser = subparsers.add_parser("eval", help="evaluate models on perplexity and local tasks")
    parser.add_argument(
        "--model",
        action="append",
        required=False,
        default=None,
        help="model to evaluate (repeat: the first is the reference, e.g. the teacher)",
    )
    parser.add_argument("--task", action="append", default=[], help="NAME=path/to/task.jsonl (repeatable)")
    parser.add_argument(
        "--lm-eval-task",
        action="append",
        default=[],
        help="an lm-evaluation-harness task (repeatable; needs the lm-eval extra)",
    )
    parser.add_argument("--lm-eval-include", default=None, help="folder of local lm-eval task YAML files")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples for lm-eval tasks")
    parser.add_argument("--perplexity-data", default=None, help="text for perplexity (id, file, builtin:...)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many rows per task")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384, help="perplexity tokens to score")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device-map", default=None)
    parser.add_argument("--output", "-o", default=None, help="write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def parse_tasks(specs: list[str]) -> dict[str, str]:
    tasks = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise MinitronError(f"Task '{spec}' is not NAME=PATH", fix="write e.g. --task arc_easy=arc_easy.jsonl")
        tasks[name] = path
    return tasks


def run(args) -> None:
    if not args.model:
        raise MinitronError("No model to evaluate", fix="pass --model (repeat it to compare models)")
    tasks = parse_tasks(args.task)
    if not tasks and not args.perplexity_data and not args.lm_eval_task:
        raise MinitronError("Nothing to evaluate", fix="pass --task NAME=PATH, --lm-eval-task or --perplexity-data")
    if args.output:
        check_output_file(args.output, args.overwrite)
    from ..evaluation.tasks import load_task

    for path in tasks.values():
        load_task(path, limit=1)  # fail on a bad file before loading any model
    results = {}
    for name in args.model:
        model, tokenizer = load_model_and_tokenizer(name, dtype=args.dtype, device_map=args.device_map)
        label = describe_source(name)
        results[label] = evaluate_model(
            model,
            tokenizer,
            tasks=tasks,
            perplexity_data=args.perplexity_data,
            limit=args.limit,
            seq_len=args.seq_len,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
        )
        if args.lm_eval_task:
            from ..evaluation import evaluate_with_lm_eval

            results[label]["lm_eval"] = evaluate_with_lm_eval(
                model,
                tokenizer,
                args.lm_eval_task,
                num_fewshot=args.num_fewshot,
                limit=args.limit,
                batch_size=args.batch_size,
                include_path=args.lm_eval_include,
            )
        del model
    print(results_table(results))
    if args.output:
        write_text_atomically(args.output, json.dumps(results, indent=2) + "\n")
        print(f"Results written to {args.output}")
