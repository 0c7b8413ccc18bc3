"""The `hf-minitron` command: a thin layer over the Python API, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from ..errors import MinitronError
from . import (
    benchmark,
    cache_logits,
    demo,
    evaluate,
    generate_data,
    importance,
    prune,
    publish,
    quantize,
    run,
    search,
    training,
)
from .common import parse_with_config
from .recipe_options import prune_options

COMMANDS = {
    "demo": demo,
    "run": run,
    "publish": publish,
    "importance": importance,
    "prune": prune,
    "eval": evaluate,
    "benchmark": benchmark,
    "search": search,
    "generate-data": generate_data,
}


# Commands whose --config may be a pipeline recipe: they take the options of their step from it.
RECIPE_COMMANDS = {"prune": prune_options}

# Trainer commands parse their own arguments with TRL's parser (every field of their config is a flag).
RAW_COMMANDS = {
    "distill": training.run_distill,
    "correct-teacher": training.run_correct_teacher,
    "cache-logits": cache_logits.run_cache_logits,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's own parser (which also reads --config files)."""
    parser = argparse.ArgumentParser(prog="hf-minitron", description="Prune and distil Hugging Face causal LMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = {name: module.register(subparsers) for name, module in COMMANDS.items()}
    commands.update(quantize.register(subparsers))  # quantize and export-gguf
    training.register(subparsers)  # parsed by TrlParser in main(), listed here for --help
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    try:
        if argv and argv[0] in RAW_COMMANDS:
            RAW_COMMANDS[argv[0]](argv[1:])
            return 0
        if argv and argv[0] in commands:
            args = parse_with_config(commands[argv[0]], argv[1:], RECIPE_COMMANDS.get(argv[0]))
        else:
            args = parser.parse_args(argv)  # --help, or an unknown command: argparse explains
        args.run(args)
    except MinitronError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output folder was left half-written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
