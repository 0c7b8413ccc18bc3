"""Teacher-generated distillation data: prompts, determinism, resume, dedupe, chat rows, training on it as-is."""

import json

import datasets
import pytest
import torch
from trl import SFTConfig, SFTTrainer

from hf_minitron import MinitronError
from hf_minitron.cli import main
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation_data import (
    BUILTIN_PROMPTS,
    GenerationSettings,
    backends,
    builtin_seed_prompts,
    generate_distillation_data,
    load_prompts,
)
from hf_minitron.training_data import load_training_dataset, token_block_dataset

from helpers import char_tokenizer, save_tiny, tiny_model

# A minimal chat template, so the tiny tokenizer behaves like an instruct teacher's.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
PROMPTS = [f"Tell me about item {i}." for i in range(10)]


def settings(**overrides):
    values = dict(max_new_tokens=10, batch_size=3, shard_size=4, num_per_prompt=2, seed=7)
    values.update(overrides)
    return GenerationSettings(**values)


def rows(path):
    return datasets.load_dataset(str(path), split="train").to_list()


def test_builtin_prompts_are_diverse_and_balanced():
    prompts = builtin_seed_prompts()
    assert len(prompts) > 500 and len(set(prompts)) == len(prompts)
    first = " ".join(prompts[:12])
    for marker in ("Explain", "step by step", "How do I", "story", "Python function"):
        assert marker in first  # every area shows up within the first two rounds of the interleaving
    assert load_prompts(BUILTIN_PROMPTS, max_prompts=5) == prompts[:5]


def test_prompt_sources_and_empty_sets(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in ["a?", "b?"]) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl")) == ["a?", "b?"]
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(MinitronError, match="is empty"):
        load_prompts(str(tmp_path / "empty.txt"))
    with pytest.raises(MinitronError, match="is empty"):
        load_prompts([])
    with pytest.raises(MinitronError, match="No prompt column"):
        load_prompts(str(tmp_path / "p.jsonl"), column="instruction")
    with pytest.raises(MinitronError, match="is empty"):
        generate_distillation_data(tiny_model(), ["  "], tmp_path / "out", settings(), tokenizer=char_tokenizer())
    assert not (tmp_path / "out").exists()


def test_generation_is_deterministic_and_loads(tmp_path):
    model, tokenizer = tiny_model(), char_tokenizer()
    first = generate_distillation_data(model, PROMPTS, tmp_path / "a", settings(), tokenizer=tokenizer, progress=False)
    again = generate_distillation_data(model, PROMPTS, tmp_path / "b", settings(), tokenizer=tokenizer, progress=False)
    generate_distillation_data(model, PROMPTS, tmp_path / "c", settings(seed=8), tokenizer=tokenizer, progress=False)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert rows(tmp_path / "a") != rows(tmp_path / "c")
    data = rows(tmp_path / "a")
    assert first.rows == len(data) == 20 - first.duplicates_dropped
    assert first.tokens > 0 and again.tokens == first.tokens
    assert {r["prompt_index"] for r in data} == set(range(10))
    assert set(data[0]) == {"prompt", "completion", "prompt_index", "sample_index", "finish_reason"}
    assert load_training_dataset(str(tmp_path / "a")).num_rows == len(data)
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["status"] == "complete" and record["prompts"]["count"] == 10
    assert record["progress"]["tokens_per_second"] > 0
    assert "configs" in (tmp_path / "a" / "README.md").read_text()


def test_generated_rows_cut_into_blocks_hold_their_prompts_and_answers(tmp_path):
    """Training blocks (a distillation `block_size`) read each prompt and its answer — plain text rows as
    they are, chat rows in the chat template — never another column's value."""

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def holds(stream, text):
        part = ids(text)
        return any(stream[i : i + len(part)] == part for i in range(len(stream) - len(part) + 1))

    for template in (None, CHAT_TEMPLATE):
        tokenizer = char_tokenizer()
        tokenizer.chat_template = template
        folder = tmp_path / f"chat-{template is not None}"
        generate_distillation_data(tiny_model(), PROMPTS, folder, settings(), tokenizer=tokenizer, progress=False)
        data = load_training_dataset(str(folder))
        first = data[0]
        if template is None:
            prompt, answer = first["prompt"], first["completion"]
        else:
            prompt, answer = first["prompt"][0]["content"], first["completion"][0]["content"]
        stream = [i for block in token_block_dataset(data, tokenizer, 16)["input_ids"] for i in block]
        assert holds(stream, prompt) and holds(stream, answer)
        assert holds(stream, "<user>") == (template is not None)
        assert not holds(stream, first["finish_reason"] + "<eos>")


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    model, tokenizer = tiny_model(), char_tokenizer()
    generate_distillation_data(model, PROMPTS, tmp_path / "whole", settings(), tokenizer=tokenizer, progress=False)

    real = backends.TransformersBackend.generate
    calls = {"n": 0}

    def failing(self, texts, settings_):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 0 took two batches; fail inside shard 1
            raise KeyboardInterrupt
        return real(self, texts, settings_)

    monkeypatch.setattr(backends.TransformersBackend, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_distillation_data(model, PROMPTS, tmp_path / "cut", settings(), tokenizer=tokenizer, progress=False)
    assert sorted(p.name for p in (tmp_path / "cut" / "data").iterdir()) == ["shard-00000.parquet"]
    monkeypatch.setattr(backends.TransformersBackend, "generate", real)
    resumed = generate_distillation_data(
        model, PROMPTS, tmp_path / "cut", settings(), tokenizer=tokenizer, progress=False
    )
    data = rows(tmp_path / "cut")
    assert data == rows(tmp_path / "whole")
    keys = [(r["prompt_index"], r["sample_index"]) for r in data]
    assert len(keys) == len(set(keys)) == resumed.rows

    with pytest.raises(MinitronError, match="another teacher, prompt set or settings"):
        generate_distillation_data(model, PROMPTS, tmp_path / "cut", settings(batch_size=2), tokenizer=tokenizer)
    generate_distillation_data(
        model, PROMPTS[:2], tmp_path / "cut", settings(), tokenizer=tokenizer, overwrite=True, progress=False
    )
    assert {r["prompt_index"] for r in rows(tmp_path / "cut")} == {0, 1}


def test_the_teacher_generates_by_the_one_precision_rule(tmp_path, monkeypatch):
    """No training arguments here: fp32 unless teacher_dtype names another, for a path as for a model."""
    stored = tiny_model().to(torch.bfloat16)
    stored.save_pretrained(tmp_path / "teacher")
    char_tokenizer().save_pretrained(tmp_path / "teacher")
    seen = []
    real = backends.TransformersBackend.__init__

    def recording(self, model, tokenizer):
        seen.append(model.dtype)
        real(self, model, tokenizer)

    monkeypatch.setattr(backends.TransformersBackend, "__init__", recording)
    for number, (teacher, dtype) in enumerate(
        [(str(tmp_path / "teacher"), None), (str(tmp_path / "teacher"), "auto"), (tiny_model(), "bfloat16")]
    ):
        options = settings(max_new_tokens=2, num_per_prompt=1, teacher_dtype=dtype)
        folder = tmp_path / f"out{number}"
        generate_distillation_data(teacher, PROMPTS[:2], folder, options, tokenizer=char_tokenizer(), progress=False)
    assert seen == [torch.float32, torch.bfloat16, torch.bfloat16]
    with pytest.raises(MinitronError, match="teacher_dtype 'int8'"):
        settings(teacher_dtype="int8").check()


def test_duplicates_are_dropped(tmp_path):
    # Greedy answers to the same prompt are identical: only the first survives.
    result = generate_distillation_data(
        tiny_model(),
        ["same prompt"] * 5 + ["other"],
        tmp_path / "out",
        settings(temperature=0.0, num_per_prompt=1),
        tokenizer=char_tokenizer(),
        progress=False,
    )
    assert result.duplicates_dropped >= 4 and result.rows == 6 - result.duplicates_dropped


def test_chat_rows_train_as_is_with_sft_and_distillation(tmp_path):
    """Sequence-level KD: both plain SFT and the DistillationTrainer read the generated data unchanged."""
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    teacher = tiny_model()
    generate_distillation_data(
        teacher, PROMPTS, tmp_path / "data", settings(system_prompt="Be brief."), tokenizer=tokenizer, progress=False
    )
    data = load_training_dataset(str(tmp_path / "data"))
    assert data[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert data[0]["completion"][0]["role"] == "assistant"
    common = dict(max_steps=2, per_device_train_batch_size=4, report_to=[], save_strategy="no", max_length=64)
    sft = SFTTrainer(
        model=tiny_model(seed=3),
        # TRL's own config, as a user would write it for a CPU (pinned memory only helps copies to a GPU)
        args=SFTConfig(output_dir=str(tmp_path / "sft"), bf16=False, dataloader_pin_memory=False, **common),
        train_dataset=data,
        processing_class=tokenizer,
    )
    sft.train()
    prepared = sft.train_dataset[0]
    assert -100 in prepared["labels"]  # completion-only loss: the prompt is not trained on
    kd = DistillationTrainer(
        model=tiny_model(seed=3),
        teacher_model=teacher,
        args=DistillationConfig(output_dir=str(tmp_path / "kd"), **common),
        train_dataset=data,
        processing_class=tokenizer,
    )
    kd.train()
    assert kd.state.global_step == 2 and kd.state.log_history[0]["kl"] > 0


def test_cli_generate_data_and_resume(tmp_path, capsys):
    model = save_tiny(tmp_path / "teacher")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:5]))
    argv = [
        "generate-data",
        "--model",
        str(model),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--max-new-tokens",
        "8",
        "--shard-size",
        "2",
        "-o",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    assert "rows" in capsys.readouterr().out
    assert main(argv) == 0  # everything done already: nothing regenerated
    assert len({r["prompt_index"] for r in rows(tmp_path / "out")}) == 5
    assert main([*argv[:-2], "--temperature", "0", "--num-per-prompt", "2", "-o", str(tmp_path / "x")]) == 2
    assert "greedy" in capsys.readouterr().err and not (tmp_path / "x").exists()
