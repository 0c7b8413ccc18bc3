"""The pipeline on a tiny model: every stage, resume and reruns, bad recipes, model cards, publishing."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import LocalHub
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError
from hf_minitron.cli import main
from hf_minitron.cli.demo import demo_recipe
from hf_minitron.evaluation.serving import check_serving_config
from hf_minitron.hub import publish
from hf_minitron.model_folder import read_record
from hf_minitron.pipeline import DEMO_RECIPE, parse_recipe, run_recipe

from helpers import SHARED_DATA, char_tokenizer, tiny_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
STAGES = ["importance", "prune", "distill", "align", "evaluate", "quantize", "model_card"]


def make_inputs(folder: Path) -> dict:
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_model().save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    (folder / "text.txt").write_text(
        "\n\n".join(f"The number {i} is {'even' if i % 2 == 0 else 'odd'} and small." for i in range(200))
    )
    rows = [json.dumps({"prompt": f"Is {i} even?", "response": "yes" if i % 2 == 0 else "no"}) for i in range(20)]
    (folder / "sft.jsonl").write_text("\n".join(rows) + "\n")
    return {
        "name": "Tiny-Minitron",
        "teacher": str(folder / "teacher"),
        "calibration": {
            "data": str(folder / "text.txt"),
            "num_samples": 4,
            "seq_len": 32,
            "batch_size": 2,
            "block_search_samples": 2,
        },
        "students": {
            "width": {"hidden_size": 36, "intermediate_size": 48},
            "depth": {"num_hidden_layers": 2, "layer_selection": "lm_loss"},
        },
        "distill": {
            "dataset": str(folder / "text.txt"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "max_length": 32,
            "packing": True,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
        "align": {
            "dataset": str(folder / "sft.jsonl"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "max_length": 32,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
        "evaluate": {
            "perplexity_data": str(folder / "text.txt"),
            "seq_len": 32,
            "max_tokens": 256,
            "sample_prompts": ["Is 4 even?"],
            "max_new_tokens": 5,
            "tasks": {"arc_easy": str(SHARED_DATA / "eval" / "arc_easy.jsonl")},
            "limit": 4,
        },
        "quantize": {"schemes": ["int8"]},
        "publish": {"repo_id": "me/Tiny", "private": True},
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    values = make_inputs(folder)
    result = run_recipe(parse_recipe(values), folder / "run", publish=False)
    return folder, values, result


def stage_times(run: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/stage.json")}


def test_every_stage_writes_its_folder_and_the_summary(finished_run):
    folder, _, result = finished_run
    run = folder / "run"
    assert result["stages"] == STAGES
    for name in ("importance", "prune/width", "prune/depth", "distill/width", "align/depth", "evaluate"):
        assert (run / name).is_dir()
    for name in ("width", "depth"):  # both students re-fitted on the calibration text before distillation
        assert json.loads((run / "prune" / name / "reconstruction.json").read_text())["layers"]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["results"]) == {"teacher"} | {
        f"{s} {stage}" for s in ("width", "depth") for stage in ("pruned", "distilled", "aligned")
    }
    assert summary["distillation_tokens"]["width"] > 0
    assert "ppl distilled" in result["table"] and "width" in result["table"]
    assert set(summary["generations"]) == {"teacher", "width", "depth"}
    quantized = summary["quantized"]["width"]
    assert set(quantized) == {"unquantized", "int8"} and quantized["int8"]["bytes"] < quantized["unquantized"]["bytes"]
    assert "Quantized variants of width" in result["table"]
    assert AutoModelForCausalLM.from_pretrained(run / "quantize" / "width-int8").config.hidden_size == 36
    models = sorted(p.name for p in (run / "models").iterdir() if p.is_dir())
    assert models == ["Tiny-Depth-Base", "Tiny-Depth-Instruct", "Tiny-Width-Base", "Tiny-Width-Instruct"]
    packaged = run / "models" / "Tiny-Width-Base"
    model = AutoModelForCausalLM.from_pretrained(packaged)
    distilled = AutoModelForCausalLM.from_pretrained(run / "distill" / "width")
    ids = torch.randint(3, 90, (1, 12))
    torch.testing.assert_close(model(ids).logits, distilled(ids).logits)
    assert model.config.hidden_size == 36
    # Every folder the run wrote serves as it is: standard config.json, the pruning record beside it.
    assert json.loads((run / "evaluate" / "stage.json").read_text())["record"]["serving_problems"] == {}
    for written in ("prune/width", "distill/width", "align/depth", "quantize/width-int8", "models/Tiny-Width-Base"):
        assert check_serving_config(run / written) == [], written
        assert read_record(run / written)["pruned_shape"]["hidden_size"] in (36, 48), written
    for file in (
        "minitron_pruning.json",
        "pruning_config.json",
        "importance/importance.safetensors",
        "importance/importance.png",
        "training_curves.png",
        "README.md",
    ):
        assert (packaged / file).is_file(), file


def test_model_card_renders_valid_metadata_from_the_run(finished_run):
    folder, _, _ = finished_run
    run = folder / "run"
    results = json.loads((run / "evaluate" / "results.json").read_text())
    for kind, key in (("Base", "width distilled"), ("Instruct", "width aligned")):
        card = ModelCard.load(run / "models" / f"Tiny-Width-{kind}" / "README.md")
        values = {(r.metric_type, r.dataset_type): r.metric_value for r in card.data.eval_results}
        assert values[("perplexity", "text")] == pytest.approx(results[key]["perplexity"]["perplexity"], abs=1e-4)
        assert values[("acc", "allenai/ai2_arc")] == pytest.approx(100 * results[key]["tasks"]["arc_easy"]["acc"])
        assert card.data.license == "other" and card.data.library_name == "transformers"
        text = card.content
        assert "| layers | 4 | 4 |" in text and "| hidden size | 48 | 36 |" in text
        assert "**Reconstruction** without training" in text and "L2 over the batch, mean over the sequence" in text
        assert str(folder) not in text and "/tmp" not in text
    instruct = ModelCard.load(run / "models" / "Tiny-Width-Instruct" / "README.md")
    assert instruct.data.base_model == "me/Tiny-Width-Base"
    assert "Alignment" in instruct.content and "20 rows of sft.jsonl" in instruct.content
    assert "### Quantized variants" in instruct.content and "| int8 |" in instruct.content
    base = ModelCard.load(run / "models" / "Tiny-Width-Base" / "README.md")
    assert base.data.base_model is None  # a local teacher: no repository to point to
    assert "`teacher`" in base.content
    for kind in ("Base", "Instruct"):  # the depth student says which layers went and how they were chosen
        depth = ModelCard.load(run / "models" / f"Tiny-Depth-{kind}" / "README.md").content
        assert "Layers removed from the teacher: [" in depth
        assert "(the contiguous block whose removal raised LM loss on the calibration text least)." in depth


def test_resume_skips_finished_stages_and_reruns_what_changed(finished_run, tmp_path, capsys):
    folder, values, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    before = stage_times(run)
    with pytest.raises(MinitronError, match="already holds a pipeline run"):
        run_recipe(parse_recipe(values), run, publish=False)
    run_recipe(parse_recipe(values), run, resume=True, publish=False)
    assert stage_times(run) == before
    assert capsys.readouterr().err.count("skipped") == len(STAGES)

    changed = json.loads(json.dumps(values))
    changed["distill"]["learning_rate"] = 1e-3
    run_recipe(parse_recipe(changed), run, resume=True, publish=False)
    after = stage_times(run)
    assert after["importance"] == before["importance"] and after["prune"] == before["prune"]
    assert all(after[s] != before[s] for s in ("distill", "align", "evaluate", "quantize", "models"))
    assert "inputs changed since it ran" in capsys.readouterr().err

    (folder / "text.txt").write_text((folder / "text.txt").read_text() + "\n\nOne more line of text.")
    run_recipe(parse_recipe(changed), run, resume=True, publish=False)
    assert stage_times(run)["importance"] != after["importance"]

    latest = stage_times(run)
    run_recipe(parse_recipe(changed), run, from_stage="evaluate", publish=False)
    rerun = stage_times(run)
    assert rerun["distill"] == latest["distill"] and rerun["evaluate"] != latest["evaluate"]

    shutil.rmtree(run / "prune")  # a missing stage output is made again, never assumed
    run_recipe(parse_recipe(changed), run, resume=True, publish=False)
    assert (run / "prune" / "width" / "config.json").is_file()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v.update(extra=1), "unknown key\\(s\\) extra"),
        (lambda v: v["distill"].update(learning_rat=1e-4), "'distill': unknown key\\(s\\) learning_rat"),
        (lambda v: v["calibration"].update(num_samples="many"), "'num_samples' must be int"),
        (lambda v: v["students"]["width"].update(hidden=4), "students.width"),
        (lambda v: v["distill"].update(dataset="generated"), "no generate_data section"),
        (lambda v: v["distill"].update(dataset={"generated": 1, "t.txt": 1}, block_size=16), "no generate_data"),
        (lambda v: v["distill"].update(dataset={"a.txt": 1, "b.txt": 1}), "mixes sources.*add a block_size"),
        (lambda v: v["distill"].update(dataset={"a.txt": 0, "b.txt": 1}, block_size=16), "positive share"),
        (lambda v: v["evaluate"].update(tasks=["arc"]), "'tasks' must be dict"),
        (lambda v: v["distill"].update(max_steps="ten"), "'max_steps' must be int"),
        (lambda v: v.pop("teacher"), "missing teacher"),
        (lambda v: v["publish"].update(repo_id="no-org"), "ORG/NAME"),
        (lambda v: v["quantize"].update(schemes=["int3"]), "unknown scheme\\(s\\) int3"),
        (lambda v: v["students"]["depth"].update(layer_selection="downstream"), "set calibration.downstream_task"),
        (lambda v: v["calibration"].update(downstream_task="missing.jsonl"), "downstream_task: Task file"),
        (
            lambda v: v["calibration"].update(downstream_task="builtin:everyday-facts", downstream_limit=-1),
            "row limit must be a positive integer",
        ),
    ],
)
def test_bad_recipes_are_refused_before_anything_runs(tmp_path, edit, message):
    values = make_inputs(tmp_path)
    edit(values)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(MinitronError, match=message):
        run_recipe(tmp_path / "recipe.yaml", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert main(["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run")]) == 2


def test_publish_to_a_local_hub_and_dry_run(finished_run, tmp_path, monkeypatch, capsys):
    folder, _, _ = finished_run
    run = folder / "run"
    secret = "hf_test_secret_0123456789"
    with LocalHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", secret)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
        assert main(["publish", str(run), "--repo-id", "me/Tiny", "--private"]) == 0
        output = capsys.readouterr()
        assert secret not in output.out + output.err
        assert sorted(hub.state.repos) == [
            "me/Tiny-Depth-Base",
            "me/Tiny-Depth-Instruct",
            "me/Tiny-Width-Base",
            "me/Tiny-Width-Instruct",
        ]
        assert all(repo["private"] for repo in hub.state.repos.values())
        assert set(hub.state.authorizations) == {f"Bearer {secret}"}
        assert hub.state.validated == 4  # every card's metadata passed the server's checks
        pushed = hub.state.repos["me/Tiny-Width-Instruct"]["files"]
        card = ModelCard(pushed["README.md"].decode())
        assert card.data.base_model == "me/Tiny-Width-Base"
        local = run / "models" / "Tiny-Width-Instruct"
        assert pushed["model.safetensors"] == (local / "model.safetensors").read_bytes()
        assert "card_facts.json" not in pushed and "importance/importance.safetensors" in pushed

        plan = publish(run, "me/Tiny", dry_run=True, dry_run_dir=tmp_path / "dry")
        staged = {e["repo_id"]: e["files"] for e in plan}
        assert staged["me/Tiny-Width-Instruct"] == sorted(pushed)
        dry_card = (tmp_path / "dry" / "me__Tiny-Width-Instruct" / "README.md").read_bytes()
        assert dry_card == pushed["README.md"]
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    with pytest.raises(MinitronError, match="No Hugging Face token"):
        publish(run, "me/Tiny")
    with pytest.raises(MinitronError, match="not a repository id"):
        publish(run, "Tiny", dry_run=True)
    with pytest.raises(MinitronError, match="Nothing to publish"):
        publish(tmp_path, "me/Tiny", dry_run=True)


def test_demo_recipe_is_shipped_and_parses():
    assert (Path(__file__).parents[1] / "recipes" / "smollm2-135m-demo.yaml").read_text() == DEMO_RECIPE.read_text()
    recipe = demo_recipe()
    assert set(recipe.students) == {"width", "depth"} and recipe.generate_data["max_prompts"] == 64
    assert "generated" in recipe.calibration.data and recipe.distill["dataset"] == "builtin:python-docs"
    assert recipe.scaled(2.5).distill["max_steps"] == 100
    generated = demo_recipe(generated_data=True)
    assert generated.distill["dataset"] == "generated" and generated.generate_data["max_prompts"] == 64


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml")))
def test_shipped_pipeline_recipes_parse(name):
    path = Path(__file__).parents[1] / "recipes" / name
    recipe = parse_recipe(yaml.safe_load(path.read_text()))
    assert recipe.student_names and (recipe.distill is None or recipe.distill["dataset"])


def test_publish_needs_no_network_for_dry_run(finished_run, tmp_path):
    folder, _, _ = finished_run
    os.environ.pop("HF_TOKEN", None)
    plan = publish(folder / "run" / "models" / "Tiny-Depth-Base", "org/X", dry_run=True, dry_run_dir=tmp_path / "d")
    assert [e["repo_id"] for e in plan] == ["org/X-Depth-Base"]
    assert (tmp_path / "d" / "org__X-Depth-Base" / "model.safetensors").is_file()


def test_students_share_one_teacher_cache_over_token_blocks(tmp_path, capfd):
    """With teacher_cache the teacher runs once over the data; both students train from its top-k targets.
    The data mixes two sources of different kinds (plain text, prompt/response rows), cut into blocks.
    The log holds the stages' own lines, not a bar for each dataset map or model load."""
    values = make_inputs(tmp_path)
    mixture = {values["distill"]["dataset"]: 3, values["align"]["dataset"]: 1}
    values["distill"].update(dataset=mixture, packing=False, block_size=16, teacher_cache={"top_k": 8})
    for section in ("align", "quantize", "publish"):
        values.pop(section)
    values["evaluate"] = {"perplexity_data": values["evaluate"]["perplexity_data"], "seq_len": 32, "max_tokens": 64}
    capfd.readouterr()  # the inputs' own writing
    result = run_recipe(parse_recipe(values), tmp_path / "run", publish=False)
    record = json.loads((tmp_path / "run" / "distill" / "stage.json").read_text())["record"]
    assert record["teacher_cache"] == {"top_k": 8}
    assert record["data"] == "75% text.txt + 25% sft.jsonl"
    cache = tmp_path / "run" / "checkpoints" / "distill" / "teacher-cache"
    index = json.loads((cache / "cache_index.json").read_text())
    # Only the rows the steps draw (2 steps × 2 rows of 16 tokens: 15 predictions each) went through the teacher.
    assert index["top_k"] == 8 and index["num_tokens"] == 2 * 2 * 15
    for name in ("width", "depth"):
        assert record["students"][name]["steps"] == 2 and record["students"][name]["tokens"] == 2 * 2 * 16
    assert "ppl distilled" in result["table"]
    log = capfd.readouterr().err
    assert "distill: done" in log
    for bar in ("Building labels", "Truncating train dataset", "Map", "Loading weights", "Writing model shards"):
        assert bar not in log


def test_the_teacher_written_text_calibrates_and_trains_the_students(tmp_path):
    """With "generated" in the calibration, generate_data runs first and importance, pruning and
    distillation all read the teacher's answers; new answers mean new importance and pruning."""
    from hf_minitron.cli.recipe_options import prune_options

    values = make_inputs(tmp_path)
    text = values["calibration"]["data"]
    values["generate_data"] = {"max_prompts": 6, "max_new_tokens": 8, "batch_size": 3, "shard_size": 3}
    values["calibration"]["data"] = {text: 0.5, "generated": 0.5}
    values["distill"].update(dataset={text: 0.5, "generated": 0.5}, packing=False, block_size=16)
    for section in ("align", "quantize", "publish"):
        values.pop(section)
    values["evaluate"] = {"perplexity_data": text, "seq_len": 32, "max_tokens": 64}
    run = tmp_path / "run"
    run_recipe(parse_recipe(values), run, publish=False)
    times = stage_times(run)
    assert times["generate-data"] < times["importance"] < times["prune"] < times["distill"]
    record = json.loads((run / "importance" / "stage.json").read_text())["record"]
    assert record["calibration"] == "50% text.txt + 50% text generated by the teacher (teacher)"
    assert str(tmp_path) not in json.dumps(record)
    distilled = json.loads((run / "distill" / "stage.json").read_text())["record"]
    assert distilled["data"] == "50% text.txt + 50% text generated by the teacher (teacher)"

    values["generate_data"]["max_new_tokens"] = 6
    run_recipe(parse_recipe(values), run, resume=True, publish=False)
    assert all(stage_times(run)[name] > times[name] for name in ("generate-data", "importance", "prune"))

    with pytest.raises(MinitronError, match="calibration data includes 'generated'"):
        prune_options(parse_recipe(values), "width")
    values.pop("generate_data")
    with pytest.raises(MinitronError, match="'calibration': uses data 'generated' but the recipe has no generate_data"):
        parse_recipe(values)


def test_a_re_fit_may_ask_for_more_calibration_samples_than_the_importance_pass(tmp_path):
    """reconstruction.num_samples above calibration.num_samples fits on that many samples of the same
    text; the importance pass still ranks on its own, and records what it saw."""
    values = make_inputs(tmp_path)
    for section in ("distill", "align", "quantize", "publish", "evaluate"):
        values.pop(section)
    values["students"] = {"width": values["students"]["width"]}
    values["reconstruction"] = {"num_samples": 6}
    run = tmp_path / "run"
    run_recipe(parse_recipe(values), run, publish=False)
    ranked = json.loads((run / "importance" / "stage.json").read_text())["record"]
    assert ranked["calibration_tokens"] == 4 * 32
    fitted = json.loads((run / "prune" / "width" / "reconstruction.json").read_text())
    assert fitted["tokens"] == 6 * 32


def test_a_downstream_student_drops_the_block_its_task_ranks_best(tmp_path):
    """`layer_selection: downstream` in a recipe: the importance stage scores the calibration's task with
    every contiguous block skipped (and LM loss, which breaks ties), and pruning drops the best block."""
    from hf_minitron.importance import ImportanceScores

    values = make_inputs(tmp_path)
    for section in ("align", "quantize", "publish", "evaluate"):
        values.pop(section)
    rows = [{"query": f"Is {i} even? The answer is", "choices": ["yes", "no"], "gold": i % 2} for i in range(12)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    values["calibration"].update(downstream_task=str(tmp_path / "task.jsonl"), downstream_limit=10)
    values["students"] = {"depth": {"num_hidden_layers": 2, "layer_selection": "downstream"}}
    run = tmp_path / "run"
    run_recipe(parse_recipe(values), run, publish=False)
    scores = ImportanceScores.load(run / "importance")
    accuracy, loss = scores.block_accuracy[2], scores.block_lm_loss[2]  # 4 layers -> 2: blocks of 2
    assert scores.metadata["downstream_task"] == "task" and len(accuracy) == 3
    assert scores.metadata["downstream_rows"] == 10  # downstream_limit
    best = float(accuracy.max())
    tolerance = (best * (1 - best) / 10) ** 0.5  # one standard error: blocks within it tie
    tied = [i for i in range(3) if float(accuracy[i]) >= best - tolerance - 1e-6]
    expected = min(tied, key=lambda i: loss[i])
    dropped = json.loads((run / "prune" / "stage.json").read_text())["record"]["dropped_layers"]["depth"]
    assert dropped == [expected, expected + 1]
    card = (run / "models" / "Tiny-Minitron-Depth-Base" / "README.md").read_text()
    assert "kept task.jsonl's accuracy highest" in card and str(tmp_path) not in card  # no local paths


def test_bad_teacher_cache_settings_are_refused_before_anything_runs(tmp_path):
    values = make_inputs(tmp_path)
    values["distill"].update(teacher_cache={"top_k": 8})  # packing stays on: a cache cannot serve it
    with pytest.raises(MinitronError, match="packing"):
        parse_recipe(values)
    values["distill"].update(packing=False, teacher_cache={"top": 8})
    with pytest.raises(MinitronError, match="teacher_cache"):
        parse_recipe(values)
    values["distill"].pop("teacher_cache")
    values["align"]["teacher_cache"] = {"top_k": 8}
    with pytest.raises(MinitronError, match="belongs in the distill section"):
        parse_recipe(values)


def test_a_stage_that_converts_the_teacher_leaves_later_stages_the_recipe_precision(tmp_path):
    """Training stages run the shared teacher in their precision, converting it in place; the stages after
    them (evaluation) get it in the recipe's precision again, and generated data defaults to distillation's."""
    from hf_minitron.distillation import DistillationConfig
    from hf_minitron.loading import load_teacher
    from hf_minitron.pipeline.stages import Run, _distillation_teacher_dtype

    values = make_inputs(tmp_path)
    values["distill"].update(bf16=True, use_cpu=True)
    run = Run(parse_recipe(values), tmp_path / "run")
    teacher, _ = run.teacher()
    assert run.teacher()[0] is teacher  # loaded once while nothing changed it
    load_teacher(teacher, DistillationConfig(output_dir=str(tmp_path / "o"), bf16=True, use_cpu=True, report_to=[]))
    assert teacher.dtype == torch.bfloat16
    again, _ = run.teacher()
    assert again is not teacher and again.dtype == torch.float32
    assert _distillation_teacher_dtype(run) == "bfloat16"
    values["distill"].update(bf16=False)
    assert _distillation_teacher_dtype(Run(parse_recipe(values), tmp_path / "run")) == "float32"
