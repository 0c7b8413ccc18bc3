"""GGUF files run in a real llama.cpp (llama-cpp-python) agree with transformers: ids, logits, generations.

Optional: skipped unless llama-cpp-python is installed (it builds llama.cpp from source). Run with
``pytest -m llama_cpp``.
"""

import copy

import pytest

from hf_minitron import PruningConfig, prune_model
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.llama_cpp_check import (
    SAMPLE_PROMPTS,
    logit_agreement,
    probe_texts,
    tokenization_mismatches,
    with_smollm2_pre_tokenizer,
)

from helpers import tiny_model

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
