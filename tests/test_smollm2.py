"""The real built-in teacher: GGUF loading, width and depth students that reload and generate."""

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import PruningConfig, model_shape, prune_model, save_pruned_model
from hf_minitron.evaluation import perplexity
from hf_minitron.importance import ImportanceScores
from hf_minitron.loading import BUILTIN_MODELS, resolve_model_location

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"


def test_builtin_teacher_loads_dequantized_and_saveable(smollm2):
    model, _ = smollm2
    shape = model_shape(model)
    assert (shape.num_hidden_layers, shape.hidden_size, shape.intermediate_size) == (30, 576, 1536)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim) == (9, 3, 64)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # a first load went through the GGUF quantizer (flag cleared), later ones read the plain copy (no flag)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert model.config._name_or_path == BUILTIN_MODELS["smollm2-135m"]["hub_id"]
    assert model.minitron_source == "builtin:smollm2-135m"  # what the trainer loads the tokenizer from
    folder, gguf = resolve_model_location("builtin:smollm2-135m")
    assert resolve_model_location(str(Path(folder) / gguf)) == (folder, gguf)
    assert resolve_model_location(folder) == (folder, gguf)  # a folder holding one .gguf


@pytest.mark.parametrize(
    "name, target, non_embedding_share",
    [
        ("width", PruningConfig(hidden_size=432, intermediate_size=768), (0.45, 0.49)),
        ("depth", PruningConfig(num_hidden_layers=15), (0.49, 0.51)),
    ],
)
def test_students_reload_and_generate(
    smollm2, teacher_scores, tmp_path, record_measurement, name, target, non_embedding_share
):
    teacher, tokenizer = smollm2
    student = prune_model(copy.deepcopy(teacher), target, teacher_scores)
    share = model_shape(student).non_embedding_params / model_shape(teacher).non_embedding_params
    assert non_embedding_share[0] <= share <= non_embedding_share[1]
    save_pruned_model(student, tmp_path / name, tokenizer=tokenizer, pruning_config=target, scores=teacher_scores)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)
    generated = reloaded.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert generated.shape[1] == ids.shape[1] + 8 and text.strip()
    calibration = dict(seq_len=128, max_tokens=1024, progress=False)
    student_ppl = perplexity(reloaded, tokenizer, "builtin:python-docs", **calibration).perplexity
    teacher_ppl = perplexity(teacher, tokenizer, "builtin:python-docs", **calibration).perplexity
    record_measurement(
        f"SmolLM2 {name} student ({share:.0%} of non-embedding params, not distilled): calibration perplexity "
        f"{student_ppl:.1f} vs teacher {teacher_ppl:.1f}; continues {PROMPT!r} with {text!r}"
    )


@pytest.mark.slow
def test_demo_recipe_end_to_end_with_few_steps(tmp_path, record_measurement):
    """The README's main job on the real teacher, with 4 distillation steps per student, half the
    calibration and re-fit samples, a quarter of the block-ranking samples, half the facts that rank
    the depth student's block and a quarter of the held-out tokens (the full demo is measured in the
    README, not here)."""
    from hf_minitron.cli.demo import demo_recipe
    from hf_minitron.pipeline import run_recipe

    start = time.time()
    recipe = demo_recipe()
    recipe.calibration.num_samples //= 2
    recipe.calibration.block_search_samples //= 4
    recipe.calibration.downstream_limit = 30
    recipe.reconstruction.num_samples //= 2
    recipe.evaluate.max_tokens //= 4
    recipe.evaluate.throughput = False
    result = run_recipe(recipe, tmp_path / "demo", budget=0.1)
    seconds = time.time() - start
    ppl = {name: entry["perplexity"]["perplexity"] for name, entry in result["results"].items()}
    for student in ("width", "depth"):
        # Pruned to ~7/8 and re-fitted by least squares, before any training: within 1.5× of the teacher
        # on held-out text. Four steps at the schedule's peak rate move a student this close to the
        # teacher a little either way (the full demo's 40 steps end below the re-fit); they must not
        # undo the re-fit.
        assert ppl["teacher"] < ppl[f"{student} pruned"] < 1.5 * ppl["teacher"]
        assert ppl["teacher"] < ppl[f"{student} distilled"] < 1.15 * ppl[f"{student} pruned"]
        assert result["distillation_tokens"][student] == 4 * 4 * 128
    models = sorted(p.name for p in (tmp_path / "demo" / "models").iterdir() if p.is_dir())
    assert models == ["SmolLM2-Minitron-Demo-Depth-Base", "SmolLM2-Minitron-Demo-Width-Base"]
    card = (tmp_path / "demo" / "models" / "SmolLM2-Minitron-Demo-Width-Base" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    assert "**Reconstruction** without training" in card
    assert str(tmp_path) not in card
    assert set(result["generations"]) == {"teacher", "width", "depth"}
    assert "Paris" in result["generations"]["teacher"]["The capital of France is"]  # plain continuation
    assert all(all(answers.values()) for answers in result["generations"].values())
    # The depth student's block is ranked by the built-in facts: one within a standard error of the best.
    scores = ImportanceScores.load(tmp_path / "demo" / "importance")
    accuracy, rows = scores.block_accuracy[4], scores.metadata["downstream_rows"]
    dropped = json.loads((tmp_path / "demo" / "prune" / "stage.json").read_text())["record"]["dropped_layers"]
    best = float(accuracy.max())
    assert scores.metadata["downstream_task"] == "builtin:everyday-facts" and len(dropped["depth"]) == 4
    assert float(accuracy[dropped["depth"][0]]) >= best - math.sqrt(best * (1 - best) / rows) - 1e-6
    record_measurement(
        f"demo recipe, 4 steps/student: {seconds:.0f} s; held-out ppl teacher {ppl['teacher']:.1f}, "
        f"width {ppl['width pruned']:.1f}→{ppl['width distilled']:.1f}, depth {ppl['depth pruned']:.1f}→"
        f"{ppl['depth distilled']:.1f} (re-fitted → distilled); depth drops layers {dropped['depth']}"
    )
