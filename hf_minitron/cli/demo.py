"""`hf-minitron demo`: the offline demo on the built-in teacher (see hf_minitron.demo)."""

from __future__ import annotations

from ..demo import DemoSettings, run_demo


def register(subparsers):
    defaults = DemoSettings()
    parser = subparsers.add_parser("demo", help="prune the built-in teacher to width and depth students, offline")
    parser.add_argument("--output", "-o", default=defaults.output_dir)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples, help="calibration samples")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--eval-tokens", type=int, default=defaults.eval_tokens, help="held-out tokens to score")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def run(args) -> None:
    run_demo(
        DemoSettings(
            output_dir=args.output,
            model=args.model,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            eval_tokens=args.eval_tokens,
            overwrite=args.overwrite,
        )
    )
