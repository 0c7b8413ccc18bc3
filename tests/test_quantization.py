"""Quantization and GGUF export: round trips through transformers, pruned shapes, sizes, bad input."""

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError, PruningConfig, estimate_importance, prune_model
from hf_minitron.cli import main
from hf_minitron.quantization import available_schemes, export_gguf, quantize_model
from hf_minitron.quantization.weights import folder_bytes
from hf_minitron.shapes import config_head_dim

from helpers import char_tokenizer, tiny_calibration, tiny_model, tiny_moe_model

IDS = torch.randint(3, 90, (2, 20), generator=torch.Generator().manual_seed(0))


def pruned_llama():
    """A width- and depth-pruned tiny Llama: hidden 36 with head_dim 16, so head_dim ≠ hidden / heads."""
    teacher = tiny_model("llama", max_position_embeddings=128)
    scores = estimate_importance(teacher, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    config = PruningConfig(
        hidden_size=36, intermediate_size=48, num_attention_heads=3, num_key_value_heads=1, num_hidden_layers=3
    )
    return prune_model(teacher, config, scores)


def reload(path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def relative_error(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize(
    "family, model",
    [
        ("llama", lambda: tiny_model("llama", head_dim=32, max_position_embeddings=128)),
        ("mistral", lambda: tiny_model("mistral", head_dim=32, max_position_embeddings=128)),
        ("qwen2", lambda: tiny_model("qwen2", head_dim=8, max_position_embeddings=128)),
        ("pruned llama", pruned_llama),
    ],
)
def test_gguf_round_trip_gives_the_same_logits(tmp_path, family, model):
    model = model()
    reference = model(IDS).logits
    exact = reload(export_gguf(model, tmp_path / "f32.gguf", "F32", include_tokenizer=False))
    torch.testing.assert_close(exact(IDS).logits, reference, rtol=1e-5, atol=1e-5)
    assert config_head_dim(exact.config) == config_head_dim(model.config)
    assert exact.config.num_key_value_heads == model.config.num_key_value_heads
    for kind, tolerance in (("F16", 0.01), ("Q8_0", 0.1)):
        path = export_gguf(model, tmp_path / f"{kind}.gguf", kind, include_tokenizer=False)
        assert relative_error(reload(path)(IDS).logits, reference) < tolerance
    sizes = {k: (tmp_path / f"{k}.gguf").stat().st_size for k in ("f32", "F16", "Q8_0")}
    assert sizes["Q8_0"] <= sizes["F16"] < 0.6 * sizes["f32"]  # rows that do not split into blocks stay F16


def test_tied_embeddings_are_written_once(tmp_path):
    model = pruned_llama()
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    assert "token_embd.weight" in names and "output.weight" not in names
    loaded = reload(path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_embedding_type_keeps_the_embedding_apart_from_the_rest(tmp_path):
    """Q8_0 everywhere but the (tied) embedding, which stays F16: the types are as asked, the logits
    closer to the model's than with an all-Q8_0 file, and a bad type is refused before writing."""
    model = tiny_model("llama", hidden_size=96, head_dim=32, max_position_embeddings=128)  # rows tile Q8_0 blocks
    reference = model(IDS).logits
    plain = export_gguf(model, tmp_path / "q8.gguf", "Q8_0", include_tokenizer=False)
    mixed = export_gguf(model, tmp_path / "q8-f16.gguf", "Q8_0", include_tokenizer=False, embedding_type="F16")
    assert {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(plain)).tensors}["token_embd.weight"] == "Q8_0"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(mixed)).tensors}
    assert types.pop("token_embd.weight") == "F16" and "Q8_0" in types.values()
    assert relative_error(reload(mixed)(IDS).logits, reference) < relative_error(reload(plain)(IDS).logits, reference)
    with pytest.raises(MinitronError, match="embedding type 'Q3_K' is not one of"):
        export_gguf(model, tmp_path / "bad.gguf", "Q8_0", include_tokenizer=False, embedding_type="Q3_K")
    assert not (tmp_path / "bad.gguf").exists()


def test_gguf_bad_input(tmp_path):
    with pytest.raises(MinitronError, match=r"norm_topk_prob=False.*always renormalises"):
        export_gguf(tiny_moe_model("qwen3_moe", norm_topk_prob=False), tmp_path / "m.gguf", include_tokenizer=False)
    with pytest.raises(MinitronError, match="is not one of"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", "Q3_K")
    with pytest.raises(MinitronError, match=r"should end in \.gguf"):
        export_gguf(tiny_model(), tmp_path / "m.bin")
    with pytest.raises(MinitronError, match="writes BPE and SentencePiece tokenizers; this one is WordLevel"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=char_tokenizer())
    assert not list(tmp_path.iterdir())  # nothing half-written
    export_gguf(tiny_model(), tmp_path / "m.gguf", include_tokenizer=False)
    with pytest.raises(MinitronError, match="already exists"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", include_tokenizer=False)


@pytest.mark.parametrize("scheme, tolerance, size", [("int8", 0.15, 0.4), ("int4", 1.0, 0.45)])
def test_weight_quantization_round_trip(tmp_path, scheme, tolerance, size):
    model = pruned_llama()
    model.save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "pruning_config.json").write_text("{}")
    if scheme == "int4":  # the pruned widths 36 and 48 do not split into groups of 32
        with pytest.raises(MinitronError, match="does not divide the model's Linear input sizes"):
            quantize_model(tmp_path / "model", tmp_path / scheme, scheme, group_size=32)
    folder = quantize_model(tmp_path / "model", tmp_path / scheme, scheme, group_size=12)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    reference = model(IDS).logits
    assert relative_error(loaded(IDS).logits.float(), reference) < tolerance
    assert (folder / "pruning_config.json").is_file() and (folder / "quantization.json").is_file()
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )
    embedding = model.get_input_embeddings().weight.numel()
    # Linear weights shrink from 4 bytes to about 1 (plus scales); the embedding stays fp32.
    assert folder_bytes(folder) < 4 * embedding + size * 4 * linear + 8192
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_quantize_refuses_what_this_machine_cannot_run(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    if "fp8" not in available_schemes():
        with pytest.raises(MinitronError, match=r"fp8 scheme does not run on this machine.*int8, int4"):
            quantize_model(tmp_path / "model", tmp_path / "fp8", "fp8")
    with pytest.raises(MinitronError, match="Unknown quantization scheme"):
        quantize_model(tmp_path / "model", tmp_path / "x", "int2")
    with pytest.raises(MinitronError, match="not a model folder"):
        quantize_model(tmp_path, tmp_path / "x", "int8")
    assert not (tmp_path / "fp8").exists() and not (tmp_path / "x").exists()


def test_cli_quantize_and_export(tmp_path, capsys):
    model = pruned_llama()
    model.save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    assert main(["quantize", str(tmp_path / "model"), "--scheme", "int8", "-o", str(tmp_path / "q")]) == 0
    assert "int8:" in capsys.readouterr().out
    assert main(["export-gguf", str(tmp_path / "model"), "--no-tokenizer", "-o", str(tmp_path / "m.gguf")]) == 0
    assert (tmp_path / "m.gguf").is_file()
    assert main(["export-gguf", str(tmp_path / "model"), "-o", str(tmp_path / "t.gguf")]) == 2
    assert "writes BPE and SentencePiece tokenizers" in capsys.readouterr().err


@pytest.mark.slow
def test_pruned_smollm2_gguf_with_tokenizer(smollm2, teacher_scores, tmp_path, record_measurement):
    """A width-pruned SmolLM2 (hidden 432: rows that Q8_0 blocks cannot tile stay F16) with its BPE tokenizer."""
    import copy

    from transformers import AutoTokenizer

    teacher, tokenizer = smollm2
    student = prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), teacher_scores)
    text = "The capital of France is Paris, and café au lait is a drink."
    ids = tokenizer(text, return_tensors="pt").input_ids
    reference = student(ids).logits
    path = export_gguf(student, tmp_path / "student.gguf", "Q8_0", tokenizer=tokenizer)
    loaded = reload(path)
    error = relative_error(loaded(ids).logits, reference)
    assert error < 0.05
    assert loaded.config.hidden_size == 432 and config_head_dim(loaded.config) == 64
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert gguf_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert gguf_tokenizer.eos_token_id == tokenizer.eos_token_id
    record_measurement(
        f"SmolLM2 width student → GGUF Q8_0: {path.stat().st_size / 2**20:.1f} MiB, max logit error {100 * error:.2f}% "
        "of the largest logit; tokenizer ids identical"
    )
