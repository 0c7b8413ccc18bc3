"""`hf-minitron eval`: perplexity and local multiple-choice tasks for one or more models, side by side,
optionally through lm-evaluation-harness (``--harness``), with a check that each local folder's config
is one serving stacks read as it is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
        "--harness",
        action="append",
        default=[],
        metavar="TASK",
        help="run lm-evaluation-harness on the loaded model: an lm-eval task name, or NAME=PATH for a local "
        ".jsonl of multiple-choice rows (a task definition is made for it; no network needed). Repeatable; "
        "needs the lm-eval extra",
    )
    parser.add_argument("--lm-eval-task", action="append", default=[], help="the same as --harness")
    parser.add_argument("--harness-include", default=None, help="folder of your own lm-eval task YAML files")
    parser.add_argument("--lm-eval-include", default=None, help="the same as --harness-include")
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


def parse_harness(specs: list[str]) -> tuple[list[str], dict[str, str]]:
    """--harness values: (lm-eval task names, {name: local .jsonl} for NAME=PATH)."""
    names, local = [], {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            names.append(spec)
        elif not name or not path:
            raise MinitronError(f"--harness '{spec}' is not TASK or NAME=PATH", fix="e.g. --harness arc=arc.jsonl")
        else:
            local[name] = path
    return names, local


def report_serving_check(name: str) -> None:
    """Say whether a local model folder's config is one vLLM, TGI and lm-eval read as it is."""
    from ..evaluation.serving import check_serving_config, vllm_architectures

    if not (Path(name) / "config.json").is_file():
        return
    problems = check_serving_config(name)
    for problem in problems:
        print(f"warning: serving check: {problem}", file=sys.stderr)
    if not problems:
        against = "transformers and vLLM" if vllm_architectures() is not None else "transformers"
        print(f"Serving check: {name} has a standard config (checked against {against})", file=sys.stderr)


def run(args) -> None:
    if not args.model:
        raise MinitronError("No model to evaluate", fix="pass --model (repeat it to compare models)")
    tasks = parse_tasks(args.task)
    harness_names, harness_files = parse_harness(args.harness + args.lm_eval_task)
    if args.harness_include and args.lm_eval_include and args.harness_include != args.lm_eval_include:
        raise MinitronError("--harness-include and --lm-eval-include name different folders", fix="pass one")
    harness_include = args.harness_include or args.lm_eval_include
    if not tasks and not args.perplexity_data and not harness_names and not harness_files:
        raise MinitronError("Nothing to evaluate", fix="pass --task NAME=PATH, --harness TASK or --perplexity-data")
    if args.output:
        check_output_file(args.output, args.overwrite)
    from ..evaluation.tasks import load_task

    for path in (*tasks.values(), *harness_files.values()):
        load_task(path, limit=1)  # fail on a bad file before loading any model
    results = {}
    for name in args.model:
        report_serving_check(name)
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
        if harness_names or harness_files:
            from ..evaluation import evaluate_with_lm_eval

            results[label]["lm_eval"] = evaluate_with_lm_eval(
                model,
                tokenizer,
                harness_names,
                num_fewshot=args.num_fewshot,
                limit=args.limit,
                batch_size=args.batch_size,
                include_path=harness_include,
                local_tasks=harness_files,
            )
        del model
    print(results_table(results))
    if args.output:
        write_text_atomically(args.output, json.dumps(results, indent=2) + "\n")
        print(f"Results written to {args.output}")
