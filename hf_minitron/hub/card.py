"""Model cards for published students, filled from a run's own facts.

``card_facts`` (a JSON-able dict the pipeline writes beside each packaged model) holds everything
a card says; ``render_model_card`` turns it into Markdown with a ``huggingface_hub`` YAML header.
Fields the templates use:

name, variant (Width/Depth), kind (Base/Instruct), repo_id, teacher {id, url, license},
base {id, url} (Instruct only), params {teacher_total, student_total, student_non_embedding, ratio},
importance {calibration, aggregation} or None, pruning {summary, dropped_layers, layer_choice} or None (a student
that was not pruned by hf_minitron), reconstruction (a sentence or None), distillation {summary} or None
(a recipe that stops after pruning),
alignment {summary} (Instruct only), shape_table, evaluation {student: results, teacher: results},
throughput, plots [{title, file}], intended_use, language, datasets (Hub ids only).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..errors import MinitronError
from ..evaluation.report import results_table

TEMPLATE_DIR = Path(__file__).with_name("templates")  # model_cards/ at the repository root links here
# Local task names → the public dataset they come from, for the Hub's evaluation-results metadata.
PUBLIC_TASKS = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "ARC-Easy", "multiple-choice"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge", "multiple-choice"),
    "piqa": ("ybisk/piqa", "PIQA", None, "multiple-choice"),
    "winogrande": ("allenai/winogrande", "Winogrande", "winogrande_xl", "multiple-choice"),
    "hellaswag": ("Rowan/hellaswag", "HellaSwag", None, "multiple-choice"),
}
_PATH = re.compile(r"(?<![\w.:])(/(?:[\w.\-]+/)+[\w.\-]*)")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_url(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}"


def model_link(model_id: str) -> dict:
    """{id, url, link}: a Markdown link for Hub ids, plain code for anything else (a local model's name)."""
    if HUB_ID.match(model_id):
        return {"id": model_id, "url": hub_url(model_id), "link": f"[{model_id}]({hub_url(model_id)})"}
    return {"id": model_id, "url": "", "link": f"`{model_id}`"}


def eval_results(facts: dict) -> list[EvalResult]:
    """The student's results in the Hub's model-index format."""
    results = facts["evaluation"]["student"]
    entries = []
    perplexity = results.get("perplexity")
    if perplexity:
        entries.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=facts["evaluation"].get("perplexity_dataset_id", "text"),
                dataset_name=facts["evaluation"].get("perplexity_data", "held-out text"),
                metric_type="perplexity",
                metric_value=round(perplexity["perplexity"], 4),
            )
        )
    for task, scores in results.get("tasks", {}).items():
        dataset_id, pretty, config, task_type = PUBLIC_TASKS.get(task, (task, task, None, "multiple-choice"))
        for metric in ("acc", "acc_norm"):
            if scores.get(metric) is not None:
                entries.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset_id,
                        dataset_name=pretty,
                        dataset_config=config,
                        metric_type=metric,
                        metric_value=round(100 * scores[metric], 2),
                        metric_name=f"{metric} (0-shot, first {scores.get('count', '?')} rows)",
                    )
                )
    return entries


def card_data(facts: dict) -> ModelCardData:
    steps = [tag for tag in ("pruning", "distillation") if facts.get(tag)]
    kind_tags = ["minitron", *steps, "hf_minitron"]
    if facts["kind"] == "Instruct":
        kind_tags += ["conversational"]
    base = facts["base"]["id"] if facts["kind"] == "Instruct" else facts["teacher"]["id"]
    base = base if HUB_ID.match(base) else None  # a local teacher has no repository to point to
    return ModelCardData(
        model_name=facts["name"],
        language=facts.get("language") or ["en"],
        license=facts["teacher"].get("license") or "other",
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base,
        base_model_relation="finetune" if base else None,
        tags=kind_tags,
        datasets=facts.get("datasets") or None,
        eval_results=eval_results(facts) or None,
    )


def _license_text(facts: dict) -> str:
    license_id = facts["teacher"].get("license")
    if not license_id or license_id == "other":
        return f"The license of {facts['teacher']['link']} applies to this derivative."
    return f"`{license_id}`, carried over from {facts['teacher']['link']}, whose terms apply to this derivative."


def render_model_card(facts: dict, template_dir: str | os.PathLike | None = None) -> str:
    """The card's Markdown (YAML header included); refuses text that names a local path."""
    template = Path(template_dir or TEMPLATE_DIR) / ("instruct.md" if facts["kind"] == "Instruct" else "base.md")
    if not template.is_file():
        raise MinitronError(f"Model card template '{template}' does not exist", fix="check template_dir")
    evaluation = facts["evaluation"]
    table = results_table({"teacher": evaluation["teacher"], facts["name"]: evaluation["student"]}, markdown=True)
    note = (
        f"Perplexity on {evaluation.get('perplexity_data', 'held-out text')}, which no model trained on; "
        "zero-shot accuracies (%) scored locally by log-likelihood. Differences to the teacher in brackets."
    )
    card = ModelCard.from_template(
        card_data(facts),
        template_path=str(template),
        evaluation_table=table,
        evaluation_note=note,
        license_text=_license_text(facts),
        **{k: v for k, v in facts.items() if k != "evaluation"},
    )
    text = str(card)
    leaked = [m for m in _PATH.findall(text) if Path(m).exists()]
    if leaked:
        raise MinitronError(
            f"The model card would name local path(s): {', '.join(leaked[:3])}",
            "a published card must not reveal the machine it was made on",
            "describe data and models by Hub id or file name",
        )
    return text
