"""The command line on tiny checkpoints on disk, and every bad input: clear message, nothing written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_minitron import MinitronError, PruningConfig, estimate_importance, load_model, save_pruned_model
from hf_minitron.cli import main
from hf_minitron.model_folder import read_record

from helpers import logits, save_tiny, tiny_calibration, tiny_model

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.\n\n"
) * 20


@pytest.fixture
def workspace(tmp_path):
    save_tiny(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def run(*args) -> int:
    return main([str(a) for a in args])


def test_importance_then_prune_from_saved_scores(workspace, capsys):
    data = ["--data", workspace / "text.txt", "--num-samples", 8, "--seq-len", 32, "--batch-size", 4]
    assert (
        run(
            "importance", "--model", workspace / "model", *data, "--block-sizes", 1, 2, "--output", workspace / "scores"
        )
        == 0
    )
    assert {p.name for p in (workspace / "scores").iterdir()} == {
        ".hf_minitron-output.json",  # the marker: a folder hf_minitron made (and may replace with --overwrite)
        "importance.safetensors",
        "importance.json",
        "importance.png",
        "block_removal.png",
    }
    assert "Best block of 2 layers" in capsys.readouterr().out
    assert (
        run(
            "prune",
            "--model",
            workspace / "model",
            "--scores",
            workspace / "scores",
            "--hidden-size",
            36,
            "--num-hidden-layers",
            2,
            "--layer-selection",
            "lm_loss",
            "--output",
            workspace / "pruned",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "params w/o embeddings" in out and "hidden size" in out and "Dropped layers" in out
    assert "Reconstructed on" in out  # on by default, fitted on the --data text
    model = AutoModelForCausalLM.from_pretrained(workspace / "pruned")
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (36, 2)
    assert (workspace / "pruned" / "importance" / "importance.safetensors").is_file()
    assert (workspace / "pruned" / "tokenizer.json").is_file()
    report = json.loads((workspace / "pruned" / "reconstruction.json").read_text())
    assert [fit.get("span") for fit in report["layers"] if "layer" in fit and fit["layer"] != "final_norm"]
    record = load_model(str(workspace / "pruned")).config.minitron_pruning  # from minitron_pruning.json
    assert "minitron_pruning" not in json.loads((workspace / "pruned" / "config.json").read_text())
    assert record["reconstruction"]["settings"]["span_method"] == "refit"
    # Provenance names the source by its folder name only: no local path leaks into what gets published.
    assert record["source_model"] == "model"
    written_files = ("config.json", "minitron_pruning.json", "importance/importance.json", "pruning_config.json")
    for written in (*written_files, "reconstruction.json"):
        assert str(workspace) not in (workspace / "pruned" / written).read_text()


def test_prune_from_yaml_config_with_flag_override(workspace):
    recipe = workspace / "prune.yaml"
    recipe.write_text(
        f"model: {workspace / 'model'}\ndata: {workspace / 'text.txt'}\nnum_samples: 4\n"
        "seq_len: 32\nintermediate_size: 40\nnum_attention_heads: 3\nnum_key_value_heads: 1\n"
    )
    out = workspace / "out"
    assert run("prune", "--config", recipe, "--intermediate-size", 64, "--no-reconstruct", "--output", out) == 0
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (64, 3, 1)
    assert PruningConfig.from_pretrained(out).intermediate_size == 64
    assert "reconstruction" not in read_record(out) and not (out / "reconstruction.json").exists()


def test_console_script_is_installed(workspace):
    script = Path(sys.executable).with_name("hf-minitron")
    result = subprocess.run([str(script), "prune", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--hidden-size" in result.stdout


BAD_INPUTS = [
    (["--hidden-size", 1000], "larger than the model's 48"),
    (["--hidden-size", 40], "not a multiple of num_attention_heads=6 .*try 36"),
    (["--num-attention-heads", 5], "not a multiple of num_key_value_heads=2"),
    (["--num-attention-heads", 4, "--num-key-value-heads", 1], "4 per group, more than the model's 3"),
    (["--layers-to-drop", 0, 9], r"outside 0\.\.3"),
    (["--hidden-size", 36, "--seq-len", 5000], "too short"),
    (["--hidden-size", 36, "--data", "EMPTY"], "holds no text"),
    (["--hidden-size", 36, "--data", "nowhere/text.txt"], "does not exist"),
    (["--hidden-size", 36, "--scores", "nowhere"], "No importance scores"),
    (["--model", "./nowhere/model", "--hidden-size", 36], "Model folder './nowhere/model' does not exist"),
    (["--model", "GPT2", "--hidden-size", 36], "'gpt2' is not supported"),
    (["--config", "BADKEY"], "Unknown key"),
    (["--config", "BADCHOICE"], "the choices are mean, l2, var"),
    (["--config", "BADYAML"], "is not valid YAML"),
    (["--hidden-size", 36, "--data", "LATIN1"], "is not UTF-8 text"),
    (["--hidden-size", 36, "--data", "BINARY"], "is not UTF-8 text"),
    (["--hidden-size", 36, "--data", "BADJSONL"], "is not valid JSON Lines: line 2"),
    (["--hidden-size", 36, "--dtype", "int8"], "dtype 'int8' cannot hold a model's weights"),
    (["--hidden-size", 36, "--batch-size", 0], "batch_size must be a positive integer"),
    (["--hidden-size", 36, "--num-samples", 0], r"num_samples \(0\) must be ≥ 1"),
    (["--hidden-size", 36, "--reconstruction-damping", -1], "damping must be a number ≥ 0"),
    (["--hidden-size", -3], "hidden_size must be a positive integer"),
    (["--num-hidden-layers", 0], "num_hidden_layers must be a positive integer"),
    (["--layers-to-drop", 0, 1, 2, 3], "removes all 4 layers"),
    ([], "No pruning target was given"),
    (["--pruning-config", "PRUNINGCONFIG", "--hidden-size", 36], "both set the targets"),
    (["--model", "TRUNCATED", "--hidden-size", 36], "is damaged: its weights cannot be read"),
    (["--model", "WRONGTYPE", "--hidden-size", 36], "is damaged: its config.json cannot be read"),
    (["--model", "NOTJSON", "--hidden-size", 36], "is damaged: its config.json cannot be read"),
]


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_writes_nothing(workspace, capsys, extra, message):
    (workspace / "empty.txt").write_text("\n\n  \n")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(workspace / "gpt2")
    (workspace / "badkey.yaml").write_text("hidden_size: 36\nhiden_size: 24\n")
    (workspace / "badchoice.yaml").write_text("hidden_size: 36\nbatch_agg: median\n")
    (workspace / "badyaml.yaml").write_text("hidden_size: [36\n")
    (workspace / "latin1.txt").write_bytes(("café au lait, " * 40).encode("latin-1"))
    (workspace / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (workspace / "bad.jsonl").write_text('{"text": "fine"}\n{"text": cut short\n')
    (workspace / "pruning_config.json").write_text(json.dumps({"hidden_size": 24}))
    damaged = {}
    for name, damage in (
        ("truncated", lambda folder: (folder / "model.safetensors").write_bytes(b"\x10" * 100)),
        ("wrongtype", lambda folder: _edit_config(folder, num_hidden_layers="four")),
        ("notjson", lambda folder: (folder / "config.json").write_text("{not json")),
    ):
        damaged[name.upper()] = workspace / name
        save_tiny(workspace / name)
        damage(workspace / name)
    substitutions = {
        "EMPTY": workspace / "empty.txt",
        "GPT2": workspace / "gpt2",
        "BADKEY": workspace / "badkey.yaml",
        "BADCHOICE": workspace / "badchoice.yaml",
        "BADYAML": workspace / "badyaml.yaml",
        "LATIN1": workspace / "latin1.txt",
        "BINARY": workspace / "binary.txt",
        "BADJSONL": workspace / "bad.jsonl",
        "PRUNINGCONFIG": workspace / "pruning_config.json",
        **damaged,
    }
    extra = [substitutions.get(a, a) for a in extra]
    args = [
        "prune",
        "--model",
        workspace / "model",
        "--data",
        workspace / "text.txt",
        "--num-samples",
        4,
        "--seq-len",
        32,
        *extra,
        "--output",
        workspace / "out",
    ]
    before = sorted(p.name for p in workspace.iterdir())
    capsys.readouterr()
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in workspace.iterdir()) == before  # no output, no partial folder


def test_existing_output_is_kept_unless_overwrite(workspace, capsys):
    args = [
        "prune",
        "--model",
        workspace / "model",
        "--data",
        workspace / "text.txt",
        "--num-samples",
        4,
        "--seq-len",
        32,
        "--hidden-size",
        36,
        "--output",
        workspace / "out",
    ]
    assert run(*args) == 0
    first = (workspace / "out" / "model.safetensors").stat().st_mtime_ns
    assert run(*args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (workspace / "out" / "model.safetensors").stat().st_mtime_ns == first
    assert run(*args, "--overwrite") == 0  # made by hf_minitron: replaced
    assert (workspace / "out" / "model.safetensors").stat().st_mtime_ns != first
    # A folder hf_minitron did not make is never replaced, --overwrite or not.
    (workspace / "mine").mkdir()
    (workspace / "mine" / "keep.txt").write_text("mine")
    assert run(*args[:-1], workspace / "mine", "--overwrite") == 2
    assert "did not make (keep.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in (workspace / "mine").iterdir()) == ["keep.txt"]


def test_unknown_aggregation_in_the_api():
    with pytest.raises(MinitronError, match=r"Unknown batch aggregation 'median'.*mean, l2, var"):
        estimate_importance(tiny_model(), calibration_data=tiny_calibration(), batch_aggregation="median")


def test_impossible_targets_leave_the_model_untouched(input_ids):
    model = tiny_model()
    before = logits(model, input_ids)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), progress=False)
    with pytest.raises(MinitronError, match="larger than"):
        from hf_minitron import prune_model

        prune_model(model, PruningConfig(hidden_size=36, intermediate_size=500), scores)
    assert torch.equal(logits(model, input_ids), before)


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    model = tiny_model()

    def fail_midway(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_pruned_model(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_prune_reads_every_shipped_recipe_as_its_prune_stage(recipe):
    """Each student a shipped recipe prunes becomes exactly the pruning config `prune --config` uses; a
    recipe that calibrates on the teacher's answers (which only its pipeline writes) is refused at once."""
    from hf_minitron.cli import build_parser
    from hf_minitron.cli.common import parse_with_config
    from hf_minitron.cli.prune import pruning_config_from_args, reconstruction_config_from_args
    from hf_minitron.cli.recipe_options import prune_options
    from hf_minitron.pipeline import load_recipe
    from hf_minitron.pipeline.recipe import calibrates_on_generated

    parsed = load_recipe(recipe)
    for name, targets in parsed.students.items():
        argv = ["--config", str(recipe), "--student", name, "--output", "unused"]
        if calibrates_on_generated(parsed):
            with pytest.raises(MinitronError, match="calibration data includes 'generated'"):
                parse_with_config(build_parser()[1]["prune"], argv, prune_options)
            continue
        args = parse_with_config(build_parser()[1]["prune"], argv, prune_options)
        assert pruning_config_from_args(args) == targets
        assert reconstruction_config_from_args(args) == parsed.reconstruction
        calibration = parsed.calibration
        assert (args.model, args.dtype, args.data, args.num_samples, args.seq_len, args.downstream_task) == (
            parsed.teacher,
            parsed.model_dtype,
            calibration.data,
            calibration.num_samples,
            calibration.seq_len,
            calibration.downstream_task,
        )


def test_prune_depth_by_downstream_task(workspace):
    import json

    task = workspace / "task.jsonl"
    task.write_text(
        "\n".join(
            json.dumps({"context_options": [f"Ann {i}", f"Bob {i}"], "continuation": "left.", "gold": i % 2})
            for i in range(8)
        )
    )
    args = [
        "prune",
        "--model",
        workspace / "model",
        "--data",
        workspace / "text.txt",
        "--num-samples",
        4,
        "--seq-len",
        32,
        "--num-hidden-layers",
        2,
        "--layer-selection",
        "downstream",
        "--downstream-task",
        task,
        "--output",
        workspace / "deep",
    ]
    assert run(*args) == 0
    dropped = read_record(workspace / "deep")["dropped_layers"]
    assert len(dropped) == 2 and dropped[1] == dropped[0] + 1
    assert (workspace / "deep" / "importance" / "block_removal.png").is_file()
