"""The `hf-minitron` command: a thin layer over the Python API, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from ..errors import MinitronError
from . import demo, importance, prune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-minitron", description="Prune and distil Hugging Face causal LMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (demo, importance, prune):
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .common import parse_with_config

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv and argv[0] in parser._subparsers._group_actions[0].choices:
            sub = parser._subparsers._group_actions[0].choices[argv[0]]
            args = parse_with_config(sub, argv[1:])
        else:
            args = parser.parse_args(argv)
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
