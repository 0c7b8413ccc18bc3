"""Multiple-choice scoring: a hand-checked example, a plain reference, batching, and the real teacher."""

import json

import pytest
import torch
import torch.nn.functional as F

from hf_minitron import MinitronError
from hf_minitron.cli import main
from hf_minitron.evaluation import Request, loglikelihoods, results_table, score_task
from hf_minitron.evaluation import tasks as task_module

from helpers import SHARED_DATA, char_tokenizer, save_tiny, tiny_model

REQUESTS = [
    Request("The cat sat on the", " mat"),
    Request("A", " very long continuation here"),
    Request("Question: 2 + 2 =", " 4"),
    Request("x", " y z"),
    Request("The cat sat on the", " hat."),
]


def reference_loglikelihood(model, tokenizer, request):
    """One request at a time, full logits: Σ log p(continuation token | everything before it)."""
    context = tokenizer(request.context)["input_ids"]
    continuation = tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        log_probs = F.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(log_probs[len(context) + i - 1, token]) for i, token in enumerate(continuation))


def test_loglikelihoods_equal_the_reference_batched_or_not():
    model, tokenizer = tiny_model("qwen2"), char_tokenizer()
    expected = [reference_loglikelihood(model, tokenizer, r) for r in REQUESTS]
    for batch_size in (1, 2, 16):
        assert loglikelihoods(model, tokenizer, REQUESTS, batch_size=batch_size) == pytest.approx(expected, abs=1e-4)


def test_hand_checked_acc_acc_norm_and_partial_scoring(monkeypatch):
    # Choice " a" scores -2.0 (2 characters: -1.0 per char); " abcdef" scores -3.5 (7 characters: -0.5 per char).
    fixed = {" a": -2.0, " abcdef": -3.5, " went home.": None}

    def fake(model, tokenizer, requests, **kwargs):
        seen.extend(requests)
        return [
            fixed[r.continuation]
            if fixed[r.continuation] is not None
            else (-1.0 if r.context.endswith("Bob") else -4.0)
            for r in requests
        ]

    seen = []
    monkeypatch.setattr(task_module, "loglikelihoods", fake)
    choice_doc = {"query": "Q", "choices": ["a", "abcdef"], "gold": 1}
    result = score_task(None, None, [choice_doc], progress=False)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)  # acc picks " a", per-character picks " abcdef"
    assert seen == [Request("Q", " a"), Request("Q", " abcdef")]
    seen.clear()
    partial_doc = {"context_options": ["Alice", "Bob"], "continuation": "went home.", "gold": 1}
    result = score_task(None, None, [partial_doc, {**partial_doc, "gold": 0}], progress=False)
    assert seen[:2] == [Request("Alice", " went home."), Request("Bob", " went home.")]
    assert (result.acc, result.acc_norm, result.count) == (0.5, None, 2)


def test_eval_command_compares_models(tmp_path, capsys):
    save_tiny(tmp_path / "a", seed=1)
    save_tiny(tmp_path / "b", seed=2, num_hidden_layers=2)
    task = tmp_path / "task.jsonl"
    task.write_text(
        "\n".join(json.dumps({"query": f"Q{i}:", "choices": ["yes", "no"], "gold": i % 2}) for i in range(6))
    )
    (tmp_path / "text.txt").write_text("Some plain text for perplexity. " * 40)
    args = [
        "eval",
        "--model",
        tmp_path / "a",
        "--model",
        tmp_path / "b",
        "--task",
        f"toy={task}",
        "--perplexity-data",
        tmp_path / "text.txt",
        "--seq-len",
        64,
        "--output",
        tmp_path / "r.json",
    ]
    assert main([str(a) for a in args]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results) == {"a", "b"} and results["b"]["tasks"]["toy"]["count"] == 6
    table = capsys.readouterr().out
    assert "toy acc_norm" in table and "perplexity" in table
    text = results_table(
        {
            "t": {"perplexity": {"perplexity": 10.0}, "tasks": {"x": {"acc": 0.5, "acc_norm": 0.6}}},
            "s": {"perplexity": {"perplexity": 12.5}, "tasks": {"x": {"acc": 0.4, "acc_norm": 0.6}}},
        }
    )
    assert "12.50 (+2.50)" in text and "40.0 (-10.0)" in text


def test_bad_task_files(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"question": "no choices"}\n')
    assert main(["eval", "--model", "builtin:smollm2-135m", "--task", f"bad={tmp_path / 'bad.jsonl'}"]) == 2
    assert "not a multiple-choice row" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--task", "nopath"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    with pytest.raises(MinitronError, match="does not exist"):
        task_module.load_task(tmp_path / "missing.jsonl")


def test_builtin_everyday_facts_task_is_balanced_and_apart_from_the_demo_prompts():
    import yaml

    from hf_minitron.pipeline import DEMO_RECIPE

    rows = task_module.load_task("builtin:everyday-facts")
    assert len(rows) >= 50 and task_module.load_task("builtin:everyday-facts", limit=5) == rows[:5]
    assert all(task_module.task_format(row) == "choices" and len(set(row["choices"])) == 4 for row in rows)
    golds = [row["gold"] for row in rows]
    assert max(golds.count(g) for g in range(4)) - min(golds.count(g) for g in range(4)) <= 1
    prompts = yaml.safe_load(DEMO_RECIPE.read_text())["evaluate"]["sample_prompts"]
    queries = {row["query"] for row in rows}
    assert not queries & set(prompts) and not any("France" in q or "Paris" in q for q in queries)


@pytest.mark.slow
def test_real_teacher_knows_the_builtin_everyday_facts(smollm2, record_measurement):
    model, tokenizer = smollm2
    result = score_task(model, tokenizer, task_module.load_task("builtin:everyday-facts"), progress=False)
    assert result.acc > 0.75, result  # chance is 0.25
    record_measurement(f"SmolLM2 teacher, builtin:everyday-facts: acc {result.acc:.3f} of {result.count} rows")


@pytest.mark.slow
def test_real_teacher_is_above_chance(smollm2, record_measurement):
    model, tokenizer = smollm2
    results = {}
    for name, chance in (("arc_easy", 0.25), ("piqa", 0.5)):
        docs = task_module.load_task(SHARED_DATA / "eval" / f"{name}.jsonl", limit=80)
        results[name] = score_task(model, tokenizer, docs, name, progress=False)
        assert results[name].acc_norm > chance + 0.05, results[name]
    record_measurement(
        "SmolLM2 teacher, first 80 rows: "
        + ", ".join(f"{n} acc {r.acc:.3f} / acc_norm {r.acc_norm:.3f}" for n, r in results.items())
    )


def test_benchmark_command_reports_speedups(tmp_path, capsys):
    save_tiny(tmp_path / "teacher", seed=1)
    save_tiny(tmp_path / "student", seed=2, num_hidden_layers=2)
    args = [
        "benchmark",
        "--model",
        tmp_path / "teacher",
        "--model",
        tmp_path / "student",
        "--prefill-batch",
        2,
        "--prefill-len",
        32,
        "--decode-batch",
        1,
        2,
        "--new-tokens",
        4,
        "--repeats",
        1,
        "--output",
        tmp_path / "t.json",
    ]
    assert main([str(a) for a in args]) == 0
    results = json.loads((tmp_path / "t.json").read_text())
    assert results["teacher"]["speedup"] == {"prefill": 1.0, "decode_b1": 1.0, "decode_b2": 1.0}
    assert all(results["student"][t] > 0 for t in ("prefill", "decode_b1", "decode_b2"))
    assert "prefill tok/s" in capsys.readouterr().out


def test_lm_eval_harness_agrees_with_our_scorer_on_a_local_task(tmp_path):
    """A task defined in local YAML over local rows: lm-eval's acc equals ours on the same model."""
    from hf_minitron.evaluation import evaluate_with_lm_eval

    rows = [
        {"query": f"Question {i}: which word fits?", "choices": ["apple", "stone", "river"], "gold": i % 3}
        for i in range(12)
    ]
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "toy_choice.yaml").write_text(
        "task: toy_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    harness = evaluate_with_lm_eval(model, tokenizer, ["toy_choice"], include_path=str(tmp_path), batch_size=4)
    ours = score_task(model, tokenizer, rows, progress=False)
    assert harness["toy_choice"]["acc"] == pytest.approx(ours.acc)
    with pytest.raises(MinitronError, match="could not run"):
        evaluate_with_lm_eval(model, tokenizer, ["no_such_task_anywhere"])


def bos_tokenizer():
    """The character tokenizer, starting every text with a BOS token as Gemma's and Llama 3's do."""
    from tokenizers import processors

    tokenizer = char_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<unk> $A", special_tokens=[("<unk>", 2)]
    )
    tokenizer.bos_token = "<unk>"
    return tokenizer


def test_rows_cut_from_a_stream_start_with_bos_when_the_tokenizer_adds_it():
    """Models trained with a BOS first (Gemma 3 270M: ppl 64.5 without, 14.2 with) see one in every
    calibration sample, training block and perplexity window; tokenizers without one are unchanged."""
    from hf_minitron.data import build_calibration_set, row_prefix
    from hf_minitron.evaluation.perplexity import perplexity
    from hf_minitron.training_data import token_block_dataset

    tokenizer, plain = bos_tokenizer(), char_tokenizer()
    assert tokenizer("ab")["input_ids"][0] == 2 and row_prefix(tokenizer) == [2] and row_prefix(plain) == []
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "pack my box with five dozen liquor jugs " * 3]
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    samples = build_calibration_set(texts, tokenizer, num_samples=4, seq_len=16).samples
    assert [s.tolist() for s in samples] == [[2, *stream[i * 15 : (i + 1) * 15]] for i in range(4)]
    blocks = token_block_dataset([{"text": t} for t in texts], tokenizer, 16)["input_ids"]
    assert blocks[:4] == [[2, *stream[i * 15 : (i + 1) * 15]] for i in range(4)]
    assert build_calibration_set(texts, plain, num_samples=2, seq_len=16).samples[0].tolist() == stream[:16]

    model = tiny_model("llama").eval()
    result = perplexity(model, tokenizer, texts, seq_len=16, max_tokens=60, progress=False)
    stream = stream[:61]
    total, count = 0.0, 0
    for begin in range(0, len(stream) - 1, 15):  # reference: each window of 15 text tokens after a BOS
        window = torch.tensor([[2, *stream[begin : begin + 15]]])
        with torch.no_grad():
            logits = model(window).logits[0, :-1]
        total += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    assert result.tokens == count
    assert result.nll == pytest.approx(total / count, rel=1e-5)


def test_generation_prompts_start_with_bos_once_when_the_tokenizer_adds_it():
    """Sample continuations and teacher-written data see the prompt as the model was trained to: the
    built-in Gemma 3 270M, given "The capital of France is" without its BOS, writes "France. The The
    The ..."; with it, "the capital of the country of France."."""
    from types import SimpleNamespace

    from hf_minitron.distillation_data.backends import TransformersBackend
    from hf_minitron.pipeline.evaluate import sample_generation

    model = tiny_model("llama").eval()
    seen = []  # the ids of each forward's batch, the prompt's first
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    tokenizer = bos_tokenizer()
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    once = tokenizer("Once", add_special_tokens=False)["input_ids"]
    templated = tokenizer("<Once>", add_special_tokens=False)["input_ids"]
    seen.clear()
    sample_generation(model, tokenizer, "Once", max_new_tokens=2, chat=False)
    assert seen[0] == [[2, *once]]  # plain text gets the BOS
    seen.clear()
    sample_generation(model, tokenizer, "Once", max_new_tokens=2, chat=True)
    assert seen[0] == [[2, *templated]]  # the template wrote it: no second one
    seen.clear()
    settings = SimpleNamespace(max_new_tokens=2, temperature=0.0, top_p=1.0, num_per_prompt=1)
    TransformersBackend(model, tokenizer).generate(["Once", "Once upon"], settings)
    upon = tokenizer("Once upon", add_special_tokens=False)["input_ids"]
    assert seen[0] == [[0] * (len(upon) - len(once)) + [2, *once], [2, *upon]]  # left-padded, BOS first
