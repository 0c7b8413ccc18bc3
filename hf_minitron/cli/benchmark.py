"""`hf-minitron benchmark`: prefill and decode tokens/s of a teacher and its students, as speedups."""

from __future__ import annotations

import json

from ..errors import MinitronError
from ..evaluation.throughput import ThroughputSettings, benchmark_throughput, throughput_table
from ..loading import describe_source, load_model
from ..outputs import check_output_file, write_text_atomically


def register(subparsers):
    parser = subparsers.add_parser("benchmark", help="inference throughput of models side by side")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to time (repeat; the first is the reference, e.g. the teacher)",
    )
    parser.add_argument("--dtype", default="auto", help="e.g. bfloat16 on a GPU")
    parser.add_argument("--device-map", default=None, help="e.g. cuda:0")
    defaults = ThroughputSettings()
    parser.add_argument("--prefill-batch", type=int, default=defaults.prefill_batch)
    parser.add_argument("--prefill-len", type=int, default=defaults.prefill_len)
    parser.add_argument("--decode-batch", type=int, nargs="+", default=list(defaults.decode_batches))
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--output", "-o", default=None, help="write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def run(args) -> None:
    if not args.model:
        raise MinitronError("No model to time", fix="pass --model (repeat it: the first is the reference)")
    if args.output:
        check_output_file(args.output, args.overwrite)
    models = {
        describe_source(name): load_model(name, dtype=args.dtype, device_map=args.device_map) for name in args.model
    }
    settings = ThroughputSettings(
        prefill_batch=args.prefill_batch,
        prefill_len=args.prefill_len,
        decode_batches=tuple(args.decode_batch),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
    )
    results = benchmark_throughput(models, settings)
    print(throughput_table(results))
    if args.output:
        write_text_atomically(args.output, json.dumps(results, indent=2) + "\n")
