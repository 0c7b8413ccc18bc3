"""Folders as vLLM, TGI and lm-eval read them: standard config.json, the pruning record beside it, and
`hf-minitron eval --harness` running lm-evaluation-harness on local files with no network."""

import json

import pytest

from hf_minitron import PruningConfig, estimate_importance, load_model, prune_model, save_pruned_model
from hf_minitron.cli import main
from hf_minitron.evaluation import serving
from hf_minitron.evaluation.serving import check_serving_config
from hf_minitron.evaluation.tasks import load_task, score_task
from hf_minitron.model_folder import RECORD_FILE, read_record

from helpers import (
    FAMILY_CONFIGS,
    MOE_FAMILY_CONFIGS,
    SHARED_DATA,
    char_tokenizer,
    save_tiny,
    tiny_calibration,
    tiny_model,
    tiny_moe_model,
)


def _pruned(make, family, config):
    model = make(family)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    return prune_model(model, config, scores)


@pytest.mark.parametrize(
    "make, family, config",
    [
        (tiny_model, "llama", PruningConfig(hidden_size=36, intermediate_size=64)),  # width
        (tiny_model, "qwen3", PruningConfig(layers_to_drop=[1, 2])),  # depth
        (tiny_model, "gemma3", PruningConfig(hidden_size=36, layers_to_drop=[1])),
        (tiny_moe_model, "qwen3_moe", PruningConfig(hidden_size=36, layers_to_drop=[2])),
    ],
    ids=["width", "depth", "gemma3", "moe"],
)
def test_pruned_folders_carry_only_standard_config_fields(tmp_path, make, family, config):
    model = _pruned(make, family, config)
    record = model.config.minitron_pruning
    save_pruned_model(model, tmp_path / "pruned")
    assert check_serving_config(tmp_path / "pruned") == []
    assert "minitron_pruning" not in json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert model.config.minitron_pruning is record  # saving leaves the model in memory as it was
    assert read_record(tmp_path / "pruned") == json.loads(json.dumps(record))
    reloaded = load_model(str(tmp_path / "pruned"))
    assert reloaded.config.minitron_pruning["pruned_shape"] == record["pruned_shape"]


def test_models_read_from_gguf_save_only_standard_fields(smollm2, tmp_path):
    """transformers' GGUF reader puts the file's name and unk id into the config; loading drops them."""
    model = smollm2[0]
    assert "_model_name_or_path" not in model.config.to_diff_dict()
    model.save_pretrained(tmp_path)
    assert check_serving_config(tmp_path) == []


def test_folders_of_older_versions_are_read_and_flagged(tmp_path):
    model = _pruned(tiny_model, "llama", PruningConfig(layers_to_drop=[0]))
    model.save_pretrained(tmp_path / "old")  # as older versions wrote it: the record inside config.json
    assert "minitron_pruning" in json.loads((tmp_path / "old" / "config.json").read_text())
    assert read_record(tmp_path / "old")["dropped_layers"] == [0]
    (problem,) = check_serving_config(tmp_path / "old")
    assert "older hf_minitron" in problem and RECORD_FILE in problem
    reloaded = load_model(str(tmp_path / "old"))
    assert reloaded.config.minitron_pruning["dropped_layers"] == [0]
    save_pruned_model(reloaded, tmp_path / "new")  # re-saving moves the record out
    assert check_serving_config(tmp_path / "new") == [] and read_record(tmp_path / "new")["dropped_layers"] == [0]


def test_non_standard_fields_custom_code_and_unserved_architectures_are_named(tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / "model")
    assert check_serving_config(folder) == []
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "my_notes": {"run": 3}}))
    (problem,) = check_serving_config(folder)
    assert "fields the llama config does not define: my_notes" in problem
    custom = {**config, "architectures": ["MyLlama"], "auto_map": {"AutoModelForCausalLM": "x.MyLlama"}}
    problems = check_serving_config(custom)
    assert any("'MyLlama' is not a class transformers ships" in p for p in problems)
    assert any("custom code (auto_map)" in p for p in problems)
    monkeypatch.setattr(serving, "vllm_architectures", lambda: {"MistralForCausalLM"})
    assert check_serving_config(config) == ["the config: vLLM does not register the architecture 'LlamaForCausalLM'"]


def test_vllm_registers_every_family_pruned_width_and_depth(tmp_path):
    """Against the registry of an installed vLLM (0.33.0 imports on a CPU-only torch); skipped without it."""
    if serving.vllm_architectures() is None:
        pytest.skip("vllm is not importable")
    models = [(tiny_model, family) for family in FAMILY_CONFIGS] + [(tiny_moe_model, f) for f in MOE_FAMILY_CONFIGS]
    for make, family in models:
        model = _pruned(make, family, PruningConfig(hidden_size=36, layers_to_drop=[1]))
        save_pruned_model(model, tmp_path / family)
        assert check_serving_config(tmp_path / family) == [], family


def test_eval_harness_runs_lm_eval_offline_on_local_jsonl_and_agrees_with_our_scorer(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    # Long enough for every row: lm-eval truncates to the model's context, our scorer does not.
    folder = save_tiny(tmp_path / "model", max_position_embeddings=1024)
    arc, wino = SHARED_DATA / "eval" / "arc_easy.jsonl", SHARED_DATA / "eval" / "winogrande.jsonl"
    beside = set(arc.parent.iterdir())
    out = tmp_path / "results.json"
    args = ["eval", "--model", str(folder), "--harness", f"arc={arc}", "--lm-eval-task", f"wino={wino}"]
    assert main([*args, "--limit", "20", "--batch-size", "8", "--output", str(out)]) == 0
    harness = json.loads(out.read_text())["model"]["lm_eval"]
    assert set(arc.parent.iterdir()) == beside  # no task file written next to the data
    model, tokenizer = load_model(str(folder)), char_tokenizer()
    for name, path in (("arc", arc), ("wino", wino)):
        ours = score_task(model, tokenizer, load_task(path, limit=20), progress=False)
        assert harness[name]["acc"] == pytest.approx(ours.acc, abs=1e-12), name
