"""GGUF tokenizer metadata and architecture choice: what llama.cpp needs to tokenize and run exactly."""

import gguf
import numpy as np
import pytest
import torch

from hf_minitron import MinitronError, load_tokenizer
from hf_minitron.cli import main
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.gguf_tokenizer import CONTROL, USER_DEFINED
from hf_minitron.quantization.pretokenizers import KNOWN_PRE_TOKENIZERS, PROBE_TEXT, probe_hash

from helpers import tiny_model

TRAINING_TEXT = ["hello world", "def f(x): return x + 1", "3 33 333", "naïve café", "the cat sat on the mat"] * 4


def tiny_bpe_tokenizer(adds_bos=False, sentencepiece_style=False, added=()):
    """A small BPE tokenizer trained offline: byte-level (GPT-2 style) or the ▁/byte-fallback form of SentencePiece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=sentencepiece_style, unk_token="<unk>"))
    if sentencepiece_style:
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        alphabet = []
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(list(added))
    return tokenizer


def fields(path):
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}, reader


def test_probe_hash_of_the_real_smollm2_tokenizer_is_the_smollm_entry(tmp_path):
    tokenizer = load_tokenizer("builtin:smollm2-135m")
    assert "\u200d" in PROBE_TEXT and len(tokenizer.encode(PROBE_TEXT)) > 100
    assert KNOWN_PRE_TOKENIZERS[probe_hash(tokenizer)] == "smollm"
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", "F32", tokenizer=tokenizer)
    meta, _ = fields(path)
    assert meta["tokenizer.ggml.pre"] == "smollm"  # was "default", which splits " (" and " ->" in two
    # SmolLM2 adds neither BOS nor EOS when encoding; llama.cpp must not either.
    assert tokenizer("Hello").input_ids[0] != tokenizer.bos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    for name in ("bos", "eos", "unknown", "padding"):
        attribute = {"unknown": "unk", "padding": "pad"}.get(name, name)
        assert meta[f"tokenizer.ggml.{name}_token_id"] == getattr(tokenizer, f"{attribute}_token_id")
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    types = meta["tokenizer.ggml.token_type"]
    assert all(types[i] == CONTROL for i in tokenizer.all_special_ids)


def test_unknown_bpe_tokenizer_is_refused_unless_named(tmp_path):
    tokenizer = tiny_bpe_tokenizer()
    with pytest.raises(MinitronError, match=r"probe hash [0-9a-f]{64}.*pre_tokenizer='NAME'"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "m.gguf").exists()
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer, pre_tokenizer="gpt-2")
    assert fields(path)[0]["tokenizer.ggml.pre"] == "gpt-2"


def test_cli_pre_tokenizer_option(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "model")
    tiny_bpe_tokenizer().save_pretrained(tmp_path / "model")
    assert main(["export-gguf", str(tmp_path / "model"), "-o", str(tmp_path / "a.gguf")]) == 2
    assert "--pre-tokenizer NAME" in capsys.readouterr().err
    command = ["export-gguf", str(tmp_path / "model"), "-o", str(tmp_path / "b.gguf"), "--pre-tokenizer", "gpt-2"]
    assert main(command) == 0
    assert fields(tmp_path / "b.gguf")[0]["tokenizer.ggml.pre"] == "gpt-2"


def test_bos_behaviour_and_added_tokens_are_written_as_the_tokenizer_behaves(tmp_path):
    tokenizer = tiny_bpe_tokenizer(adds_bos=True, added=["<tool>"])
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer, pre_tokenizer="gpt-2")
    meta, _ = fields(path)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    types = meta["tokenizer.ggml.token_type"]
    # A non-special added token is matched in plain text by transformers, so llama.cpp must match it too.
    assert types[tokenizer.convert_tokens_to_ids("<tool>")] == USER_DEFINED
    assert types[tokenizer.bos_token_id] == CONTROL


def test_sentencepiece_style_tokenizer_is_refused(tmp_path):
    with pytest.raises(MinitronError, match=r"SentencePiece-style BPE.*--no-tokenizer"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tiny_bpe_tokenizer(sentencepiece_style=True))


def unpermute(weight, heads):
    """Undo llama.cpp's rotary row order (interleaved pairs back to HF's two halves)."""
    return (
        weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def test_qwen2_whose_heads_do_not_tile_hidden_is_written_as_llama(tmp_path):
    model = tiny_model("qwen2")  # 6 heads × 16 = 96 query rows over hidden 48
    assert model.config.num_attention_heads * model.config.head_dim != model.config.hidden_size
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == "llama"  # llama.cpp's qwen2 assumes q is hidden × hidden
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    attention = model.model.layers[1].self_attn
    for role, heads in (("q", 6), ("k", 2)):
        for kind in ("weight", "bias"):
            original = getattr(getattr(attention, f"{role}_proj"), kind).detach().numpy()
            np.testing.assert_array_equal(unpermute(tensors[f"blk.1.attn_{role}.{kind}"], heads), original)
    np.testing.assert_array_equal(tensors["blk.1.attn_v.bias"], attention.v_proj.bias.detach().numpy())
    # An unpruned Qwen2 keeps llama.cpp's own qwen2 architecture, unpermuted.
    plain = export_gguf(tiny_model("qwen2", head_dim=8), tmp_path / "q.gguf", "F32", include_tokenizer=False)
    assert fields(plain)[0]["general.architecture"] == "qwen2"


def test_qwen3_round_trips_with_its_qk_norms(tmp_path):
    from transformers import AutoModelForCausalLM

    # transformers' GGUF reader ignores the key length for qwen3 and assumes head_dim 128, so the
    # round trip uses that; llama.cpp itself reads the key length (written for any head_dim).
    model = tiny_model("qwen3", head_dim=128, num_attention_heads=2, num_key_value_heads=1)
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == "qwen3" and meta["qwen3.attention.key_length"] == 128
    assert "blk.0.attn_q_norm.weight" in {t.name for t in reader.tensors}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
