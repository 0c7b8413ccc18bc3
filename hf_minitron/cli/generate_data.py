"""`hf-minitron generate-data`: the teacher writes a distillation dataset (rerun the same command to resume)."""

from __future__ import annotations

from ..distillation_data import BUILTIN_PROMPTS, GenerationSettings, generate_distillation_data
from ..distillation_data.generate import BACKENDS
from ..loading import load_teacher, load_tokenizer
from .common import add_model_args, require


def register(subparsers):
    parser = subparsers.add_parser(
        "generate-data", help="have the teacher write a distillation dataset (sequence-level KD)"
    )
    add_model_args(parser, dtype_default=None)  # None: the teacher's precision rule (load_teacher), fp32
    group = parser.add_argument_group("prompts")
    group.add_argument("--prompts", default=BUILTIN_PROMPTS, help=f"HF dataset id, local file or {BUILTIN_PROMPTS}")
    group.add_argument("--prompt-column", default=None, help="column holding the prompts (default: guessed)")
    group.add_argument("--max-prompts", type=int, default=None)
    group.add_argument("--system-prompt", default=None)
    group.add_argument(
        "--no-chat-template",
        dest="use_chat_template",
        action="store_false",
        default=None,
        help="feed prompts as plain text even if the tokenizer has a chat template",
    )
    sampling = parser.add_argument_group("sampling")
    defaults = GenerationSettings()
    sampling.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    sampling.add_argument("--temperature", type=float, default=defaults.temperature, help="0 for greedy")
    sampling.add_argument("--top-p", type=float, default=defaults.top_p)
    sampling.add_argument("--num-per-prompt", type=int, default=defaults.num_per_prompt)
    sampling.add_argument("--seed", type=int, default=defaults.seed)
    sampling.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sampling.add_argument("--shard-size", type=int, default=defaults.shard_size, help="prompts per resumable shard")
    sampling.add_argument("--no-dedupe", dest="deduplicate", action="store_false", help="keep duplicate answers")
    sampling.add_argument("--backend", choices=BACKENDS, default="transformers", help="vllm: GPU only, if installed")
    parser.add_argument("--output", "-o", default=None, help="output folder (required; rerun to resume)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in the folder")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    parser.set_defaults(run=run)
    return parser


def run(args) -> None:
    require(args, "output")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        num_per_prompt=args.num_per_prompt,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        use_chat_template=args.use_chat_template,
        system_prompt=args.system_prompt,
        deduplicate=args.deduplicate,
        max_prompts=args.max_prompts,
        backend=args.backend,
        teacher_dtype=args.dtype,
    )
    settings.check()
    teacher, tokenizer = args.model, None
    if settings.backend == "transformers":
        options = dict(device_map=args.device_map, trust_remote_code=args.trust_remote_code)
        teacher = load_teacher(args.model, init_kwargs={"dtype": args.dtype, **options} if args.dtype else options)
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    result = generate_distillation_data(
        teacher,
        args.prompts,
        args.output,
        settings,
        tokenizer=tokenizer,
        prompt_column=args.prompt_column,
        overwrite=args.overwrite,
    )
    print(
        f"{result.rows} rows, {result.tokens} generated tokens "
        f"({result.record['progress']['tokens_per_second']} tokens/s), {result.duplicates_dropped} duplicates dropped"
    )
    print(f"Saved to {result.path} (datasets.load_dataset('{result.path}'); train with --dataset_name {result.path})")
