"""Architecture search on tiny models: valid candidates within budget, and resume skips finished ones."""

import json

import pytest

from hf_minitron import estimate_importance, model_shape, prune_model
from hf_minitron.cli import main
from hf_minitron.search import architecture_search, enumerate_candidates
from hf_minitron.search import run as search_run

from helpers import save_tiny, tiny_calibration, tiny_model

GRID = dict(layers=[3, 4], heads=[3, 4, 6], mlp=[40, 64, 80], hidden=[24, 30, 36, 48])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_candidates_satisfy_every_constraint_and_the_budget(family):
    model = tiny_model(family)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), progress=False)
    target = 0.5 * model_shape(model).params
    candidates = enumerate_candidates(model.config, target, tolerance=0.15, **GRID)
    assert candidates
    for candidate in candidates:
        assert abs(candidate.params - target) <= 0.15 * target
        assert candidate.hidden_size % candidate.num_attention_heads == 0
        assert candidate.num_attention_heads % 2 == 0  # a multiple of the 2 KV groups
        pruned = prune_model(tiny_model(family), candidate.pruning_config(), scores)  # valid for prune_model
        shape = model_shape(pruned)
        assert (shape.params, shape.non_embedding_params) == (candidate.params, candidate.non_embedding_params)
    assert not any(c.num_attention_heads == 3 for c in candidates)  # 3 heads over 2 KV groups is invalid


def test_search_ranks_saves_the_winner_and_resumes(tmp_path, monkeypatch):
    import datasets

    from helpers import char_tokenizer

    teacher, tokenizer = tiny_model("llama", seed=3), char_tokenizer()
    scores = estimate_importance(teacher, calibration_data=tiny_calibration(), progress=False)
    candidates = enumerate_candidates(
        teacher.config, 60000, tolerance=0.3, layers=[3, 4], heads=[6], mlp=[40], hidden=[36, 48]
    )
    assert len(candidates) >= 2
    text = datasets.Dataset.from_dict({"text": ["The quick brown fox jumps over the lazy dog. " * 3] * 16})
    settings = search_run.SearchSettings(steps=2, batch_size=4, max_length=48)
    trained = []
    original = search_run.DistillationTrainer.train
    monkeypatch.setattr(
        search_run.DistillationTrainer,
        "train",
        lambda self, *a, **k: trained.append(self.args.output_dir) or original(self, *a, **k),
    )
    ranked = architecture_search(
        teacher, tokenizer, scores, candidates[:1], text, text.select(range(4)), tmp_path, settings, progress=False
    )
    assert len(trained) == 1 and len(ranked) == 1
    ranked = architecture_search(
        teacher, tokenizer, scores, candidates, text, text.select(range(4)), tmp_path, settings, progress=False
    )
    assert len(trained) == len(candidates)  # the finished candidate was not trained again
    lines = (tmp_path / "search_results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["name"] for line in lines) == sorted(c.name for c in candidates)
    assert [r["eval_lm_loss"] for r in ranked] == sorted(r["eval_lm_loss"] for r in ranked)
    winner = json.loads((tmp_path / "winner.json").read_text())
    assert winner["name"] == ranked[0]["name"]
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "winner")
    assert exported.config.hidden_size == winner["hidden_size"]
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG"


def test_search_command(tmp_path, capsys):
    save_tiny(tmp_path / "teacher", seed=3)
    (tmp_path / "train.txt").write_text("\n\n".join(["Some words to learn from, again and again."] * 30))
    base = [
        "search",
        "--model",
        tmp_path / "teacher",
        "--target-params",
        "60K",
        "--tolerance",
        "0.3",
        "--layers",
        3,
        4,
        "--heads",
        6,
        "--mlp",
        40,
        "--hidden",
        36,
        48,
    ]
    assert main([str(a) for a in [*base, "--dry-run"]]) == 0
    assert "candidates within ±30%" in capsys.readouterr().out
    run_args = [
        *base,
        "--data",
        tmp_path / "train.txt",
        "--num-samples",
        4,
        "--seq-len",
        16,
        "--train-data",
        tmp_path / "train.txt",
        "--eval-data",
        tmp_path / "train.txt",
        "--eval-samples",
        4,
        "--steps",
        1,
        "--train-batch-size",
        2,
        "--max-length",
        32,
        "--output",
        tmp_path / "s",
    ]
    assert main([str(a) for a in run_args]) == 0
    assert "Winner" in capsys.readouterr().out
    assert main([str(a) for a in run_args]) == 2  # exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([str(a) for a in [*run_args, "--resume"]]) == 0
    assert main([str(a) for a in [*base[:3], "--target-params", "5", "--dry-run"]]) == 2
    assert "No candidate shape" in capsys.readouterr().err
