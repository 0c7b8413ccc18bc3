"""The real Gemma 3 270M, the second built-in teacher: it loads from its joined GGUF, and pruned
students (width, depth) reload with identical logits."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import PruningConfig, estimate_importance, model_shape, prune_model, save_pruned_model
from hf_minitron.loading import BUILTIN_MODELS, load_model_and_tokenizer, resolve_model_location

ENTRY = BUILTIN_MODELS["gemma3-270m"]
MISSING = [package for package, _ in ENTRY["parts"] if importlib.util.find_spec(package) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"the Gemma 3 270M packages are not installed ({ENTRY['pip']}): {', '.join(MISSING)}"
    ),
]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gemma3():
    return load_model_and_tokenizer("builtin:gemma3-270m", dtype=torch.float32)


@pytest.fixture(scope="module")
def gemma3_scores(gemma3):
    model, tokenizer = gemma3
    return estimate_importance(
        model, tokenizer, "builtin:python-docs", num_samples=4, seq_len=64, batch_size=4, progress=False
    )


def test_builtin_gemma3_loads_dequantized_from_its_joined_file(gemma3):
    model, tokenizer = gemma3
    shape = model_shape(model)
    assert (shape.num_hidden_layers, shape.hidden_size, shape.intermediate_size) == (18, 640, 2048)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim) == (4, 1, 256)
    assert model.config.model_type == "gemma3_text" and model.config.vocab_size == 262_144
    assert model.config.layer_types.count("full_attention") == 3  # every sixth layer
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # a first load went through the GGUF quantizer (flag cleared), later ones read the plain copy (no flag)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert model.config._name_or_path == ENTRY["hub_id"]
    folder, gguf = resolve_model_location("builtin:gemma3-270m")
    assert (Path(folder) / gguf).stat().st_size == sum(
        (Path(importlib.util.find_spec(p).submodule_search_locations[0]) / f).stat().st_size for p, f in ENTRY["parts"]
    )
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "France" in tokenizer.decode(generated[0, ids.shape[1] :])  # a working model, not noise


@pytest.mark.parametrize(
    "name, target, share",
    [
        ("width", PruningConfig(hidden_size=448, intermediate_size=1152), (0.45, 0.50)),
        ("depth", PruningConfig(num_hidden_layers=9), (0.49, 0.51)),
    ],
)
def test_students_of_the_recipe_reload_with_identical_logits(gemma3, gemma3_scores, tmp_path, name, target, share):
    teacher, tokenizer = gemma3
    student = prune_model(copy.deepcopy(teacher), target, gemma3_scores)
    kept = model_shape(student).non_embedding_params / model_shape(teacher).non_embedding_params
    assert share[0] <= kept <= share[1]
    save_pruned_model(student, tmp_path / name, tokenizer=tokenizer, pruning_config=target, scores=gemma3_scores)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)
    assert len(reloaded.config.layer_types) == reloaded.config.num_hidden_layers
