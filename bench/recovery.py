"""Recovery curves: how much quality each distillation token buys back, with and without reconstruction.

The built-in SmolLM2-135M-Instruct teacher, pruned to seven shapes — the demo's former width shape
(hidden 432, MLP 768: ~47% of the non-embedding parameters), depth 15/30 layers, and milder ~25% cuts
(hidden 540 / MLP 1152; MLP 1024 alone; 23/30 layers), each depth twice: the contiguous block whose
removal hurts LM loss least, and (``depth15cos``, ``depth23cos``) the layers of lowest block
importance wherever they are — and four students per shape:

- ``reconstructed``: activation importance, then the least-squares re-fit (hf_minitron's default)
- ``pruned``:        activation importance, no re-fit
- ``magnitude``:     weight-magnitude importance (depth: the layers with the smallest weights), no re-fit
- ``random``:        the same shape from random initialisation

Each student distils from the teacher on the same data, in the same order, with the same seed and
schedule (constant learning rate after a short warm-up, so every point of a curve is the same run
stopped earlier), and is evaluated after N tokens for each N of ``--tokens``: perplexity on text
used neither for calibration nor training (held-out Python documentation, and Tiny Shakespeare as
general English) and zero-shot accuracy on the tasks in ../shared/data/eval.

Distillation text: Python's bundled documentation (training split) interleaved with the dolly
instruction/response pairs in ../shared/data/sft. Calibration text (``--calibration``): the same
mixture (``docs+dolly``, default); the demo's former half documentation, half the library's everyday
prompts (``docs+prompts``); or half docs+dolly, half the teacher's own answers to those prompts
(``docs+dolly|generated``, as the demo now calibrates). ``--damping``, ``--layers`` and
``--span-method`` set the reconstruction's.

    .venv/bin/python bench/recovery.py                                  # CPU: N = 0, 5k, 20k
    .venv/bin/python bench/recovery.py --tokens 0,20000,80000,320000 --device cuda    # the full table

Writes ``results.json`` (after every evaluation, so an interrupted run keeps what it measured),
``recovery.md`` and ``recovery.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron import (
    PruningConfig,
    ReconstructionConfig,
    build_calibration_set,
    estimate_importance,
    load_model_and_tokenizer,
    prune_model,
    reconstruct_models,
)
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.evaluation.perplexity import perplexity
from hf_minitron.evaluation.tasks import load_task, score_task
from hf_minitron.importance import magnitude_importance
from hf_minitron.pruning.config import NEURON_SELECTIONS
from hf_minitron.pruning.plan import block_lm_loss_sizes
from hf_minitron.pruning.prune import RECORD_KEY
from hf_minitron.shapes import model_shape
from hf_minitron.training_data import token_block_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_text import SHARED, mixed_texts, with_teacher_answers

# The shapes of each teacher: about half and about three quarters of its non-embedding parameters.
SHAPES_OF = {
    "builtin:smollm2-135m": {
        "width50": PruningConfig(hidden_size=432, intermediate_size=768),
        "depth15": PruningConfig(num_hidden_layers=15, layer_selection="lm_loss"),
        # The same depth with the 15 layers of lowest 1 - cos(input, output), wherever they are: several
        # short spans, each stood in for by the re-fit of the layer before it.
        "depth15cos": PruningConfig(num_hidden_layers=15, layer_selection="block_importance"),
        "width25": PruningConfig(hidden_size=540, intermediate_size=1152),
        "depth23": PruningConfig(num_hidden_layers=23, layer_selection="lm_loss"),
        "depth23cos": PruningConfig(num_hidden_layers=23, layer_selection="block_importance"),
        "mlp25": PruningConfig(intermediate_size=1024),  # the same ~25% cut from the MLP alone
    },
    # Gemma 3 270M: 18 layers, hidden 640 (4 query heads, 1 KV head, head_dim 256), MLP 2048. The shapes
    # of recipes/gemma3-270m-demo.yaml; hidden must stay a multiple of the 4 heads.
    "builtin:gemma3-270m": {
        "width50": PruningConfig(hidden_size=448, intermediate_size=1152),
        "depth9": PruningConfig(num_hidden_layers=9, layer_selection="lm_loss"),
        "depth9cos": PruningConfig(num_hidden_layers=9, layer_selection="block_importance"),
    },
}
SHAPES = SHAPES_OF["builtin:smollm2-135m"]
VARIANTS = ("reconstructed", "pruned", "magnitude", "random")
HELD_OUT = {"docs": "builtin:python-docs-heldout", "shakespeare": str(SHARED / "corpus" / "tinyshakespeare.txt")}
TASKS = ("arc_easy", "piqa", "winogrande")
CALIBRATIONS = ("docs+dolly", "docs+prompts", "docs+dolly|generated")
CHANCE = {"arc_easy": 0.25, "piqa": 0.5, "winogrande": 0.5}


def token_blocks(tokenizer, texts: list[str], length: int, count: int) -> list[list[int]]:
    """``count`` blocks of exactly ``length`` tokens cut as the library cuts training text (texts joined
    with EOS, BOS first where the tokenizer adds one), repeated if needed."""
    blocks = token_block_dataset([{"text": text} for text in texts], tokenizer, length)["input_ids"]
    return [blocks[i % len(blocks)] for i in range(count)]


def held_out_perplexity(model, tokenizer, tokens: int) -> dict[str, float]:
    """Perplexity on each held-out text (``HELD_OUT``), over its first ``tokens`` tokens in 256-token windows."""
    return {
        name: perplexity(model, tokenizer, source, seq_len=256, max_tokens=tokens, progress=False).perplexity
        for name, source in HELD_OUT.items()
    }


def evaluate(model, tokenizer, args, tasks) -> dict:
    model.eval()
    result = {f"ppl_{name}": value for name, value in held_out_perplexity(model, tokenizer, args.eval_tokens).items()}
    for name, docs in tasks.items():
        result[name] = score_task(model, tokenizer, docs, name, progress=False).acc
    result["margin"] = sum(result[t] - CHANCE[t] for t in tasks) / len(tasks)  # mean accuracy above chance
    model.train()
    return result


class EvaluateAt(TrainerCallback):
    """Evaluates the student when the step count reaches each checkpoint."""

    def __init__(self, steps: dict[int, int], record):
        self.steps, self.record = steps, record

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.record(self.steps[state.global_step], model)


def random_like(student):
    config = copy.deepcopy(student.config)
    del config.minitron_pruning
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def students_for(name, teacher, scores, magnitude, calibration, args) -> dict:
    config = replace(SHAPES_OF[args.teacher][name], neuron_selection=args.neuron_selection)
    students = {}
    if {"reconstructed", "pruned", "random"} & set(args.variants):
        pruned = prune_model(copy.deepcopy(teacher), config, scores)
        dropped = getattr(pruned.config, RECORD_KEY).get("dropped_layers")
        if dropped:
            print(f"  {name}: drops layers {dropped}", flush=True)
        if "reconstructed" in args.variants:
            students["reconstructed"] = copy.deepcopy(pruned)
        if "pruned" in args.variants:
            students["pruned"] = pruned
        if "random" in args.variants:
            students["random"] = random_like(pruned).to(args.device)
    if "magnitude" in args.variants:
        # Weight norms rank the neurons; there are no activations to weigh them by.
        by_weights = PruningConfig(
            **{**config.to_dict(), "layer_selection": "block_importance", "neuron_selection": "activation"}
        )
        students["magnitude"] = prune_model(copy.deepcopy(teacher), by_weights, magnitude)
    if "reconstructed" in students:
        start = time.time()
        settings = ReconstructionConfig(damping=args.damping, layers=args.layers, span_method=args.span_method)
        reconstruct_models(teacher, [students["reconstructed"]], calibration, config=settings, progress=False)
        print(f"  {name}: reconstruction {time.time() - start:.1f} s", flush=True)
    return students


def distil(student, teacher, tokenizer, train, args, record) -> None:
    steps_of = {math.ceil(n / args.tokens_per_step): n for n in args.tokens if n > 0}
    if not steps_of:
        return
    config = DistillationConfig(
        output_dir=str(Path(args.out) / "trainer"),
        max_steps=max(steps_of),
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup,
        max_length=args.block,
        packing=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        bf16=False,
        use_cpu=args.device == "cpu",
    )
    trainer = DistillationTrainer(
        model=student.requires_grad_(True),
        teacher_model=teacher,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[EvaluateAt(steps_of, record)],
    )
    trainer.train()


def tokens_to_reach(curve: dict[int, float], target: float) -> float | None:
    """Tokens at which a perplexity curve first reaches ``target`` (log-linear between measured points)."""
    points = sorted(curve.items())
    for (n0, p0), (n1, p1) in itertools.pairwise(points):
        if p0 <= target:
            return n0
        if p1 <= target:
            fraction = (math.log(p0) - math.log(target)) / (math.log(p0) - math.log(p1))
            return n0 + fraction * (n1 - n0)
    return points[0][0] if points and points[0][1] <= target else None


def report(results: dict, args) -> str:
    teacher = results["teacher"]
    lines = [
        f"Teacher: held-out docs ppl {teacher['ppl_docs']:.2f}, Tiny Shakespeare ppl {teacher['ppl_shakespeare']:.2f}, "
        f"mean task accuracy above chance {100 * teacher['margin']:.1f} points.",
        "",
        "| shape | student | tokens | ppl docs | ppl Shakespeare | ARC-E | PIQA | Wino | margin kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, variants in results["students"].items():
        for variant, curve in variants.items():
            for n, r in sorted(curve.items(), key=lambda item: int(item[0])):
                kept = r["margin"] / teacher["margin"] if teacher["margin"] > 0 else float("nan")
                lines.append(
                    f"| {shape} | {variant} | {int(n):,} | {r['ppl_docs']:.1f} | {r['ppl_shakespeare']:.1f} | "
                    f"{100 * r['arc_easy']:.1f} | {100 * r['piqa']:.1f} | {100 * r['winogrande']:.1f} | "
                    f"{100 * kept:.0f}% |"
                )
    lines += ["", "Tokens of distillation to reach a held-out perplexity (Tiny Shakespeare, docs):", ""]
    lines += [
        "| shape | target (2× / 4× teacher) | reconstructed | pruned | magnitude | random |",
        "|---|---|---|---|---|---|",
    ]
    for shape, variants in results["students"].items():
        for factor in (2, 4):
            cells = []
            for variant in VARIANTS:
                curve = variants.get(variant)
                if curve is None:
                    cells.append("—")
                    continue
                found = []
                for source in ("shakespeare", "docs"):
                    points = {int(n): r[f"ppl_{source}"] for n, r in curve.items()}
                    reached = tokens_to_reach(points, factor * teacher[f"ppl_{source}"])
                    found.append(f"{reached:,.0f}" if reached is not None else f"> {max(points):,}")
                cells.append(" / ".join(found))
            lines.append(f"| {shape} | {factor}× | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(results["students"])
    figure, axes = plt.subplots(2, len(shapes), figsize=(4 * len(shapes), 7), squeeze=False)
    for column, shape in enumerate(shapes):
        for row, source in enumerate(("shakespeare", "docs")):
            axis = axes[row][column]
            for variant, curve in results["students"][shape].items():
                points = sorted((max(int(n), 1), r[f"ppl_{source}"]) for n, r in curve.items())
                axis.plot(*zip(*points, strict=True), marker="o", label=variant)
            axis.axhline(results["teacher"][f"ppl_{source}"], color="black", linestyle="--", label="teacher")
            axis.set_xscale("symlog", linthresh=1000)
            axis.set_yscale("log")
            axis.set_title(f"{shape}: {'Tiny Shakespeare' if source == 'shakespeare' else 'held-out docs'}")
            axis.set_xlabel("distillation tokens")
            axis.set_ylabel("perplexity")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", default="0,5000,20000", help="comma-separated distillation token counts")
    parser.add_argument("--teacher", choices=tuple(SHAPES_OF), default="builtin:smollm2-135m")
    parser.add_argument("--shapes", default=None, help=f"comma-separated; default: all of the teacher's ({SHAPES_OF})")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="docs+dolly")
    parser.add_argument("--neuron-selection", choices=NEURON_SELECTIONS, default="energy")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--damping", type=float, default=0.1, help="reconstruction ridge damping")
    parser.add_argument("--layers", default="all", help="reconstruction layers: all or changed")
    parser.add_argument("--span-method", default="refit", help="reconstruction span method: refit or linear_map")
    parser.add_argument("--calibration-len", type=int, default=256)
    parser.add_argument("--block-samples", type=int, default=8, help="samples for ranking dropped layer blocks")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200, help="rows of each task")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--out", default="bench/out/recovery")
    args = parser.parse_args()
    args.tokens = sorted(int(n) for n in args.tokens.split(","))
    args.variants = args.variants.split(",")
    shapes = SHAPES_OF[args.teacher]
    args.shapes = args.shapes or ",".join(shapes)
    unknown = set(args.shapes.split(",")) - set(shapes)
    if unknown:
        parser.error(f"{args.teacher} has no shape {', '.join(sorted(unknown))}; it has {', '.join(shapes)}")
    args.tokens_per_step = args.batch * args.block
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.time()

    teacher, tokenizer = load_model_and_tokenizer(args.teacher, dtype=torch.float32)
    teacher.to(args.device).eval()
    layers = teacher.config.num_hidden_layers
    texts = mixed_texts()
    source = {"builtin:python-docs": 0.5, "builtin:seed-prompts": 0.5} if args.calibration == "docs+prompts" else texts
    samples = args.calibration_samples
    calibration = build_calibration_set(source, tokenizer, num_samples=samples, seq_len=args.calibration_len)
    if args.calibration == "docs+dolly|generated":  # half the samples: the teacher's answers (2 prompts each)
        calibration = with_teacher_answers(
            calibration, samples, teacher, tokenizer, out, prompts=2 * samples, seq_len=args.calibration_len
        )
    configs = [shapes[name] for name in args.shapes.split(",")]
    scores = estimate_importance(
        teacher,
        calibration_data=calibration,
        block_lm_loss_sizes=block_lm_loss_sizes(layers, configs),
        block_search_samples=args.block_samples,
        progress=False,
    )
    magnitude = magnitude_importance(teacher)
    steps = math.ceil(max(args.tokens) / args.tokens_per_step)
    train = datasets.Dataset.from_dict(
        {"input_ids": token_blocks(tokenizer, texts, args.block, steps * args.batch + args.batch)}
    )
    tasks = {name: load_task(SHARED / "eval" / f"{name}.jsonl", args.rows) for name in TASKS}
    results = {"settings": {k: v for k, v in vars(args).items()}, "teacher": evaluate(teacher, tokenizer, args, tasks)}
    results["students"], results["params"] = {}, {}
    print(f"teacher: {results['teacher']}", flush=True)

    def save():
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for shape in args.shapes.split(","):
        students = students_for(shape, teacher, scores, magnitude, calibration, args)
        results["students"][shape] = {}
        for variant, student in students.items():
            curve = results["students"][shape].setdefault(variant, {})
            results["params"].setdefault(shape, {})[variant] = model_shape(student).non_embedding_params

            def record(n, model, curve=curve, label=f"{shape} {variant}"):
                curve[str(n)] = evaluate(model, tokenizer, args, tasks)
                print(f"{label} after {n} tokens: {curve[str(n)]} ({time.time() - start:.0f} s)", flush=True)
                save()

            record(0, student.to(args.device))
            distil(student, teacher, tokenizer, train, args, record)
            del student
        save()
    results["seconds"] = round(time.time() - start, 1)
    save()
    table = report(results, args)
    (out / "recovery.md").write_text(table + "\n")
    plot(results, out / "recovery.png")
    print(table)
    print(f"\n{results['seconds']:.0f} s in all; wrote {out}/results.json, recovery.md, recovery.png")


if __name__ == "__main__":
    main()
