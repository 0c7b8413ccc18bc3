"""Teacher-generated distillation data (synthetic data generation, SDG).

The teacher answers prompts; the answers become a prompt/completion dataset that any SFT or
distillation trainer reads as it is (sequence-level knowledge distillation), and on which logit
distillation can run too. Output folder::

    OUT/README.md                  dataset card; its YAML points `datasets.load_dataset(OUT)` at data/
    OUT/data/shard-00000.parquet   one shard per `shard_size` prompts, each written whole or not at all
    OUT/generation.json            how it was made: teacher, prompts, settings, counts, speed

Each shard is sampled with its own seed (derived from ``seed`` and the shard number), so an
interrupted run that resumes produces exactly the rows an uninterrupted run would have, and
duplicate filtering sees the earlier shards first in both cases.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import MinitronError
from ..fingerprints import fingerprint
from ..loading import describe_source, load_teacher, load_tokenizer, teacher_dtype
from ..locking import output_lock
from ..outputs import has_contents, prepare_work_dir, remove_if_unused, write_text_atomically
from ..quiet import library_progress_bars_off
from .backends import TransformersBackend, VllmBackend
from .prompts import BUILTIN_PROMPTS, load_prompts

logger = logging.getLogger(__name__)

RECORD_FILE = "generation.json"
DATA_KIND = "generated distillation data"
BACKENDS = ("transformers", "vllm")
TEACHER_DTYPES = (None, "float32", "bfloat16", "float16", "auto")


@dataclass
class GenerationSettings:
    """How the teacher writes: sampling, batching, sharding. All of it is part of the run's
    fingerprint: even the batch size changes which random draws each prompt gets."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    num_per_prompt: int = 1
    batch_size: int = 8
    shard_size: int = 64  # prompts per shard: the unit of resuming
    seed: int = 0
    use_chat_template: bool | None = None  # None: when the tokenizer has one
    system_prompt: str | None = None
    deduplicate: bool = True
    max_prompts: int | None = None
    backend: str = "transformers"
    # The teacher's precision. Generation has no training arguments, so by the rule of loading.load_teacher
    # it runs in fp32 unless this names another dtype ("bfloat16" to write in the precision a bf16
    # distillation runs the teacher in; "auto" keeps a checkpoint's own dtype or a given model's).
    teacher_dtype: str | None = None

    def check(self) -> None:
        problems = []
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.shard_size < 1 or self.num_per_prompt < 1:
            problems.append("max_new_tokens, batch_size, shard_size and num_per_prompt must be ≥ 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            problems.append("temperature must be ≥ 0 and top_p in (0, 1]")
        if self.temperature == 0 and self.num_per_prompt > 1:
            problems.append("greedy decoding (temperature 0) gives the same answer every time: use num_per_prompt 1")
        if self.backend not in BACKENDS:
            problems.append(f"backend '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            problems.append(f"teacher_dtype '{self.teacher_dtype}' is not one of {', '.join(TEACHER_DTYPES[1:])}")
        if problems:
            raise MinitronError("Invalid generation settings: " + "; ".join(problems))


@dataclass
class GenerationResult:
    path: Path
    rows: int
    tokens: int
    duplicates_dropped: int
    seconds: float
    record: dict = field(default_factory=dict)


def _model_source(model) -> str:
    return getattr(model, "minitron_source", None) or model.config._name_or_path


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _prompt_text(tokenizer, prompt: str, settings: GenerationSettings, chat: bool) -> str:
    if not chat:
        return prompt
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages = [*system, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _row(prompt: str, completion: str, index: int, sample: int, finish: str, settings, chat: bool) -> dict:
    if chat:  # conversational prompt/completion: SFTTrainer applies the chat template, completion-only loss
        system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
        prompt_value = [*system, {"role": "user", "content": prompt}]
        completion_value = [{"role": "assistant", "content": completion}]
    else:
        prompt_value, completion_value = prompt, completion
    return {
        "prompt": prompt_value,
        "completion": completion_value,
        "prompt_index": index,
        "sample_index": sample,
        "finish_reason": finish,
    }


def _dataset_card(record: dict, shard_files: list[str]) -> str:
    settings = record["settings"]
    # Shards listed one by one: a glob's file order is up to the file system, and row order should not be.
    paths = "\n".join(f"    - data/{name}" for name in shard_files)
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path:
{paths}
tags:
- synthetic
- distillation
- hf_minitron
---

# Teacher-generated distillation data

Written by `{record["teacher"]}` in answer to {record["prompts"]["count"]} prompts from
`{record["prompts"]["source"]}` ({settings["num_per_prompt"]} sample(s) per prompt, temperature
{settings["temperature"]}, top-p {settings["top_p"]}, at most {settings["max_new_tokens"]} new tokens, seed
{settings["seed"]}). {record["rows"]} rows, {record["tokens"]} generated tokens;
{record["duplicates_dropped"]} duplicate or empty completions were dropped.

Columns: `prompt`, `completion` ({"chat messages" if record["chat"] else "text"}), `prompt_index`,
`sample_index`, `finish_reason` (`stop` or `length`). Load with `datasets.load_dataset("<this folder>")`.
"""


def generate_distillation_data(
    teacher,
    prompts=BUILTIN_PROMPTS,
    output_dir: str | os.PathLike = "distillation-data",
    settings: GenerationSettings | None = None,
    tokenizer=None,
    prompt_column: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerationResult:
    """Have ``teacher`` (a model, or anything ``load_model`` accepts) answer ``prompts`` and write the
    answers as a sharded dataset folder. Rerunning with the same teacher, prompts and settings resumes
    an interrupted run; anything else in an existing folder is refused unless ``overwrite``.

    The teacher writes in ``settings.teacher_dtype``, fp32 when unset (``hf_minitron.loading.load_teacher``);
    a model passed in memory is converted to it in place."""
    made = not Path(output_dir).exists()
    with output_lock(output_dir):  # one writer at a time: a second run into the folder is refused at once
        try:
            return _generate(teacher, prompts, output_dir, settings, tokenizer, prompt_column, overwrite, progress)
        except BaseException:
            if made:
                remove_if_unused(output_dir)  # a refusal leaves nothing behind
            raise


def _generate(teacher, prompts, output_dir, settings, tokenizer, prompt_column, overwrite, progress):
    settings = settings or GenerationSettings()
    settings.check()
    prompt_list = load_prompts(prompts, column=prompt_column, max_prompts=settings.max_prompts)
    teacher_name = describe_source(teacher if isinstance(teacher, str) else _model_source(teacher))
    output = Path(output_dir)
    inputs = {
        "teacher": teacher_name,
        "prompts": fingerprint(prompt_list),
        "settings": asdict(settings),
    }
    done_shards = _existing_run(output, inputs, overwrite)
    # One precision rule for every teacher (loading.load_teacher): no training arguments here, so fp32
    # unless settings.teacher_dtype asks for another.
    init_kwargs = {"dtype": settings.teacher_dtype} if settings.teacher_dtype else {}
    if settings.backend == "vllm":
        if not isinstance(teacher, str):
            raise MinitronError("The vllm backend loads the teacher itself", fix="pass the teacher as a path or Hub id")
        tokenizer = tokenizer or load_tokenizer(teacher)
        backend = VllmBackend(teacher, tokenizer, dtype=str(teacher_dtype(None, init_kwargs)).removeprefix("torch."))
    else:
        if tokenizer is None:
            tokenizer = load_tokenizer(teacher if isinstance(teacher, str) else _model_source(teacher))
        teacher = load_teacher(teacher, init_kwargs=init_kwargs)
        backend = TransformersBackend(teacher, tokenizer)
    chat = settings.use_chat_template
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if chat and not getattr(tokenizer, "chat_template", None):
        raise MinitronError("use_chat_template is on but the teacher's tokenizer has no chat template")

    (output / "data").mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    previous = _read_record(output) if done_shards else None
    empty_shards = set((previous or {}).get("empty_shards", [])) & done_shards
    totals = {"rows": 0, "tokens": 0, "duplicates_dropped": 0, "seconds": 0.0}
    if previous:
        for key in totals:
            totals[key] = previous["progress"][key]
        seen = _seen_completions(output, done_shards)
    num_shards = -(-len(prompt_list) // settings.shard_size)
    record = {
        "teacher": teacher_name,
        "prompts": {"source": _describe_prompts(prompts), "count": len(prompt_list), "fingerprint": inputs["prompts"]},
        "settings": asdict(settings),
        "chat": chat,
        "inputs_fingerprint": fingerprint(inputs),
        "shards": num_shards,
    }
    for shard in range(num_shards):
        if shard in done_shards:
            continue
        start = time.time()
        first = shard * settings.shard_size
        shard_prompts = prompt_list[first : first + settings.shard_size]
        seed = settings.seed * 1_000_003 + shard
        torch.manual_seed(seed)  # sampling in model.generate draws from torch's global generator
        rows, tokens, dropped = [], 0, 0
        for offset in range(0, len(shard_prompts), settings.batch_size):
            batch = shard_prompts[offset : offset + settings.batch_size]
            texts = [_prompt_text(tokenizer, p, settings, chat) for p in batch]
            answers = (
                backend.generate(texts, settings, seed)
                if settings.backend == "vllm"
                else backend.generate(texts, settings)
            )
            for index, (prompt, samples) in enumerate(zip(batch, answers, strict=True), start=first + offset):
                for sample, (text, new_tokens, finish) in enumerate(samples):
                    tokens += new_tokens
                    key = _normalised(text)
                    if not key or (settings.deduplicate and key in seen):
                        dropped += 1
                        continue
                    seen.add(key)
                    rows.append(_row(prompt, text, index, sample, finish, settings, chat))
        _write_shard(output, shard, rows)
        seconds = time.time() - start
        totals["rows"] += len(rows)
        totals["tokens"] += tokens
        totals["duplicates_dropped"] += dropped
        totals["seconds"] += seconds
        done_shards.add(shard)
        if not rows:
            empty_shards.add(shard)
        record.update(
            status="running", empty_shards=sorted(empty_shards), progress=totals, done_shards=sorted(done_shards)
        )
        write_text_atomically(output / RECORD_FILE, json.dumps(record, indent=2) + "\n")
        if progress:
            print(
                f"shard {shard + 1}/{num_shards}: {len(shard_prompts)} prompts, {tokens} tokens in {seconds:.1f} s "
                f"({tokens / max(seconds, 1e-9):.1f} tokens/s)",
                file=sys.stderr,
                flush=True,
            )
    if totals["rows"] == 0:
        raise MinitronError(
            "The teacher gave no usable answer (every completion was empty or a duplicate)",
            fix="raise max_new_tokens or temperature, or give more varied prompts",
        )
    totals["tokens_per_second"] = round(totals["tokens"] / max(totals["seconds"], 1e-9), 2)
    record.update(status="complete", progress=totals, done_shards=sorted(done_shards))
    record.update(rows=totals["rows"], tokens=totals["tokens"], duplicates_dropped=totals["duplicates_dropped"])
    shard_files = [_shard_name(s) for s in sorted(done_shards) if (output / "data" / _shard_name(s)).is_file()]
    write_text_atomically(output / "README.md", _dataset_card(record, shard_files))
    write_text_atomically(output / RECORD_FILE, json.dumps(record, indent=2) + "\n")
    return GenerationResult(
        output, totals["rows"], totals["tokens"], totals["duplicates_dropped"], totals["seconds"], record
    )


def _describe_prompts(prompts) -> str:
    if isinstance(prompts, (list, tuple)):
        return f"a list of {len(prompts)} prompts"
    from ..data import describe_text_source

    return describe_text_source(str(prompts))


def _read_record(output: Path) -> dict | None:
    path = output / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _existing_run(output: Path, inputs: dict, overwrite: bool) -> set[int]:
    """Shards an earlier run with the same inputs finished; refuse a folder holding anything else.

    Runs with the folder locked; with ``overwrite``, an earlier run's folder (hf_minitron's marker) is cleared."""
    if output.exists() and not output.is_dir():
        raise MinitronError(f"Output path '{output}' is a file, not a folder", fix="choose a folder path")
    record = _read_record(output)
    if overwrite or record is None:
        if not overwrite and has_contents(output):
            raise MinitronError(
                f"Output folder '{output}' already holds something else",
                fix="choose another folder, or pass overwrite=True (--overwrite) to replace it",
            )
        prepare_work_dir(output, kind=DATA_KIND, overwrite=overwrite, keep=True)  # refuses to clear others' files
        return set()
    if record.get("inputs_fingerprint") != fingerprint(inputs):
        raise MinitronError(
            f"Output folder '{output}' holds data generated with another teacher, prompt set or settings",
            "resuming would mix two different datasets",
            "use the same settings to resume, another folder, or overwrite=True (--overwrite) to start again",
        )
    empty = set(record.get("empty_shards", []))
    done = {s for s in record.get("done_shards", []) if s in empty or (output / "data" / _shard_name(s)).is_file()}
    if done:
        logger.info("Resuming: %d shard(s) already written in %s", len(done), output)
    return done


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def _write_shard(output: Path, shard: int, rows: list[dict]) -> None:
    import datasets

    if not rows:  # every answer was a duplicate: the record marks the shard done, no file is needed
        return
    path = output / "data" / _shard_name(shard)
    temporary = path.with_name(f".{path.name}.partial")
    with library_progress_bars_off():  # one line per shard is printed instead
        datasets.Dataset.from_list(rows).to_parquet(str(temporary))
    os.replace(temporary, path)


def _seen_completions(output: Path, shards: set[int]) -> set[str]:
    import datasets

    seen = set()
    for shard in sorted(shards):
        if not (output / "data" / _shard_name(shard)).is_file():
            continue
        for completion in datasets.Dataset.from_parquet(str(output / "data" / _shard_name(shard)))["completion"]:
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            seen.add(_normalised(text))
    return seen
