"""The evaluate stage: every model the run made, scored on the recipe's held-out text and tasks, with
greedy continuations of its sample prompts, a throughput comparison, and each model's shape (the one
stage that sees every student, whether pruned here or given as a folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..data import describe_text_source, prompt_ids
from ..evaluation import evaluate_model
from ..evaluation.serving import check_serving_config
from ..shapes import model_shape
from .stages import Run

THROUGHPUT = dict(prefill_batch=2, prefill_len=128, decode_batches=(1,), prompt_len=16, new_tokens=16, repeats=2)


def stage_models(run: Run) -> list[tuple[str, str, str]]:
    """(student, label, stage) for every model the run made, in pipeline order."""
    return [(name, label, stage) for name in run.recipe.student_names for stage, label in run.model_stages()]


@torch.no_grad()
def sample_generation(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool = True) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    ids = torch.tensor([prompt_ids(tokenizer, text)], device=next(model.parameters()).device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def evaluate(run: Run, folder: Path) -> dict:
    from ..evaluation.throughput import ThroughputSettings, benchmark_throughput

    settings = run.recipe.evaluate
    teacher, tokenizer = run.teacher()

    def score(model):
        return score_model(model, tokenizer, settings)

    results = {"teacher": score(teacher)}
    finals = {"teacher": teacher}
    shapes = {"teacher": model_shape(teacher).to_dict()}
    serving = {}  # what would stop vLLM, TGI or lm-eval reading each folder as it is (nothing, we hope)
    for name, label, stage in stage_models(run):
        serving[f"{name} {label}"] = problems = check_serving_config(run.student_folder(stage, name))
        for problem in problems:
            print(f"  warning: {name} {label}: {problem}", file=sys.stderr)
        model = run.load(run.student_folder(stage, name))
        results[f"{name} {label}"] = score(model)
        finals[name] = model
        shapes.setdefault(name, model_shape(model).to_dict())  # training changes no dimension
        print(f"  {name} {label}: {_brief(results[f'{name} {label}'])}", file=sys.stderr)
    generations = {
        name: {
            prompt: sample_generation(model, tokenizer, prompt, settings.max_new_tokens, settings.chat_prompts)
            for prompt in settings.sample_prompts
        }
        for name, model in finals.items()
    }
    speed = benchmark_throughput(finals, ThroughputSettings(**THROUGHPUT)) if settings.throughput else {}
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "generations.json").write_text(json.dumps(generations, indent=2, ensure_ascii=False) + "\n")
    (folder / "throughput.json").write_text(json.dumps(speed, indent=2) + "\n")
    return {
        "models": list(results),
        "perplexity_data": describe_text_source(settings.perplexity_data or ""),
        "shapes": shapes,
        "serving_problems": {label: problems for label, problems in serving.items() if problems},
    }


def score_model(model, tokenizer, settings) -> dict:
    """``evaluate_model`` with a recipe's evaluate settings (perplexity text, local tasks, limits)."""
    return evaluate_model(
        model.eval(),
        tokenizer,
        tasks=settings.tasks or None,
        perplexity_data=settings.perplexity_data,
        limit=settings.limit,
        seq_len=settings.seq_len,
        max_tokens=settings.max_tokens,
        progress=False,
    )


def _brief(result: dict) -> str:
    parts = []
    if "perplexity" in result:
        parts.append(f"perplexity {result['perplexity']['perplexity']:.2f}")
    if "task_mean_acc" in result:
        parts.append(f"mean task accuracy {100 * result['task_mean_acc']:.1f}")
    return ", ".join(parts) or "evaluated"
