"""Mixture-of-experts recovery: which experts to keep when half of them go, before and after distillation.

There is no real mixture-of-experts model offline, so the teacher is a small Qwen3-MoE (4 layers, hidden
256, 8 experts of width 256, top-2, router balance loss on) trained from scratch on Tiny Shakespeare
(first 90%; the last 10% is held out for evaluation) with a byte-level BPE tokenizer trained on the
same split. The trained teacher and its tokenizer are cached in ``--out``, so reruns skip training.

Students keep 4 of the 8 experts in every layer (top-k stays 2):

- ``reap``:          experts ranked by REAP saliency (mean gate weight × ‖expert output‖ over routed tokens)
- ``frequency``:     experts ranked by how often the router picks them
- ``mass``:          experts ranked by gate weight × ‖expert output‖ summed over all tokens (REAP × frequency)
- ``random``:        4 experts drawn at random per layer (seeded)
- ``random_init``:   the same shape from random initialisation
- ``reap_narrow``:   ``reap`` and every expert's width halved as well (neurons by mean |activation|)

Each student distils from the teacher on the same training-split blocks, in the same order, with the
same seed and schedule (constant learning rate after a short warm-up, so every point of a curve is
the same run stopped earlier; router balance loss on), and is evaluated on the held-out 10% after N
tokens for each N of ``--tokens``.

    .venv/bin/python bench/moe_recovery.py                        # CPU: N = 0, 10k, 40k
    .venv/bin/python bench/moe_recovery.py --smoke --out /tmp/x   # seconds: tiny sizes, checks the plumbing

Writes ``results.json`` (after every evaluation), ``moe_recovery.md``, and the cached ``teacher/``
into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recovery import distil, random_like, token_blocks

from hf_minitron import PruningConfig, build_calibration_set, estimate_importance, prune_model
from hf_minitron.evaluation.perplexity import perplexity
from hf_minitron.shapes import model_shape

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "tinyshakespeare.txt"
VARIANTS = ("reap", "frequency", "mass", "random", "random_init", "reap_narrow")
LABELS = {
    "reap": "REAP saliency",
    "frequency": "routing frequency",
    "mass": "routed output mass",
    "random": "random experts",
    "random_init": "random init",
    "reap_narrow": "REAP, expert width ½",
}
FULL = dict(layers=4, hidden=256, heads=4, kv_heads=2, experts=8, top_k=2, expert_width=256, vocab=2048)
SMOKE = dict(layers=2, hidden=32, heads=2, kv_heads=1, experts=4, top_k=2, expert_width=32, vocab=300)


def split_corpus(path: Path, smoke: bool) -> tuple[str, str]:
    text = path.read_text()
    if smoke:
        text = text[:60_000]
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE fitted to the training split (a compact vocabulary keeps the LM head cheap on CPU)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = [text[i : i + 10_000] for i in range(0, len(text), 10_000)]
    backend.train_from_iterator(chunks, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def teacher_config(sizes: dict, tokenizer) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes["hidden"],
        intermediate_size=sizes["expert_width"],  # unused: every layer is sparse
        moe_intermediate_size=sizes["expert_width"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["kv_heads"],
        head_dim=sizes["hidden"] // sizes["heads"],
        num_experts=sizes["experts"],
        num_experts_per_tok=sizes["top_k"],
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        output_router_logits=True,  # the balance loss while training, and later in distillation
        router_aux_loss_coef=0.01,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_teacher(stream: torch.Tensor, config, args) -> tuple[AutoModelForCausalLM, list[dict]]:
    """Plain next-token training from scratch: AdamW, warm-up then cosine decay, random windows (seeded)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.teacher_lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.teacher_steps // 20)

    def rate(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.teacher_steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(0)
    log, start = [], time.time()
    for step in range(args.teacher_steps):
        starts = torch.randint(0, len(stream) - args.block - 1, (args.teacher_batch,), generator=generator)
        batch = torch.stack([stream[s : s + args.block] for s in starts.tolist()]).to(args.device)
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == args.teacher_steps - 1:
            entry = {"step": step, "loss": round(out.loss.item(), 4), "aux": round(out.aux_loss.item(), 4)}
            log.append(entry)
            print(f"  teacher step {step}: {entry} ({time.time() - start:.0f} s)", flush=True)
    return model.eval(), log


def load_or_train_teacher(train_text: str, sizes: dict, args):
    folder = Path(args.out) / "teacher"
    if (folder / "config.json").is_file():
        print(f"teacher: cached in {folder}", flush=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(args.device).eval()
        log = json.loads((folder / "training_log.json").read_text())
        return model, tokenizer, log
    start = time.time()
    tokenizer = train_tokenizer(train_text, sizes["vocab"])
    stream = torch.tensor(tokenizer(train_text)["input_ids"])
    print(f"teacher: training on {len(stream):,} tokens of vocabulary {len(tokenizer)}", flush=True)
    model, log = train_teacher(stream, teacher_config(sizes, tokenizer), args)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    record = {
        "train_steps": args.teacher_steps,
        "seconds": round(time.time() - start, 1),
        "train_tokens": len(stream),
        "steps": log,
    }
    (folder / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    return model, tokenizer, record


def random_expert_scores(scores, seed: int = 0):
    """The same scores with expert saliency replaced by uniform noise: ``saliency`` selection then keeps
    random experts (a different draw per layer)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(scores.expert_saliency.shape, generator=generator)
    return replace(scores, expert_saliency=noise)


def build_students(teacher, scores, sizes, args) -> dict:
    keep = sizes["experts"] // 2
    configs = {
        "reap": (PruningConfig(num_experts=keep, expert_selection="saliency"), scores),
        "frequency": (PruningConfig(num_experts=keep, expert_selection="frequency"), scores),
        "mass": (PruningConfig(num_experts=keep, expert_selection="mass"), scores),
        "random": (PruningConfig(num_experts=keep, expert_selection="saliency"), random_expert_scores(scores)),
        "reap_narrow": (
            PruningConfig(
                num_experts=keep, moe_intermediate_size=sizes["expert_width"] // 2, expert_selection="saliency"
            ),
            scores,
        ),
    }
    students = {}
    for variant in args.variants:
        if variant == "random_init":
            pruned = prune_model(copy.deepcopy(teacher), *configs["reap"])
            students[variant] = random_like(pruned).to(args.device)
        else:
            students[variant] = prune_model(copy.deepcopy(teacher), *configs[variant])
    return students


def heldout_ppl(model, tokenizer, heldout: str, args) -> float:
    was_training = model.training
    model.eval()
    value = perplexity(
        model, tokenizer, [heldout], seq_len=args.block, max_tokens=args.eval_tokens, batch_size=8, progress=False
    ).perplexity
    model.train(was_training)
    return value


def kept_experts_overlap(students: dict) -> dict:
    """Per pair of selections, the share of (layer, expert) choices they have in common."""
    kept = {
        v: {(layer, e) for layer, experts in s.config.minitron_pruning["kept_experts"].items() for e in experts}
        for v, s in students.items()
        if v in ("reap", "frequency", "mass", "random")
    }
    names = sorted(kept)
    return {f"{a}/{b}": len(kept[a] & kept[b]) / len(kept[a]) for i, a in enumerate(names) for b in names[i + 1 :]}


def routing_share_kept(students: dict, frequency: torch.Tensor, top_k: int) -> dict:
    """Per selection, the share of the teacher's routing (token × top-k slots) that went to the kept experts."""
    shares = {}
    for variant, student in students.items():
        kept = student.config.minitron_pruning.get("kept_experts") if variant != "random_init" else None
        if kept:
            routed = sum(float(frequency[int(layer)][experts].sum()) for layer, experts in kept.items())
            shares[variant] = routed / (top_k * len(kept))
    return shares


def report(results: dict) -> str:
    teacher = results["teacher"]
    tokens = sorted({int(n) for curve in results["students"].values() for n in curve})
    lines = [
        f"Teacher: held-out Tiny Shakespeare perplexity {teacher['ppl']:.2f} "
        f"({teacher['params'] / 1e6:.2f}M parameters, {teacher['non_embedding_params'] / 1e6:.2f}M without "
        f"embeddings; trained {teacher['train_steps']} steps in {teacher['train_seconds']:.0f} s).",
        "",
        "| student | params kept (non-embedding) | " + " | ".join(f"ppl @ {n:,} tokens" for n in tokens) + " |",
        "|---|---|" + "---|" * len(tokens),
    ]
    for variant, curve in results["students"].items():
        params = results["params"][variant]
        total = params["params"] / teacher["params"]
        non_embedding = params["non_embedding_params"] / teacher["non_embedding_params"]
        kept = f"{100 * total:.0f}% ({100 * non_embedding:.0f}%)"
        cells = [f"{curve[str(n)]:.2f}" if str(n) in curve else "—" for n in tokens]
        lines.append(f"| {LABELS[variant]} | {kept} | " + " | ".join(cells) + " |")
    if results.get("routing_share_kept"):
        shares = ", ".join(f"{LABELS[v]} {100 * share:.0f}%" for v, share in results["routing_share_kept"].items())
        lines += ["", f"Share of the teacher's routing that went to the experts kept: {shares}."]
    if results.get("overlap"):
        shared = ", ".join(f"{pair} {100 * share:.0f}%" for pair, share in results["overlap"].items())
        lines += ["", f"Experts kept in common (share of layer × expert choices): {shared}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", default="0,10000,40000", help="comma-separated distillation token counts")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--teacher-batch", type=int, default=16)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=128, help="tokens per training and evaluation sequence")
    parser.add_argument("--lr", type=float, default=1e-3, help="distillation learning rate")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--smoke", action="store_true", help="tiny model, corpus and budgets: seconds, not minutes")
    parser.add_argument("--out", default="bench/out/moe_recovery")
    if parser.parse_known_args(argv)[0].smoke:  # smaller defaults; flags given explicitly still win
        parser.set_defaults(teacher_steps=3, teacher_batch=4, calibration_samples=4)
        parser.set_defaults(batch=2, block=32, eval_tokens=256, tokens="0,128")
    args = parser.parse_args(argv)
    args.tokens = sorted(int(n) for n in args.tokens.split(","))
    args.variants = args.variants.split(",")
    args.tokens_per_step = args.batch * args.block
    sizes = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    train_text, heldout = split_corpus(CORPUS, args.smoke)
    teacher, tokenizer, training = load_or_train_teacher(train_text, sizes, args)
    shape = model_shape(teacher)
    results = {
        "settings": {k: v for k, v in vars(args).items()},
        "sizes": sizes,
        "teacher": {
            "ppl": heldout_ppl(teacher, tokenizer, heldout, args),
            "params": shape.params,
            "non_embedding_params": shape.non_embedding_params,
            "train_steps": training["train_steps"],
            "train_tokens": training["train_tokens"],
            "train_seconds": training["seconds"],
            "final_train_loss": training["steps"][-1]["loss"],
        },
        "students": {},
        "params": {},
    }
    print(f"teacher: {results['teacher']}", flush=True)

    calibration = build_calibration_set(
        [train_text], tokenizer, num_samples=args.calibration_samples, seq_len=args.block
    )
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=8, progress=False)
    results["expert_frequency"] = scores.expert_frequency.tolist()
    results["expert_saliency"] = scores.expert_saliency.tolist()
    students = build_students(teacher, scores, sizes, args)
    results["kept_experts"] = {
        v: s.config.minitron_pruning["kept_experts"] for v, s in students.items() if v != "random_init"
    }
    results["overlap"] = kept_experts_overlap(students)
    results["routing_share_kept"] = routing_share_kept(students, scores.expert_frequency, sizes["top_k"])
    steps = math.ceil(max(args.tokens) / args.tokens_per_step)
    train = datasets.Dataset.from_dict(
        {"input_ids": token_blocks(tokenizer, [train_text], args.block, steps * args.batch + args.batch)}
    )

    def save():
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for variant in list(students):
        student = students.pop(variant)
        shape = model_shape(student)
        results["params"][variant] = {"params": shape.params, "non_embedding_params": shape.non_embedding_params}
        curve = results["students"].setdefault(variant, {})

        def record(n, model, curve=curve, variant=variant):
            curve[str(n)] = heldout_ppl(model, tokenizer, heldout, args)
            print(f"{variant} after {n} tokens: ppl {curve[str(n)]:.2f} ({time.time() - start:.0f} s)", flush=True)
            save()

        record(0, student)
        distil(student, teacher, tokenizer, train, args, record)
        del student
    results["seconds"] = round(time.time() - start, 1)
    save()
    table = report(results)
    (out / "moe_recovery.md").write_text(table + "\n")
    print(table)
    print(f"\n{results['seconds']:.0f} s in all; wrote {out}/results.json and moe_recovery.md")
    return results


if __name__ == "__main__":
    main()
