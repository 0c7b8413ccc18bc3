"""`hf-minitron distill` and `correct-teacher` on tiny checkpoints: YAML + flags, resume, exports."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron.cli import main

from helpers import save_tiny

TEXT = "\n\n".join(f"The quick brown fox jumps over the lazy dog number {i}. " * 2 for i in range(40))


@pytest.fixture
def workspace(tmp_path):
    save_tiny(tmp_path / "teacher", seed=3)
    save_tiny(tmp_path / "student", seed=4, num_hidden_layers=2)
    (tmp_path / "train.txt").write_text(TEXT)
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXT.split("\n\n")[:4]))
    return tmp_path


def recipe(path, **values):
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "\n")
    return path


def test_distill_from_yaml_with_flag_override_and_resume(workspace, capsys):
    config = recipe(
        workspace / "distill.yaml",
        model_name_or_path=str(workspace / "student"),
        teacher_model_name_or_path=str(workspace / "teacher"),
        dataset_name=str(workspace / "train.txt"),
        eval_dataset_name=str(workspace / "eval.jsonl"),
        output_dir=str(workspace / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=64,
        logging_steps=1,
        save_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        report_to=[],
        gradient_checkpointing=False,
        intermediate_layer_pairs=["auto"],
        temperature=1.0,
    )
    assert main(["distill", "--config", str(config), "--temperature", "2.0"]) == 0
    student = AutoModelForCausalLM.from_pretrained(workspace / "run" / "student")
    assert student.config.num_hidden_layers == 2
    assert (workspace / "run" / "student" / "tokenizer.json").is_file()  # the teacher's tokenizer by default
    state = json.loads((workspace / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "kl" in h and "eval_kl" not in h]
    assert len(logged) == 4 and logged[0]["alpha"] == 0 and all(h["alpha"] > 0 for h in logged[1:])
    assert any("eval_lm_loss_gap" in h for h in state["log_history"])
    assert (workspace / "run" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    lines = (workspace / "run" / "distillation_log.jsonl").read_text().splitlines()
    assert "tokens_per_second" in json.loads(lines[-1])
    # Same folder again: refused unless resuming. A kill while checkpoint-4 was being saved (no
    # trainer_state.json yet): "last" falls back to checkpoint-2, removes checkpoint-4 and re-creates step 4.
    capsys.readouterr()
    assert main(["distill", "--config", str(config)]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    first = student.state_dict()
    (workspace / "run" / "checkpoint-4" / "trainer_state.json").unlink()
    assert main(["distill", "--config", str(config), "--temperature", "2.0", "--resume_from_checkpoint", "last"]) == 0
    assert (workspace / "run" / "checkpoint-4" / "trainer_state.json").is_file()
    again = AutoModelForCausalLM.from_pretrained(workspace / "run" / "student").state_dict()
    for name, tensor in first.items():
        torch.testing.assert_close(again[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_correct_teacher(workspace):
    args = [
        "correct-teacher",
        "--model_name_or_path",
        str(workspace / "teacher"),
        "--dataset_name",
        str(workspace / "train.txt"),
        "--output_dir",
        str(workspace / "tc"),
        "--learning_rate",
        "1e-3",
        "--max_steps",
        "3",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_length",
        "64",
        "--report_to",
        "none",
        "--gradient_checkpointing",
        "false",
        "--save_strategy",
        "no",
    ]
    assert main(args) == 0
    corrected = AutoModelForCausalLM.from_pretrained(workspace / "tc" / "corrected-teacher")
    original = AutoModelForCausalLM.from_pretrained(workspace / "teacher")
    assert not torch.equal(corrected.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)


def test_missing_learning_rate_and_missing_teacher(workspace, capsys):
    base = ["--dataset_name", str(workspace / "train.txt"), "--output_dir", str(workspace / "x")]
    assert main(["correct-teacher", "--model_name_or_path", str(workspace / "teacher"), *base]) == 2
    assert "explicit learning rate" in capsys.readouterr().err
    assert main(["distill", "--model_name_or_path", str(workspace / "student"), *base, "--report_to", "none"]) == 2
    assert "No teacher was given" in capsys.readouterr().err
    assert not (workspace / "x").exists()


RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_distill_reads_every_shipped_recipe_it_can_serve(recipe, tmp_path):
    """The distill section of a shipped recipe becomes `distill --config`'s settings, or is refused clearly."""
    from hf_minitron import MinitronError
    from hf_minitron.cli.recipe_options import distill_options
    from hf_minitron.cli.training import _parse
    from hf_minitron.distillation import DistillationConfig
    from hf_minitron.pipeline import load_recipe

    parsed = load_recipe(recipe)
    argv = ["--config", str(recipe), "--model_name_or_path", "pruned", "--output_dir", str(tmp_path)]
    section = parsed.distill or {}
    if not section or {"teacher_cache", "block_size"} & set(section) or section["dataset"] == "generated":
        with pytest.raises(MinitronError, match=r"no distill section|only `hf-minitron run` serves|generate_data"):
            _parse(argv, DistillationConfig, "student", distill_options)
        return
    args, script, model, _ = _parse(argv, DistillationConfig, "student", distill_options)
    assert model.model_name_or_path == "pruned" and args.teacher_model_name_or_path == parsed.teacher
    assert script.dataset_name == parsed.distill["dataset"] and args.max_steps == parsed.distill["max_steps"]
    assert args.learning_rate == parsed.distill["learning_rate"] and model.dtype == parsed.model_dtype


@pytest.mark.parametrize("config", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_processes == 8 and loaded.mixed_precision == "bf16"
