"""A full distillation training step: hf_minitron's DistillationTrainer vs TRL's GKDTrainer.

GKD is set to off-policy forward KL (lmbda=0, beta=0, temperature=1.0); gradient checkpointing is off
in both. Same pair (the SmolLM2 teacher and a width-pruned student of it), same chat data (dolly
instruction/response pairs as messages), same batch and sequence length. Each trainer runs in its
own process; its peak RSS is measured from after setup (models loaded) to the end of the timed steps.
Targets: peak memory ratio ≤ 0.6, tokens/s ratio ≥ 1.0 on CPU.

    .venv/bin/python bench/distill_step.py [--steps 4] [--batch 4] [--max-length 512]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gib, peak_rss_bytes, reset_peak_rss, rss_bytes

SFT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft" / "dolly_hhrlhf_train_small.jsonl"


def chat_dataset(rows: int, tokenizer, max_length: int):
    """The longest conversations that fit whole in max_length tokens: neither trainer truncates them,
    so both see exactly the same sequences."""
    import datasets

    fitting = []
    for line in SFT_DATA.read_text().splitlines():
        row = json.loads(line)
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        length = len(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])
        if length <= max_length - 8:
            fitting.append((length, messages))
    fitting.sort(key=lambda item: -item[0])
    return datasets.Dataset.from_list([{"messages": m} for _, m in fitting[:rows]])


class StepTimer:
    """A TrainerCallback timing each optimizer step and counting the tokens it saw."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == 1:  # step 0 is the warm-up
                    reset_peak_rss()
                    outer.baseline = rss_bytes()
                outer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step > 1:
                    outer.seconds.append(time.perf_counter() - outer.start)

        self.callback = _Callback()
        self.seconds: list[float] = []
        self.baseline = 0


def run_child(kind: str, steps: int, batch: int, max_length: int) -> dict:
    import torch

    from hf_minitron import PruningConfig, builtin_teacher, estimate_importance, prune_model

    torch.manual_seed(0)
    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(teacher, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, progress=False)
    student = prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), scores)
    dataset = chat_dataset(batch * (steps + 1), tokenizer, max_length)
    common = dict(
        output_dir=f"/tmp/bench-{kind}",
        per_device_train_batch_size=batch,
        max_steps=steps + 1,
        learning_rate=1e-5,
        max_length=max_length,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        seed=0,
        bf16=False,
    )
    timer = StepTimer()
    if kind == "hf_minitron":
        from hf_minitron.distillation import DistillationConfig, DistillationTrainer

        args = DistillationConfig(**common, temperature=1.0, log_student_ce=False)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer.callback],
        )
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, lmbda=0.0, beta=0.0, temperature=1.0)
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer.callback],
        )
    tokens = []
    original = trainer.compute_loss

    def counting(model, inputs, *a, **k):
        tokens.append(
            int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
        )
        return original(model, inputs, *a, **k)

    trainer.compute_loss = counting
    trainer.train()
    seconds = sum(timer.seconds)
    return {
        "kind": kind,
        "tokens_per_second": sum(tokens[1:]) / seconds,
        "seconds_per_step": seconds / steps,
        "extra_bytes": peak_rss_bytes() - timer.baseline,
        "peak_bytes": peak_rss_bytes(),
        "tokens_per_step": statistics.mean(tokens[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.steps, args.batch, args.max_length)))
        return
    results = {"hf_minitron": [], "gkd": []}
    for _ in range(args.repeats):
        for kind in results:
            command = [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-length",
                str(args.max_length),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[kind].append(json.loads(output.strip().splitlines()[-1]))
    med = {k: {m: statistics.median(r[m] for r in runs) for m in runs[0] if m != "kind"} for k, runs in results.items()}
    print(
        f"SmolLM2-135M teacher → width-pruned student (hidden 432, MLP 768), batch {args.batch} × up to "
        f"{args.max_length} tokens of chat data, {args.steps} timed steps after one warm-up, fp32 CPU"
    )
    for kind, m in med.items():
        print(
            f"  {kind:<12} {m['tokens_per_second']:7.1f} tokens/s  {m['seconds_per_step']:6.2f} s/step  "
            f"{m['tokens_per_step']:.0f} tokens/step  peak extra {gib(m['extra_bytes'])}  "
            f"peak RSS {gib(m['peak_bytes'])}"
        )
    ours, theirs = med["hf_minitron"], med["gkd"]
    print(
        f"hf_minitron / GKD: peak extra memory {ours['extra_bytes'] / theirs['extra_bytes']:.3f}× "
        f"(target ≤ 0.6), peak RSS {ours['peak_bytes'] / theirs['peak_bytes']:.3f}×, "
        f"tokens/s {ours['tokens_per_second'] / theirs['tokens_per_second']:.3f}× (target ≥ 1.0)"
    )


if __name__ == "__main__":
    main()
