"""`hf-minitron cache-logits`: store the teacher's top-k log-probabilities for a training dataset.

It reads the same TRL-style config as `hf-minitron distill` (so rows are tokenized exactly as
training will tokenize them) plus where the cache goes and its k; train from it with
`hf-minitron distill --config SAME.yaml --teacher_logits_cache CACHE_DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments, TrlParser

from ..errors import MinitronError
from .training import RunArguments, datasets_from


@dataclass
class CacheArguments:
    cache_dir: str | None = field(default=None, metadata={"help": "Where the cache goes (required)."})
    top_k: int = field(default=64, metadata={"help": "Teacher log-probabilities kept per token."})
    cache_batch_size: int = field(default=8, metadata={"help": "Rows per teacher forward pass."})
    values_dtype: str = field(default="float16", metadata={"help": "float16, bfloat16 or float32."})


def run_cache_logits(argv: list[str]) -> None:
    from ..distillation import DistillationConfig
    from ..distillation_data.logit_cache import cache_teacher_logits

    parser = TrlParser((DistillationConfig, ScriptArguments, RunArguments, CacheArguments))
    args, script, run, cache = parser.parse_args_and_config(argv)
    if not cache.cache_dir:
        raise MinitronError("No cache folder given", fix="pass --cache_dir")
    if not args.teacher_model_name_or_path:
        raise MinitronError("No teacher given", fix="pass --teacher_model_name_or_path")
    train, _ = datasets_from(script, run)
    index = cache_teacher_logits(
        args.teacher_model_name_or_path,
        train,
        cache.cache_dir,
        args,
        top_k=cache.top_k,
        batch_size=cache.cache_batch_size,
        values_dtype=cache.values_dtype,
        overwrite=run.overwrite,
    )
    print(
        f"Cached top-{index['top_k']} teacher log-probabilities for {index['num_tokens']} tokens of "
        f"{index['num_rows']} rows: {index['bytes']} bytes ({index['bytes_per_token']} bytes/token)"
    )
    print(f"Train with --teacher_logits_cache {cache.cache_dir}")
