"""A tiny pipeline killed (SIGKILL) at several points and resumed ends with the weights of an uninterrupted
run; a resume re-runs what was damaged or changed; no token reaches any file the tool writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_minitron.hub import publish
from hf_minitron.pipeline import parse_recipe, run_recipe, runner
from hf_minitron.pipeline.records import read_stage, teacher_identity

from helpers import char_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE_TOKEN = "sentinel-recipe-token-5f3a9c71"  # a hub_token given in the recipe
ENV_TOKEN = "sentinel-environment-token-8d1e2b40"  # HF_TOKEN in the environment
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def make_inputs(folder: Path) -> dict:
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_model().save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    (folder / "text.txt").write_text("\n\n".join(f"Sentence number {i} about small numbers." for i in range(80)))
    rows = [json.dumps({"prompt": f"Is {i} even?", "response": "yes" if i % 2 == 0 else "no"}) for i in range(8)]
    (folder / "sft.jsonl").write_text("\n".join(rows) + "\n")
    trainer = {"per_device_train_batch_size": 2, "max_length": 32, "gradient_checkpointing": False}
    trainer.update(save_steps=1, logging_steps=1, disable_tqdm=True, hub_token=RECIPE_TOKEN)
    values = {
        "name": "Tiny",
        "teacher": str(folder / "teacher"),
        "calibration": {"data": str(folder / "text.txt"), "num_samples": 4, "seq_len": 32, "batch_size": 2},
        "students": {"width": {"hidden_size": 36, "intermediate_size": 48}},
        "distill": {"dataset": str(folder / "text.txt"), "max_steps": 4, "learning_rate": 1e-3, **trainer},
        "align": {"dataset": str(folder / "sft.jsonl"), "max_steps": 1, **trainer},
        "evaluate": {"perplexity_data": str(folder / "text.txt"), "seq_len": 32, "max_tokens": 64, "throughput": False},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(values))
    return values


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Inputs (outside the scanned folders) and an uninterrupted run, with tokens in the recipe and environment."""
    folder = tmp_path_factory.mktemp("crash")
    values = make_inputs(folder / "inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", ENV_TOKEN)
        run_recipe(parse_recipe(values), folder / "runs" / "reference", publish=False)
    return folder, values


def weights(run: Path) -> dict:
    return load_file(str(run / "distill" / "width" / "model.safetensors"))


def assert_same_weights(run: Path, reference: Path) -> None:
    expected = weights(reference)
    for name, tensor in weights(run).items():
        torch.testing.assert_close(tensor, expected[name], msg=name)  # fp32 tolerance
    distilled = [json.loads((folder / "distill" / "stage.json").read_text())["record"] for folder in (run, reference)]
    assert distilled[0]["students"]["width"]["steps"] == distilled[1]["students"]["width"]["steps"] == 4
    assert distilled[0]["students"]["width"]["tokens"] == distilled[1]["students"]["width"]["tokens"]


def stage_times(run: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/stage.json")}


def run_until_killed(workspace: Path, run: Path, point: str, resume: bool) -> str:
    """Run the recipe in a subprocess, SIGKILL it once it reports reaching ``point``; returns its stderr."""
    log = workspace / "logs" / f"{point.replace('/', '_')}.log"
    log.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "hf_minitron.cli", "run", str(workspace / "inputs" / "recipe.yaml")]
    command += ["-o", str(run), *(["--resume"] if resume else [])]
    env = {**os.environ, "HF_MINITRON_PAUSE_AT": point, "HF_TOKEN": ENV_TOKEN, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    while f"paused at {point}" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended (rc {process.wait()}) before reaching {point}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return log.read_text()


def test_killed_runs_resume_to_the_uninterrupted_weights(workspace, capsys):
    folder, values = workspace
    run = folder / "runs" / "killed"
    checkpoints = run / "checkpoints" / "distill" / "width"

    run_until_killed(folder, run, "stage:importance", resume=False)  # during importance
    assert list(run.glob(".importance.partial-*")) and not (run / "importance").exists()

    run_until_killed(folder, run, "checkpoint-weights:checkpoint-2", resume=True)  # during a checkpoint save
    assert not list(run.glob(".importance.partial-*"))  # the killed run's temporary folder went
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").is_file()
    assert (checkpoints / "checkpoint-2" / "model.safetensors").is_file()
    assert not (checkpoints / "checkpoint-2" / "trainer_state.json").exists()

    log = run_until_killed(folder, run, "train-step:3", resume=True)  # mid-distillation
    assert "continuing from width/checkpoint-1" in log  # the incomplete checkpoint-2 was passed over
    assert "importance: finished earlier with the same inputs, outputs verified, skipped" in log
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (checkpoints / "checkpoint-3").exists()

    log = run_until_killed(folder, run, "save:distill/width", resume=True)  # during the export
    assert "continuing from width/checkpoint-2" in log
    staged = list(run.glob(".distill.partial-*/.width.partial-*/model.safetensors"))
    assert staged and not (run / "distill").exists()

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", ENV_TOKEN)
        run_recipe(parse_recipe(values), run, resume=True, publish=False)
    err = capsys.readouterr().err
    assert "continuing from width/checkpoint-4" in err
    assert err.count("outputs verified, skipped") == 2  # importance and prune
    leftovers = [p for p in (folder / "runs").rglob("*") if ".partial-" in p.name or p.name.endswith(".lock")]
    assert leftovers == []
    assert_same_weights(run, folder / "runs" / "reference")
    assert stage_times(run).keys() == stage_times(folder / "runs" / "reference").keys()


def test_resume_reruns_damaged_outputs(workspace, tmp_path, capsys):
    folder, values = workspace
    run = tmp_path / "run"
    shutil.copytree(folder / "runs" / "reference", run)
    before = stage_times(run)
    pruned = run / "prune" / "width" / "model.safetensors"
    pruned.write_bytes(pruned.read_bytes()[:1000])  # cut short
    (run / "distill" / "width" / "model.safetensors").write_bytes(b"")  # emptied
    (run / "align" / "width" / "model.safetensors").unlink()  # deleted
    capsys.readouterr()
    run_recipe(parse_recipe(values), run, resume=True, publish=False)
    err = capsys.readouterr().err
    assert "prune: its output file width/model.safetensors has 1000 bytes" in err
    assert "distill: its output file width/model.safetensors has 0 bytes" in err
    assert "align: its output file width/model.safetensors is missing" in err
    assert "continuing from width/checkpoint-4" in err  # the finished checkpoints were kept
    assert "continuing from width/checkpoint-1" in err  # the alignment's too
    after = stage_times(run)
    assert after["importance"] == before["importance"] and after["prune"] != before["prune"]
    assert after["distill"] != before["distill"]
    assert_same_weights(run, folder / "runs" / "reference")


def test_resume_reruns_everything_after_the_teacher_changes(workspace, tmp_path, monkeypatch, capsys):
    folder, values = workspace
    teacher = folder / "inputs" / "teacher"
    recipe = parse_recipe(values)
    identity = teacher_identity(recipe)
    assert identity != teacher_identity(parse_recipe({**values, "teacher": "org/other-teacher"}))
    run = tmp_path / "run"
    shutil.copytree(folder / "runs" / "reference", run)
    rerun = []  # which stages run again; running them is what the other tests check

    def record_rerun(stage, run, folder, results, fingerprint):
        rerun.append(stage.name)
        return read_stage(folder)["record"]

    monkeypatch.setattr(runner, "_run_stage", record_rerun)
    original = {p: p.read_bytes() for p in teacher.iterdir()}
    mtimes = {p: p.stat().st_mtime_ns for p in original}
    try:
        tiny_model(seed=1).save_pretrained(teacher)  # the same folder now holds another teacher
        assert teacher_identity(recipe) != identity
        capsys.readouterr()
        run_recipe(recipe, run, resume=True, publish=False)
    finally:  # the same teacher again for the other tests
        for path in set(teacher.iterdir()) - set(original):
            path.unlink()
        for path, data in original.items():
            path.write_bytes(data)
            os.utime(path, ns=(mtimes[path], mtimes[path]))
    assert "importance: inputs changed since it ran" in capsys.readouterr().err
    assert rerun == ["importance", "prune", "distill", "align", "evaluate", "model_card"]
    assert not list((run / "checkpoints").rglob("checkpoint-*"))  # the old teacher's are never resumed from


def test_hub_revision_is_part_of_the_teacher_identity(tmp_path, monkeypatch, workspace):
    _, values = workspace
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    recipe = parse_recipe({**values, "teacher": "org/teacher"})
    ref = tmp_path / "models--org--teacher" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("1111111")
    first = teacher_identity(recipe)
    ref.write_text("2222222")  # the Hub copy was updated and downloaded again
    assert first["revision"] == "1111111" and teacher_identity(recipe)["revision"] == "2222222"


def test_no_token_in_any_file_written(workspace, monkeypatch):
    folder, _ = workspace
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    reference = folder / "runs" / "reference"
    dry = folder / "runs" / "dry-run"
    for _ in range(2):  # the second dry run replaces the first (and nothing else)
        plan = publish(reference, "me/Tiny", dry_run=True, dry_run_dir=dry)
    assert [entry["repo_id"] for entry in plan] == ["me/Tiny-Width-Base", "me/Tiny-Width-Instruct"]
    assert not list((dry / "me__Tiny-Width-Base").glob(".hf_minitron*"))  # the marker is not uploaded
    written = [p for p in (folder / "runs").rglob("*") if p.is_file()] + list((folder / "logs").glob("*"))
    assert any(p.name == "training_args.bin" for p in written) and any(p.name == "stage.json" for p in written)
    for path in written:
        data = path.read_bytes()
        assert RECIPE_TOKEN.encode() not in data and ENV_TOKEN.encode() not in data, path
    args = torch.load(next(reference.rglob("training_args.bin")), weights_only=False)
    assert args.hub_token is None
    assert yaml.safe_load((reference / "recipe.yaml").read_text())["distill"]["hub_token"] == "<redacted>"
