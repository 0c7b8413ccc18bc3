"""GGUF files run in a real llama.cpp (llama-cpp-python) agree with transformers: ids, logits, generations.

Optional: skipped unless llama-cpp-python is installed (it builds llama.cpp from source). Run with
``pytest -m llama_cpp``.
"""

import copy
import itertools

import pytest
from test_gguf_tokenizer import tiny_sentencepiece_tokenizer

from hf_minitron import PruningConfig, estimate_importance, prune_model
from hf_minitron.data import iter_texts
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.llama_cpp_check import (
    SAMPLE_PROMPTS,
    logit_agreement,
    probe_texts,
    tokenization_mismatches,
    with_smollm2_pre_tokenizer,
)

from helpers import tiny_calibration, tiny_model, tiny_moe_model

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama_cpp


def chat_text(tokenizer):
    return tokenizer.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False)


@pytest.fixture(scope="module")
def teacher_files(smollm2, tmp_path_factory):
    model, tokenizer = smollm2
    folder = tmp_path_factory.mktemp("gguf")
    return {
        kind: export_gguf(model, folder / f"{kind}.gguf", kind, tokenizer=tokenizer) for kind in ("F32", "F16", "Q8_0")
    }


def test_token_ids_match_transformers_on_every_probe(smollm2, teacher_files):
    reference = with_smollm2_pre_tokenizer(smollm2[1])
    texts = probe_texts(chat_text(reference))
    assert len(texts) >= 200
    for path in teacher_files.values():
        assert tokenization_mismatches(reference, path, texts) == []


@pytest.mark.parametrize("kind, least_top1", [("F32", 0.99), ("F16", 0.99), ("Q8_0", 0.95)])
def test_teacher_logits_and_generations_match(smollm2, teacher_files, record_measurement, kind, least_top1):
    model, tokenizer = smollm2
    result = logit_agreement(model, tokenizer, teacher_files[kind], [*SAMPLE_PROMPTS, chat_text(tokenizer)])
    record_measurement(f"llama.cpp SmolLM2 {kind}: {result}")
    assert result.top1_agreement >= least_top1
    if kind == "F32":
        assert result.identical_generations == result.generations


def test_q8_0_with_f16_embedding_over_held_out_passages(smollm2, tmp_path, record_measurement):
    """Passages are scored position by position but not continued; an F16 embedding in a Q8_0 file
    agrees with the model at least as often as the all-Q8_0 file over the same positions."""
    model, tokenizer = smollm2
    ids = tokenizer(" ".join(itertools.islice(iter_texts("builtin:python-docs-heldout"), 20))).input_ids
    passages = [ids[i : i + 96] for i in range(0, 3 * 96, 96)]
    results = {}
    for embedding in ("Q8_0", "F16"):
        path = export_gguf(model, tmp_path / f"{embedding}.gguf", "Q8_0", tokenizer=tokenizer, embedding_type=embedding)
        results[embedding] = logit_agreement(model, tokenizer, path, SAMPLE_PROMPTS[:2], generate=4, passages=passages)
    record_measurement(f"llama.cpp SmolLM2 Q8_0 over prompts + passages: {results}")
    prompt_positions = sum(len(tokenizer(p).input_ids) for p in SAMPLE_PROMPTS[:2])
    assert results["F16"].positions == prompt_positions + 3 * 96 and results["F16"].generations == 2
    assert results["F16"].top1_agreement >= max(0.95, results["Q8_0"].top1_agreement)
    assert results["F16"].mean_kl < results["Q8_0"].mean_kl


def test_width_pruned_teacher_runs_in_llama_cpp(smollm2, teacher_scores, tmp_path, record_measurement):
    model, tokenizer = smollm2
    student = prune_model(copy.deepcopy(model), PruningConfig(hidden_size=432, intermediate_size=768), teacher_scores)
    path = export_gguf(student, tmp_path / "student.gguf", "F32", tokenizer=tokenizer)
    result = logit_agreement(student, tokenizer, path, SAMPLE_PROMPTS)
    record_measurement(f"llama.cpp width-pruned SmolLM2 F32: {result}")
    assert result.top1_agreement >= 0.99 and result.identical_generations == result.generations


@pytest.mark.parametrize("family, architecture", [("qwen2", "llama"), ("qwen3", "qwen3")])
def test_qwen_with_pruned_head_shape_runs_in_llama_cpp(smollm2, tmp_path, record_measurement, family, architecture):
    _, tokenizer = smollm2
    # 6 heads × 16 ≠ hidden 48, as after width pruning: llama.cpp's qwen2 would refuse that query shape,
    # so Qwen2 goes in as llama (random q/k/v biases included); Qwen3 reads its sizes from the metadata.
    model = tiny_model(family, vocab_size=len(tokenizer), max_position_embeddings=256)
    path = export_gguf(model, tmp_path / f"{family}.gguf", "F32", tokenizer=tokenizer)
    result = logit_agreement(model, tokenizer, path, SAMPLE_PROMPTS[:3], generate=8)
    record_measurement(f"llama.cpp tiny pruned-shape {family} (as {architecture}) F32: {result}")
    assert result.top1_agreement >= 0.99 and result.mean_kl < 1e-3
    assert result.identical_generations == result.generations


def scored(model):
    return estimate_importance(model, calibration_data=tiny_calibration(), batch_size=3, progress=False)


def tiny_gemma3(vocab_size, prune=None):
    model = tiny_model("gemma3", vocab_size=vocab_size, max_position_embeddings=256, num_hidden_layers=6)
    return prune_model(model, prune, scored(model)) if prune else model


@pytest.mark.parametrize(
    "label, prune",
    [
        ("full", None),
        # Width: the embedding multiplier of the old width is folded into the weights (llama.cpp uses sqrt(24)).
        ("width-pruned", PruningConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4)),
        # Depth: layers 1 and 4 go, so the sliding / full pattern is no longer periodic.
        ("depth-pruned", PruningConfig(layers_to_drop=[1, 4])),
    ],
)
def test_gemma3_runs_in_llama_cpp(smollm2, tmp_path, record_measurement, label, prune):
    _, tokenizer = smollm2
    model = tiny_gemma3(len(tokenizer), prune)
    path = export_gguf(model, tmp_path / "gemma3.gguf", "F32", tokenizer=tokenizer)
    # Prompts longer than the window of 6, so sliding and full layers really differ.
    result = logit_agreement(model, tokenizer, path, SAMPLE_PROMPTS[:3], generate=8, f32_cache=True)
    record_measurement(f"llama.cpp tiny {label} gemma3 F32: {result}")
    assert result.top1_agreement == 1.0 and result.mean_kl < 1e-3
    assert result.identical_generations == result.generations


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "qwen2_moe"])
@pytest.mark.parametrize("experts", [6, 3])
def test_mixture_of_experts_runs_in_llama_cpp(smollm2, tmp_path, record_measurement, family, experts):
    _, tokenizer = smollm2
    settings = dict(vocab_size=len(tokenizer), max_position_embeddings=256)
    if family == "qwen2_moe":  # llama.cpp's qwen2moe needs heads × head_dim = hidden, and plain top-k weights
        settings.update(head_dim=8, norm_topk_prob=False)
    model = tiny_moe_model(family, seed=1, **settings)
    if experts < 6:
        model = prune_model(model, PruningConfig(num_experts=experts), scored(model))
    path = export_gguf(model, tmp_path / f"{family}.gguf", "F32", tokenizer=tokenizer)
    result = logit_agreement(model, tokenizer, path, SAMPLE_PROMPTS[:3], generate=8, f32_cache=True)
    record_measurement(f"llama.cpp tiny {family} with {experts} experts F32: {result}")
    assert result.top1_agreement == 1.0 and result.mean_kl < 1e-3
    assert result.identical_generations == result.generations


def test_sentencepiece_style_tokenizer_gives_the_same_ids_in_llama_cpp(tmp_path):
    # Gemma's form: ▁ for spaces, no prefix space, byte fallback; written as llama.cpp's "llama" vocabulary.
    tokenizer = tiny_sentencepiece_tokenizer()
    path = export_gguf(tiny_model(vocab_size=len(tokenizer)), tmp_path / "m.gguf", "F32", tokenizer=tokenizer)
    texts = probe_texts()
    assert len(texts) >= 200
    assert tokenization_mismatches(tokenizer, path, texts) == []
