"""One recipe schema for every experiment: a prune-only run, a distill-only run from an existing pruned
folder, and `prune --config` / `distill --config` reading the same pipeline recipe."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError
from hf_minitron.cli import main
from hf_minitron.model_folder import read_record
from hf_minitron.pipeline import parse_recipe, run_recipe

from helpers import char_tokenizer, tiny_model

TEXT = "\n\n".join(f"The number {i} is {'even' if i % 2 == 0 else 'odd'} and small." for i in range(120))
DISTILL = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 32, "packing": True}
QUIET = {"save_strategy": "no", "disable_tqdm": True}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe-forms")
    tiny_model().save_pretrained(folder / "teacher")
    char_tokenizer().save_pretrained(folder / "teacher")
    (folder / "text.txt").write_text(TEXT)
    return folder


def prune_only(folder: Path) -> dict:
    """A recipe without a distill section: importance, pruning and re-fit, evaluation, a card."""
    return {
        "name": "Tiny",
        "teacher": str(folder / "teacher"),
        "calibration": {"data": str(folder / "text.txt"), "num_samples": 4, "seq_len": 32, "batch_size": 2},
        "students": {"width": {"hidden_size": 36, "intermediate_size": 48}},
        "evaluate": {
            "perplexity_data": str(folder / "text.txt"),
            "seq_len": 32,
            "max_tokens": 128,
            "throughput": False,
        },
    }


def distill_only(folder: Path, pruned: Path) -> dict:
    """A recipe whose student already exists: nothing is pruned, the folder is distilled as it is."""
    return {
        "name": "Tiny",
        "teacher": str(folder / "teacher"),
        "students": {"width": {"model": str(pruned)}},
        "distill": {"dataset": str(folder / "text.txt"), **DISTILL, **QUIET},
        "evaluate": {
            "perplexity_data": str(folder / "text.txt"),
            "seq_len": 32,
            "max_tokens": 128,
            "throughput": False,
        },
    }


def write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pruned_run(inputs):
    return run_recipe(parse_recipe(prune_only(inputs)), inputs / "prune-run")


def test_prune_only_recipe_writes_a_loadable_pruned_model_and_its_card(inputs, pruned_run):
    run = inputs / "prune-run"
    assert pruned_run["stages"] == ["importance", "prune", "evaluate", "model_card"]
    assert not (run / "distill").exists()
    pruned = AutoModelForCausalLM.from_pretrained(run / "prune" / "width")
    assert pruned.config.hidden_size == 36 and read_record(run / "prune" / "width")["reconstruction"]
    assert set(pruned_run["results"]) == {"teacher", "width pruned"}
    assert pruned_run["distillation_tokens"] == {}
    assert "ppl pruned + re-fit" in pruned_run["table"] and "distilled" not in pruned_run["table"]
    packaged = run / "models" / "Tiny-Width-Base"
    ids = torch.randint(3, 90, (1, 12))
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(packaged)(ids).logits, pruned(ids).logits)
    card = ModelCard.load(packaged / "README.md")
    assert "**width-pruned**" in card.content and "No training after pruning" in card.content
    assert "Distillation" not in card.content and "distillation" not in card.data.tags


def test_prune_command_reads_the_same_recipe_and_makes_the_same_model(inputs, pruned_run, capsys):
    """`prune --config RECIPE` is the recipe's prune stage: same targets, calibration and re-fit."""
    recipe = write(inputs / "prune-only.yaml", prune_only(inputs))
    assert main(["prune", "--config", str(recipe), "--output", str(inputs / "pruned-by-cli")]) == 0
    by_cli = AutoModelForCausalLM.from_pretrained(inputs / "pruned-by-cli").state_dict()
    by_run = AutoModelForCausalLM.from_pretrained(inputs / "prune-run" / "prune" / "width").state_dict()
    assert by_cli.keys() == by_run.keys()
    for name, tensor in by_run.items():
        torch.testing.assert_close(by_cli[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    two = prune_only(inputs)
    two["students"]["depth"] = {"num_hidden_layers": 2}
    two_students = write(inputs / "two-students.yaml", two)
    out = str(inputs / "unused")
    assert main(["prune", "--config", str(two_students), "--output", out]) == 2
    assert "several students (width, depth)" in capsys.readouterr().err
    assert main(["prune", "--config", str(two_students), "--student", "tall", "--output", out]) == 2
    assert "no such student" in capsys.readouterr().err
    assert main(["prune", "--config", str(recipe), "--student", "width", "--no-reconstruct", "-o", out]) == 0
    assert "reconstruction" not in read_record(out)  # flags win
    assert main(["importance", "--config", str(recipe), "--output", str(inputs / "scores")]) == 2
    assert "is a pipeline recipe" in capsys.readouterr().err


def test_distill_only_recipe_trains_an_existing_pruned_folder(inputs, pruned_run):
    pruned = inputs / "prune-run" / "prune" / "width"
    result = run_recipe(parse_recipe(distill_only(inputs, pruned)), inputs / "distill-run")
    run = inputs / "distill-run"
    assert result["stages"] == ["distill", "evaluate", "model_card"]
    assert not (run / "importance").exists() and not (run / "prune").exists()
    assert result["distillation_tokens"]["width"] > 0
    assert set(result["results"]) == {"teacher", "width pruned", "width distilled"}
    distilled = AutoModelForCausalLM.from_pretrained(run / "distill" / "width")
    assert distilled.config.hidden_size == 36
    assert not torch.equal(distilled.lm_head.weight, AutoModelForCausalLM.from_pretrained(pruned).lm_head.weight)
    packaged = run / "models" / "Tiny-Width-Base"
    assert (packaged / "pruning_config.json").is_file()
    # The card describes the pruning from the record it left in the folder's config.json.
    text = ModelCard.load(packaged / "README.md").content
    assert "**width-pruned and distilled**" in text and "**Reconstruction** without training" in text
    assert "L2 over the batch, mean over the sequence" in text and "| hidden size | 48 | 36 |" in text
    facts = json.loads((packaged / "card_facts.json").read_text())
    assert facts["importance"]["calibration"].startswith("4 samples of up to 32 tokens")


def test_distill_command_reads_a_distill_only_recipe(inputs, pruned_run, capsys):
    pruned = inputs / "prune-run" / "prune" / "width"
    recipe = write(inputs / "distill-only.yaml", distill_only(inputs, pruned))
    output = inputs / "distill-by-cli"
    assert main(["distill", "--config", str(recipe), "--output_dir", str(output), "--max_steps", "1"]) == 0
    student = AutoModelForCausalLM.from_pretrained(output / "student")
    assert student.config.hidden_size == 36
    assert not torch.equal(student.lm_head.weight, AutoModelForCausalLM.from_pretrained(pruned).lm_head.weight)

    prune_here = write(
        inputs / "prune-and-distill.yaml", {**prune_only(inputs), "distill": distill_only(inputs, pruned)["distill"]}
    )
    assert main(["distill", "--config", str(prune_here), "--output_dir", str(inputs / "x")]) == 2
    assert "is pruned by the recipe" in capsys.readouterr().err and not (inputs / "x").exists()
    cached = distill_only(inputs, pruned)
    cached["distill"].update(packing=False, teacher_cache={"top_k": 4})
    assert (
        main(["distill", "--config", str(write(inputs / "cached.yaml", cached)), "--output_dir", str(inputs / "x")])
        == 2
    )
    assert "only `hf-minitron run` serves" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v["students"]["width"].update(hidden_size=3), "'students.width': 'model' names a student"),
        (lambda v: v["students"].update(width={"model": 3}), "'model' must be the path of a model folder"),
        (lambda v: v["students"].update(width=[36]), "'students.width': must be a mapping"),
        (lambda v: v["students"].update(wide={"hidden_size": -1}), "'students.wide': PruningConfig.hidden_size"),
        (lambda v: v["students"].update(wide={"hidden": 36}), "'students.wide': invalid targets"),
        (lambda v: v.pop("distill"), "'students.width': names an existing model, but the recipe has no distill"),
        (lambda v: v.update(align={"dataset": "x.jsonl"}) or v.pop("distill"), "'align': aligns the distilled"),
        (lambda v: v["distill"].update(max_steps="two"), "'distill': 'max_steps' must be int"),
    ],
)
def test_bad_student_forms_are_refused_with_their_section(tmp_path, edit, message):
    values = distill_only(tmp_path, tmp_path / "pruned")
    edit(values)
    with pytest.raises(MinitronError, match=message):
        parse_recipe(values)


def test_a_missing_student_folder_is_refused_before_the_run_starts(tmp_path):
    recipe = parse_recipe(distill_only(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(MinitronError, match=r"'.*nowhere' is not a model folder"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
