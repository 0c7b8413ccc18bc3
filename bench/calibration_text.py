"""Calibration and training text the quality benchmarks share (recovery.py, knowledge.py,
neuron_selection.py): Python documentation interleaved with the dolly instruction/response pairs of
../shared/data, and the teacher's own answers to the library's built-in everyday prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.data import CalibrationSet, build_calibration_set, iter_texts
from hf_minitron.distillation_data import GenerationSettings, generate_distillation_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PROMPTS = "builtin:seed-prompts"


def dolly_texts(limit: int | None = None) -> list[str]:
    rows = [json.loads(line) for line in (SHARED / "sft" / "dolly_hhrlhf_train_small.jsonl").open()]
    return [row["prompt"] + row["response"] for row in rows[:limit]]


def interleave(*groups: list) -> list:
    """Items (texts, samples) of each group in turn, so any prefix holds every kind."""
    return [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]


def mixed_texts() -> list[str]:
    """Documentation topics and dolly pairs, alternating."""
    return interleave(list(iter_texts("builtin:python-docs")), dolly_texts())


def teacher_written(teacher, tokenizer, out: Path, prompts: int = 64) -> list[str]:
    """The teacher's answers (96 tokens, sampled as the library's data generation does) to the first
    ``prompts`` built-in everyday prompts, each after its prompt, as plain text. Kept in ``out/generated``
    (a second run with the same settings reads them back)."""
    folder = out / "generated"
    settings = GenerationSettings(max_prompts=prompts, max_new_tokens=96, batch_size=16, shard_size=16)
    generate_distillation_data(teacher, PROMPTS, folder, settings, tokenizer=tokenizer, progress=False)
    rows = datasets.load_dataset(str(folder), split="train")
    return [row["prompt"][0]["content"] + "\n" + row["completion"][0]["content"] for row in rows]


def with_teacher_answers(
    base: CalibrationSet, samples: int, teacher, tokenizer, out: Path, prompts: int = 64, seq_len: int = 256
) -> CalibrationSet:
    """``base``'s first ``samples - samples // 2`` samples alternated, sample by sample (so the first few,
    which rank dropped layer blocks, hold both kinds), with up to ``samples // 2`` samples cut from the
    teacher's own answers to ``prompts`` built-in prompts (about 28 samples of 256 tokens per 64 prompts)."""
    half = samples // 2
    written = teacher_written(teacher, tokenizer, out, prompts=prompts)
    answers = build_calibration_set(written, tokenizer, num_samples=half, seq_len=seq_len)
    return CalibrationSet(interleave(base.samples[: samples - half], answers.samples), base.pad_token_id)
