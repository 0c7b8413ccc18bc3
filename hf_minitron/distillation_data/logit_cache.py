"""Offline teacher logits: top-k log-probabilities and tail mass per scored token, in safetensors shards.

Folder layout::

    CACHE/cache_index.json             format, teacher and the dtype it ran in, tokenizer and settings
                                       fingerprints, k, temperature, one fingerprint per cached row (its
                                       token ids and scored positions)
    CACHE/logits-00000.safetensors     ids [T, k] int32, logprobs [T, k], tail [T] fp32, row_offsets [R + 1]

Rows are tokenized exactly as the DistillationTrainer tokenizes them (TRL's own dataset
preparation with the same config, never packed), and each is keyed by a fingerprint of its
tokens: training looks every row up by that key, so a change of data, tokenizer, chat
template, max_length or completion masking is caught before the first step, not trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import MinitronError
from ..families import cap_logits, final_logit_softcap
from ..fingerprints import row_fingerprint, tokenizer_fingerprint
from ..loading import describe_source
from ..outputs import atomic_output_dir, check_output_dir

INDEX_FILE = "cache_index.json"
FORMAT = "hf_minitron-logit-cache/1"
CACHE_ROW_COLUMN = "minitron_cache_row"
VALUE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def prepare_training_rows(dataset, tokenizer, args, model):
    """``dataset`` tokenized exactly as SFTTrainer (and so DistillationTrainer) tokenizes it under ``args``."""
    from trl import SFTTrainer

    with tempfile.TemporaryDirectory() as scratch:
        settings = dataclasses.replace(args, output_dir=scratch, report_to=[], packing=False)
        trainer = SFTTrainer(model=model, args=settings, train_dataset=dataset, processing_class=tokenizer)
        return trainer.train_dataset


def check_cache_settings(args) -> None:
    """What training from a cache cannot do, refused before anything loads."""
    problems = []
    if args.packing:
        problems.append("packing=True (cached rows are whole sequences; packing would split and merge them)")
    if args.padding_free:
        problems.append("padding_free=True (the cache is aligned to padded rows)")
    if args.uses_intermediate_loss:
        problems.append("intermediate-state losses (they need the teacher's hidden states, which a cache lacks)")
    if problems:
        raise MinitronError(
            "Training from a teacher-logit cache does not support " + "; ".join(problems),
            fix="turn those options off, or train with the online teacher",
        )


def cache_teacher_logits(
    teacher,
    dataset,
    output_dir: str | os.PathLike,
    args,
    tokenizer=None,
    top_k: int = 64,
    batch_size: int = 8,
    values_dtype: str = "float16",
    shard_tokens: int = 1 << 18,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run ``teacher`` over ``dataset`` (tokenized under the DistillationConfig ``args``) and store its
    top-k log-probabilities at ``args.temperature`` for every scored token. Returns the index.

    The teacher runs in the precision online distillation under the same ``args`` would give it
    (``hf_minitron.loading.load_teacher``); a model passed in memory is converted in place."""
    from ..distillation.sparse import topk_with_tail
    from ..loading import load_teacher, load_tokenizer, teacher_init_kwargs

    if values_dtype not in VALUE_DTYPES:
        raise MinitronError(f"values_dtype '{values_dtype}' is not one of {', '.join(VALUE_DTYPES)}")
    if top_k < 1:
        raise MinitronError(f"top_k={top_k} must be ≥ 1")
    check_cache_settings(args)
    init_kwargs = teacher_init_kwargs(args.teacher_model_init_kwargs)
    if isinstance(teacher, str):
        teacher_name = describe_source(teacher)
        if tokenizer is None:
            options = {k: init_kwargs[k] for k in ("gguf_file", "trust_remote_code") if k in init_kwargs}
            tokenizer = load_tokenizer(teacher, **options)
    else:
        source = getattr(teacher, "minitron_source", None) or teacher.config._name_or_path
        teacher_name = describe_source(source) if source else "in-memory model"
        tokenizer = tokenizer or load_tokenizer(source)
    check_output_dir(output_dir, overwrite)
    # The precision the online trainer would run this teacher in under the same args (one rule, one loader).
    teacher = load_teacher(teacher, args, init_kwargs=init_kwargs)
    teacher.eval()
    rows = prepare_training_rows(dataset, tokenizer, args, teacher)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    k = min(top_k, vocab)
    device = next(teacher.parameters()).device
    head = teacher.get_output_embeddings()
    cap = final_logit_softcap(teacher)  # the head's raw output is not yet what the model predicts
    body = getattr(teacher, teacher.base_model_prefix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.time()
    fingerprints, shards, buffer = [], [], _ShardBuffer()
    total_tokens = 0
    with atomic_output_dir(output_dir, overwrite, kind="teacher logit cache") as staging, torch.no_grad():
        for first in range(0, len(rows), batch_size):
            batch = rows[first : first + batch_size]
            length = max(len(ids) for ids in batch["input_ids"])
            input_ids = torch.full((len(batch["input_ids"]), length), pad, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for i, ids in enumerate(batch["input_ids"]):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = 1
            hidden = body(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            for i, (ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
                scored = torch.tensor(labels[1:]) != -100  # position t predicts token t + 1
                states = hidden[i, : len(ids) - 1][scored.to(device)]
                parts = [
                    topk_with_tail(
                        cap_logits(head(states[c : c + 1024]), cap), k, args.temperature, VALUE_DTYPES[values_dtype]
                    )
                    for c in range(0, states.shape[0], 1024)
                ]
                buffer.add(parts, VALUE_DTYPES[values_dtype], k)
                fingerprints.append(row_fingerprint(ids, labels))
                total_tokens += int(scored.sum())
                if buffer.tokens >= shard_tokens:
                    shards.append(buffer.save(staging, len(shards)))
                    buffer = _ShardBuffer()
            if progress:
                done = min(first + batch_size, len(rows))
                rate = total_tokens / max(time.time() - start, 1e-9)
                print(
                    f"\rcached {done}/{len(rows)} rows, {total_tokens} tokens ({rate:.0f} tokens/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        if buffer.rows:
            shards.append(buffer.save(staging, len(shards)))
        if progress:
            print(file=sys.stderr)
        size = sum((staging / s["file"]).stat().st_size for s in shards)
        index = {
            "format": FORMAT,
            "teacher": teacher_name,
            "teacher_dtype": str(teacher.dtype).removeprefix("torch."),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": vocab,
            "top_k": k,
            "temperature": args.temperature,
            "values_dtype": values_dtype,
            "preparation": {
                "max_length": args.max_length,
                "truncation_mode": args.truncation_mode,
                "completion_only_loss": args.completion_only_loss,
                "assistant_only_loss": args.assistant_only_loss,
                "dataset_text_field": args.dataset_text_field,
            },
            "num_rows": len(fingerprints),
            "num_tokens": total_tokens,
            "bytes": size,
            "bytes_per_token": round(size / max(total_tokens, 1), 1),
            "seconds": round(time.time() - start, 1),
            "shards": shards,
            "row_fingerprints": fingerprints,
        }
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return index


class _ShardBuffer:
    def __init__(self):
        self.ids, self.logprobs, self.tail, self.offsets = [], [], [], [0]

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def tokens(self) -> int:
        return self.offsets[-1]

    def add(self, parts, dtype, k) -> None:
        count = sum(p[0].shape[0] for p in parts)
        self.ids += [p[0].cpu() for p in parts] or [torch.zeros(0, k, dtype=torch.int32)]
        self.logprobs += [p[1].to(dtype).cpu() for p in parts] or [torch.zeros(0, k, dtype=dtype)]
        self.tail += [p[2].cpu() for p in parts] or [torch.zeros(0)]
        self.offsets.append(self.offsets[-1] + count)

    def save(self, folder: Path, number: int) -> dict:
        name = f"logits-{number:05d}.safetensors"
        tensors = {
            "ids": torch.cat(self.ids).contiguous(),
            "logprobs": torch.cat(self.logprobs).contiguous(),
            "tail": torch.cat(self.tail).float().contiguous(),
            "row_offsets": torch.tensor(self.offsets, dtype=torch.int64),
        }
        save_file(tensors, str(folder / name))
        return {"file": name, "rows": self.rows, "tokens": self.tokens}


class TeacherLogitCache:
    """A cache folder opened for training: checked whole, read lazily shard by shard."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        if not index_path.is_file():
            raise MinitronError(
                f"'{self.path}' is not a teacher-logit cache (no {INDEX_FILE})",
                fix="point at a folder written by `hf-minitron cache-logits`",
            )
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise MinitronError(f"Unknown cache format {self.index.get('format')!r} in '{self.path}'")
        missing = [s["file"] for s in self.index["shards"] if not (self.path / s["file"]).is_file()]
        if missing:
            raise MinitronError(
                f"The teacher-logit cache '{self.path}' is missing {len(missing)} shard(s): {', '.join(missing[:5])}",
                "every row's teacher targets must be there before training starts",
                "copy the whole cache folder, or rebuild it with `hf-minitron cache-logits`",
            )
        self._handles = {}
        self._offsets = []  # per shard: row offsets into its token tensors
        self._row_location = []  # cache row -> (shard, local row)
        for number, shard in enumerate(self.index["shards"]):
            offsets = self._handle(number).get_tensor("row_offsets")
            if len(offsets) != shard["rows"] + 1:
                raise MinitronError(
                    f"Shard '{shard['file']}' of '{self.path}' does not match the index", fix="rebuild the cache"
                )
            self._offsets.append(offsets.tolist())
            self._row_location += [(number, row) for row in range(shard["rows"])]
        self._by_fingerprint = {}
        for row, key in enumerate(self.index["row_fingerprints"]):
            self._by_fingerprint.setdefault(key, row)

    @property
    def temperature(self) -> float:
        return self.index["temperature"]

    @property
    def vocab_size(self) -> int:
        return self.index["vocab_size"]

    def _handle(self, number: int):
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.path / self.index["shards"][number]["file"]), "pt")
        return self._handles[number]

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != self.index["tokenizer_fingerprint"]:
            raise MinitronError(
                f"The teacher-logit cache '{self.path}' was made with another tokenizer",
                "its token ids would name different tokens than the ones being trained on",
                f"train with the tokenizer of {self.index['teacher']}, or rebuild the cache",
            )

    def rows_for(self, dataset, name: str = "train") -> list[int]:
        """The cache row of every row of a prepared (tokenized) dataset, or a clear error."""
        keys = [
            row_fingerprint(ids, labels) for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True)
        ]
        rows = [self._by_fingerprint.get(key, -1) for key in keys]
        missing = sum(row < 0 for row in rows)
        if missing:
            raise MinitronError(
                f"{missing} of {len(rows)} {name} rows are not in the teacher-logit cache '{self.path}'",
                "the cache was made for another dataset, or with other preparation settings "
                f"(it used {self.index['preparation']})",
                "rebuild the cache from this dataset with the same distillation config",
            )
        return rows

    def targets(self, rows: list[int], device=None):
        """The cached targets of these rows, concatenated in order, and each row's scored-token count."""
        from ..distillation.sparse import SparseTeacher

        ids, logprobs, tail, counts = [], [], [], []
        for row in rows:
            shard, local = self._row_location[row]
            start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
            handle = self._handle(shard)
            ids.append(handle.get_slice("ids")[start:end])
            logprobs.append(handle.get_slice("logprobs")[start:end])
            tail.append(handle.get_slice("tail")[start:end])
            counts.append(end - start)
        teacher = SparseTeacher(
            torch.cat(ids).to(device),
            torch.cat(logprobs).float().to(device),
            torch.cat(tail).to(device),
            vocab_size=self.vocab_size,
        )
        return teacher, counts
