"""Training from cached teacher logits vs with the teacher online: cache size, step speed, memory.

The SmolLM2 teacher's top-k log-probabilities (k = 64, fp16, plus the tail mass) are cached for
chat data (dolly prompt/response pairs, completion-only loss); then the same width-pruned student
trains a few steps (a) with the teacher in memory and (b) from the cache with no teacher. Each run
is its own process, so peak RSS covers everything it loaded. Also checks that the cached loss at
step 1 is close to the online one (top-64 of 49,152 tokens).

    .venv/bin/python bench/logit_cache.py [--steps 4] [--batch 4] [--max-length 256] [--top-k 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from distill_step import StepTimer, chat_dataset

from common import gib, peak_rss_bytes

CACHE = Path("/tmp/bench-logit-cache")


def config(kind: str, steps: int, batch: int, max_length: int, cache: bool):
    from hf_minitron.distillation import DistillationConfig

    return DistillationConfig(
        output_dir=f"/tmp/bench-cache-{kind}",
        per_device_train_batch_size=batch,
        max_steps=steps + 1,
        learning_rate=1e-5,
        max_length=max_length,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        log_student_ce=False,
        teacher_logits_cache=str(CACHE) if cache else None,
    )


def student_of(teacher, tokenizer):
    from hf_minitron import PruningConfig, estimate_importance, prune_model

    scores = estimate_importance(teacher, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, progress=False)
    return prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), scores)


def run_child(kind: str, steps: int, batch: int, max_length: int) -> dict:
    import torch

    from hf_minitron import builtin_teacher, load_model_and_tokenizer
    from hf_minitron.distillation import DistillationTrainer

    torch.manual_seed(0)
    student, tokenizer = load_model_and_tokenizer("/tmp/bench-cache-student", dtype="float32")
    dataset = chat_dataset(batch * (steps + 1), tokenizer, max_length)
    timer = StepTimer()
    teacher = builtin_teacher()[0] if kind == "online" else None
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config(kind, steps, batch, max_length, kind == "cache"),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    seconds = sum(timer.seconds)
    return {
        "seconds_per_step": seconds / steps,
        "peak_bytes": peak_rss_bytes(),
        "first_loss": trainer.state.log_history[0]["loss"],
    }


def build_cache(steps, batch, max_length, top_k) -> dict:
    from hf_minitron import builtin_teacher
    from hf_minitron.distillation_data.logit_cache import cache_teacher_logits
    from hf_minitron.pruning import save_pruned_model

    teacher, tokenizer = builtin_teacher()
    save_pruned_model(student_of(teacher, tokenizer), "/tmp/bench-cache-student", tokenizer=tokenizer, overwrite=True)
    dataset = chat_dataset(batch * (steps + 1), tokenizer, max_length)
    start = time.time()
    index = cache_teacher_logits(
        teacher,
        dataset,
        CACHE,
        config("cache", steps, batch, max_length, False),
        tokenizer=tokenizer,
        top_k=top_k,
        overwrite=True,
        progress=False,
    )
    index["cache_seconds"] = time.time() - start
    return index


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    sizes = ["--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length)]
    if args.child:
        print(json.dumps(run_child(args.child, args.steps, args.batch, args.max_length)))
        return
    index = build_cache(args.steps, args.batch, args.max_length, args.top_k)
    results = {}
    for kind in ("online", "cache"):
        command = [sys.executable, __file__, "--child", kind, *sizes]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[kind] = json.loads(output.strip().splitlines()[-1])
    print(
        f"Cache: top-{index['top_k']} fp16 log-probabilities + tail mass for {index['num_tokens']} scored tokens of "
        f"{index['num_rows']} chat rows: {index['bytes']} bytes = {index['bytes_per_token']} bytes/token "
        f"(full fp32 logits would be {4 * index['vocab_size']} bytes/token); built in {index['cache_seconds']:.1f} s"
    )
    for kind, r in results.items():
        print(
            f"  {kind:<7} {r['seconds_per_step']:6.2f} s/step  peak RSS {gib(r['peak_bytes'])}  "
            f"first-step loss {r['first_loss']:.4f}"
        )
    online, cached = results["online"], results["cache"]
    print(
        f"cache / online: step time {cached['seconds_per_step'] / online['seconds_per_step']:.3f}×, "
        f"peak RSS {cached['peak_bytes'] / online['peak_bytes']:.3f}×, "
        f"first-step loss {cached['first_loss'] / online['first_loss']:.4f}×"
    )


if __name__ == "__main__":
    main()
